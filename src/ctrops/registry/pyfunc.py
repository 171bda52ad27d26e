"""An MLflow pyfunc flavor for ctrops models, so `mlflow models serve` can serve one.

The only artifact is the ctrops model file itself (`.ctm` for the FFM family,
the `ctrops-xgb/1` JSON for XGBoost). The model is logged "from code"
(`ctrops/registry/pyfunc_entry.py`), not as a cloudpickled object, so loading
it in MLflow never unpickles anything.

`predict` takes a DataFrame of raw field columns (one row per impression to
score, the same values the HTTP server receives) and returns click
probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"
ENTRY_POINT = Path(__file__).with_name("pyfunc_entry.py")


def model_kind(path: str | Path) -> str:
    """"xgboost" for ctrops-xgb JSON files, "ctm" for binary ctrops model files."""
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    return "xgboost" if head.startswith(b"{") else "ctm"


def _records(model_input: Any) -> list[dict[str, Any]]:
    """DataFrame (or list of dicts / dict of columns) to row dicts with missing values as None."""
    if hasattr(model_input, "to_dict"):
        frame = model_input.astype(object).where(model_input.notna(), None)
        return frame.to_dict(orient="records")
    if isinstance(model_input, Mapping):
        cols = list(model_input)
        n = len(model_input[cols[0]]) if cols else 0
        return [{c: model_input[c][i] for c in cols} for i in range(n)]
    if isinstance(model_input, Sequence):
        return [dict(r) for r in model_input]
    raise TypeError(f"model_input must be a DataFrame, a dict of columns or a list of rows, "
                    f"got {type(model_input).__name__}")


class CtropsPyfuncModel(PythonModel):
    """Scores raw rows with a ctrops model file (FFM/FM/LR through `Predictor`, or XGBoost)."""

    def load_context(self, context: Any) -> None:
        self.load(context.artifacts[MODEL_ARTIFACT])

    def load(self, path: str | Path) -> "CtropsPyfuncModel":
        self.kind_ = model_kind(path)
        if self.kind_ == "xgboost":
            from ctrops.models.xgb import XGBoostModel

            self.model_ = XGBoostModel.load(path)
        else:
            from ctrops.predict import Predictor

            self.model_ = Predictor.from_file(path)
        return self

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a schema
        rows = _records(model_input)
        if not rows:
            return np.empty(0, dtype=np.float64)
        if self.kind_ == "xgboost":
            import pyarrow as pa

            columns = {c.name for c in self.model_.columns_}
            table = pa.Table.from_pylist([{k: v for k, v in r.items() if k in columns} for r in rows])
            for name in columns - set(table.column_names):
                table = table.append_column(name, pa.nulls(len(rows), pa.string()))
            return self.model_.predict_proba(table)
        # every row is one candidate with its own full set of fields: empty context
        return np.asarray(self.model_.score({}, rows), dtype=np.float64)


def log_pyfunc_model(model_path: str | Path, *, name: str = "model", input_example: Any = None,
                     tags: Mapping[str, Any] | None = None) -> Any:
    """Log `model_path` as a pyfunc model in the active run; returns MLflow's ModelInfo.

    Register `info.model_uri` to create a registry version.
    """
    import mlflow

    return mlflow.pyfunc.log_model(
        name=name, python_model=str(ENTRY_POINT), artifacts={MODEL_ARTIFACT: str(model_path)},
        input_example=input_example, tags=dict(tags or {}) or None,
        pip_requirements=["ctrops", "numpy", "pyarrow", "xgboost-cpu"],
    )
