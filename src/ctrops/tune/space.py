"""Search spaces per model type, and the version tag that guards warm starts.

A warm start replays last week's trials as prior knowledge; that is only sound
when those trials were drawn from the same space and scored by the same
objective. `SearchSpace.objective_version` condenses both into one short tag
that is stored on the MLflow run and compared before any trial is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ctrops.errors import ConfigError

# Bump when the objective itself changes meaning (metric, validation split,
# early-stopping rule) even though the parameter ranges stay the same.
OBJECTIVE_REVISION = 1
OBJECTIVE_METRIC = "valid_log_loss"


@dataclass(frozen=True)
class Param:
    """One tuned hyper-parameter: a float or int range, with the library default."""

    name: str
    kind: Literal["float", "int"]
    low: float
    high: float
    default: float
    log: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("float", "int"):
            raise ConfigError(f"search space: parameter {self.name!r} has kind {self.kind!r}, expected float or int")
        if not self.low < self.high:
            raise ConfigError(f"search space: parameter {self.name!r} needs low < high, got {self.low}..{self.high}")
        if not self.low <= self.default <= self.high:
            raise ConfigError(f"search space: default {self.default} of {self.name!r} lies outside {self.low}..{self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"search space: log-scaled {self.name!r} needs low > 0")

    def suggest(self, trial: Any) -> float | int:
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution, IntDistribution

        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def typed(self, value: float) -> float | int:
        return int(round(value)) if self.kind == "int" else float(value)


@dataclass(frozen=True)
class SearchSpace:
    """The parameters Optuna searches for one model type."""

    model_type: str
    params: tuple[Param, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError(f"search space {self.model_type}: no parameter {name!r}; known: {list(self.names)}")

    def defaults(self) -> dict[str, float | int]:
        """The library defaults: enqueued as trial 0 so tuning never ends worse than them."""
        return {p.name: p.typed(p.default) for p in self.params}

    def suggest(self, trial: Any) -> dict[str, float | int]:
        return {p.name: p.suggest(trial) for p in self.params}

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    @property
    def objective_version(self) -> str:
        """`<model_type>-r<revision>-<hash of ranges and metric>`, stable across processes."""
        canon = json.dumps({"model_type": self.model_type, "metric": OBJECTIVE_METRIC,
                            "revision": OBJECTIVE_REVISION,
                            "params": [asdict(p) for p in self.params]}, sort_keys=True)
        digest = hashlib.sha256(canon.encode()).hexdigest()[:12]
        return f"{self.model_type}-r{OBJECTIVE_REVISION}-{digest}"

    def with_overrides(self, overrides: dict[str, dict[str, Any]] | None) -> "SearchSpace":
        """A copy with some ranges changed from a config (`{name: {low:, high:, log:}}`)."""
        if not overrides:
            return self
        known = {p.name: p for p in self.params}
        unknown = set(overrides) - set(known)
        if unknown:
            raise ConfigError(f"tune.space: unknown parameter(s) {sorted(unknown)} for "
                              f"{self.model_type}; known: {sorted(known)}")
        params = []
        for p in self.params:
            o = overrides.get(p.name) or {}
            bad = set(o) - {"low", "high", "log", "default"}
            if bad:
                raise ConfigError(f"tune.space.{p.name}: unknown key(s) {sorted(bad)}")
            params.append(Param(p.name, p.kind, o.get("low", p.low), o.get("high", p.high),
                                o.get("default", p.default), o.get("log", p.log)))
        return SearchSpace(self.model_type, tuple(params))


# Defaults mirror the estimator constructors (FFM(eta=0.2, l2=2e-5, k=4),
# LogisticRegression(alpha=0.05, beta=1.0)) and
# xgboost's own defaults, so "trial 0" is exactly what an untuned user gets.
_FACTORIZATION = (
    Param("eta", "float", 0.01, 1.0, 0.2, log=True),
    Param("l2", "float", 1e-7, 1e-3, 2e-5, log=True),
)
SPACES: dict[str, SearchSpace] = {
    "ffm": SearchSpace("ffm", _FACTORIZATION + (Param("k", "int", 2, 16, 4),)),
    "fm": SearchSpace("fm", _FACTORIZATION + (Param("k", "int", 2, 32, 4),)),
    # LogisticRegression trains with FTRL-proximal: its step size is alpha/(beta + sqrt(n))
    "lr": SearchSpace("lr", (Param("alpha", "float", 0.005, 1.0, 0.05, log=True),
                             Param("beta", "float", 0.1, 10.0, 1.0, log=True))),
    "xgboost": SearchSpace("xgboost", (
        Param("learning_rate", "float", 0.01, 0.5, 0.3, log=True),
        Param("max_depth", "int", 2, 10, 6),
        Param("min_child_weight", "float", 0.1, 100.0, 1.0, log=True),
        Param("subsample", "float", 0.5, 1.0, 1.0),
        Param("colsample_bytree", "float", 0.3, 1.0, 1.0),
        Param("reg_lambda", "float", 1e-3, 100.0, 1.0, log=True),
    )),
}


def space_for(model_type: str, overrides: dict[str, dict[str, Any]] | None = None) -> SearchSpace:
    """The search space of `model_type`, with optional range overrides from a config."""
    try:
        base = SPACES[model_type]
    except KeyError:
        raise ConfigError(f"tune: no search space for model type {model_type!r}; "
                          f"known: {sorted(SPACES)}") from None
    return base.with_overrides(overrides)
