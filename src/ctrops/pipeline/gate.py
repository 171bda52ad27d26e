"""The quality gate: may a freshly trained model replace production?

The first talk's rule is "if model metrics look wrong, the ML side stops
updating": delivery keeps serving the old file. This module is that rule as
code. It refuses promotion when the candidate

* is missing a required metric or has a NaN one,
* is worse than production on the same validation data by more than a margin
  (log loss relative, AUC absolute),
* is miscalibrated (predicted / observed outside a band),
* has collapsed predictions (near-zero standard deviation: a constant model
  can still have a fine average and calibration),
* would produce a model file over the delivery memory budget,
* optionally: is fragile to input noise or unstable across seeds.

Every refusal is a sentence with the numbers, so a failed weekly run explains
itself in the log and the experiment tracker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ctrops.errors import ConfigError
from ctrops.pipeline.evaluate import EvaluationReport


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate. All optional limits are off when None.

    max_logloss_regression: allowed relative log-loss increase over production
        (0.01 = the candidate may be up to 1 % worse).
    max_auc_regression: allowed absolute AUC decrease versus production.
    calibration_band: inclusive [lo, hi] for predicted / observed positives.
    min_prediction_std: below this standard deviation the predictions count as collapsed.
    max_model_bytes: refuse model files larger than this (delivery memory budget).
    required_metrics: names in `EvaluationReport.to_dict()` that must exist and not be NaN.
    require_same_data: refuse comparing reports computed on different validation sets.
    max_robustness_delta_log_loss: refuse when any noise perturbation raises log loss by more.
    max_stability_auc_std: refuse when the AUC std across retraining seeds is larger.
    """

    max_logloss_regression: float = 0.01
    max_auc_regression: float = 0.005
    calibration_band: tuple[float, float] = (0.8, 1.25)
    min_prediction_std: float = 1e-4
    max_model_bytes: int | None = None
    required_metrics: tuple[str, ...] = ("log_loss", "auc", "normalized_entropy", "calibration")
    require_same_data: bool = True
    max_robustness_delta_log_loss: float | None = None
    max_stability_auc_std: float | None = None

    def __post_init__(self) -> None:
        lo, hi = self.calibration_band
        if not (0 < lo <= 1 <= hi):
            raise ConfigError(f"gate.calibration_band must satisfy 0 < lo <= 1 <= hi, got [{lo}, {hi}]")
        for name in ("max_logloss_regression", "max_auc_regression", "min_prediction_std"):
            if getattr(self, name) < 0:
                raise ConfigError(f"gate.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_model_bytes is not None and self.max_model_bytes <= 0:
            raise ConfigError(f"gate.max_model_bytes must be positive, got {self.max_model_bytes}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "GateConfig":
        """Build from a mapping (a YAML `gate:` section); unknown keys raise ConfigError naming them."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown gate setting(s) {unknown}; known settings are {sorted(known)}")
        kwargs: dict[str, Any] = {}
        try:
            for key, value in data.items():
                if value is None:
                    kwargs[key] = None
                elif key == "calibration_band":
                    lo, hi = value
                    kwargs[key] = (float(lo), float(hi))
                elif key == "required_metrics":
                    if isinstance(value, str):
                        raise TypeError("a list of metric names is expected")
                    kwargs[key] = tuple(str(v) for v in value)
                elif key == "max_model_bytes":
                    kwargs[key] = int(value)
                elif key == "require_same_data":
                    if not isinstance(value, bool):
                        raise TypeError("true or false is expected")
                    kwargs[key] = value
                else:
                    kwargs[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"gate.{key} has an invalid value {value!r}: {exc}") from None
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, section: str | None = "gate") -> "GateConfig":
        """Read the `section` mapping of a YAML file (the whole file when section is None)."""
        import yaml

        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        if section is not None:
            doc = doc.get(section, {})
            if not isinstance(doc, Mapping):
                raise ConfigError(f"{p}: '{section}' must be a mapping")
        return cls.from_dict(doc)


@dataclass
class GateDecision:
    """Outcome of the gate: `passed`, one sentence per refusal, and every check's numbers."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "checks": self.checks}


def _nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


def evaluate_gate(candidate: EvaluationReport, production: EvaluationReport | None,
                  model_bytes: int, config: GateConfig | None = None) -> GateDecision:
    """Decide whether `candidate` may be promoted over `production` (None: no model in production yet).

    Both reports must come from the same validation rows (compare
    `data_fingerprint`); re-score the production model on the candidate's
    validation set before calling this.
    """
    cfg = config or GateConfig()
    decision = GateDecision(passed=True)

    def check(name: str, ok: bool, reason: str, **numbers: Any) -> None:
        decision.checks[name] = {"passed": bool(ok), **numbers}
        if not ok:
            decision.passed = False
            decision.reasons.append(reason)

    metrics = candidate.to_dict()
    missing = [m for m in cfg.required_metrics if m not in metrics]
    nan = [m for m in cfg.required_metrics if m in metrics and _nan(metrics[m])]
    check("required_metrics", not missing and not nan,
          "Candidate metrics are unusable: "
          + "; ".join(part for part in (
              f"missing {', '.join(missing)}" if missing else "",
              f"NaN {', '.join(nan)}" if nan else "") if part) + ".",
          missing=missing, nan=nan)

    lo, hi = cfg.calibration_band
    cal = candidate.calibration
    check("calibration", not _nan(cal) and lo <= cal <= hi,
          f"Calibration ratio (predicted/observed) is {cal:.4f}, outside the band [{lo:g}, {hi:g}]: "
          f"the model predicts {candidate.mean_prediction:.5f} on average against an observed rate of "
          f"{candidate.observed_rate:.5f}.",
          value=cal, band=[lo, hi])

    std = candidate.prediction_std
    check("prediction_spread", not _nan(std) and std >= cfg.min_prediction_std,
          f"Predictions have collapsed: their standard deviation is {std:.3g}, below the minimum "
          f"{cfg.min_prediction_std:.3g}.",
          value=std, minimum=cfg.min_prediction_std)

    if cfg.max_model_bytes is not None:
        check("model_size", model_bytes <= cfg.max_model_bytes,
              f"Model file is {model_bytes:,} bytes, over the limit of {cfg.max_model_bytes:,} bytes "
              f"({model_bytes / cfg.max_model_bytes:.2f}x).",
              value=int(model_bytes), limit=cfg.max_model_bytes)
    else:
        decision.checks["model_size"] = {"passed": True, "value": int(model_bytes), "limit": None}

    if production is not None:
        same = (not cfg.require_same_data
                or (candidate.data_fingerprint == production.data_fingerprint
                    and candidate.n_rows == production.n_rows))
        check("same_validation_data", same,
              f"Candidate and production were evaluated on different validation data "
              f"({candidate.n_rows:,} rows, fingerprint {candidate.data_fingerprint or '-'} versus "
              f"{production.n_rows:,} rows, fingerprint {production.data_fingerprint or '-'}); "
              f"re-score production on the candidate's validation set.",
              candidate_rows=candidate.n_rows, production_rows=production.n_rows)
        if same:
            _compare(candidate, production, cfg, check)
    else:
        decision.checks["vs_production"] = {"passed": True, "production": None}

    if cfg.max_robustness_delta_log_loss is not None:
        worst = max(candidate.robustness, key=lambda r: r.delta_log_loss, default=None)
        if worst is None:
            check("robustness", False, "Robustness to noise was required but not measured.")
        else:
            check("robustness", worst.delta_log_loss <= cfg.max_robustness_delta_log_loss,
                  f"Model is fragile to input noise: perturbation '{worst.name}' raises log loss by "
                  f"{worst.delta_log_loss:.5f} (limit {cfg.max_robustness_delta_log_loss:.5f}).",
                  worst=worst.name, value=worst.delta_log_loss, limit=cfg.max_robustness_delta_log_loss)

    if cfg.max_stability_auc_std is not None:
        if candidate.stability is None:
            check("stability", False, "Retraining stability was required but not measured.")
        else:
            s = candidate.stability.auc_stats
            check("stability", not _nan(s["std"]) and s["std"] <= cfg.max_stability_auc_std,
                  f"AUC is unstable across retraining seeds {list(candidate.stability.seeds)}: std "
                  f"{s['std']:.5f} (range {s['min']:.4f}-{s['max']:.4f}) exceeds {cfg.max_stability_auc_std:.5f}.",
                  value=s["std"], limit=cfg.max_stability_auc_std)
    return decision


def _compare(candidate: EvaluationReport, production: EvaluationReport, cfg: GateConfig, check: Any) -> None:
    c_ll, p_ll = candidate.log_loss, production.log_loss
    if _nan(p_ll):
        check("log_loss_vs_production", False,
              "Production log loss is NaN, so the candidate cannot be compared; fix the production "
              "evaluation or promote by hand.", candidate=c_ll, production=p_ll)
    else:
        limit = p_ll * (1.0 + cfg.max_logloss_regression)
        check("log_loss_vs_production", not _nan(c_ll) and c_ll <= limit,
              f"Log loss {c_ll:.5f} is worse than production's {p_ll:.5f} by "
              f"{(c_ll / p_ll - 1.0) * 100:.2f} %, more than the allowed "
              f"{cfg.max_logloss_regression * 100:.2f} % (limit {limit:.5f}).",
              candidate=c_ll, production=p_ll, limit=limit)
    c_auc, p_auc = candidate.auc, production.auc
    if not _nan(p_auc):
        floor = p_auc - cfg.max_auc_regression
        check("auc_vs_production", not _nan(c_auc) and c_auc >= floor,
              f"AUC {c_auc:.4f} is below production's {p_auc:.4f} by {p_auc - c_auc:.4f}, more than the "
              f"allowed {cfg.max_auc_regression:.4f}.",
              candidate=c_auc, production=p_auc, floor=floor)
