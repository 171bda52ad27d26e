"""The pipeline against real components: an `mlflow server` on 127.0.0.1 whose artifacts, and the
published models, live in an S3-compatible store (moto in server mode).

Two runs: the first (TPE, first run) promotes v1; the second warm-starts
CMA-ES from the study the first one stored as an artifact behind the server,
i.e. downloaded over HTTP from S3.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from _pipeline_support import config, criteo_split

from ctrops.pipeline.runner import run_pipeline

pytestmark = pytest.mark.slow
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
    fs.mkdir("mlflow-artifacts")
    fs.mkdir("ctrops-models")
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(s3, tmp_path_factory):
    """One real tracking server per session (~8 s to start, ~1 GB): SQLite backend, artifacts in S3."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, **AWS, "MLFLOW_S3_ENDPOINT_URL": s3}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", "s3://mlflow-artifacts/runs", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: parent and its workers
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_pipeline_against_mlflow_server_and_s3_storage(tmp_path, mlflow_server, s3, monkeypatch):
    for k, v in AWS.items():
        monkeypatch.setenv(k, v)
    train, valid = criteo_split(tmp_path / "data", rows=4000)
    options = {"endpoint_url": s3, "key": "testing", "secret": "testing"}
    storage = "s3://ctrops-models/published"
    cfg = config(tmp_path, train, valid, name="ctr-remote", tracking={"uri": mlflow_server},
                 model={"type": "ffm", "params": {"epochs": 1, "seed": 0}},
                 tune={"n_trials": 10, "n_workers": 1},
                 publish={"storage": storage, "storage_options": options, "canary_rows": 2})
    first = run_pipeline(cfg)
    assert first.ok, first.error
    assert first.promoted and first.version == 1
    assert first.step("tune").outputs["sampler"] == "tpe"

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    assert int(client.get_model_version_by_alias("ctr-remote", "production").version) == 1
    run = client.get_run(first.parent_run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server, stored in S3
    from ctrops.artifact.manifest import read_manifest

    assert read_manifest(storage, "ctr-remote", storage_options=options).aliases["production"] == 1

    cfg2 = {**cfg, "run_dir": str(tmp_path / "run2"), "tune": {"n_trials": 3, "n_workers": 1, "seed": 1}}
    second = run_pipeline(cfg2)
    assert second.ok, second.error
    tune = second.step("tune").outputs
    assert tune["sampler"] == "cmaes-warm", tune["warm_start_reason"]
    assert first.parent_run_id in tune["warm_start_reason"]
    assert second.version == 2
    prod = 2 if second.gate_passed else 1
    assert int(client.get_model_version_by_alias("ctr-remote", "production").version) == prod
    assert read_manifest(storage, "ctr-remote", storage_options=options).aliases["production"] == prod
