"""Sustained-rate latency of the prediction server, its highest rate at p99 <= 20 ms, and its memory.

Workload (benchmarks/serve_workload.py): FFM k=4, ~1e6 features, requests of
100 candidates with 30 context + 9 ad fields, a 95/5 production/random
experiment, Parquet prediction log on. An open-loop client (its own process)
sends at a fixed rate and measures latency from the scheduled send time.

Same run, same requests, same model: the FastAPI + pydantic + NumPy baseline
(benchmarks/baselines/fastapi_server.py) goes through the same rate sweep.

    .venv/bin/python benchmarks/bench_serve_load.py [--quick] [--runtime granian|uvicorn] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402


def sweep(port: int, bodies: Path, rates: list[float], duration: float, limit_ms: float = 20.0) -> tuple[float, list]:
    """Highest rate whose p99 <= limit with no errors (stops at the first rate that fails)."""
    best, runs = 0.0, []
    for rate in rates:
        r = w.open_loop_subprocess(port, bodies, "/v1/predict", rate, duration)
        r.pop("per_second_p99_ms", None)
        runs.append(r)
        print(f"    {rate:7.0f} req/s -> p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
              f"errors {r['errors']}  achieved {r['achieved_rps']}", flush=True)
        if r["p99_ms"] <= limit_ms and r["errors"] == 0 and r["achieved_rps"] >= 0.97 * rate:
            best = rate
        else:
            break
    return best, runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model, short runs (smoke test)")
    ap.add_argument("--runtime", default="granian", choices=["granian", "uvicorn"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=2000.0, help="sustained rate to hold")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds at the sustained rate")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--no-log", action="store_true", help="run the server without the prediction log")
    args = ap.parse_args()
    n_features = 50_000 if args.quick else 1_000_000
    duration = 5.0 if args.quick else args.duration
    step = 3.0 if args.quick else 15.0
    rate = min(args.rate, 300.0) if args.quick else args.rate

    model = w.build_model(n_features)
    storage = w.OUT / f"store-load-{n_features}"
    shutil.rmtree(storage, ignore_errors=True)
    w.publish(model, storage, 1)
    bodies = w.write_bodies(w.make_requests(400, w.values_per_field(model)), w.OUT / "bodies-100.jsonl")
    size_mb = model.stat().st_size / 2**20
    print(f"model {model.name}: {size_mb:.0f} MiB; {args.runtime}, {args.workers} workers; 2 cores shared "
          f"with the load generator", flush=True)

    log_dir = w.OUT / "prediction-log"
    shutil.rmtree(log_dir, ignore_errors=True)
    server = w.start_ctrops(storage, args.workers, args.runtime, None if args.no_log else log_dir)
    result: dict = {"runtime": args.runtime, "workers": args.workers, "model_mib": round(size_mb, 1),
                    "prediction_log": not args.no_log, "loadavg_start": os.getloadavg()}
    try:
        w.open_loop_subprocess(server.port, bodies, "/v1/predict", min(rate, 500), 3)  # warm up
        before = w.server_latency(server.port)
        sustained = w.open_loop_subprocess(server.port, bodies, "/v1/predict", rate, duration)
        after = w.server_latency(server.port)
        per_sec = sustained.pop("per_second_p99_ms")
        sustained["worst_second_p99_ms"] = max(per_sec) if per_sec else None
        sustained["server_side"] = after
        result["sustained"] = sustained
        print(f"sustained {rate:.0f} req/s for {duration:.0f} s: p50 {sustained['p50_ms']} ms, p99 "
              f"{sustained['p99_ms']} ms (client, from scheduled send), errors {sustained['errors']}; server-side "
              f"p99 <= {after['p99_le_ms']} ms (histogram bucket)", flush=True)
        print("  ctrops rate sweep (p99 <= 20 ms):", flush=True)
        rates = [rate * f for f in (0.125, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)]
        best, runs = sweep(server.port, bodies, rates, step)
        result["ctrops_max_rate_p99_20ms"] = best
        result["ctrops_sweep"] = runs
        mem = server.memory()
        result["memory"] = mem
        print(f"memory after load: PSS {mem['pss_mb']:.0f} MiB, RSS {mem['rss_mb']:.0f} MiB over "
              f"{mem['processes']} processes; model file {size_mb:.0f} MiB -> PSS - file = "
              f"{mem['pss_mb'] - size_mb:.0f} MiB (target <= 300)", flush=True)
    finally:
        code = server.stop()
        result["shutdown_exit_code"] = code
    logged = sum(1 for _ in log_dir.glob("predictions-*.parquet"))
    result["log_files"] = logged

    if not args.skip_baseline:
        base = w.start_fastapi(model, args.workers)
        try:
            w.open_loop_subprocess(base.port, bodies, "/v1/predict", 50, 3)
            print("  FastAPI + pydantic + NumPy baseline rate sweep (p99 <= 20 ms):", flush=True)
            brates = [25, 50, 100, 150, 200, 300, 400, 600, 800, 1000] if not args.quick else [25, 50, 100]
            bbest, bruns = sweep(base.port, bodies, brates, step)
            result["baseline_max_rate_p99_20ms"] = bbest
            result["baseline_sweep"] = bruns
            result["baseline_memory"] = base.memory()
        finally:
            base.stop()
        ratio = best / bbest if bbest else float("inf")
        result["max_rate_ratio"] = ratio
        print(f"highest rate at p99 <= 20 ms: ctrops {best:.0f} req/s, baseline {bbest:.0f} req/s -> "
              f"{ratio:.1f}x", flush=True)
    result["loadavg_end"] = os.getloadavg()
    print(f"machine load average (1, 5, 15 min) at start {result['loadavg_start']}, at end {result['loadavg_end']}")
    out = w.OUT / f"bench_serve_load-{args.runtime}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("sweep")}))


if __name__ == "__main__":
    main()
