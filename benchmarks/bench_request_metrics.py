"""What a prediction's metrics cost the request thread in prometheus-client's multiprocess mode (the
server's with several workers): one inc/observe per request, as before, against `RequestTally`'s
counting in batches; same run, alternating, median of the repeats.

    .venv/bin/python benchmarks/bench_request_metrics.py [--requests 200000] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="few requests (smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.repeats = 5_000, 2
    with tempfile.TemporaryDirectory() as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before the metrics exist: multiprocess mode
        from ctrops.serve.metrics import RequestTally, ServerMetrics

        metrics = ServerMetrics()
        assert metrics.multiprocess
        tally = RequestTally(metrics)
        arm = metrics.predictions.labels("production")
        n = args.requests

        def direct() -> float:
            t0 = time.perf_counter()
            for i in range(n):
                arm.inc()
                metrics.candidates.inc(100)
                metrics.latency.observe(0.0004)
            return (time.perf_counter() - t0) / n * 1e6

        def batched() -> float:
            t0 = time.perf_counter()
            for i in range(n):
                tally.prediction("production", 100)
                tally.latency(0.0004)
            tally.flush()
            return (time.perf_counter() - t0) / n * 1e6

        runs: dict[str, list[float]] = {"direct": [], "batched": []}
        for _ in range(args.repeats):
            runs["direct"].append(direct())
            runs["batched"].append(batched())
    d, b = statistics.median(runs["direct"]), statistics.median(runs["batched"])
    print(f"per-request metrics, multiprocess mode: one write per request {d:.2f} µs, "
          f"counted in batches {b:.2f} µs ({d / b:.1f}x less)")
    print(json.dumps({"direct_us": round(d, 2), "batched_us": round(b, 2), "ratio": round(d / b, 2)}))


if __name__ == "__main__":
    main()
