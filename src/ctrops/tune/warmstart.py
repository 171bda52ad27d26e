"""Find last week's trials to warm-start this week's CMA-ES, or say why not.

The source is the Optuna SQLite study stored as an artifact of the MLflow run
behind the model version that currently holds the `production` alias. It is
used only when that run's `objective_version` tag equals the current search
space's version: trials scored on another space or by another objective would
mislead the sampler rather than help it. Every way of not warm-starting
(first run, no alias, changed space, missing or unreadable artifact) is a
normal outcome with a reason the pipeline logs; none of them is an error.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctrops.tune.space import SearchSpace
from ctrops.tune.study import MIN_SOURCE_TRIALS

STUDY_ARTIFACT = "tuning/study.db"
OBJECTIVE_VERSION_TAG = "objective_version"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStart:
    """Source trials for CMA-ES (empty means: use TPE) and the reason for the choice."""

    source_trials: list = field(default_factory=list)
    reason: str = ""
    source_run_id: str | None = None
    source_version: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.source_trials)


def load_source_trials(study_file: str | Path, space: SearchSpace) -> list[Any]:
    """Complete trials of the study in `study_file` whose parameters match `space` exactly."""
    import optuna

    from ctrops.tune.study import storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(storage_url(study_file))
    try:
        names = optuna.get_all_study_names(storage)
        wanted = space.distributions()
        trials = []
        for name in names:
            for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
                if (t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
                        and t.distributions == wanted):
                    trials.append(t)
        return trials
    finally:
        storage.remove_session()
        storage.engine.dispose()


def load_warm_start(client: Any, model_name: str, space: SearchSpace, *, alias: str = "production",
                    artifact_path: str = STUDY_ARTIFACT, download_dir: str | Path | None = None) -> WarmStart:
    """Warm-start trials from the run behind `model_name@alias`, if it is compatible.

    `client` is an `mlflow.MlflowClient` bound to the registry and tracking
    store. The study file is downloaded into `download_dir` (a temporary
    directory when omitted) and read from there.
    """
    from mlflow.exceptions import MlflowException

    version_tag = space.objective_version
    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return WarmStart(reason=f"first run: no registered model {model_name!r} with alias {alias!r}; using TPE")
    version = int(mv.version)
    if not mv.run_id:
        return WarmStart(reason=f"{model_name} v{version} has no MLflow run to take a study from; using TPE",
                         source_version=version)
    run = client.get_run(mv.run_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    if OBJECTIVE_VERSION_TAG not in run.data.tags and parent:
        # the pipeline logs the model from its register step's child run; tag and study sit on the parent
        run = client.get_run(parent)
    run_id = run.info.run_id
    found = run.data.tags.get(OBJECTIVE_VERSION_TAG)
    if found is None:
        return WarmStart(reason=f"run {run_id} of {model_name} v{version} has no {OBJECTIVE_VERSION_TAG!r} "
                                f"tag; using TPE", source_run_id=run_id, source_version=version)
    if found != version_tag:
        return WarmStart(reason=f"search space changed: production run {run_id} has {OBJECTIVE_VERSION_TAG} "
                                f"{found!r}, current is {version_tag!r}; using TPE",
                         source_run_id=run_id, source_version=version)
    target = Path(download_dir) if download_dir is not None else Path(tempfile.mkdtemp(prefix="ctrops-warm-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(client.download_artifacts(run_id, artifact_path, str(target)))
    except (MlflowException, OSError) as exc:
        return WarmStart(reason=f"production run {run_id} has no study artifact {artifact_path!r} "
                                f"({type(exc).__name__}); using TPE", source_run_id=run_id,
                         source_version=version)
    if not local.is_file():
        return WarmStart(reason=f"production run {run_id} has no study artifact {artifact_path!r}; using TPE",
                         source_run_id=run_id, source_version=version)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trials = load_source_trials(local, space)
    except Exception as exc:  # an unreadable study must never stop the weekly retrain
        log.warning("cannot read warm-start study %s: %s", local, exc)
        return WarmStart(reason=f"study artifact of run {run_id} is unreadable ({exc}); using TPE",
                         source_run_id=run_id, source_version=version)
    if len(trials) < MIN_SOURCE_TRIALS:
        return WarmStart(reason=f"study of run {run_id} has {len(trials)} complete trial(s) on the current "
                                f"space, fewer than the {MIN_SOURCE_TRIALS} warm-started CMA-ES needs; using TPE",
                         source_run_id=run_id, source_version=version)
    return WarmStart(source_trials=trials, source_run_id=run_id, source_version=version,
                     reason=f"warm start: {len(trials)} trials from {model_name} v{version} (run {run_id}), "
                            f"{OBJECTIVE_VERSION_TAG} {version_tag}")
