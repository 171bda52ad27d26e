"""A real server process: after SIGTERM every tracking id it served is in the prediction log, with the
writer in its own process (the default) or in a thread of the worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ctrops.artifact.manifest import publish_model
from serve_support import kernel_has_custom_slices, make_model, save

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(kids - out)
            out |= kids
    return out


def _slices_ns(pid: int) -> set[int]:
    """The scheduler slice of every thread of `pid` (threads that end meanwhile are skipped)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            text = (task / "sched").read_text()
        except OSError:
            continue
        out |= {int(line.split()[-1]) for line in text.splitlines() if line.startswith("se.slice")}
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("runtime,interface,writer", [("uvicorn", "asgi", "process"), ("granian", "rsgi", "process"),
                                                      ("granian", "wsgi", "process"), ("granian", "rsgi", "thread"),
                                                      ("granian", "wsgi", "thread")])
def test_sigterm_flushes_every_served_tracking_id(tmp_path: Path, runtime: str, interface: str, writer: str):
    save(tmp_path / "m.ctm", make_model(1))
    publish_model(str(tmp_path / "store"), "ctr", tmp_path / "m.ctm", version=1, aliases=("production",))
    port = free_port()
    (tmp_path / "serving.yaml").write_text(
        f"model: {{storage: store, name: ctr, cache_dir: cache, poll_seconds: 0}}\n"
        f"server: {{host: 127.0.0.1, port: {port}, workers: 1, runtime: {runtime}, interface: {interface}, "
        f"sched_slice_us: 300}}\n"
        f"log: {{path: logs, format: jsonl, flush_seconds: 30, rotate_seconds: 3600, writer: {writer}}}\n")
    # flush_seconds=30: nothing is written before SIGTERM unless shutdown drains the queue
    proc = subprocess.Popen([sys.executable, "-m", "ctrops.cli_serve", "--config", str(tmp_path / "serving.yaml")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "CTROPS_LOG_LEVEL": "WARNING"})
    served: set[str] = set()
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "server did not become ready"
                time.sleep(0.1)
            for i in range(60):
                body = {"user_id": f"u{i}", "context": {"f0": "v1"},
                        "candidates": [{"id": j, "fields": {"f1": f"v{j}", "f2": "v3"}} for j in range(5)]}
                r = client.post("/v1/predict", json=body)
                assert r.status_code == 200
                served |= {c["tracking_id"] for c in r.json()["candidates"]}
        children = descendants(proc.pid)
        writers = {p for p in children if b"ctrops.serve.log_writer" in Path(f"/proc/{p}/cmdline").read_bytes()}
        assert len(writers) == (1 if writer == "process" else 0)
        if kernel_has_custom_slices():  # server.sched_slice_us: every thread of the worker, none of the writer
            workers = {p for p in children - writers if b"ctrops" in Path(f"/proc/{p}/cmdline").read_bytes()}
            workers = workers or {proc.pid}  # uvicorn with one worker serves in the server process itself
            for p in workers:
                assert _slices_ns(p) == {300_000}
            for p in writers:  # SCHED_IDLE, its own process: left alone
                assert 300_000 not in _slices_ns(p)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        survivors = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in children if alive(p)}
        assert not survivors, f"a worker or writer process outlived the server: {survivors}"
    finally:
        if proc.poll() is None:  # a failed assertion above: leave no worker or writer behind either
            left = descendants(proc.pid)
            proc.kill()
            proc.wait()
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    logged = set()
    for path in (tmp_path / "logs").glob("predictions-*.jsonl"):
        logged |= {json.loads(line)["tracking_id"] for line in path.read_text().splitlines()}
    assert len(served) == 300
    assert served <= logged, f"{len(served - logged)} served tracking ids missing from the log"
