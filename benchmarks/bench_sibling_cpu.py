"""How much work on the other CPU slows the server's request path on this machine.

Why this exists: in the loaded server, a worker's request thread spends 2-3x
what the same request path costs in process (bench_serve_inprocess.py), and
the prediction log raises the p99 at 2,000 req/s although its writer runs
under SCHED_IDLE, which gives way to the workers at once. Both follow if the
machine's two CPUs are not independent cores but share one core's execution
units (two hardware threads of a host core, which a VM need not report): then
whatever runs on one CPU slows the other, whatever its priority.

The request path (`PredictionService.handle` without the log, fast path, FFM
k=4 with 1e6 features, 100 candidates x 39 fields, 400 bodies) runs pinned to
the first CPU: alone, then with a process pinned to the second CPU running,
under SCHED_IDLE as the log writer does:
  python   a pure-Python loop (the interpreter, like the workers' glue)
  parquet  Arrow tables of log-like columns written as Parquet with zstd, the
           log writer's own kind of work
  memory   a NumPy sum over 64 MiB, mostly waiting on memory
Conditions alternate over several rounds; the figure is the median thread
CPU time per request and its ratio to "alone" measured in the same round.

    .venv/bin/python benchmarks/bench_sibling_cpu.py [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402

SIBLINGS = {
    "python": "x = 0\nwhile True:\n    x = (x * 31 + 7) % 1000003\n",
    "parquet": (
        "import io, numpy as np, pyarrow as pa, pyarrow.parquet as pq\n"
        "n = 50_000\n"
        "rng = np.random.default_rng(0)\n"
        "ids = pa.array([f'ad{i}-{i % 100}' for i in rng.integers(0, 10**6, n)])\n"
        "tracking = pa.array([f'{i:020x}{i % 100:04x}' for i in range(n)])\n"
        "req = pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(n // 100, dtype=np.int32), 100)),\n"
        "                                     pa.array([f'req-{i}' for i in range(n // 100)]))\n"
        "t = pa.table({'request_id': req, 'tracking_id': tracking, 'candidate_id': ids,\n"
        "              'score': pa.array(rng.random(n)), 'rank': pa.array(np.tile(np.arange(1, 101, dtype=np.int32), n // 100))})\n"
        "while True:\n"
        "    sink = io.BytesIO()\n"
        "    pq.write_table(t, sink, compression='zstd', compression_level=1)\n"
    ),
    "memory": "import numpy as np\na = np.ones(8 << 20)\nwhile True:\n    a.sum()\n",
}


def start_sibling(kind: str, cpu: int) -> subprocess.Popen:
    """The sibling workload as a process pinned to `cpu` under SCHED_IDLE (as the log writer)."""
    prelude = (f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n"
               "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n")
    proc = subprocess.Popen([sys.executable, "-c", prelude + SIBLINGS[kind]])
    time.sleep(1.0)  # imports done, the loop running
    if proc.poll() is not None:
        raise RuntimeError(f"the {kind} sibling exited with {proc.returncode}")
    return proc


def per_request_cpu(handle, bodies: list[bytes], n: int, repeats: int) -> float:
    """Median over `repeats` of this thread's CPU µs per request over `n` requests."""
    out = []
    for _ in range(repeats):
        c0 = time.thread_time()
        for i in range(n):
            handle(bodies[i % len(bodies)])
        out.append((time.thread_time() - c0) / n * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small model, few requests (smoke run)")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("this benchmark needs two CPUs")
    here, other = cpus[0], cpus[1]
    n_features, n, repeats = (50_000, 300, 3) if args.quick else (1_000_000, 2000, 5)

    from ctrops.predict import Predictor
    from ctrops.serve.app import PredictionService

    model_path = w.build_model(n_features)
    bodies = [json.dumps(r, separators=(",", ":")).encode()
              for r in w.make_requests(400, w.values_per_field(model_path), seed=1)]
    predictor = Predictor.from_file(model_path, version=1)
    os.sched_setaffinity(0, {here})
    runs: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, loader, metrics = w.inprocess_serving(tmp, predictor)
        service = PredictionService(cfg, loader, metrics, None)
        assert all(service._predict_fast(b) is not None for b in bodies), "a body left the fast path"
        per_request_cpu(service.handle, bodies, len(bodies), 1)  # warm: code, model pages, tables
        with w.bench_lock():
            for _ in range(args.rounds):
                alone = per_request_cpu(service.handle, bodies, n, repeats)
                runs.setdefault("alone", []).append(alone)
                for kind in SIBLINGS:
                    sibling = start_sibling(kind, other)
                    try:
                        t = per_request_cpu(service.handle, bodies, n, repeats)
                    finally:
                        sibling.kill()
                        sibling.wait()
                    runs.setdefault(kind, []).append(t)
                    ratios.setdefault(kind, []).append(t / alone)
    print(f"request path (no log, fast path), {model_path.name}, pinned to CPU {here}; siblings on CPU {other} "
          f"under SCHED_IDLE; {args.rounds} rounds, median of {repeats} x {n} requests each")
    result = {"alone_us": round(statistics.median(runs["alone"]), 1)}
    print(f"  alone                 {result['alone_us']:7.1f} µs CPU per request")
    for kind in SIBLINGS:
        med, ratio = statistics.median(runs[kind]), statistics.median(ratios[kind])
        result[f"{kind}_us"], result[f"{kind}_ratio"] = round(med, 1), round(ratio, 2)
        print(f"  with a {kind:8s} sibling {med:7.1f} µs CPU per request: {ratio:.2f}x alone")
    print(json.dumps({"rounds": args.rounds, **result, "runs_us": {k: [round(x, 1) for x in v] for k, v in runs.items()}}))


if __name__ == "__main__":
    main()
