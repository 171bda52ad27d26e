"""Shared workload of the serving benchmarks: the model, the requests, the servers, the load generators.

The issue's workload: an FFM with k=4 and about 1e6 features over 39 fields
(30 context + 9 ad fields), requests of 100 candidates. The model is random
(benchmarks measure speed, not accuracy) but has a real vocabulary table of
one million values, so feature lookup costs what it costs in production.
Everything is written under bench-out/serve (gitignored) and reused.

Load generators:
- `open_loop`: an asyncio HTTP/1.1 keep-alive client sending at a fixed rate;
  latency counts from the *scheduled* send time, so a stalled server cannot
  hide its queueing (no coordinated omission).
- `run_wrk`: wrk (closed loop, `apt-get install wrk`) with a Lua script that
  cycles through pre-built bodies, for maximum throughput.
- `run_wrk_paced`: the same wrk script on a fixed schedule (open loop, latency
  from the scheduled send time). It costs about a tenth of the Python client's
  CPU per request, which matters when client and server share two cores; both
  report their own CPU use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "serve"
PY = sys.executable
N_CONTEXT, N_AD = 30, 9
N_FIELDS = N_CONTEXT + N_AD
FIELD_NAMES = [f"c{i}" for i in range(N_CONTEXT)] + [f"a{i}" for i in range(N_AD)]
MODEL_NAME = "ctr"


def build_model(n_features: int = 1_000_000, k: int = 4, seed: int = 0, version: int = 1,
                out: Path = OUT) -> Path:
    """A vocab-indexed FFM .ctm with ~n_features features (cached by its parameters)."""
    from ctrops.artifact.format import save_model
    from ctrops.artifact.vocab import stored_key
    from ctrops.data._hashing import field_keys
    from ctrops.data.features import FeatureEncoder
    from ctrops.data.readers import KeyedChunk
    from ctrops.data.spec import FieldSpec
    from ctrops.models.params import ModelParams

    path = out / f"ffm-{n_features}-k{k}-s{seed}.ctm"
    if path.exists():
        return path
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_field = (n_features - 2 * N_FIELDS) // N_FIELDS
    tokens = [f"v{i}" for i in range(per_field)]
    keys = np.stack([stored_key(field_keys(f, tokens, 0)) for f in range(N_FIELDS)], axis=1)
    spec = FieldSpec.from_dict({"label": "click", "categorical": FIELD_NAMES})
    enc = FeatureEncoder(spec, indexing="vocab", min_count=1).fit(
        KeyedChunk(np.zeros(per_field, np.float32), np.ascontiguousarray(keys)))
    n = enc.n_features_
    latent = rng.standard_normal((n, N_FIELDS, k), dtype=np.float32)
    latent *= np.float32(0.3)
    linear = rng.standard_normal(n, dtype=np.float32)
    linear *= np.float32(0.2)
    params = ModelParams("ffm", n_features=n, n_fields=N_FIELDS, k=k, bias=-3.0, linear=linear, latent=latent)
    save_model(path, params, enc.to_header(), enc.arrays(), {"purpose": "serving benchmark", "seed": seed})
    return path


def values_per_field(model_path: Path) -> int:
    return (int(re.search(r"ffm-(\d+)-", model_path.name).group(1)) - 2 * N_FIELDS) // N_FIELDS


def publish(model_path: Path, storage: Path, version: int, aliases=("production",)) -> None:
    from ctrops.artifact.manifest import publish_model
    from ctrops.predict import Predictor

    p = Predictor.from_file(model_path)
    canary = [{"context": b["context"], "candidates": [c["fields"] for c in b["candidates"][:10]],
               "expected": p.score(b["context"], [c["fields"] for c in b["candidates"][:10]]).tolist()}
              for b in make_requests(2, values_per_field(model_path), n_candidates=10, seed=99)]
    p.close()
    publish_model(str(storage), MODEL_NAME, model_path, version=version, canary=canary, aliases=aliases,
                  keep_last=3)


def make_requests(n: int, per_field: int, n_candidates: int = 100, seed: int = 0,
                  unseen: float = 0.05) -> list[dict]:
    """Request bodies: Zipf-ish popular values, a few unseen ones, one user id per request."""
    rng = random.Random(seed)

    def value() -> str:
        if rng.random() < unseen:
            return f"new{rng.randrange(10**6)}"
        return f"v{min(int(rng.paretovariate(1.2)) - 1, per_field - 1)}"

    out = []
    for i in range(n):
        context = {name: value() for name in FIELD_NAMES[:N_CONTEXT]}
        cands = [{"id": f"ad{rng.randrange(10**6)}-{j}", "fields": {name: value() for name in FIELD_NAMES[N_CONTEXT:]},
                  "passthrough": {"bid": round(rng.uniform(0.1, 3.0), 3)}} for j in range(n_candidates)]
        out.append({"request_id": f"req-{seed}-{i}", "user_id": f"user{rng.randrange(10**5)}",
                    "context": context, "candidates": cands, "passthrough": {"auction_id": f"auc{i}"}})
    return out


def mlflow_body(body: dict) -> dict:
    """The same request as an MLflow pyfunc DataFrame: one row per candidate, context repeated."""
    return {"dataframe_records": [{**body["context"], **c["fields"]} for c in body["candidates"]]}


# ---- servers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path

    def pids(self) -> list[int]:
        """The server's process tree (workers and their log writer processes included).

        Children are listed per thread: a process started from a worker's
        thread (the log writer, restarted by a monitor thread) is only in that
        thread's list, so every thread's list is read.
        """
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            kids: list[str] = []
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    kids += (task / "children").read_text().split()
                except OSError:
                    pass
            todo += [int(k) for k in dict.fromkeys(kids) if int(k) not in out]
        return out

    def memory(self) -> dict[str, float]:
        """RSS summed over processes, and PSS (shared pages, e.g. the mapped model, counted once), in MB."""
        rss = pss = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            except OSError:
                pass
        return {"rss_mb": rss / 1024, "pss_mb": pss / 1024, "processes": len(self.pids())}

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def start(name: str, argv: list[str], port: int, ready_path: str, env: dict | None = None,
          timeout: float = 180, cwd: Path = ROOT) -> Server:
    log_path = OUT / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "wb")
    proc = subprocess.Popen(argv, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)
    server = Server(name, proc, port, log_path)
    deadline = time.monotonic() + timeout
    import urllib.request
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"{name} was not ready within {timeout} s; see {log_path}")


def ctrops_config(storage: Path, port: int, workers: int, runtime: str, log_dir: Path | None,
                  poll_seconds: float = 0, token: str = "bench-token", interface: str = "rsgi",
                  log_writer: str = "process", lock_memory: bool = False, sched_slice_us: int = 0) -> Path:
    cfg = {"model": {"storage": str(storage), "name": MODEL_NAME, "cache_dir": str(OUT / "cache"),
                     "poll_seconds": poll_seconds, "lock_memory": lock_memory},
           "server": {"host": "127.0.0.1", "port": port, "workers": workers, "runtime": runtime,
                      "admin_token": token, "interface": interface, "sched_slice_us": sched_slice_us},
           "experiment": {"name": "bench", "salt": "b", "arms": [
               {"name": "production", "share": 95, "model": "production"},
               {"name": "random", "share": 5, "random": True}]}}
    if log_dir is not None:
        cfg["log"] = {"path": str(log_dir), "format": "parquet", "rotate_seconds": 60,
                      "debug_every": int(os.environ.get("CTROPS_BENCH_DEBUG_EVERY", "1000")),
                      "writer": log_writer}
    path = OUT / f"serving-{runtime}-{workers}.yaml"
    import yaml
    path.write_text(yaml.safe_dump(cfg))
    return path


def inprocess_serving(tmp: str, predictor) -> tuple:
    """(config with a Parquet log under `tmp`, a loader already serving `predictor` as the single
    production arm, fresh metrics): the server's request path without HTTP, for in-process benchmarks."""
    from ctrops.experiments.assign import Assigner
    from ctrops.experiments.definition import ExperimentDefinition
    from ctrops.serve.config import ServingConfig
    from ctrops.serve.loader import ArmModel, ModelStore, ServingLoader, ServingState
    from ctrops.serve.metrics import ServerMetrics

    cfg = ServingConfig.from_dict({"model": {"storage": tmp, "name": MODEL_NAME, "poll_seconds": 0},
                                   "log": {"path": f"{tmp}/logs", "format": "parquet"}}, source="bench")
    d = ExperimentDefinition.single("production")
    loader = ServingLoader(ModelStore(tmp, MODEL_NAME, cache_dir=tmp), lambda: d)
    loader.state = ServingState(d, Assigner(d), {"production": ArmModel(d.arms[0], predictor, 1)}, "x")
    return cfg, loader, ServerMetrics()


def start_ctrops(storage: Path, workers: int = 2, runtime: str = "granian", log_dir: Path | None = None,
                 poll_seconds: float = 0, interface: str = "rsgi", log_writer: str = "process",
                 lock_memory: bool = False, sched_slice_us: int = 0) -> Server:
    port = free_port()
    cfg = ctrops_config(storage, port, workers, runtime, log_dir, poll_seconds, interface=interface,
                        log_writer=log_writer, lock_memory=lock_memory, sched_slice_us=sched_slice_us)
    mp = OUT / f"prom-{port}"
    shutil.rmtree(mp, ignore_errors=True)
    mp.mkdir(parents=True)
    return start(f"ctrops-{runtime}", [PY, "-m", "ctrops.cli_serve", "--config", str(cfg)], port, "/readyz",
                 env={"PROMETHEUS_MULTIPROC_DIR": str(mp), "CTROPS_LOG_LEVEL": "WARNING"})


def start_fastapi(model_path: Path, workers: int = 2) -> Server:
    port = free_port()
    return start("fastapi-baseline", [PY, "-m", "uvicorn", "benchmarks.baselines.fastapi_server:app",
                                      "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                                      "--no-access-log", "--log-level", "warning"],
                 port, "/healthz", env={"BASELINE_MODEL": str(model_path)})


def start_mlflow(model_path: Path, workers: int = 2) -> Server | None:
    """`mlflow models serve` of the ctrops pyfunc flavor, or None when that flavor is missing."""
    try:
        from ctrops.registry.pyfunc import ENTRY_POINT, MODEL_ARTIFACT
        import mlflow.pyfunc
    except ImportError:
        return None
    model_dir = OUT / "mlflow-pyfunc"
    if not (model_dir / "MLmodel").exists():
        shutil.rmtree(model_dir, ignore_errors=True)
        mlflow.pyfunc.save_model(str(model_dir), python_model=str(ENTRY_POINT),
                                 artifacts={MODEL_ARTIFACT: str(model_path)})
    port = free_port()
    return start("mlflow-serve", [PY, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "--env-manager",
                                  "local", "--host", "127.0.0.1", "-p", str(port), "--workers", str(workers)],
                 port, "/ping", timeout=300,
                 env={"PATH": f"{Path(PY).parent}:{os.environ.get('PATH', '')}"})  # mlflow execs `uvicorn`


# ---- load generators --------------------------------------------------------------------------

def http_request(path: str, body: bytes, port: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if m:
        await reader.readexactly(int(m.group(1)))
    else:  # chunked
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


@dataclass
class LoadResult:
    rate: float
    sent: int
    ok: int
    errors: int
    duration: float
    latencies_ms: np.ndarray        # from the scheduled send time
    service_ms: np.ndarray          # from the actual send time
    send_times: np.ndarray          # seconds since start, per completed request

    def pct(self, q: float, service: bool = False) -> float:
        arr = self.service_ms if service else self.latencies_ms
        return float(np.percentile(arr, q)) if arr.size else float("nan")

    def summary(self) -> dict:
        return {"target_rps": self.rate, "achieved_rps": round(self.ok / self.duration, 1), "errors": self.errors,
                "p50_ms": round(self.pct(50), 3), "p90_ms": round(self.pct(90), 3), "p99_ms": round(self.pct(99), 3),
                "p999_ms": round(self.pct(99.9), 3),
                "max_ms": round(float(self.latencies_ms.max()), 3) if self.latencies_ms.size else None}


async def _open_loop(port: int, requests: list[bytes], rate: float, duration: float, connections: int,
                     timeout: float) -> LoadResult:
    queue: asyncio.Queue = asyncio.Queue()
    lat, svc, sent_at = [], [], []
    errors = 0
    start_t = time.perf_counter()
    total = int(rate * duration)

    give_up = start_t + duration + timeout  # an overloaded server must not stretch the run without bound
    late = 0

    async def worker(wid: int) -> None:
        nonlocal errors, late
        reader = writer = None
        i = wid
        while True:
            t_sched = await queue.get()
            if t_sched is None:
                break
            if time.perf_counter() > give_up:
                late += 1  # never sent: counted as an error (the server fell behind the schedule)
                continue
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                t_send = time.perf_counter()
                writer.write(requests[i % len(requests)])
                i += connections
                status = await asyncio.wait_for(_read_response(reader), timeout)
                t_done = time.perf_counter()
                if status == 200:
                    lat.append((t_done - t_sched) * 1000)
                    svc.append((t_done - t_send) * 1000)
                    sent_at.append(t_send - start_t)
                else:
                    errors += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(worker(w)) for w in range(connections)]
    for n in range(total):
        t_sched = start_t + n / rate
        delay = t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(t_sched)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*workers), timeout=duration + 3 * timeout + 30)
    elapsed = time.perf_counter() - start_t
    return LoadResult(rate, total, len(lat), errors + late, min(elapsed, duration + timeout), np.array(lat),
                      np.array(svc), np.array(sent_at))


def open_loop(port: int, requests: list[bytes], rate: float, duration: float, connections: int = 64,
              timeout: float = 5.0) -> LoadResult:
    try:
        import uvloop
        return uvloop.run(_open_loop(port, requests, rate, duration, connections, timeout))
    except ImportError:
        return asyncio.run(_open_loop(port, requests, rate, duration, connections, timeout))


def open_loop_subprocess(port: int, bodies_file: Path, path: str, rate: float, duration: float,
                         connections: int = 64) -> dict:
    """Run `open_loop` in its own process (its own core share, no GIL contention with the caller)."""
    out = subprocess.run([PY, str(Path(__file__)), "--port", str(port), "--bodies", str(bodies_file),
                          "--path", path, "--rate", str(rate), "--duration", str(duration),
                          "--connections", str(connections)], capture_output=True, text=True,
                         timeout=duration + 180, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])




# The load generator shares the 2 cores with the server it measures. Ahead of the server in the
# scheduler it sends on its schedule and reads answers when they arrive, as a client on another
# machine would; behind it, its own waits for a core would be counted as server latency. It takes
# ~0.1 core at 2,000 req/s. CTROPS_BENCH_CLIENT_NICE=0 measures with both at the same priority.
CLIENT_NICE = int(os.environ.get("CTROPS_BENCH_CLIENT_NICE", "-10"))


def _client_priority() -> None:
    """In the forked load generator: raise its priority (root only; otherwise it stays as it is)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, CLIENT_NICE)
    except (PermissionError, OSError):
        pass


def _run_wrk_process(argv: list[str], env: dict, timeout: float) -> tuple[str, float]:
    """Run wrk: (its stdout, the CPU seconds wrk itself used), so every figure says what the load cost."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_client_priority)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err[-2000:]}")
    # communicate() reaped wrk, so its CPU time is now in this process's RUSAGE_CHILDREN
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _wrk_errors(text: str, statuses: bool = True) -> int:
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text) if statuses else None
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)


def run_wrk(port: int, bodies_file: Path, path: str, duration: int, connections: int, threads: int = 1) -> dict:
    """wrk closed-loop throughput and latency percentiles (non-2xx responses counted as errors)."""
    lua = Path(__file__).with_name("bench_serve_wrk.lua")
    text, wrk_cpu = _run_wrk_process(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
         "--timeout", "10s", "-s", str(lua), f"http://127.0.0.1:{port}"],
        {**os.environ, "BODIES": str(bodies_file), "WRK_PATH": path}, duration + 60)

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", text)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    return {"rps": rps, "p50_ms": ms("50%"), "p90_ms": ms("90%"), "p99_ms": ms("99%"), "errors": _wrk_errors(text),
            "connections": connections, "duration_s": duration,
            "client_cpu_us_per_request": round(wrk_cpu / max(rps * duration, 1) * 1e6, 1)}


def run_wrk_paced(port: int, bodies_file: Path, path: str, rate: float, duration: float,
                  connections: int = 64, samples: bool = False) -> dict:
    """wrk on a fixed schedule of `rate` requests/s (bench_serve_wrk.lua): latency from the SCHEDULED
    send time (no coordinated omission), errors, achieved rate, per-second p99 and wrk's own CPU.

    Requests still unsent when the run ends (the server fell behind the schedule) are counted
    as errors, like refused or failed ones. `samples`: also return, under "samples", every
    answered request's second (of its slot) and latency in ms as two arrays (not JSON), for a
    caller that pools the requests of chosen windows.
    """
    lua = Path(__file__).with_name("bench_serve_wrk.lua")
    lat_file = OUT / f"wrk-latency-{port}.txt"
    lat_file.unlink(missing_ok=True)
    secs = max(1, int(round(duration)))
    text, wrk_cpu = _run_wrk_process(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{secs}s", "--timeout", "5s", "-s", str(lua),
         f"http://127.0.0.1:{port}"],
        {**os.environ, "BODIES": str(bodies_file), "WRK_PATH": path, "WRK_RATE": str(rate),
         "LATENCY_OUT": str(lat_file)}, secs + 60)
    rows = np.loadtxt(lat_file, dtype=np.int64, ndmin=2) if lat_file.stat().st_size else np.zeros((0, 4), np.int64)
    lat_file.unlink(missing_ok=True)
    rows = rows[rows[:, 0] != -2]                  # wrk's unscheduled first request (bench_serve_wrk.lua)
    answered = rows[rows[:, 0] >= 0]
    ok = answered[answered[:, 3] == 200]
    bad_status = int(np.count_nonzero(rows[:, 3] != 200))
    # wrk stops at `secs`: slots of the last second may still be in flight then; every slot
    # before it must have been answered, or the server fell behind the schedule
    window_us = (secs - 1) * 1_000_000
    expected_in_window = int(rate * (secs - 1))
    unanswered = max(0, expected_in_window - int(np.count_nonzero(answered[:, 0] < window_us))
                     - int(np.count_nonzero(rows[:, 0] < 0)))  # error answers carry no slot
    lat_ms, svc_ms = ok[:, 1] / 1000.0, ok[:, 2] / 1000.0

    def pct(a: np.ndarray, q: float) -> float:
        return round(float(np.percentile(a, q)), 3) if a.size else float("nan")

    per_second = []
    sec = ok[:, 0] // 1_000_000
    for t in range(int(sec.max()) + 1 if sec.size else 0):
        sel = lat_ms[sec == t]
        if sel.size:
            per_second.append(round(float(np.percentile(sel, 99)), 3))
    return {"target_rps": rate, "achieved_rps": round(len(ok) / secs, 1),
            "errors": _wrk_errors(text, statuses=False) + bad_status + unanswered,
            "error_statuses": bad_status, "unanswered_in_schedule": unanswered,
            "p50_ms": pct(lat_ms, 50), "p90_ms": pct(lat_ms, 90), "p99_ms": pct(lat_ms, 99),
            "p999_ms": pct(lat_ms, 99.9), "max_ms": round(float(lat_ms.max()), 3) if lat_ms.size else None,
            "service_p99_ms": pct(svc_ms, 99), "connections": connections,
            "client": "wrk paced (bench_serve_wrk.lua)", "client_nice": CLIENT_NICE,
            "client_cpu_us_per_request": round(wrk_cpu / max(len(rows), 1) * 1e6, 1),
            "client_cpu_cores": round(wrk_cpu / secs, 3),
            "per_second_p99_ms": per_second,
            **({"samples": (sec, lat_ms)} if samples else {})}


def write_bodies(bodies: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(b, separators=(",", ":")) for b in bodies) + "\n")
    return path


def server_histogram(port: int) -> list[tuple[float, float]]:
    """The server's cumulative latency histogram from /metrics: [(upper bound s, count)], ascending."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets = [(float(m.group(1)), float(m.group(2))) for m in
               re.finditer(r'ctrops_predict_latency_seconds_bucket\{le="([^"]+)"\} ([\d.e+]+)', text)]
    return sorted(buckets)


def histogram_quantiles(after: list[tuple[float, float]],
                        before: list[tuple[float, float]] | None = None) -> dict[str, float]:
    """Server-side p50/p99 (bucket upper bounds, ms) of the requests between two scrapes."""
    prior = dict(before or [])
    buckets = [(le, c - prior.get(le, 0.0)) for le, c in after]
    total = buckets[-1][1] if buckets else 0
    out = {"count": total}
    for q in (50, 99, 99.9):
        le = next((b for b, c in buckets if c >= total * q / 100), float("nan")) if total else float("nan")
        out[f"p{q:g}_le_ms"] = le * 1000
    return out


def server_counters(port: int, names: tuple[str, ...] = ("ctrops_log_dropped_total", "ctrops_log_records_total",
                                                           "ctrops_predictions_total")) -> dict[str, float]:
    """Sums of the named counters on /metrics (all label sets): e.g. prediction-log drops."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for name in names:
        out[name] = sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? ([\d.e+]+)$", text, re.M))
    return out


def server_latency(port: int) -> dict[str, float]:
    """Server-side p50/p99 since start, from the Prometheus latency histogram (bucket upper bounds)."""
    return histogram_quantiles(server_histogram(port))


def process_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the given processes so far (a server's workers included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def cpu_seconds_by_role(server: "Server") -> dict[str, float]:
    """User + system CPU seconds so far of the server's threads, by role: each worker's request
    thread (granian runs the app on the process's main thread), the workers' other threads
    (granian's Rust I/O runtime, the model watcher, the log ring monitor), the log writer
    process, the supervisor. Where a request's CPU goes, not just how much there is."""
    roles: dict[str, float] = {}
    for pid in server.pids():
        try:
            writer = b"ctrops.serve.log_writer" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            role = ("log writer" if writer else "supervisor" if pid == server.proc.pid else
                    "worker request threads" if int(task.name) == pid else "worker other threads")
            roles[role] = roles.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return roles


@contextlib.contextmanager
def bench_lock():
    """Hold the machine's benchmark lock ($CTROPS_BENCH_LOCK, if set) around one timing-sensitive phase.

    The serving benchmarks share a 2-core machine with other jobs: taking the lock per phase
    (not for the whole run, which includes minutes of start-up) keeps each hold short.
    """
    path = os.environ.get("CTROPS_BENCH_LOCK")
    if not path:
        yield
        return
    import fcntl
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def median_of(values: list[float]) -> float:
    return statistics.median(values)


if __name__ == "__main__":  # the open-loop client as its own process
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bodies", type=Path, required=True)
    ap.add_argument("--path", default="/v1/predict")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--connections", type=int, default=64)
    a = ap.parse_args()
    reqs = [http_request(a.path, line.encode(), a.port) for line in a.bodies.read_text().splitlines() if line]
    cpu0 = time.process_time()
    res = open_loop(a.port, reqs, a.rate, a.duration, a.connections)
    s = res.summary()
    s["client"] = "python open loop (serve_workload.py)"
    s["client_cpu_us_per_request"] = round((time.process_time() - cpu0) / max(res.sent, 1) * 1e6, 1)
    s["client_cpu_cores"] = round((time.process_time() - cpu0) / a.duration, 3)
    s["service_p99_ms"] = round(res.pct(99, service=True), 3)
    # per-second p99 (to see a reload's effect), from the scheduled times
    secs = np.floor(res.send_times).astype(int) if res.send_times.size else np.array([], dtype=int)
    s["per_second_p99_ms"] = [round(float(np.percentile(res.latencies_ms[secs == t], 99)), 3)
                              for t in range(int(secs.max()) + 1 if secs.size else 0) if np.any(secs == t)]
    print(json.dumps(s))
