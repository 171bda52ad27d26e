"""Move the `candidate` and `production` aliases after a gate decision.

Stages are deprecated in MLflow; aliases are the pointers. Every registered
version becomes `candidate`; only a version that passed the quality gate
becomes `production`. A refused version keeps the gate's reasons as version
tags, and the previous `production` version stays exactly where it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ctrops.registry.mlflow_glue import MAX_TAG_CHARS, model_version_by_alias

PRODUCTION = "production"
CANDIDATE = "candidate"


@dataclass(frozen=True)
class AliasUpdate:
    model_name: str
    version: int
    promoted: bool
    previous_production: int | None
    reasons: tuple[str, ...]


def production_version(client: Any, model_name: str) -> int | None:
    mv = model_version_by_alias(client, model_name, PRODUCTION)
    return None if mv is None else int(mv.version)


def apply_gate(client: Any, model_name: str, version: int, passed: bool,
               reasons: Sequence[str] = ()) -> AliasUpdate:
    """Set `candidate` on `version`; set `production` too when `passed`."""
    previous = production_version(client, model_name)
    v = str(int(version))
    client.set_registered_model_alias(model_name, CANDIDATE, v)
    client.set_model_version_tag(model_name, v, "gate_passed", str(bool(passed)).lower())
    if reasons:
        client.set_model_version_tag(model_name, v, "gate_reasons", "; ".join(reasons)[:MAX_TAG_CHARS])
    if passed:
        client.set_registered_model_alias(model_name, PRODUCTION, v)
    return AliasUpdate(model_name, int(version), bool(passed), previous, tuple(reasons))
