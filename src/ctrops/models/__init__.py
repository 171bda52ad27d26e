"""Models of ctrops: FFM / FM / logistic regression on a native core.

Public surface: the estimators, their parameter layout, the scorers used by
the server and the offline metrics. Kernels live in the private `_ffm` module.
"""

from ctrops.models.estimators import FFM, FM, LogisticRegression, estimator_for
from ctrops.models.metrics import calibration_ratio, log_loss, normalized_entropy, roc_auc
from ctrops.models.params import MODEL_TYPES, ModelParams
from ctrops.models.scoring import as_native, contributions, predict_logits, predict_proba, score_candidates

__all__ = [
    "FFM", "FM", "LogisticRegression", "estimator_for", "ModelParams", "MODEL_TYPES",
    "log_loss", "roc_auc", "normalized_entropy", "calibration_ratio",
    "predict_logits", "predict_proba", "score_candidates", "contributions", "as_native",
]
