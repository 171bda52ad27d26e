"""Throughput and latency against what users run today: same model, same requests, same run.

Closed-loop load with wrk (`apt-get install -y wrk`; Lua script
benchmarks/bench_serve_wrk.lua cycles through pre-built bodies) against:
  ctrops     `ctrops serve` (granian RSGI, 2 workers, Parquet prediction log on)
  fastapi    FastAPI + pydantic + NumPy baseline (uvicorn, 2 workers), benchmarks/baselines/
  mlflow     `mlflow models serve` (2 workers) of the ctrops pyfunc flavor, when ctrops.registry.pyfunc exists;
             it takes the same request as a DataFrame of 100 rows (context repeated per candidate)
Each server gets `--repeats` runs; the median run (by req/s) is reported with its p50/p99,
the server's CPU per request (its whole process tree) and wrk's own CPU per request.

Closed-loop p99 at saturation is mostly queueing (connections / throughput), so
its ratio between two servers is close to their throughput ratio. The latency a
user sees when swapping one server for another is the latency *at the same
traffic*: a second phase offers the FastAPI baseline's traffic (`--paced-share`
of its measured throughput, default 80%) on a fixed schedule (open loop,
latency from the scheduled send time) to it and to ctrops, and reports both
p99s. (mlflow's answers do not echo the request_id the paced client times
requests by, so it has no such phase.)
Set CTROPS_BENCH_LOCK=/tmp/ctrops-bench.lock on a shared machine: each run then holds it.

    .venv/bin/python benchmarks/bench_serve_compare.py [--quick] [--duration 20] [--connections 16] [--paced-share 0.8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402


def measure(server: w.Server, bodies: Path, path: str, duration: int, connections: int, repeats: int) -> dict:
    w.run_wrk(server.port, bodies, path, 2, min(connections, 4))  # warm up
    runs = []
    for _ in range(repeats):
        with w.bench_lock():  # per run: keeps each hold of a shared machine's lock short
            pids = server.pids()
            cpu0 = w.process_cpu_seconds(pids)
            r = w.run_wrk(server.port, bodies, path, duration, connections)
            r["server_cpu_us_per_request"] = round((w.process_cpu_seconds(pids) - cpu0)
                                                   / max(r["rps"] * duration, 1) * 1e6, 1)
        runs.append(r)
    runs.sort(key=lambda r: r["rps"])
    med = dict(runs[len(runs) // 2])
    med["rps_runs"] = [r["rps"] for r in runs]
    med["p99_runs"] = [r["p99_ms"] for r in runs]
    med["memory"] = server.memory()
    return med


def paced_run(server: w.Server, bodies: Path, path: str, rate: float, args: argparse.Namespace) -> dict:
    """One open-loop run at `rate` req/s (latency from the scheduled send time), holding the lock."""
    with w.bench_lock():
        pids = server.pids()
        cpu0 = w.process_cpu_seconds(pids)
        r = w.run_wrk_paced(server.port, bodies, path, rate, args.paced_duration)
        r["server_cpu_us_per_request"] = round((w.process_cpu_seconds(pids) - cpu0)
                                               / max(r["achieved_rps"] * args.paced_duration, 1) * 1e6, 1)
    return r


def paced(server: w.Server, bodies: Path, path: str, closed: dict, args: argparse.Namespace) -> float | None:
    """The same-traffic phase for a baseline: its share of its own throughput, offered to it; returns the rate."""
    if args.paced_share <= 0:
        return None
    rate = round(closed["rps"] * args.paced_share, 1)
    closed["paced"] = paced_run(server, bodies, path, rate, args)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runtime", default="granian", choices=["granian", "uvicorn"])
    ap.add_argument("--only", default="ctrops,fastapi,mlflow")
    ap.add_argument("--paced-share", type=float, default=0.8,
                    help="same-traffic phase: offer this share of each baseline's measured throughput to it and "
                         "to ctrops (0 skips the phase)")
    ap.add_argument("--paced-duration", type=int, default=20)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get update && apt-get install -y wrk")
    n_features = 50_000 if args.quick else 1_000_000
    duration, repeats = (3, 1) if args.quick else (args.duration, args.repeats)
    if args.quick:
        args.paced_duration = 3
    only = set(args.only.split(","))

    model = w.build_model(n_features)
    reqs = w.make_requests(400, w.values_per_field(model))
    bodies = w.write_bodies(reqs, w.OUT / "bodies-100.jsonl")
    ml_bodies = w.write_bodies([w.mlflow_body(r) for r in reqs], w.OUT / "bodies-100-mlflow.jsonl")
    results: dict = {"model": model.name, "workers": args.workers, "connections": args.connections,
                     "duration_s": duration, "repeats": repeats, "runtime": args.runtime,
                     "loadavg_start": os.getloadavg()}

    paced_rates: dict[str, float | None] = {}
    if "fastapi" in only:
        s = w.start_fastapi(model, args.workers)
        try:
            results["fastapi"] = measure(s, bodies, "/v1/predict", duration, args.connections, repeats)
            paced_rates["fastapi"] = paced(s, bodies, "/v1/predict", results["fastapi"], args)
        finally:
            s.stop()
    if "mlflow" in only:
        s = w.start_mlflow(model, args.workers)
        if s is None:
            print("mlflow: skipped: pyfunc flavor missing (ctrops.registry.pyfunc)")
        else:
            try:
                results["mlflow"] = measure(s, ml_bodies, "/invocations", duration, args.connections, repeats)
                # no same-traffic phase: the paced client needs the request_id echoed at the head of each
                # answer to time it from its schedule, and mlflow's DataFrame answers carry none
            finally:
                s.stop()

    if "ctrops" in only:
        storage = w.OUT / f"store-compare-{n_features}"
        shutil.rmtree(storage, ignore_errors=True)
        w.publish(model, storage, 1)
        log_dir = w.OUT / "prediction-log-compare"
        shutil.rmtree(log_dir, ignore_errors=True)
        s = w.start_ctrops(storage, args.workers, args.runtime, log_dir)
        try:
            results["ctrops"] = measure(s, bodies, "/v1/predict", duration, args.connections, repeats)
            results["ctrops"]["server_side"] = w.server_latency(s.port)
            for name, rate in paced_rates.items():
                if rate:
                    results["ctrops"][f"paced_at_{name}_rate"] = paced_run(s, bodies, "/v1/predict", rate, args)
            counts = w.server_counters(s.port)
            results["ctrops"]["log_counters"] = counts
            print(f"ctrops prediction log over all runs: {counts['ctrops_log_records_total']:.0f} records written, "
                  f"{counts['ctrops_log_dropped_total']:.0f} requests dropped (queue full) of "
                  f"{counts['ctrops_predictions_total']:.0f} scored", flush=True)
        finally:
            s.stop()
    print(f"{'server':8s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} {'errors':>7s} {'PSS MiB':>8s} "
          f"{'server CPU µs/req':>18s} {'wrk CPU µs/req':>15s}")
    for name in ("ctrops", "fastapi", "mlflow"):
        if name in results:
            r = results[name]
            print(f"{name:8s} {r['rps']:9.1f} {r['p50_ms']:9.2f} {r['p99_ms']:9.2f} {r['errors']:7d} "
                  f"{r['memory']['pss_mb']:8.0f} {r['server_cpu_us_per_request']:18.0f} "
                  f"{r['client_cpu_us_per_request']:15.0f}")
    if "ctrops" in results:
        c = results["ctrops"]
        for name in ("fastapi", "mlflow"):
            if name in results:
                b = results[name]
                results[f"vs_{name}"] = {"throughput_x": c["rps"] / b["rps"], "p99_lower_x": b["p99_ms"] / c["p99_ms"]}
                print(f"ctrops vs {name}: {c['rps'] / b['rps']:.1f}x throughput, p99 {b['p99_ms'] / c['p99_ms']:.1f}x lower "
                      f"(each at saturation, {args.connections} connections)")
                ours, theirs = c.get(f"paced_at_{name}_rate"), b.get("paced")
                if ours and theirs:
                    results[f"vs_{name}"]["same_traffic"] = {
                        "rate": theirs["target_rps"], "p99_ms": [ours["p99_ms"], theirs["p99_ms"]],
                        "errors": [ours["errors"], theirs["errors"]], "p99_lower_x": theirs["p99_ms"] / ours["p99_ms"]}
                    print(f"  at {name}'s traffic ({theirs['target_rps']:.0f} req/s, open loop): p99 ctrops "
                          f"{ours['p99_ms']:.2f} ms ({ours['errors']} errors) vs {name} {theirs['p99_ms']:.2f} ms "
                          f"({theirs['errors']} errors) -> {theirs['p99_ms'] / ours['p99_ms']:.1f}x lower")
    results["loadavg_end"] = os.getloadavg()
    print(f"machine load average (1, 5, 15 min) at start {results['loadavg_start']}, at end {results['loadavg_end']}")
    tag = f"{args.runtime}-{args.only.replace(',', '-')}{'-quick' if args.quick else ''}"
    out = w.OUT / f"bench_serve_compare-{tag}.json"
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k.startswith("vs_")}))


if __name__ == "__main__":
    main()
