"""The whole pipeline on small data with the embedded MLflow store: promote, fail safely, refuse, resume."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("optuna")

from _pipeline_support import config, criteo_split

from ctrops.errors import ConfigError
from ctrops.pipeline.runner import run_pipeline
from ctrops.pipeline.steps import STEP_NAMES


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return criteo_split(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data):
    """One promoted run shared by the tests that build on it (tuning dominates the time)."""
    tmp = tmp_path_factory.mktemp("pipe")
    cfg = config(tmp, *data)
    return tmp, cfg, run_pipeline(cfg)


def _client(cfg):
    import mlflow

    from ctrops.registry.mlflow_glue import TrackingTarget, connect

    return connect(TrackingTarget.embedded(cfg["tracking"]["root"], "ctrops-ctr-test")), mlflow


def test_first_run_promotes_and_records_every_step(first_run):
    tmp, cfg, res = first_run
    assert res.ok, res.error
    assert [s.status for s in res.steps] == ["done"] * 7
    assert res.gate_passed and res.promoted and res.version == 1
    client, mlflow = _client(cfg)
    assert int(client.get_model_version_by_alias("ctr-test", "production").version) == 1
    assert int(client.get_model_version_by_alias("ctr-test", "candidate").version) == 1
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["objective_version"].startswith("ffm-r1-")
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{res.parent_run_id}'")
    assert sorted(r.data.tags["ctrops.step"] for r in children) == sorted(STEP_NAMES)
    register = next(r for r in children if r.data.tags["ctrops.step"] == "register")
    assert "outputs.json" in [a.path for a in client.list_artifacts(register.info.run_id)]
    assert "tuning/study.db" in [a.path for a in client.list_artifacts(res.parent_run_id, "tuning")]
    assert "gate.json" in [a.path for a in client.list_artifacts(res.parent_run_id)]
    tune = res.step("tune").outputs
    assert tune["sampler"] == "tpe" and "first run" in tune["warm_start_reason"]
    assert tune["best_value"] <= tune["default_value"]

    from ctrops.artifact.manifest import read_manifest

    manifest = read_manifest(cfg["publish"]["storage"], "ctr-test")
    entry = manifest.resolve("production")
    assert entry.version == 1 and len(entry.canary[0]["expected"]) == 3
    state = json.loads((tmp / "run" / "state.json").read_text())
    assert state["parent_run_id"] == res.parent_run_id and state["steps"]["publish"]["status"] == "done"


def test_pyfunc_flavor_scores_raw_rows_like_the_predictor(first_run):
    import pandas as pd

    from ctrops.predict import Predictor

    tmp, cfg, res = first_run
    _, mlflow = _client(cfg)
    model = mlflow.pyfunc.load_model("models:/ctr-test@production")
    rows = [{"I1": 3, "I2": 150, "C1": "0000002a", "C3": "0000beef"}, {"C2": "00000007"}, {}]
    got = np.asarray(model.predict(pd.DataFrame(rows)))
    with Predictor.from_file(res.step("train").outputs["model_path"]) as predictor:
        want = predictor.score({}, rows)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all((got > 0) & (got < 1))


def test_failed_step_leaves_production_untouched(first_run, tmp_path):
    tmp, cfg, _ = first_run
    broken = {**cfg, "run_dir": str(tmp_path / "run"), "tune": {**cfg["tune"], "enabled": False},
              "publish": {**cfg["publish"], "max_bytes": 1000}}  # the model file cannot fit
    res = run_pipeline(broken)
    assert not res.ok and res.failed_step == "train"
    assert "1000" in res.error or "max_bytes" in res.error or "larger" in res.error
    assert [s.status for s in res.steps[2:]] == ["failed"] + ["skipped"] * 4
    client, _ = _client(cfg)
    assert int(client.get_model_version_by_alias("ctr-test", "production").version) == 1
    assert client.get_run(res.parent_run_id).info.status == "FAILED"
    from ctrops.artifact.manifest import read_manifest

    assert read_manifest(cfg["publish"]["storage"], "ctr-test").aliases["production"] == 1
    assert (tmp_path / "run" / "train" / "error.txt").exists()


def test_refused_candidate_is_registered_but_not_promoted_and_resume_reuses_steps(first_run, tmp_path):
    tmp, cfg, _ = first_run
    strict = {**cfg, "run_dir": str(tmp_path / "run"), "tune": {**cfg["tune"], "enabled": False}}
    ok = run_pipeline(strict)
    assert ok.ok and ok.version == 2
    client, _ = _client(cfg)
    production_before = int(client.get_model_version_by_alias("ctr-test", "production").version)
    assert production_before == (2 if ok.gate_passed else 1)
    # a gate nobody can pass: re-run from evaluate (production may have moved), earlier outputs reused
    strict["gate"] = {"calibration_band": [0.9999, 1.0001]}
    res = run_pipeline(strict, from_step="evaluate")
    assert res.ok and res.parent_run_id == ok.parent_run_id
    assert [s.status for s in res.steps[:3]] == ["reused"] * 3
    assert res.gate_passed is False and not res.promoted and res.version == 3
    assert any("calibration" in r.lower() for r in res.step("gate").outputs["reasons"])
    assert int(client.get_model_version_by_alias("ctr-test", "candidate").version) == 3
    assert int(client.get_model_version_by_alias("ctr-test", "production").version) == production_before
    assert client.get_model_version("ctr-test", "3").tags["gate_passed"] == "false"
    gate = json.loads((tmp_path / "run" / "gate" / "gate.json").read_text())
    assert gate["passed"] is False and gate["reasons"]


def test_resume_without_saved_outputs_and_bad_configs_are_config_errors(tmp_path, data):
    with pytest.raises(ConfigError, match="has not completed"):
        run_pipeline(config(tmp_path, *data), from_step="train")
    with pytest.raises(ConfigError, match="unknown step"):
        run_pipeline(config(tmp_path, *data), from_step="deploy")
    with pytest.raises(ConfigError, match="model.type"):
        run_pipeline(config(tmp_path, *data, model={"type": "svm"}))
    with pytest.raises(ConfigError, match="unknown key"):
        run_pipeline({**config(tmp_path, *data), "tunning": {}})
    with pytest.raises(ConfigError, match="unknown gate setting"):
        run_pipeline(config(tmp_path, *data, gate={"max_loss": 1}))


def test_shard_training_through_the_pipeline(first_run, tmp_path):
    tmp, cfg, _ = first_run
    sharded = {**cfg, "run_dir": str(tmp_path / "run"), "tune": {**cfg["tune"], "n_trials": 2},
               "shards": {"n": 2}}
    res = run_pipeline(sharded)
    assert res.ok, res.error
    report = res.step("train").outputs["shards"]
    assert report["n_shards"] == 2 and sum(report["rows_per_shard"]) == res.step("build-dataset").outputs["rows_train"]
    # the default mixes the shard models after every epoch (one average at the end loses accuracy)
    assert report["rounds"] > 1 and len(report["round_valid_loss"]) >= 1
    assert report["single_valid_loss"] == pytest.approx(res.step("tune").outputs["best_value"])
    assert abs(report["averaged_valid_loss"] - report["single_valid_loss"]) < 0.05
    assert res.step("train").outputs["valid_log_loss"] == pytest.approx(report["averaged_valid_loss"])


def test_resuming_the_gate_after_production_moved_is_refused(first_run, tmp_path):
    tmp, cfg, _ = first_run
    run = {**cfg, "run_dir": str(tmp_path / "run"), "tune": {**cfg["tune"], "enabled": False},
           "gate": {"max_logloss_regression": 1.0, "max_auc_regression": 1.0, "calibration_band": [0.1, 10.0]}}
    first = run_pipeline(run, from_step=None)
    assert first.ok and first.promoted
    again = run_pipeline(run, from_step="gate")  # its evaluation compared against the previous production
    assert not again.ok and again.failed_step == "gate" and "--from evaluate" in again.error
    client, _ = _client(cfg)
    assert int(client.get_model_version_by_alias("ctr-test", "production").version) == first.version


@pytest.mark.parametrize("shards, message", [
    ({"n": 2, "rounds": 0}, "shards.rounds must be an integer >= 1 or 'every_epoch'"),
    ({"n": 2, "rounds": "often"}, "shards.rounds must be an integer >= 1 or 'every_epoch'"),
    ({"n": 2, "mix_step": 5}, "shards.mix_step must be a number in (0, 4]"),
    ({"n": 2, "mix_step": True}, "shards.mix_step"),
    ({"n": 0}, "shards.n must be >= 1"),
])
def test_shard_settings_are_checked_at_load(first_run, shards, message):
    from ctrops.pipeline.config import PipelineConfig

    _, cfg, _ = first_run
    with pytest.raises(ConfigError, match=re.escape(message)):
        PipelineConfig.load({**cfg, "shards": shards})


def test_shard_settings_defaults(first_run):
    from ctrops.pipeline.config import PipelineConfig

    _, cfg, _ = first_run
    loaded = PipelineConfig.load({**cfg, "shards": {"n": 2}})
    assert (loaded.shard_rounds, loaded.shard_mix_step) == ("every_epoch", 1.5)
    assert PipelineConfig.load({**cfg, "shards": {"n": 2, "rounds": 3, "mix_step": 1}}).shard_rounds == 3
