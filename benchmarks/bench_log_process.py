"""Prediction log in process vs in a writer process: what the request thread pays, same run.

The request path is the server's own (`PredictionService.handle` on raw request
bodies: parse, assign, score with the 1e6-feature FFM, rank, render, log
hand-off), sent at a worker's share of the load (--rate, default 1,000/s: half of
2,000 req/s over 2 workers), each call timed in this thread, with
- no prediction log (the baseline),
- the thread writer (`PredictionLog`: its thread shares this process's GIL and caches),
- the process writer (`ProcessPredictionLog`: a shared-memory ring, a writer process at nice 5).
The three run in alternating rounds (medians over rounds), so machine load hits
them alike. Also reported: the hand-off alone (`submit_request` with the raw body;
`submit` with the lists of ids and passthrough objects), the writer process's
CPU per request (from /proc, the writer being a separate process), and drops.

    .venv/bin/python benchmarks/bench_log_process.py [--quick] [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_requests(handle, bodies: list[bytes], n: int, rate: float) -> tuple[float, float, float]:
    """(mean wall µs, p99 wall µs, mean thread-CPU µs) per request over n requests sent at `rate` per
    second (a worker's share of the server's load: the writer runs between requests, as in a server)."""
    m = len(bodies)
    walls = np.empty(n)
    clock, cpu_clock = time.perf_counter, time.thread_time
    c0 = cpu_clock()
    start = clock()
    for i in range(n):
        if rate > 0:
            due = start + i / rate
            now = clock()
            if due > now:
                time.sleep(due - now)
        t0 = clock()
        handle(bodies[i % m])
        walls[i] = clock() - t0
    cpu = cpu_clock() - c0
    return walls.mean() * 1e6, float(np.percentile(walls, 99)) * 1e6, cpu / n * 1e6


def handoff_us(sink, parsed: list, bodies: list[bytes], raw: bool, n: int) -> dict:
    """µs per request of the hand-off alone, wall and thread CPU (right after parsing, as the server
    calls it)."""
    from ctrops.serve.logging_sink import RequestLog
    from ctrops.serve.schema import Limits, request_parser

    parse = request_parser(Limits())
    scores = np.random.default_rng(1).random(100)
    order = np.argsort(-scores, kind="stable")
    total = total_cpu = 0.0
    m = len(bodies)
    clock, cpu_clock = time.perf_counter, time.thread_time
    for i in range(n):
        body = bodies[i % m]
        req = parse(body)
        c0 = cpu_clock()
        t0 = clock()
        if raw:
            sink.submit_request(1, "r", "u", "bench", "production", "ctr", 1, "0" * 28, body, scores, order)
        else:
            sink.submit(RequestLog(1, "r", "u", "bench", "production", "ctr", 1, "0" * 28, req.candidate_ids,
                                   scores, order, req.candidate_passthrough, req.passthrough))
        total += clock() - t0
        total_cpu += cpu_clock() - c0
        if i % 200 == 199:
            time.sleep(0.02)  # let the writer keep up: the ring is not the thing measured here
    return {"wall": round(total / n * 1e6, 2), "cpu": round(total_cpu / n * 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model, few requests (smoke run)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per round and variant")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="requests per second (one worker's share); 0: back to back, as fast as the thread goes")
    args = ap.parse_args()
    n_features = 50_000 if args.quick else 1_000_000
    n, rounds = (300, 2) if args.quick else (args.requests, args.rounds)

    from ctrops.predict import Predictor
    from ctrops.serve.app import PredictionService
    from ctrops.serve.log_process import ProcessPredictionLog
    from ctrops.serve.logging_sink import PredictionLog

    model_path = w.build_model(n_features)
    predictor = Predictor.from_file(model_path)
    reqs = w.make_requests(64, w.values_per_field(model_path))
    bodies = [json.dumps(r, separators=(",", ":")).encode() for r in reqs]
    sys.setswitchinterval(0.0005)  # as the server sets it (app.startup)

    result: dict = {"model": model_path.name, "requests_per_round": n, "rounds": rounds, "rate": args.rate}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, loader, metrics = w.inprocess_serving(tmp, predictor)
        thread_log = PredictionLog(cfg.log, metrics).start()
        process_log = ProcessPredictionLog(cfg.log, metrics).start()
        services = {"no log": PredictionService(cfg, loader, metrics, None),
                    "thread writer": PredictionService(cfg, loader, metrics, thread_log),
                    "process writer": PredictionService(cfg, loader, metrics, process_log)}
        for s in services.values():
            assert s.handle(bodies[0])[0] == 200
        time.sleep(2.0)  # the writer process imports pyarrow
        wall: dict = {k: [] for k in services}
        p99: dict = {k: [] for k in services}
        cpu: dict = {k: [] for k in services}
        writer_cpu = []
        for _ in range(rounds):
            for name, s in services.items():
                run_requests(s.handle, bodies, min(n, 200), args.rate)  # warm
                if name == "process writer":
                    pid, c0, done0 = process_log.writer_pid, proc_cpu_seconds(process_log.writer_pid), \
                        process_log.records_written
                wa, tail, cp = run_requests(s.handle, bodies, n, args.rate)
                wall[name].append(wa)
                p99[name].append(tail)
                cpu[name].append(cp)
                if name == "process writer":
                    while process_log.depth:  # let it finish this round's requests
                        time.sleep(0.05)
                    time.sleep(0.6)  # and write them (flush_seconds)
                    done = (process_log.records_written - done0) / 100
                    writer_cpu.append((proc_cpu_seconds(pid) - c0) / max(done, 1) * 1e6)
                else:
                    time.sleep(1.0)  # the thread writer drains between rounds too
        result["request_us"] = {k: {"wall": round(statistics.median(v), 1), "p99_wall": round(statistics.median(p99[k]), 1),
                                    "cpu": round(statistics.median(cpu[k]), 1)} for k, v in wall.items()}
        result["writer_process_cpu_us_per_request"] = round(statistics.median(writer_cpu), 1)
        hn = min(n, 2000)
        result["handoff_us"] = {"process submit_request (raw body)": handoff_us(process_log, reqs, bodies, True, hn),
                                "process submit (lists)": handoff_us(process_log, reqs, bodies, False, hn),
                                "thread submit (lists)": handoff_us(thread_log, reqs, bodies, False, hn)}
        thread_log.close()
        process_log.close()
        result["dropped"] = {"thread writer": thread_log.dropped, "process writer": process_log.dropped}
        result["records_written"] = {"thread writer": thread_log.records_written,
                                     "process writer": process_log.records_written}
    result["loadavg"] = os.getloadavg()

    base = result["request_us"]["no log"]
    pace = f"{args.rate:.0f}/s" if args.rate > 0 else "back to back"
    print(f"model {model_path.name}, requests of 100 candidates {pace}, {rounds} rounds x {n} "
          f"requests, medians over rounds")
    for name, r in result["request_us"].items():
        print(f"  {name:15s}: {r['wall']:7.1f} µs wall (p99 {r['p99_wall']:7.1f}), {r['cpu']:7.1f} µs CPU per request "
              f"on the request thread; +{r['wall'] - base['wall']:.1f} µs wall over no log "
              f"({r['wall'] / base['wall']:.2f}x)")
    print(f"  writer process: {result['writer_process_cpu_us_per_request']} µs CPU per request (its own process)")
    for k, v in result["handoff_us"].items():
        print(f"  hand-off alone, {k}: {v['wall']} µs wall, {v['cpu']} µs CPU")
    print(f"  dropped {result['dropped']}; load average {result['loadavg']}")
    out = w.OUT / f"bench_log_process-rate{args.rate:.0f}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
