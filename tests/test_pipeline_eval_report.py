"""Evaluation: metrics against hand-computed values, reliability plot, segments, robustness, stability."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import DataError
from ctrops.models.params import ModelParams
from ctrops.pipeline.evaluate import (
    EvaluationReport,
    evaluate_model,
    evaluate_predictions,
    perturb_missing,
    perturb_rare,
    reliability_curve,
    retraining_stability,
    robustness,
    segment_keys_from_matrix,
    segment_metrics,
)

Y = np.array([1, 0, 1, 0])
P = np.array([0.8, 0.6, 0.6, 0.2])


def test_metrics_match_hand_computation():
    r = evaluate_predictions(Y, P)
    ll = -(math.log(0.8) + math.log(0.4) + math.log(0.6) + math.log(0.8)) / 4
    assert r.log_loss == pytest.approx(ll, rel=1e-12)
    assert r.auc == pytest.approx(3.5 / 4)  # one tied positive/negative pair counts half
    assert r.normalized_entropy == pytest.approx(ll / math.log(2))
    assert r.calibration == pytest.approx((0.8 + 0.6 + 0.6 + 0.2) / 2)
    assert r.mean_prediction == pytest.approx(0.55)
    assert r.observed_rate == 0.5
    assert r.prediction_std == pytest.approx(np.std(P))
    assert (r.n_rows, r.positives) == (4, 2)


def test_weighted_metrics():
    w = np.array([2.0, 1.0, 1.0, 0.0])
    r = evaluate_predictions(Y, P, weights=w)
    ll = -(2 * math.log(0.8) + math.log(0.4) + math.log(0.6)) / 4
    assert r.log_loss == pytest.approx(ll)
    assert r.calibration == pytest.approx((2 * 0.8 + 0.6 + 0.6) / 3)


def test_undefined_metrics_are_nan_not_errors():
    r = evaluate_predictions([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(r.auc) and math.isnan(r.normalized_entropy) and math.isnan(r.calibration)
    assert r.log_loss == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.7])))
    nan_pred = evaluate_predictions(Y, [0.1, float("nan"), 0.3, 0.4])
    assert math.isnan(nan_pred.log_loss)
    with pytest.raises(DataError, match="0 or 1"):
        evaluate_predictions([2, 0], [0.1, 0.2])
    with pytest.raises(DataError, match="rows"):
        evaluate_predictions([1, 0], [0.1, 0.2, 0.3])


def test_reliability_curve_by_hand():
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.25, 0.55, 0.65, 0.95])
    c = reliability_curve(y, p, n_bins=2, strategy="uniform")
    np.testing.assert_allclose(c.mean_predicted, [0.15, 0.7166666666666667])
    np.testing.assert_allclose(c.observed_rate, [1 / 3, 2 / 3])
    assert c.counts.tolist() == [3, 3]
    assert c.expected_calibration_error == pytest.approx((abs(0.15 - 1 / 3) + abs(0.71666666 - 2 / 3)) / 2, rel=1e-6)
    q = reliability_curve(np.r_[y, y], np.r_[p, p], n_bins=3, strategy="quantile")
    assert q.counts.tolist() == [4, 4, 4]
    with pytest.raises(ValueError):
        reliability_curve(y, p, strategy="log")


def test_reliability_plot_is_written(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.2, 3000)
    y = (rng.random(3000) < p).astype(float)
    r = evaluate_predictions(y, p, plot_dir=tmp_path / "plots", name="cand")
    path = tmp_path / "plots" / "cand_reliability.png"
    assert r.plots == {"reliability": str(path)}
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert r.to_dict()["calibration_ece"] < 0.02  # predictions are the true probabilities


def test_segments_top_n_by_volume():
    y = np.array([1, 0, 0, 1, 0, 1, 0, 0, 1])
    p = np.array([0.9, 0.1, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5, 0.8])
    keys = np.array(["a", "a", "a", "a", "b", "b", "b", "c", "c"])
    segs = segment_metrics(y, p, keys, top_n=2)
    assert [(s.key, s.rows) for s in segs] == [("a", 4), ("b", 3)]
    a = segs[0]
    assert a.log_loss == pytest.approx(-np.mean(np.log([0.9, 0.9, 0.8, 0.7])))
    assert a.auc == 1.0 and a.calibration == pytest.approx(1.9 / 2)
    r = evaluate_predictions(y, p, segments={"ad#id": keys}, top_n=3)
    d = r.to_dict()
    assert d["segment.ad_id.a.rows"] == 4.0 and "segment.ad_id.c.log_loss" in d
    assert all(isinstance(v, float) for v in d.values())


def matrix(rows: list[list[tuple[int, int]]], labels, n_fields: int, n_features: int) -> FieldMatrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    fields = [f for r in rows for f, _ in r]
    idx = [j for r in rows for _, j in r]
    return FieldMatrix.from_arrays(indptr, fields, idx, np.ones(len(idx)), labels, n_fields, n_features)


def tiny_world(n: int = 4000, seed: int = 0) -> tuple[ModelParams, FieldMatrix]:
    """An LR whose field 0 carries signal and field 1 none; labels drawn from the model itself."""
    rng = np.random.default_rng(seed)
    linear = np.zeros(4 + 10 + 10, dtype=np.float32)
    linear[4:14] = np.linspace(-2, 2, 10)  # field 0 values: features 4..13
    params = ModelParams("lr", n_features=24, n_fields=2, k=0, bias=-1.0, linear=linear)
    a = rng.integers(4, 14, n)
    b = rng.integers(14, 24, n)
    p = 1 / (1 + np.exp(-(linear[a] - 1.0)))
    y = (rng.random(n) < p).astype(float)
    return params, matrix([[(0, int(i)), (1, int(j))] for i, j in zip(a, b)], y, 2, 24)


def test_segment_keys_from_matrix():
    X = matrix([[(0, 5), (1, 7)], [(1, 8)], [(0, 6)]], [0, 1, 0], 2, 10)
    assert segment_keys_from_matrix(X, 0).tolist() == [5, -1, 6]
    assert segment_keys_from_matrix(X, 1).tolist() == [7, 8, -1]


def test_perturbations_touch_only_their_field():
    _, X = tiny_world(200)
    rng = np.random.default_rng(0)
    full = perturb_rare(X, 0, 1.0, rng)
    assert (full.indices[X.fields == 0] == 1).all()  # rare index of field 0 is 2*0+1
    np.testing.assert_array_equal(full.indices[X.fields == 1], X.indices[X.fields == 1])
    none = perturb_rare(X, 0, 0.0, rng)
    np.testing.assert_array_equal(none.indices, X.indices)
    dropped = perturb_missing(X, 1)
    assert (dropped.indices[X.fields == 1] == 2).all()  # missing index of field 1 is 2*1
    half = perturb_rare(X, None, 0.5, np.random.default_rng(1))
    share = float((half.indices != X.indices).mean())
    assert 0.4 < share < 0.6


def test_robustness_reports_signal_fields_as_fragile():
    params, X = tiny_world()
    res = {r.name: r for r in robustness(params, X, fractions=(0.3,), field_names=["ad", "noise"], seed=3)}
    assert set(res) == {"rare_30pct.ad", "rare_30pct.noise", "rare_30pct.all", "missing.ad", "missing.noise"}
    assert res["rare_30pct.noise"].delta_log_loss == 0.0 and res["missing.noise"].delta_auc == 0.0
    assert res["rare_30pct.ad"].delta_log_loss > 0.01 and res["rare_30pct.ad"].delta_auc < -0.01
    assert res["missing.ad"].delta_log_loss > res["rare_30pct.ad"].delta_log_loss
    assert res["missing.ad"].auc == pytest.approx(0.5)  # no signal left
    again = {r.name: r for r in robustness(params, X, fractions=(0.3,), field_names=["ad", "noise"], seed=3)}
    assert again["rare_30pct.all"].log_loss == res["rare_30pct.all"].log_loss


def test_evaluate_model_full_report(tmp_path):
    from ctrops.models.estimators import FFM

    params, X = tiny_world(3000)
    train, valid = X.take(slice(0, 2000)), X.take(slice(2000, 3000))
    report = evaluate_model(params, valid, segment_fields={"ad": 0}, field_names=["ad", "noise"],
                            plot_dir=tmp_path, name="lr", robustness_fractions=(0.1, 0.5),
                            stability_of=(FFM(k=2, epochs=3, eta=0.1), train, [0, 1, 2]))
    d = report.to_dict()
    assert len(report.segments["ad"]) == 10
    assert d["robustness.max_delta_log_loss"] == max(r.delta_log_loss for r in report.robustness)
    assert d["robustness.rare_50pct.ad.delta_log_loss"] > d["robustness.rare_10pct.ad.delta_log_loss"]
    st = report.stability
    assert st.seeds == (0, 1, 2) and len(st.aucs) == 3
    assert st.log_loss_stats["min"] <= st.log_loss_stats["mean"] <= st.log_loss_stats["max"]
    assert st.log_loss_stats["std"] > 0 and st.prediction_spread > 0  # seeds change init and order
    assert d["stability.auc_std"] == st.auc_stats["std"]
    assert (tmp_path / "lr_reliability.png").exists()


def test_stability_accepts_a_factory_and_needs_two_seeds():
    from ctrops.models.estimators import LogisticRegression

    params, X = tiny_world(1500)
    train, valid = X.take(slice(0, 1000)), X.take(slice(1000, 1500))
    made = []

    def factory(seed: int):
        made.append(seed)
        return LogisticRegression(epochs=2, seed=seed)

    st = retraining_stability(factory, train, valid, seeds=[4, 5])
    assert made == [4, 5] and len(st.log_losses) == 2
    with pytest.raises(ValueError, match="two seeds"):
        retraining_stability(factory, train, valid, seeds=[1])


def test_report_round_trips_core_metrics():
    r = evaluate_predictions(Y, P)
    back = EvaluationReport.from_dict(r.to_dict(), data_fingerprint=r.data_fingerprint)
    for name in ("log_loss", "auc", "calibration", "prediction_std", "n_rows"):
        assert getattr(back, name) == getattr(r, name)
    partial = EvaluationReport.from_dict({"log_loss": 0.1})
    assert math.isnan(partial.auc)
    assert evaluate_predictions(Y, P).data_fingerprint == r.data_fingerprint
    assert evaluate_predictions(Y[::-1], P).data_fingerprint != r.data_fingerprint


def test_save_json_and_segments_from_parquet(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ctrops.pipeline.evaluate import segments_from_parquet

    pq.write_table(pa.table({"ad_id": ["a", "b", "a", None], "label": [1, 0, 1, 0]}), tmp_path / "v.parquet")
    seg = segments_from_parquet(tmp_path / "v.parquet", ["ad_id"])
    r = evaluate_predictions([1, 0, 1, 0], [0.7, 0.2, 0.6, 0.1], segments=seg)
    assert [(s.key, s.rows) for s in r.segments["ad_id"]] == [("a", 2), ("(missing)", 1), ("b", 1)]
    doc = json.loads(r.save_json(tmp_path / "report.json").read_text())
    assert doc["log_loss"] == r.log_loss and doc["metrics"]["segment.ad_id.a.rows"] == 2.0
    assert doc["segments"]["ad_id"][1]["auc"] is None  # NaN written as null
    assert sum(doc["reliability"]["counts"]) == 4
