"""Quality gate: every refusal, a pass, and configuration parsing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ctrops.errors import ConfigError
from ctrops.pipeline.evaluate import EvaluationReport, PerturbationResult, StabilityResult, evaluate_predictions
from ctrops.pipeline.gate import GateConfig, evaluate_gate

RNG = np.random.default_rng(0)
P_TRUE = RNG.uniform(0.01, 0.3, 5000)
Y = (RNG.random(5000) < P_TRUE).astype(float)


def report(p=None, y=Y) -> EvaluationReport:
    return evaluate_predictions(y, P_TRUE if p is None else p)


def noisy(scale: float) -> np.ndarray:
    z = np.log(P_TRUE / (1 - P_TRUE)) + np.random.default_rng(1).normal(0, scale, P_TRUE.size)
    return 1 / (1 + np.exp(-z))


CFG = GateConfig(max_logloss_regression=0.01, max_auc_regression=0.005, calibration_band=(0.9, 1.1),
                 min_prediction_std=1e-3, max_model_bytes=1_000_000)


def test_a_good_candidate_passes():
    d = evaluate_gate(report(), report(noisy(0.5)), 10_000, CFG)
    assert d.passed, d.reasons
    assert d.reasons == []
    assert {"required_metrics", "calibration", "prediction_spread", "model_size", "same_validation_data",
            "log_loss_vs_production", "auc_vs_production"} <= set(d.checks)
    assert all(c["passed"] for c in d.checks.values())


def test_first_model_passes_without_production():
    d = evaluate_gate(report(), None, 10_000, CFG)
    assert d.passed and d.checks["vs_production"]["production"] is None


def test_refuses_a_candidate_worse_than_production():
    d = evaluate_gate(report(noisy(1.0)), report(), 10_000, CFG)
    assert not d.passed
    assert any(r.startswith("Log loss") and "worse than production" in r for r in d.reasons)
    assert any(r.startswith("AUC") for r in d.reasons)
    c = d.checks["log_loss_vs_production"]
    assert c["candidate"] > c["limit"] > c["production"]


def test_a_small_regression_within_the_margin_passes():
    cand, prod = report(P_TRUE * 0.95), report()
    assert cand.log_loss > prod.log_loss
    assert evaluate_gate(cand, prod, 1, CFG).passed
    strict = dataclasses.replace(CFG, max_logloss_regression=0.0)
    assert not evaluate_gate(cand, prod, 1, strict).passed


def test_refuses_nan_metrics():
    cand = report()
    cand.auc = float("nan")
    d = evaluate_gate(cand, None, 1, CFG)
    assert not d.passed and d.reasons == ["Candidate metrics are unusable: NaN auc."]


def test_refuses_missing_required_metric():
    cfg = dataclasses.replace(CFG, required_metrics=("log_loss", "stability.auc_std"))
    d = evaluate_gate(report(), None, 1, cfg)
    assert not d.passed and "missing stability.auc_std" in d.reasons[0]


def test_refuses_miscalibration():
    cand = report(np.clip(P_TRUE * 1.3, 0, 1))
    d = evaluate_gate(cand, None, 1, CFG)
    assert not d.passed
    assert len(d.reasons) == 1
    assert d.reasons[0].startswith(f"Calibration ratio (predicted/observed) is {cand.calibration:.4f}")
    assert "[0.9, 1.1]" in d.reasons[0]


def test_refuses_collapsed_predictions():
    const = np.full(Y.size, Y.mean())  # perfectly calibrated, useless
    d = evaluate_gate(report(const), None, 1, CFG)
    assert not d.passed
    assert any(r.startswith("Predictions have collapsed") for r in d.reasons)
    assert d.checks["calibration"]["passed"]


def test_refuses_an_oversized_model_file():
    d = evaluate_gate(report(), None, 2_500_000, CFG)
    assert not d.passed
    assert d.reasons == ["Model file is 2,500,000 bytes, over the limit of 1,000,000 bytes (2.50x)."]
    assert evaluate_gate(report(), None, 2_500_000, dataclasses.replace(CFG, max_model_bytes=None)).passed


def test_refuses_comparison_on_different_validation_data():
    other = report(y=np.roll(Y, 1))
    d = evaluate_gate(report(), other, 1, CFG)
    assert not d.passed and "different validation data" in d.reasons[0]
    assert "log_loss_vs_production" not in d.checks
    assert evaluate_gate(report(), other, 1, dataclasses.replace(CFG, require_same_data=False)).checks[
        "log_loss_vs_production"]


def test_refuses_when_production_metric_is_nan():
    prod = report()
    prod.log_loss = float("nan")
    d = evaluate_gate(report(), prod, 1, CFG)
    assert not d.passed and d.reasons[0].startswith("Production log loss is NaN")


def test_optional_robustness_and_stability_limits():
    cand = report()
    cfg = dataclasses.replace(CFG, max_robustness_delta_log_loss=0.01, max_stability_auc_std=0.002)
    d = evaluate_gate(cand, None, 1, cfg)
    assert not d.passed and len(d.reasons) == 2  # neither was measured
    cand.robustness = [PerturbationResult("missing.site", "site", "missing", 1.0, 0.3, 0.6, 0.05, -0.1)]
    cand.stability = StabilityResult((0, 1, 2), (0.3, 0.31, 0.29), (0.70, 0.71, 0.72), 0.01)
    d = evaluate_gate(cand, None, 1, cfg)
    assert not d.passed
    assert any("perturbation 'missing.site' raises log loss by 0.05000" in r for r in d.reasons)
    assert any("AUC is unstable" in r and "0.01000" in r for r in d.reasons)
    cand.robustness[0] = dataclasses.replace(cand.robustness[0], delta_log_loss=0.001)
    cand.stability = StabilityResult((0, 1), (0.3, 0.3), (0.70, 0.701), 0.0)
    assert evaluate_gate(cand, None, 1, cfg).passed


def test_every_failure_is_reported_at_once():
    d = evaluate_gate(report(np.full(Y.size, 0.5)), report(), 10**9, CFG)
    assert len(d.reasons) >= 4  # calibration, collapse, size, log loss (AUC too)
    assert d.to_dict()["passed"] is False


def test_config_from_dict_and_yaml(tmp_path):
    cfg = GateConfig.from_dict({"max_logloss_regression": "0.02", "calibration_band": [0.8, 1.2],
                                "max_model_bytes": 5_000_000, "required_metrics": ["log_loss"]})
    assert cfg.max_logloss_regression == 0.02 and cfg.calibration_band == (0.8, 1.2)
    assert cfg.required_metrics == ("log_loss",) and cfg.max_model_bytes == 5_000_000
    path = tmp_path / "pipeline.yaml"
    path.write_text("gate:\n  min_prediction_std: 0.001\n  max_model_bytes: null\n")
    assert GateConfig.from_yaml(path).min_prediction_std == 0.001
    with pytest.raises(ConfigError, match="max_logloss_regresion"):
        GateConfig.from_dict({"max_logloss_regresion": 0.1})
    with pytest.raises(ConfigError, match="calibration_band"):
        GateConfig.from_dict({"calibration_band": [1.1, 1.2]})
    with pytest.raises(ConfigError, match="max_auc_regression"):
        GateConfig.from_dict({"max_auc_regression": "lots"})
    with pytest.raises(ConfigError, match="required_metrics"):
        GateConfig.from_dict({"required_metrics": "auc"})
    path.write_text("gate: [1, 2]\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        GateConfig.from_yaml(path)
