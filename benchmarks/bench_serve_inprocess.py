"""In-process cost of one request of 100 candidates (30 context + 9 ad fields, FFM k=4, ~1e6 features).

Figures (median of repeats; wall time and this thread's CPU time, which is
less disturbed by other processes on a shared machine):
  score   Predictor.score: encode raw values + native candidate kernel
          vs the baseline's vectorised hashing + searchsorted + NumPy scorer (benchmarks/baselines/fastapi_server.py)
  request the whole server-side path without the socket: JSON parse, validation,
          arm assignment, scoring, ranking, tracking ids, response JSON, log hand-off
          vs the baseline's pydantic parse + NumPy scoring + pydantic response;
          each with the native fast path (the default) and with the general
          (msgspec) path alone, measured in the same run

    .venv/bin/python benchmarks/bench_serve_inprocess.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_workload as w  # noqa: E402


def timed(fn, n: int, repeats: int) -> tuple[float, float]:
    """(median wall µs, median thread-CPU µs) per call over `repeats` runs of `n` calls."""
    for i in range(min(n, 200)):
        fn(i)
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(n):
            fn(i)
        walls.append((time.perf_counter() - t0) / n * 1e6)
        cpus.append((time.thread_time() - c0) / n * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model, few repeats (smoke run)")
    args = ap.parse_args()
    n_features = 50_000 if args.quick else 1_000_000
    n, repeats = (300, 3) if args.quick else (2000, 7)

    from baselines.fastapi_server import NumpyFFM, PredictRequest, PredictResponse, ScoredCandidate
    from ctrops.predict import Predictor
    from ctrops.serve.app import PredictionService
    from ctrops.serve.logging_sink import PredictionLog

    model_path = w.build_model(n_features)
    predictor = Predictor.from_file(model_path)
    baseline = NumpyFFM(str(model_path))
    reqs = w.make_requests(64, w.values_per_field(model_path))
    ctx = [r["context"] for r in reqs]
    cands = [[c["fields"] for c in r["candidates"]] for r in reqs]
    bodies = [json.dumps(r, separators=(",", ":")).encode() for r in reqs]
    m = len(reqs)

    results = {}
    results["score_ctrops"] = timed(lambda i: predictor.score(ctx[i % m], cands[i % m]), n, repeats)
    results["score_baseline"] = timed(lambda i: baseline.score(ctx[i % m], cands[i % m]), n // 4, repeats)

    with tempfile.TemporaryDirectory() as tmp:
        cfg, loader, metrics = w.inprocess_serving(tmp, predictor)
        plog = PredictionLog(cfg.log, metrics).start()
        service = PredictionService(cfg, loader, metrics, plog)
        status, _ = service.handle(bodies[0])
        assert status == 200
        unlogged = PredictionService(cfg, loader, metrics, None)
        general, general_unlogged = (PredictionService(cfg, loader, metrics, plog),
                                     PredictionService(cfg, loader, metrics, None))
        general.fast = general_unlogged.fast = None
        for svc in (service, unlogged):  # the workload's bodies must all take the fast path
            assert svc.fast is not None and all(svc._predict_fast(b) is not None for b in bodies), \
                "the fast path refused a workload body"
        # interleaved, so both paths see the same machine load
        for _ in range(2):
            for name, svc in (("request_ctrops", service), ("request_ctrops_general", general),
                              ("request_ctrops_without_log", unlogged),
                              ("request_ctrops_without_log_general", general_unlogged)):
                results.setdefault(name, []).append(timed(lambda i: svc.handle(bodies[i % m]), n, repeats))
        for name in ("request_ctrops", "request_ctrops_general", "request_ctrops_without_log",
                     "request_ctrops_without_log_general"):
            runs = results[name]
            results[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        plog.close()
        results["log_records_written"] = plog.records_written

    def baseline_request(i: int) -> bytes:
        req = PredictRequest.model_validate_json(bodies[i % m])
        scores = baseline.score(req.context, [c.fields for c in req.candidates])
        order = (-scores).argsort(kind="stable")
        return PredictResponse(request_id=req.request_id or "", experiment="default", arm="production",
                               model_version=1, candidates=[
                                   ScoredCandidate(id=req.candidates[j].id, score=float(scores[j]), rank=r,
                                                   tracking_id=f"{j:032x}") for r, j in enumerate(order.tolist(), 1)]
                               ).model_dump_json().encode()

    results["request_baseline"] = timed(baseline_request, n // 4, repeats)

    print(f"model: {model_path.name} ({model_path.stat().st_size / 1e6:.0f} MB), 100 candidates x 39 fields, "
          f"{repeats} repeats")
    for what in ("score", "request"):
        (cw, cc), (bw, bc) = results[f"{what}_ctrops"], results[f"{what}_baseline"]
        print(f"{what:8s} ctrops {cw:8.1f} µs wall {cc:8.1f} µs cpu | baseline {bw:8.1f} µs wall {bc:8.1f} µs cpu"
              f" | speed-up {bw / cw:5.1f}x wall {bc / cc:5.1f}x cpu")
    nw, nc = results["request_ctrops_without_log"]
    print(f"request path without the prediction log: {nw:.1f} µs wall {nc:.1f} µs cpu (the log writer thread "
          f"shares the GIL and caches with the request thread)")
    for label, fast, general in (("with the log", "request_ctrops", "request_ctrops_general"),
                                 ("without the log", "request_ctrops_without_log",
                                  "request_ctrops_without_log_general")):
        (fw, fc), (gw, gc) = results[fast], results[general]
        print(f"native fast path vs general path, {label}: {fw:.1f} vs {gw:.1f} µs wall ({gw / fw:.2f}x), "
              f"{fc:.1f} vs {gc:.1f} µs cpu ({gc / fc:.2f}x)")
    print(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
