"""Sustained-rate latency of the prediction server, its highest rate at p99 <= 20 ms, and its memory.

Workload (benchmarks/serve_workload.py): FFM k=4, ~1e6 features, requests of
100 candidates with 30 context + 9 ad fields, a 95/5 production/random
experiment, Parquet prediction log on (the issue's setting; `--no-log` for the split).

Load: wrk on a fixed schedule (benchmarks/bench_serve_wrk.lua, 64 connections):
latency counts from each request's SCHEDULED send time, so a stalled server
cannot hide the requests it delayed; requests not answered within the schedule
count as errors. wrk runs on the same 2 cores as the server: its own CPU per
request is printed with every figure, and so is the server's. Server-side
latency comes from the server's /metrics histogram over the same window
(bucket upper bounds). `--client python` uses the asyncio open-loop client
instead (about ten times wrk's CPU per request).

Same run, same requests, same model: the FastAPI + pydantic + NumPy baseline
(benchmarks/baselines/fastapi_server.py) goes through the same rate sweep.

Set CTROPS_BENCH_LOCK=/tmp/ctrops-bench.lock on a shared machine: each timed
phase then holds that lock (start-up and model loading do not).

    .venv/bin/python benchmarks/bench_serve_load.py [--quick] [--no-log] [--rate 2000] [--duration 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402


def memory_by_role(server: w.Server) -> dict:
    """PSS in MiB of the whole server tree by role (granian supervisor, workers, log writer processes),
    from /proc/<pid>/smaps_rollup.

    PSS divides every shared page among the processes that map it, so the sum
    counts each page once: the model file (page cache mapped by every worker),
    shared libraries, and each worker's log ring (shared memory mapped by the
    worker and its writer, `Pss_Shmem`). The model file counts in full when
    every page of it has been touched; `model_pss` says how much of it was.
    """
    roles: dict = {}
    for pid in server.pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        role = ("log writer" if b"ctrops.serve.log_writer" in cmd else
                "supervisor" if pid == server.proc.pid else "worker")
        r = roles.setdefault(role, {"processes": 0, "pss": 0.0, "pss_anon": 0.0, "pss_file": 0.0, "pss_shmem": 0.0})
        r["processes"] += 1
        for line in rollup.splitlines():
            key, _, rest = line.partition(":")
            name = {"Pss": "pss", "Pss_Anon": "pss_anon", "Pss_File": "pss_file", "Pss_Shmem": "pss_shmem"}.get(key)
            if name:
                r[name] += int(rest.split()[0]) / 1024
    return {k: {n: round(v, 1) if isinstance(v, float) else v for n, v in r.items()} for k, r in roles.items()}


def load(client: str, port: int, bodies: Path, rate: float, duration: float) -> dict:
    if client == "wrk":
        return w.run_wrk_paced(port, bodies, "/v1/predict", rate, duration)
    return w.open_loop_subprocess(port, bodies, "/v1/predict", rate, duration)


def measured(server: w.Server, client: str, bodies: Path, rate: float, duration: float,
             server_side: bool = True) -> dict:
    """One timed phase: client figures, server CPU per answered request, server-side latency."""
    with w.bench_lock():
        pids = server.pids()
        before = w.server_histogram(server.port) if server_side else None
        dropped0 = w.server_counters(server.port)["ctrops_log_dropped_total"] if server_side else 0.0
        cpu0, roles0 = w.process_cpu_seconds(pids), w.cpu_seconds_by_role(server)
        r = load(client, server.port, bodies, rate, duration)
        cpu = w.process_cpu_seconds(pids) - cpu0
        roles = {k: v - roles0.get(k, 0.0) for k, v in w.cpu_seconds_by_role(server).items()}
        if server_side:
            r["server_side"] = w.histogram_quantiles(w.server_histogram(server.port), before)
            r["log_dropped_so_far"] = w.server_counters(server.port)["ctrops_log_dropped_total"]
            r["log_dropped"] = r["log_dropped_so_far"] - dropped0  # requests whose records this phase lost
    answered = max(r["achieved_rps"] * duration, 1)
    r["server_cpu_us_per_request"] = round(cpu / answered * 1e6, 1)
    r["server_cpu_cores"] = round(cpu / duration, 3)
    r["server_cpu_us_per_request_by_role"] = {k: round(v / answered * 1e6, 1) for k, v in roles.items() if v > 0}
    per_sec = r.get("per_second_p99_ms", [])
    r["worst_second_p99_ms"] = max(per_sec) if per_sec else None
    # the typical second: p99 over the whole run is set by a few seconds with a stall in them
    r["median_second_p99_ms"] = statistics.median(per_sec) if per_sec else None
    r["loadavg"] = os.getloadavg()
    return r


def line(r: dict) -> str:
    ss = r.get("server_side")
    server = f"; server p99 <= {ss['p99_le_ms']:g} ms, log drops {r['log_dropped']:.0f}" if ss else ""
    return (f"achieved {r['achieved_rps']:7.1f} req/s, p50 {r['p50_ms']:8.2f} ms, p99 {r['p99_ms']:8.2f} ms, "
            f"errors {r['errors']}{server}; CPU per request: server {r['server_cpu_us_per_request']:.0f} µs, "
            f"client {r['client_cpu_us_per_request']:.0f} µs")


def rising(start: float, factor: float = 1.25, steps: int = 15) -> list[float]:
    """`start` * factor**i for i = 1..steps (up to 28x): the sweep's open end."""
    return [round(start * factor ** i) for i in range(1, steps + 1)]


def sweep(server: w.Server, client: str, bodies: Path, rates: list[float], duration: float,
          limit_ms: float = 20.0, server_side: bool = True) -> tuple[float, list]:
    """Highest rate whose p99 <= limit with no errors and, for ctrops, no prediction-log records dropped
    (a rate the log writer cannot keep up with is not one the server holds); stops at the first that fails."""
    best, runs = 0.0, []
    for rate in rates:
        r = measured(server, client, bodies, rate, duration, server_side)
        runs.append(r)
        print(f"    {rate:7.0f} req/s -> {line(r)}", flush=True)
        if (r["p99_ms"] <= limit_ms and r["errors"] == 0 and r["achieved_rps"] >= 0.97 * rate
                and r.get("log_dropped", 0) == 0):
            best = rate
        else:
            break
    return best, runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model, short runs (smoke test)")
    ap.add_argument("--runtime", default="granian", choices=["granian", "uvicorn"])
    ap.add_argument("--interface", default="rsgi", choices=["rsgi", "asgi", "wsgi"], help="granian's interface")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=2000.0, help="sustained rate to hold")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds at the sustained rate")
    ap.add_argument("--step", type=float, default=10.0, help="seconds per rate of the sweeps")
    ap.add_argument("--client", default="wrk", choices=["wrk", "python"])
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--no-log", action="store_true", help="run the server without the prediction log")
    ap.add_argument("--lock-memory", action="store_true", help="model.lock_memory: mlock the model's pages")
    ap.add_argument("--sched-slice-us", type=int, default=0,
                    help="server.sched_slice_us: the workers' scheduler slice (0: the kernel's)")
    ap.add_argument("--log-writer", default="process", choices=["process", "thread"],
                    help="log.writer: a writer process per worker (default) or a thread in each worker")
    args = ap.parse_args()
    if args.client == "wrk" and shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get update && apt-get install -y wrk (or --client python)")
    n_features = 50_000 if args.quick else 1_000_000
    duration = 5.0 if args.quick else args.duration
    step = 3.0 if args.quick else args.step
    rate = min(args.rate, 300.0) if args.quick else args.rate

    model = w.build_model(n_features)
    storage = w.OUT / f"store-load-{n_features}"
    shutil.rmtree(storage, ignore_errors=True)
    w.publish(model, storage, 1)
    bodies = w.write_bodies(w.make_requests(400, w.values_per_field(model)), w.OUT / "bodies-100.jsonl")
    size_mb = model.stat().st_size / 2**20
    print(f"model {model.name}: {size_mb:.0f} MiB; {args.runtime} ({args.interface}), {args.workers} workers, "
          f"prediction log {'off' if args.no_log else f'on (parquet, {args.log_writer} writer)'}; load: {args.client}; 2 cores shared by "
          f"server and load generator{'; model pages locked (model.lock_memory)' if args.lock_memory else ''}"
          f"{f'; worker scheduler slice {args.sched_slice_us} µs' if args.sched_slice_us else ''}",
          flush=True)

    log_dir = w.OUT / "prediction-log"
    shutil.rmtree(log_dir, ignore_errors=True)
    server = w.start_ctrops(storage, args.workers, args.runtime, None if args.no_log else log_dir,
                            interface=args.interface, log_writer=args.log_writer, lock_memory=args.lock_memory,
                            sched_slice_us=args.sched_slice_us)
    result: dict = {"runtime": args.runtime, "interface": args.interface, "workers": args.workers,
                    "client": args.client, "model_mib": round(size_mb, 1), "prediction_log": not args.no_log,
                    "lock_memory": args.lock_memory, "sched_slice_us": args.sched_slice_us,
                    "log_writer": None if args.no_log else args.log_writer,
                    "loadavg_start": os.getloadavg()}
    try:
        load(args.client, server.port, bodies, min(rate, 500), 3)  # warm up (page cache, code paths)
        sustained = measured(server, args.client, bodies, rate, duration)
        result["sustained"] = sustained
        print(f"sustained {rate:.0f} req/s for {duration:.0f} s: {line(sustained)}; worst one-second p99 "
              f"{sustained['worst_second_p99_ms']} ms (target: p99 <= 5 ms, 0 errors)", flush=True)
        print("  server CPU per request by role: " + ", ".join(
            f"{role} {us:.0f} µs" for role, us in sustained["server_cpu_us_per_request_by_role"].items()), flush=True)
        best = None
        if not args.skip_sweep:
            print("  ctrops rate sweep (p99 <= 20 ms):", flush=True)
            # then 25% more per step until a rate misses (the sweep stops there), so a faster machine
            # reports its own limit instead of the top of a fixed list
            rates = [rate * f for f in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)] + rising(rate)
            best, runs = sweep(server, args.client, bodies, rates, step)
            result["ctrops_max_rate_p99_20ms"] = best
            result["ctrops_sweep"] = runs
        mem = server.memory()
        result["memory"] = mem
        result["memory_by_role"] = roles = memory_by_role(server)
        print(f"memory after load: PSS {mem['pss_mb']:.0f} MiB, RSS {mem['rss_mb']:.0f} MiB over "
              f"{mem['processes']} processes; model file {size_mb:.0f} MiB -> PSS - file = "
              f"{mem['pss_mb'] - size_mb:.0f} MiB = {(mem['pss_mb'] - size_mb) * 2**20 / 1e6:.0f} MB "
              f"(target <= 300 MB)", flush=True)
        for role, r in roles.items():
            print(f"  {role:10s} x{r['processes']}: PSS {r['pss']:7.1f} MiB (anon {r['pss_anon']:.1f}, file "
                  f"{r['pss_file']:.1f}, shared memory {r['pss_shmem']:.1f})", flush=True)
    finally:
        code = server.stop()
        result["shutdown_exit_code"] = code
    result["log_files"] = sum(1 for _ in log_dir.glob("predictions-*.parquet"))

    if not args.skip_baseline and best is not None:
        base = w.start_fastapi(model, args.workers)
        try:
            load(args.client, base.port, bodies, 50, 3)
            print("  FastAPI + pydantic + NumPy baseline rate sweep (p99 <= 20 ms):", flush=True)
            brates = ([25, 50, 100, 200, 300, 400, 500, 600, 800, 1000] + rising(1000) if not args.quick
                      else [25, 50, 100])
            bbest, bruns = sweep(base, args.client, bodies, brates, step, server_side=False)
            result["baseline_max_rate_p99_20ms"] = bbest
            result["baseline_sweep"] = bruns
            result["baseline_memory"] = base.memory()
        finally:
            base.stop()
        if bbest:
            result["max_rate_ratio"] = best / bbest
            print(f"highest rate at p99 <= 20 ms, 0 errors, 0 log drops: ctrops {best:.0f} req/s, baseline "
                  f"{bbest:.0f} req/s -> {best / bbest:.1f}x", flush=True)
        else:  # no ratio to print: the baseline's own service time already breaks the limit
            result["max_rate_ratio"] = None
            print(f"highest rate at p99 <= 20 ms: ctrops {best:.0f} req/s; the baseline met it at no rate tried "
                  f"(lowest {brates[0]} req/s: p99 {bruns[0]['p99_ms']} ms)", flush=True)
    result["loadavg_end"] = os.getloadavg()
    print(f"machine load average (1, 5, 15 min) at start {result['loadavg_start']}, at end {result['loadavg_end']}")
    tag = (f"{args.runtime}{'-nolog' if args.no_log else '' if args.log_writer == 'process' else '-threadlog'}"
           f"{'-quick' if args.quick else ''}")
    out = w.OUT / f"bench_serve_load-{tag}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("sweep")}))


if __name__ == "__main__":
    main()
