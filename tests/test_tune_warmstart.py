"""Warm-start loading from the run behind the production model: match, mismatch, missing artifact, first run."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("optuna")

from ctrops.registry.aliases import apply_gate
from ctrops.registry.mlflow_glue import TrackingTarget, connect
from ctrops.tune import OBJECTIVE_VERSION_TAG, STUDY_ARTIFACT, load_warm_start, tune
from ctrops.tune.space import Param, SearchSpace

SPACE = SearchSpace("ffm", (Param("eta", "float", 0.01, 1.0, 0.2, log=True), Param("k", "int", 2, 16, 4)))
_names = itertools.count()


def quad(trial) -> float:
    eta = trial.suggest_float("eta", 0.01, 1.0, log=True)
    k = trial.suggest_int("k", 2, 16)
    return (eta - 0.05) ** 2 + ((k - 6) / 10) ** 2


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One tracking store and two study files per module: creating them dominates the run time."""
    root = tmp_path_factory.mktemp("warm")
    client = connect(TrackingTarget.embedded(root / "mlflow", experiment="warmstart-test"))
    studies = {}
    for n in (4, 12):
        studies[n] = root / f"study{n}" / "study.db"
        tune(quad, SPACE, n_trials=n, study_path=studies[n], seed=0)
    return client, studies


@pytest.fixture()
def client(store):
    return store[0]


@pytest.fixture()
def name():
    return f"ctr{next(_names)}"  # one registered model per test in the shared store


def _production_run(store, model: str, *, tag: str | None, with_study: bool, n_trials: int = 12) -> str:
    import mlflow

    client, studies = store
    with mlflow.start_run() as run:
        if tag is not None:
            mlflow.set_tag(OBJECTIVE_VERSION_TAG, tag)
        if with_study:
            mlflow.log_artifact(str(studies[n_trials]), artifact_path=STUDY_ARTIFACT.rsplit("/", 1)[0])
        mlflow.log_text("stand-in model payload", "model/weights.txt")
    try:
        client.get_registered_model(model)
    except Exception:
        client.create_registered_model(model)
    mv = client.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    apply_gate(client, model, int(mv.version), passed=True)
    return run.info.run_id


def test_first_run_has_no_production_model(client, name, tmp_path):
    ws = load_warm_start(client, name, SPACE, download_dir=tmp_path)
    assert not ws.active and ws.source_trials == []
    assert "first run" in ws.reason


def test_matching_objective_version_loads_last_weeks_trials(store, client, name, tmp_path):
    run_id = _production_run(store, name, tag=SPACE.objective_version, with_study=True)
    ws = load_warm_start(client, name, SPACE, download_dir=tmp_path / "dl")
    assert ws.active, ws.reason
    assert len(ws.source_trials) == 12
    assert ws.source_run_id == run_id and ws.source_version == 1
    res = tune(quad, SPACE, n_trials=4, study_path=tmp_path / "week1.db", source_trials=ws.source_trials, seed=1)
    assert res.sampler == "cmaes-warm" and res.n_source_trials == 12


def test_mismatched_objective_version_falls_back_to_tpe(store, client, name, tmp_path):
    _production_run(store, name, tag="ffm-r0-oldspace", with_study=True)
    ws = load_warm_start(client, name, SPACE, download_dir=tmp_path)
    assert not ws.active
    assert "search space changed" in ws.reason and "ffm-r0-oldspace" in ws.reason


def test_missing_artifact_falls_back_to_tpe(store, client, name, tmp_path):
    _production_run(store, name, tag=SPACE.objective_version, with_study=False)
    ws = load_warm_start(client, name, SPACE, download_dir=tmp_path)
    assert not ws.active and "no study artifact" in ws.reason


def test_missing_tag_falls_back_to_tpe(store, client, name, tmp_path):
    _production_run(store, name, tag=None, with_study=True)
    ws = load_warm_start(client, name, SPACE, download_dir=tmp_path)
    assert not ws.active and "tag" in ws.reason


def test_too_few_source_trials_fall_back_to_tpe(store, client, name, tmp_path):
    _production_run(store, name, tag=SPACE.objective_version, with_study=True, n_trials=4)
    ws = load_warm_start(client, name, SPACE, download_dir=tmp_path)
    assert not ws.active and "fewer than" in ws.reason


def test_refused_candidate_does_not_become_the_warm_start_source(store, client, name, tmp_path):
    import mlflow

    good = _production_run(store, name, tag=SPACE.objective_version, with_study=True)
    with mlflow.start_run() as run:
        mlflow.set_tag(OBJECTIVE_VERSION_TAG, "other")
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    update = apply_gate(client, name, int(mv.version), passed=False, reasons=["log loss worse"])
    assert update.previous_production == 1 and not update.promoted
    assert int(client.get_model_version_by_alias(name, "candidate").version) == 2
    assert int(client.get_model_version_by_alias(name, "production").version) == 1
    assert client.get_model_version(name, "2").tags["gate_reasons"] == "log loss worse"
    ws = load_warm_start(client, name, SPACE, download_dir=tmp_path)
    assert ws.active and ws.source_run_id == good
