"""Entry point MLflow runs when it loads a ctrops pyfunc model ("models from code")."""

import mlflow

from ctrops.registry.pyfunc import CtropsPyfuncModel

mlflow.models.set_model(CtropsPyfuncModel())
