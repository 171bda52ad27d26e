"""Offline quality measures of click probabilities.

Evaluation, early stopping and the quality gate all read these, so each one
validates its inputs and states its edge cases instead of returning NaN.
"""

from __future__ import annotations

import numpy as np

from ctrops.errors import DataError

EPS = 1e-15


def _as_arrays(y, p, weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise DataError(f"labels have {y.size} values but predictions have {p.size}")
    if y.size == 0:
        raise DataError("cannot score an empty set of predictions")
    if not np.all((y == 0.0) | (y == 1.0)):
        raise DataError("labels must be 0 or 1")
    if not np.all(np.isfinite(p)):
        raise DataError("predictions contain NaN or infinity")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape != y.shape:
            raise DataError(f"weights have {w.size} values but labels have {y.size}")
        if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
            raise DataError("weights must be finite, non-negative and not all zero")
    return y, p, w


def log_loss(y, p, weights=None) -> float:
    """Mean (optionally weighted) binary cross-entropy; p is clipped to [1e-15, 1-1e-15]."""
    y, p, w = _as_arrays(y, p, weights)
    p = np.clip(p, EPS, 1.0 - EPS)
    losses = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    return float(np.average(losses, weights=w))


def log_loss_from_logits(y, z, weights=None) -> float:
    """Mean log loss from logits, exact for any z (no clipping); unvalidated, for per-epoch hot paths.

    -log sigmoid(z) = logaddexp(0, -z) and -log(1 - sigmoid(z)) = logaddexp(0, z).
    """
    z = np.asarray(z, dtype=np.float64)
    losses = np.logaddexp(0.0, np.where(np.asarray(y) > 0.5, -z, z))
    return float(np.average(losses, weights=weights))


def roc_auc(y, p) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U), tied scores count half.

    O(n log n). Raises DataError when only one class is present, since AUC is
    undefined there and a silent 0.5 would pass a quality gate it should not.
    """
    y, p, _ = _as_arrays(y, p)
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError("roc_auc needs both positive and negative labels")
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    # average rank of each run of tied scores (ranks start at 1)
    boundaries = np.flatnonzero(np.diff(sorted_p)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [p.size]))
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(avg_rank, ends - starts)
    pos_rank_sum = float(ranks[y[order] == 1.0].sum())
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def normalized_entropy(y, p, weights=None) -> float:
    """Log loss divided by the entropy of the base rate (He et al. 2014); < 1 beats the prior."""
    y, p, w = _as_arrays(y, p, weights)
    base = float(np.average(y, weights=w))
    if base <= 0.0 or base >= 1.0:
        raise DataError("normalized_entropy needs both positive and negative labels")
    prior = -(base * np.log(base) + (1.0 - base) * np.log(1.0 - base))
    return log_loss(y, p, w) / prior


def calibration_ratio(y, p, weights=None) -> float:
    """Mean predicted probability over observed click rate (1.0 is calibrated)."""
    y, p, w = _as_arrays(y, p, weights)
    observed = float(np.average(y, weights=w))
    if observed <= 0.0:
        raise DataError("calibration_ratio needs at least one positive label")
    return float(np.average(p, weights=w)) / observed
