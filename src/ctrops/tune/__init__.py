"""tune stage of ctrops: Optuna studies, warm-started CMA-ES from the production run's study.

Importing this package does not import Optuna or MLflow; they load on first use.
"""

from ctrops.tune.objective import Objective, TuningData, fit_and_score, log_loss, make_model
from ctrops.tune.space import SPACES, Param, SearchSpace, space_for
from ctrops.tune.study import TuneResult, make_sampler, tune
from ctrops.tune.warmstart import OBJECTIVE_VERSION_TAG, STUDY_ARTIFACT, WarmStart, load_source_trials, load_warm_start

__all__ = ["OBJECTIVE_VERSION_TAG", "Objective", "Param", "SPACES", "STUDY_ARTIFACT", "SearchSpace", "TuneResult",
           "TuningData", "WarmStart", "fit_and_score", "load_source_trials", "load_warm_start", "log_loss",
           "make_model", "make_sampler", "space_for", "tune"]
