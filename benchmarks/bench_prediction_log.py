"""Prediction-log cost, in process: the request thread's submit, the writer's CPU per request, and how
long the writer keeps the request thread waiting for the GIL; against the previous writer, same run.

Workload: requests of 100 candidates parsed by the server's own parser from the
serving benchmark's bodies (serve_workload.make_requests: 30 context + 9 ad
fields, a `bid` passthrough per candidate, an auction id per request), random
scores ranked best first. The baseline is the previous logging_sink.py, read
from git at BASELINE_COMMIT (per-record Python work in the writer).

Figures (medians of --reps):
- submit: µs on the request thread per request (building the RequestLog + queueing it),
  timed right after parsing the request, as the server calls it (its objects in cache);
- writer: CPU µs per request to turn a backlog of --requests requests into
  Parquet / JSONL, and records written per second of writer wall time;
- GIL: while the writer drains a backlog in its thread, the request thread
  runs 100 µs Python work items; reported: the p99 and max of how much longer
  an item took than it takes alone (the GIL wait a request would see).

    .venv/bin/python benchmarks/bench_prediction_log.py [--requests 2000] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402

BASELINE_COMMIT = "2228272"  # logging_sink.py before the columnar writer


def baseline_module() -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:src/ctrops/serve/logging_sink.py"], cwd=w.ROOT,
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType("logging_sink_baseline")
    mod.__file__ = f"git:{BASELINE_COMMIT}/logging_sink.py"
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def request_bodies(n: int) -> list[bytes]:
    bodies = [json.dumps(b, separators=(",", ":")).encode() for b in w.make_requests(200, 25_000)]
    return [bodies[i % len(bodies)] for i in range(n)]


def parsed_requests(bodies: list[bytes]) -> list:
    from ctrops.serve.schema import Limits, request_parser

    parse = request_parser(Limits())
    return [parse(b) for b in bodies]


def entries(mod: types.ModuleType, reqs: list, seed: int = 0) -> list:
    from ctrops.serve.tracking import TrackingIds

    ids, rng = TrackingIds(), np.random.default_rng(seed)
    out = []
    for req in reqs:
        scores = rng.random(len(req.candidate_ids))
        order = np.argsort(-scores, kind="stable")
        now = int(time.time() * 1000)
        prefix = ids.prefix(now)
        out.append(mod.RequestLog(now, req.request_id or prefix, req.user_id or prefix, "bench", "production",
                                  "ctr", 1, prefix, req.candidate_ids, scores, order, req.candidate_passthrough,
                                  req.passthrough))
    return out


def submit_us(mod: types.ModuleType, bodies: list[bytes], fmt: str, reps: int) -> float:
    """Per request on the request thread: the RequestLog tuple (as app.py builds it) and submit(), timed
    right after the server's parser produced the request (its objects are in cache, as in the server)."""
    from ctrops.serve.schema import Limits, request_parser

    parse = request_parser(Limits())
    scores = np.random.default_rng(1).random(100)
    order = np.argsort(-scores, kind="stable")
    times = []
    for _ in range(reps):
        sink = mod.PredictionLog(mod.LogConfig(tempfile.mkdtemp(prefix="plog-"), fmt, queue_size=10**7,
                                               **({"queue_records": 10**9} if hasattr(mod, "strings_array") else {})))
        RequestLog, submit, clock = mod.RequestLog, sink.submit, time.perf_counter
        total = 0.0
        for body in bodies:
            req = parse(body)
            t0 = clock()
            submit(RequestLog(1, "r", "u", "bench", "production", "ctr", 1, "p", req.candidate_ids, scores, order,
                              req.candidate_passthrough, req.passthrough))
            total += clock() - t0
        times.append(total / len(bodies) * 1e6)
        sink._queue.clear()
    return statistics.median(times)


def writer_cost(mod: types.ModuleType, batch: list, fmt: str, reps: int) -> dict:
    """Drain a backlog synchronously: CPU per request and records per second of wall time."""
    cpu, wall, records = [], [], 0
    for rep in range(reps + 1):
        sink = mod.PredictionLog(mod.LogConfig(tempfile.mkdtemp(prefix="plog-"), fmt, queue_size=10**7,
                                               **({"queue_records": 10**9} if hasattr(mod, "strings_array") else {})))
        for e in batch:
            sink.submit(e)
        c0, t0 = time.process_time(), time.perf_counter()
        sink.close()
        c1, t1 = time.process_time(), time.perf_counter()
        records = sink.records_written
        if rep:  # the first run imports pyarrow's kernels
            cpu.append((c1 - c0) / len(batch) * 1e6)
            wall.append(t1 - t0)
    return {"cpu_us_per_request": round(statistics.median(cpu), 1),
            "records_per_s": round(records / statistics.median(wall)), "records": records}


def _work(n: int) -> None:
    x = 0
    for i in range(n):
        x += i


def gil_wait(mod: types.ModuleType, batch: list, fmt: str) -> dict:
    """Extra time of 100 µs work items on this thread while the writer thread drains `batch`."""
    sys.setswitchinterval(0.0005)  # as the server sets it (app.lifespan)
    n = 1000
    for _ in range(50):
        t0 = time.perf_counter()
        _work(n)
        if time.perf_counter() - t0 < 100e-6:
            n = int(n * 1.3)
    alone = []
    for _ in range(300):
        t0 = time.perf_counter()
        _work(n)
        alone.append(time.perf_counter() - t0)
    base = statistics.median(alone)
    sink = mod.PredictionLog(mod.LogConfig(tempfile.mkdtemp(prefix="plog-"), fmt, queue_size=10**7,
                                           flush_seconds=0.01,
                                           **({"queue_records": 10**9} if hasattr(mod, "strings_array") else {})))
    for e in batch:
        sink.submit(e)
    sink.start()
    extra = []
    while sink.depth and len(extra) < 200_000:
        t0 = time.perf_counter()
        _work(n)
        extra.append((time.perf_counter() - t0 - base) * 1000)
    sink.close()
    sys.setswitchinterval(0.005)
    arr = np.array(extra) if extra else np.zeros(1)
    return {"item_ms": round(base * 1000, 3), "p99_extra_ms": round(float(np.percentile(arr, 99)), 3),
            "max_extra_ms": round(float(arr.max()), 3), "items": len(extra)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--formats", default="parquet,jsonl")
    args = ap.parse_args()

    from ctrops.serve import logging_sink as new

    old = baseline_module()
    bodies = request_bodies(args.requests)
    reqs = parsed_requests(bodies)
    result: dict = {"requests": args.requests, "candidates_per_request": 100, "baseline": BASELINE_COMMIT}
    for fmt in args.formats.split(","):
        row: dict = {}
        for name, mod in (("baseline", old), ("ctrops", new)):
            batch = entries(mod, reqs)
            row[name] = {"submit_us": round(submit_us(mod, bodies, fmt, args.reps), 2),
                         **writer_cost(mod, batch, fmt, args.reps), "gil": gil_wait(mod, batch, fmt)}
        b, c = row["baseline"], row["ctrops"]
        row["writer_cpu_ratio"] = round(b["cpu_us_per_request"] / c["cpu_us_per_request"], 2)
        row["records_per_s_ratio"] = round(c["records_per_s"] / b["records_per_s"], 2)
        row["submit_ratio"] = round(b["submit_us"] / c["submit_us"], 2)
        result[fmt] = row
        for name in ("baseline", "ctrops"):
            r = row[name]
            print(f"{fmt:8s} {name:8s}: submit {r['submit_us']:6.2f} us/request; writer {r['cpu_us_per_request']:7.1f} "
                  f"us CPU/request, {r['records_per_s']:>10,} records/s; GIL wait of a 100 us item while it "
                  f"writes: p99 {r['gil']['p99_extra_ms']} ms, max {r['gil']['max_extra_ms']} ms", flush=True)
        print(f"{fmt:8s} ratio   : writer CPU {row['writer_cpu_ratio']}x less, records/s "
              f"{row['records_per_s_ratio']}x, submit {row['submit_ratio']}x", flush=True)
    out = w.OUT / "bench_prediction_log.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
