"""Hot reload under load: promotions and a rollback while the open-loop client keeps sending.

The server polls the manifest every second. During a run at `--rate` req/s the
benchmark moves the `production` alias to version 2, then 3, then back to 1
(set_alias: the models were published beforehand, as a pipeline would). Each
worker validates the new file (sha256, checksums, finite weights, canary)
and swaps it in. Reported: failed requests, overall p99, and the worst one-second
p99 against the median one-second p99 of the same run (the baseline).

    .venv/bin/python benchmarks/bench_serve_reload.py [--quick] [--rate 2000] [--duration 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402


def serving_versions(port: int, samples: int = 8) -> set:
    """Versions the workers report (several calls: each may land on another worker)."""
    seen = set()
    for _ in range(samples):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            seen.add(json.loads(r.read())["arms"]["production"]["serving_version"])
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--duration", type=float, default=40.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runtime", default="granian", choices=["granian", "uvicorn"])
    args = ap.parse_args()
    n_features = 50_000 if args.quick else 1_000_000
    rate = min(args.rate, 200.0) if args.quick else args.rate
    duration = 12.0 if args.quick else args.duration

    from ctrops.artifact.manifest import set_alias

    models = [w.build_model(n_features, seed=s) for s in (0, 1, 2)]
    storage = w.OUT / f"store-reload-{n_features}"
    shutil.rmtree(storage, ignore_errors=True)
    shutil.rmtree(w.OUT / "cache", ignore_errors=True)
    for version, path in enumerate(models, 1):
        w.publish(path, storage, version, aliases=("production",) if version == 1 else ())
    bodies = w.write_bodies(w.make_requests(400, w.values_per_field(models[0])), w.OUT / "bodies-100.jsonl")
    server = w.start_ctrops(storage, args.workers, args.runtime, None, poll_seconds=1.0)
    events = []
    try:
        w.open_loop_subprocess(server.port, bodies, "/v1/predict", min(rate, 500), 3)  # warm up
        client = subprocess.Popen([w.PY, str(Path(w.__file__)), "--port", str(server.port), "--bodies", str(bodies),
                                   "--rate", str(rate), "--duration", str(duration)], stdout=subprocess.PIPE,
                                  text=True, cwd=w.ROOT)
        t0 = time.monotonic()
        for at, version in ((0.25, 2), (0.5, 3), (0.75, 1)):
            time.sleep(max(0.0, t0 + at * duration - time.monotonic()))
            set_alias(str(storage), w.MODEL_NAME, "production", version)
            events.append({"t_s": round(time.monotonic() - t0, 2), "production": version})
            print(f"  t={events[-1]['t_s']:5.1f}s production -> version {version}", flush=True)
            deadline = time.monotonic() + duration / 4 - 1
            while time.monotonic() < deadline and serving_versions(server.port) != {version}:
                time.sleep(0.2)
            events[-1]["all_workers_swapped_after_s"] = round(time.monotonic() - t0 - events[-1]["t_s"], 2)
        out, _ = client.communicate(timeout=duration + 120)
        res = json.loads(out.strip().splitlines()[-1])
        final = serving_versions(server.port)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    per_sec = res.pop("per_second_p99_ms")
    swap_secs = sorted({int(e["t_s"]) + d for e in events for d in range(0, 4)})
    during = [per_sec[s] for s in swap_secs if s < len(per_sec)]
    steady = [v for s, v in enumerate(per_sec) if s not in swap_secs]
    result = {"rate": rate, "duration_s": duration, "events": events, "client": res,
              "worst_second_p99_during_swaps_ms": max(during) if during else None,
              "median_second_p99_steady_ms": statistics.median(steady) if steady else None,
              "final_versions": sorted(final), "loadavg_end": os.getloadavg(),
              "reload_successes": [line for line in metrics.splitlines()
                                   if line.startswith('ctrops_reloads_total{outcome="success"}')]}
    print(f"{rate:.0f} req/s for {duration:.0f} s with 3 swaps: errors {res['errors']}, p99 {res['p99_ms']} ms; "
          f"worst 1-s p99 around swaps {result['worst_second_p99_during_swaps_ms']} ms vs steady median 1-s p99 "
          f"{result['median_second_p99_steady_ms']} ms; final version {sorted(final)}")
    (w.OUT / f"bench_serve_reload{'-quick' if args.quick else ''}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
