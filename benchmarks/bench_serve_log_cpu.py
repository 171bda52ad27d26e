"""What the prediction log costs the running server: CPU per answered request with the log on and
off, same run, same model and requests (serve_workload: FFM k=4, ~1e6 features, 100 candidates).

For each setting a 2-worker server is started, warmed for 5 s, then loaded by
wrk on a fixed schedule of --rate req/s for --duration s; the CPU time of all
server processes (supervisor and workers, from /proc) over that window is
divided by the requests answered. Settings alternate (on, off, on, off ...)
for --rounds rounds so drifting machine load affects both; medians reported.

    .venv/bin/python benchmarks/bench_serve_log_cpu.py [--rate 800] [--duration 20] [--rounds 2]
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

import bench_serve_reload as br  # noqa: E402
import serve_workload as w  # noqa: E402


def server_cpu_seconds(server: w.Server) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in server.pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / tick


def one_run(storage: Path, bodies: Path, log_on: bool, rate: float, duration: float) -> dict:
    log_dir = w.OUT / "prediction-log-cpu"
    shutil.rmtree(log_dir, ignore_errors=True)
    server = br.start_server(storage, 2, "granian", log_dir if log_on else None, w.OUT / "cache-cpu")
    try:
        w.run_wrk_paced(server.port, bodies, "/v1/predict", rate, 5)
        c0 = server_cpu_seconds(server)
        r = w.run_wrk_paced(server.port, bodies, "/v1/predict", rate, duration)
        c1 = server_cpu_seconds(server)
    finally:
        server.stop()
    answered = r["achieved_rps"] * max(1, int(round(duration)))
    return {"log": log_on, "server_cpu_us_per_request": round((c1 - c0) / max(answered, 1) * 1e6, 1),
            "p99_ms": r["p99_ms"], "errors": r["errors"], "achieved_rps": r["achieved_rps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=800.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from ctrops.artifact.manifest import set_alias

    model = w.build_model(1_000_000)
    storage = w.OUT / "store-log-cpu"
    if not (storage / "models" / w.MODEL_NAME / "manifest.json").exists():
        w.publish(model, storage, 1)
    set_alias(str(storage), w.MODEL_NAME, "production", 1)
    bodies = w.write_bodies(w.make_requests(400, w.values_per_field(model)), w.OUT / "bodies-100.jsonl")
    runs = []
    for _ in range(args.rounds):
        for log_on in (True, False):
            runs.append(one_run(storage, bodies, log_on, args.rate, args.duration))
            r = runs[-1]
            print(f"  log {'on ' if log_on else 'off'}: {r['server_cpu_us_per_request']} us server CPU per request, "
                  f"p99 {r['p99_ms']} ms, errors {r['errors']}", flush=True)
    on = statistics.median(r["server_cpu_us_per_request"] for r in runs if r["log"])
    off = statistics.median(r["server_cpu_us_per_request"] for r in runs if not r["log"])
    result = {"rate": args.rate, "duration_s": args.duration, "runs": runs, "log_on_us": on, "log_off_us": off,
              "log_cost_us": round(on - off, 1), "loadavg_end": os.getloadavg()}
    print(f"{args.rate:.0f} req/s: server CPU per request {on:.0f} us with the log, {off:.0f} us without: "
          f"the log costs {on - off:.0f} us per request ({on / off:.2f}x)")
    (w.OUT / "bench_serve_log_cpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
