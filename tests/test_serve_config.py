"""serving.yaml parsing: the shipped examples load; mistakes name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrops.errors import ConfigError
from ctrops.serve.config import ServingConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_example_config_and_experiment_load():
    cfg = ServingConfig.from_yaml(EXAMPLES / "serving.yaml")
    assert cfg.model.name == "ctr" and cfg.server.workers == 2 and cfg.log.format == "parquet"
    assert Path(cfg.model.storage).is_absolute()
    exp = cfg.load_experiment()
    assert [(a.name, a.share) for a in exp.arms] == [("production", 80), ("candidate", 15), ("random", 5)]


@pytest.mark.parametrize("raw, words", [
    ({}, "'model'"),
    ({"model": {"storage": "s", "name": "m"}, "serve": {}}, "unknown key(s) ['serve']"),
    ({"model": {"storage": "s", "name": "m", "poll": 3}}, "model: unknown key(s) ['poll']"),
    ({"model": {"storage": "s", "name": "m", "poll_seconds": "often"}}, "model.poll_seconds must be a number"),
    ({"model": {"storage": "s", "name": "m"}, "server": {"runtime": "gunicorn"}}, "server.runtime"),
    ({"model": {"storage": "s", "name": "m"}, "server": {"workers": 0}}, "server.workers"),
    ({"model": {"storage": "s", "name": "m"}, "limits": {"max_candidates": 10**6}}, "max_candidates"),
    ({"model": {"storage": "s", "name": "m"}, "log": {"path": "x", "format": "csv"}}, "log.format"),
    ({"model": {"storage": "s", "name": "m"}, "experiment": {"name": "e", "arms": [
        {"name": "a", "share": 50, "model": "production"}]}}, "sum to 100"),
    ({"model": {"storage": "s", "name": "m"}, "experiment": "missing.yaml"}, "does not exist"),
])
def test_config_errors_name_the_key(tmp_path, raw, words):
    with pytest.raises(ConfigError, match=None) as info:
        ServingConfig.from_dict(raw, source="serving.yaml", base_dir=tmp_path)
    assert words in str(info.value)


def test_admin_token_environment_wins(monkeypatch, tmp_path):
    cfg = ServingConfig.from_dict({"model": {"storage": "s", "name": "m"},
                                   "server": {"admin_token": "file", "admin_token_env": "CTROPS_T"}},
                                  base_dir=tmp_path)
    assert cfg.server.resolved_admin_token() == "file"
    monkeypatch.setenv("CTROPS_T", "env")
    assert cfg.server.resolved_admin_token() == "env"


def test_cli_check_loads_models_and_reports(tmp_path):
    from typer.testing import CliRunner

    from ctrops.artifact.manifest import publish_model
    from ctrops.cli_serve import app
    from serve_support import make_model, save

    save(tmp_path / "m.ctm", make_model(1))
    publish_model(str(tmp_path / "store"), "ctr", tmp_path / "m.ctm", version=3, aliases=("production",))
    (tmp_path / "serving.yaml").write_text("model: {storage: store, name: ctr, cache_dir: cache}\n")
    result = CliRunner().invoke(app, ["--config", str(tmp_path / "serving.yaml"), "--check"])
    assert result.exit_code == 0, result.output
    assert "success" in result.output and "production=3" in result.output
    (tmp_path / "bad.yaml").write_text("model: {storage: store, name: nosuch, cache_dir: cache}\n")
    result = CliRunner().invoke(app, ["--config", str(tmp_path / "bad.yaml"), "--check"])
    assert result.exit_code == 1 and "nosuch" in result.output
