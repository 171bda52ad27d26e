"""What the log writer spends per request on the two hand-offs of the server's fast path, same run.

The server's own request path (`PredictionService.handle` with the 1e6-feature
FFM and requests of 100 candidates) runs 2,000 bodies twice, once handing the
log the fast path's log columns (`submit_columns`, the default) and once the
body's log part (`submit_request`, JSON text of the ids and passthrough). The
payloads are captured as the ring would carry them; then, in this process,
the writer's three steps are timed per request: decoding the payloads into
`RequestLog`s, building the Arrow tables (512 requests per table, as the
writer process does) and writing them as Parquet (zstd, the writer's options); then the
writer process's whole loop (`writer_loop`: ring, pulls, counters, files) in this thread.
Medians over --repeats.

    .venv/bin/python benchmarks/bench_log_columns.py [--requests 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402


class CapturedLog:
    """A prediction log that keeps each request's ring payload (kind, bytes, split) instead of writing."""

    def __init__(self, columns: bool) -> None:
        from ctrops.serve import log_records

        self.r = log_records
        self.payloads: list[tuple[int, bytes, int]] = []
        if not columns:
            self.submit_columns = None

    def submit_columns(self, *args):  # noqa: F811 (None when the log part is to be captured)
        head, scores, order = self.r.encode_columns(*args)
        self.payloads.append((self.r.COLUMNS, head + bytes(scores) + bytes(order), len(head)))
        return True

    def submit_request(self, *args):
        head, scores, order = self.r.encode_raw(*args[:8], *args[9:])
        self.payloads.append((self.r.RAW, head + bytes(scores) + bytes(order) + bytes(args[8]), len(head)))
        return True

    def submit(self, entry):
        kind, payload = self.r.encode_lists(entry)
        self.payloads.append((kind, payload, 0))
        return True

    def submit_debug(self, record) -> None:
        pass


def writer_steps(payloads: list) -> dict[str, float]:
    """µs per request for decode, build and Parquet, timed in this thread."""
    from ctrops.serve.log_records import decode_entry
    from ctrops.serve.logging_sink import _WRITE_REQUESTS, build_table, parquet_writer

    n = len(payloads)
    t0 = time.perf_counter()
    entries = [decode_entry(kind, payload, split) for kind, payload, split in payloads]
    t1 = time.perf_counter()
    tables = [build_table(entries[i:i + _WRITE_REQUESTS]) for i in range(0, n, _WRITE_REQUESTS)]
    t2 = time.perf_counter()
    sink = io.BytesIO()
    writer = parquet_writer(sink, tables[0].schema, "zstd")
    for table in tables:
        writer.write_table(table)
    writer.close()
    t3 = time.perf_counter()
    return {"decode": (t1 - t0) / n * 1e6, "build": (t2 - t1) / n * 1e6, "parquet": (t3 - t2) / n * 1e6}


def writer_loop(payloads: list, per_step: int = 20) -> float:
    """µs of this thread's CPU per request for the writer process's whole loop, in this process: the
    payloads pushed into a ring `per_step` at a time (a worker's share of 10 ms at 2,000 req/s), the
    writer's `step` and `publish` after each push, Parquet files written to a temporary folder."""
    from ctrops.serve import log_ring as lr
    from ctrops.serve.log_writer import RingPump, Writer
    from ctrops.serve.logging_sink import LogConfig

    with tempfile.TemporaryDirectory() as tmp:
        ring = lr.Ring.create(8 << 20)
        writer = Writer(LogConfig(path=tmp, format="parquet"))
        writer.pumps.append(RingPump(ring))
        writer.start()
        t0 = time.thread_time()
        for i in range(0, len(payloads), per_step):
            for kind, payload, split in payloads[i:i + per_step]:
                ring.push(kind, payload[:split], payload[split:])
            writer.step()
            writer.publish()
        writer.close(timeout=60)
        spent = time.thread_time() - t0
        ring.close()
    return spent / len(payloads) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small model, few requests (smoke test)")
    args = ap.parse_args()
    from ctrops.predict import Predictor
    from ctrops.serve.app import PredictionService

    n_features, n = (50_000, 300) if args.quick else (1_000_000, args.requests)
    model_path = w.build_model(n_features)
    bodies = [json.dumps(r).encode() for r in w.make_requests(64, w.values_per_field(model_path))]
    predictor = Predictor.from_file(model_path, version=1)
    captured = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg, loader, metrics = w.inprocess_serving(tmp, predictor)
        for name, columns in (("log columns", True), ("log part (JSON)", False)):
            log = CapturedLog(columns)
            service = PredictionService(cfg, loader, metrics, log)
            for i in range(n):
                status, _ = service.handle(bodies[i % len(bodies)])
                assert status == 200
            captured[name] = log.payloads
    writer_steps(captured["log columns"][:256])  # first use: Arrow's kernels and pools
    runs: dict[str, list[dict]] = {name: [] for name in captured}
    for _ in range(args.repeats):
        for name, payloads in captured.items():
            runs[name].append({**writer_steps(payloads), "loop": writer_loop(payloads)})
    result = {}
    for name, rs in runs.items():
        med = {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]}
        med["total"] = round(med["decode"] + med["build"] + med["parquet"], 1)
        med["payload_bytes"] = round(statistics.mean(len(p) for _, p, _ in captured[name]))
        result[name] = med
        print(f"{name:16s}: decode {med['decode']:6.1f} µs, build {med['build']:6.1f} µs, parquet "
              f"{med['parquet']:6.1f} µs, total {med['total']:6.1f} µs per request; the writer's whole loop "
              f"(ring push, pull, counters, files) {med['loop']:6.1f} µs; ring payload {med['payload_bytes']} B")
    a, b = result["log columns"], result["log part (JSON)"]
    print(f"log columns vs log part: decode {b['decode'] / a['decode']:.1f}x cheaper, writer total "
          f"{b['total'] / a['total']:.2f}x, whole loop {b['loop'] / a['loop']:.2f}x")
    print(json.dumps({"requests": n, "repeats": args.repeats, "us_per_request": result}))


if __name__ == "__main__":
    main()
