"""The tuning objective: fit one model with a trial's parameters, score it on validation.

Epochs (FFM family) and boosting rounds (XGBoost) are not searched: early
stopping on the validation set chooses them inside each trial, and the chosen
count is kept as a trial attribute so the final training reuses it.

The objective holds only paths to its data, not the data, so it pickles
cheaply into worker processes; each process memory-maps the matrix cache (or
reads the Parquet file) once and reuses it for every trial it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import ConfigError
from ctrops.tune.space import SearchSpace

FACTORIZATION_TYPES = ("ffm", "fm", "lr")
MODEL_TYPES = FACTORIZATION_TYPES + ("xgboost",)


def make_model(model_type: str, params: Mapping[str, Any]) -> Any:
    """An unfitted estimator of `model_type` with `params` (constructor names)."""
    if model_type == "xgboost":
        from ctrops.models.xgb import XGBoostModel

        return XGBoostModel(**params)
    if model_type in FACTORIZATION_TYPES:
        from ctrops.models import estimators

        cls = {"ffm": estimators.FFM, "fm": estimators.FM, "lr": estimators.LogisticRegression}[model_type]
        return cls(**params)
    raise ConfigError(f"model.type: unknown model type {model_type!r}; known: {', '.join(MODEL_TYPES)}")


def log_loss(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float:
    """`metrics.log_loss`, except that a diverged trial (non-finite predictions) scores NaN
    instead of raising, so Optuna records it as failed and the study goes on."""
    from ctrops.models import metrics

    p = np.asarray(p, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        return float("nan")
    return metrics.log_loss(y, p, weights)


def labels_of(data: Any, label_column: str = "label") -> tuple[np.ndarray, np.ndarray | None]:
    """(labels, weights) of a FieldMatrix or an Arrow table."""
    if isinstance(data, FieldMatrix):
        return np.asarray(data.labels, dtype=np.float64), data.weights
    return np.asarray(data.column(label_column).to_numpy(zero_copy_only=False), dtype=np.float64), None


def fit_and_score(model_type: str, params: Mapping[str, Any], train: Any, valid: Any,
                  label_column: str = "label") -> tuple[Any, float]:
    """Fit with early stopping on `valid`; return the model and its validation log loss."""
    model = make_model(model_type, params)
    model.fit(train, valid)
    y, w = labels_of(valid, label_column)
    return model, log_loss(y, model.predict_proba(valid), w)


@dataclass(frozen=True)
class TuningData:
    """Where a trial finds train and validation data: matrix cache dirs or Parquet files."""

    train: str
    valid: str
    kind: Literal["matrix", "parquet"] = "matrix"

    def load(self) -> tuple[Any, Any]:
        if self.kind == "matrix":
            return FieldMatrix.load(self.train), FieldMatrix.load(self.valid)
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(self.train), pq.read_table(self.valid)
        raise ConfigError(f"tuning data kind must be 'matrix' or 'parquet', got {self.kind!r}")


@dataclass
class Objective:
    """Callable for `study.optimize`: returns the validation log loss of one trial (lower is better)."""

    model_type: str
    data: TuningData
    space: SearchSpace
    fixed: Mapping[str, Any] = field(default_factory=dict)
    label_column: str = "label"

    def __post_init__(self) -> None:
        overlap = set(self.fixed) & set(self.space.names)
        if overlap:
            raise ConfigError(f"tune: parameter(s) {sorted(overlap)} are both fixed and searched")
        self._cache: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None  # workers reopen the data themselves
        return state

    def datasets(self) -> tuple[Any, Any]:
        if self._cache is None:
            self._cache = self.data.load()
        return self._cache

    def __call__(self, trial: Any) -> float:
        params = {**self.fixed, **self.space.suggest(trial)}
        train, valid = self.datasets()
        model, loss = fit_and_score(self.model_type, params, train, valid, self.label_column)
        best_epoch = getattr(model, "best_epoch_", None)
        if best_epoch is not None:
            trial.set_user_attr("best_epoch", int(best_epoch))
        return loss
