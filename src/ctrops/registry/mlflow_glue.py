"""MLflow tracking and registry, behind a few functions the pipeline calls.

Defaults are embedded: without a configured server, runs and the registry go
to `sqlite:///<root>/mlflow.db` and artifacts to `<root>/mlartifacts`, so a
fresh clone runs the whole pipeline offline. The same calls work against a
real `mlflow server` (http URI) whose artifacts may sit in S3.

MLflow is imported inside functions only: `import mlflow` costs about two
seconds and must never reach the serving path or `import ctrops`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000


@dataclass(frozen=True)
class TrackingTarget:
    """Where runs, the registry and artifacts live."""

    tracking_uri: str
    registry_uri: str | None = None
    experiment: str = "ctrops"
    artifact_location: str | None = None  # for a new experiment on a local store

    @classmethod
    def embedded(cls, root: str | os.PathLike, experiment: str = "ctrops") -> "TrackingTarget":
        """SQLite store and a local artifact folder under `root`."""
        root_path = Path(root).resolve()
        root_path.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{root_path / 'mlflow.db'}", None, experiment,
                   (root_path / "mlartifacts").as_uri())


def connect(target: TrackingTarget) -> Any:
    """Point the fluent API at `target`, make sure the experiment exists, return a client."""
    import mlflow

    mlflow.set_tracking_uri(target.tracking_uri)
    if target.registry_uri:
        mlflow.set_registry_uri(target.registry_uri)
    client = mlflow.MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.registry_uri)
    exp = client.get_experiment_by_name(target.experiment)
    if exp is None:
        is_local = target.tracking_uri.startswith(("sqlite:", "file:", "/"))
        client.create_experiment(target.experiment,
                                 artifact_location=target.artifact_location if is_local else None)
    mlflow.set_experiment(target.experiment)
    return client


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts to `a.b` keys with string values short enough for MLflow params."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_PARAM_CHARS]
    return out


def finite_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric, finite entries of a (nested) metrics dict; MLflow refuses the rest."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(finite_metrics(value, f"{name}."))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
    return out


@contextmanager
def child_run(name: str, parent_run_id: str, tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A nested run for one pipeline step under the pipeline's parent run."""
    import mlflow

    with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent_run_id,
                          tags=dict(tags or {})) as run:
        yield run


def model_version_by_alias(client: Any, model_name: str, alias: str) -> Any | None:
    """The model version holding `alias`, or None when there is none (first run)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def ensure_registered_model(client: Any, model_name: str, description: str = "") -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description=description or None)


def register_version(client: Any, model_name: str, model_uri: str, run_id: str,
                     tags: Mapping[str, str] | None = None) -> int:
    """Register `model_uri` (e.g. `LoggedModelInfo.model_uri`) as a new version of `model_name`."""
    import mlflow

    ensure_registered_model(client, model_name)
    mv = mlflow.register_model(model_uri, model_name, tags={k: str(v)[:MAX_TAG_CHARS] for k, v in (tags or {}).items()})
    version = int(mv.version)  # an int locally, a str over HTTP
    if run_id and mv.run_id and mv.run_id != run_id:
        client.set_model_version_tag(model_name, str(version), "pipeline_run_id", run_id)
    return version
