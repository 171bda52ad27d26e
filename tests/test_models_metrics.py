"""Metrics against direct definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrops.errors import DataError
from ctrops.models.metrics import calibration_ratio, log_loss, normalized_entropy, roc_auc


def _auc_by_pairs(y, p) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=60))
def test_auc_equals_pair_count_with_ties(rows):
    y = np.array([float(a) for a, _ in rows])
    p = np.array([b / 6 for _, b in rows])     # few distinct scores: many ties
    if y.min() == y.max():
        with pytest.raises(DataError):
            roc_auc(y, p)
        return
    assert roc_auc(y, p) == pytest.approx(_auc_by_pairs(y, p))


def test_auc_extremes():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5] * 4) == 0.5


def test_log_loss_definition_clipping_and_weights():
    y = np.array([1, 0, 1.0])
    p = np.array([0.9, 0.2, 0.6])
    want = -np.mean([np.log(0.9), np.log(0.8), np.log(0.6)])
    assert log_loss(y, p) == pytest.approx(want)
    w = np.array([2.0, 1.0, 1.0])
    assert log_loss(y, p, w) == pytest.approx((-2 * np.log(0.9) - np.log(0.8) - np.log(0.6)) / 4)
    assert np.isfinite(log_loss([1, 0], [0.0, 1.0]))           # clipped, not infinite
    with pytest.raises(DataError, match="labels have 2 values but predictions have 3"):
        log_loss([1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="0 or 1"):
        log_loss([2, 0], [0.1, 0.2])
    with pytest.raises(DataError, match="NaN"):
        log_loss([1, 0], [np.nan, 0.2])


def test_normalized_entropy_and_calibration():
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.3).astype(float)
    base = np.full(1000, y.mean())
    assert normalized_entropy(y, base) == pytest.approx(1.0)
    assert normalized_entropy(y, np.where(y > 0, 0.9, 0.1)) < 0.5
    assert calibration_ratio(y, base) == pytest.approx(1.0)
    assert calibration_ratio(y, base * 2) == pytest.approx(2.0)
    with pytest.raises(DataError):
        calibration_ratio(np.zeros(3), [0.1, 0.2, 0.3])
