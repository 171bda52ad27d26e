"""Prometheus metrics of one server process.

Each app gets its own registry so tests can build many apps in one process.
With several workers, set PROMETHEUS_MULTIPROC_DIR (prometheus-client's
multiprocess mode) to have /metrics aggregate all of them; otherwise each
scrape sees the worker that answered it.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.5, 1.0)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = None if self.multiprocess else self.registry
        kw = {"registry": r} if r is not None else {}
        self.latency = Histogram("ctrops_predict_latency_seconds",
                                 "Server-side time to answer /v1/predict, parse to response", 
                                 buckets=LATENCY_BUCKETS, **kw)
        self.errors = Counter("ctrops_request_errors_total", "Failed requests by kind", ["kind"], **kw)
        self.predictions = Counter("ctrops_predictions_total", "Scored requests by experiment arm",
                                   ["arm"], **kw)
        self.candidates = Counter("ctrops_candidates_scored_total", "Candidates scored", **kw)
        gauge_kw = dict(kw, multiprocess_mode="max") if self.multiprocess else kw
        self.model_version = Gauge("ctrops_model_version", "Model version serving each arm",
                                   ["arm", "model_name"], **gauge_kw)
        self.reloads = Counter("ctrops_reloads_total", "Model / experiment reload attempts by outcome",
                               ["outcome"], **kw)
        self.refused_versions = Counter("ctrops_model_versions_refused_total",
                                        "Model versions refused by validation", ["reason"], **kw)
        self.log_queue_depth = Gauge("ctrops_log_queue_depth", "Requests waiting for the log writer",
                                     **gauge_kw)
        self.log_dropped = Counter("ctrops_log_dropped_total",
                                   "Requests whose log records were dropped (queue full)", **kw)
        self.log_records = Counter("ctrops_log_records_total", "Prediction log records written", **kw)
        self.log_write_errors = Counter("ctrops_log_write_errors_total", "Failed log file writes", **kw)
        for kind in ("malformed_json", "invalid_request", "unauthorized", "not_ready", "body_too_large",
                     "internal"):
            self.errors.labels(kind)
        for outcome in ("success", "failure", "unchanged"):
            self.reloads.labels(outcome)

    def render(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class RequestTally:
    """A worker's per-request metrics (latency, predictions by arm, candidates), added to the
    Prometheus metrics in batches instead of one write per request.

    Why: in prometheus-client's multiprocess mode (every multi-worker server) each
    inc() and observe() takes a lock and writes into a memory-mapped file, about
    6 µs per prediction for these three metrics on the request thread, which
    is also the thread whose delay is the client's latency. Plain Python
    counts cost well under a microsecond. They reach the shared files at most
    every `max_age` seconds while requests flow, within `idle_flush` seconds
    when they stop (a daemon thread), and always before this worker renders
    /metrics, so a scrape answered by this worker is exact and one answered by
    another worker is at most that late.

    The histogram is filled through its bucket and sum values (prometheus-client's
    own layout since 0.4); where that layout is missing, latency falls back to
    one observe() per request, so the figures stay right either way.
    """

    def __init__(self, metrics: "ServerMetrics", max_age: float = 0.1, idle_flush: float = 0.5) -> None:
        self.metrics = metrics
        self.max_age = max_age
        self.idle_flush = idle_flush
        h = metrics.latency
        bounds = getattr(h, "_upper_bounds", None)
        buckets, total = getattr(h, "_buckets", None), getattr(h, "_sum", None)
        self._batched_latency = (bounds is not None and buckets is not None and total is not None
                                 and len(bounds) == len(buckets) and bounds[-1] == float("inf"))
        self._bounds = list(bounds[:-1]) if self._batched_latency else []
        self._lock = threading.Lock()
        self._reset()
        self._due = time.monotonic() + max_age
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _reset(self) -> None:
        self._bucket_counts = [0] * (len(self._bounds) + 1)
        self._latency_sum = 0.0
        self._by_arm: dict[str, int] = {}
        self._candidates = 0
        self._pending = False

    def prediction(self, arm: str, n_candidates: int) -> None:
        """Count one scored request of `arm` with `n_candidates` candidates."""
        with self._lock:
            self._by_arm[arm] = self._by_arm.get(arm, 0) + 1
            self._candidates += n_candidates
            self._pending = True

    def latency(self, seconds: float) -> None:
        """Count one answered /v1/predict (any status) that took `seconds`; flushes when due."""
        if not self._batched_latency:
            self.metrics.latency.observe(seconds)
        else:
            i = bisect_left(self._bounds, seconds)  # Prometheus buckets hold value <= bound
            with self._lock:
                self._bucket_counts[i] += 1
                self._latency_sum += seconds
                self._pending = True
        now = time.monotonic()
        if now >= self._due:
            self._due = now + self.max_age
            self.flush()

    def flush(self) -> None:
        """Add everything counted so far to the Prometheus metrics."""
        with self._lock:
            if not self._pending:
                return
            counts, total, by_arm, candidates = (self._bucket_counts, self._latency_sum, self._by_arm,
                                                 self._candidates)
            self._reset()
        m = self.metrics
        for arm, n in by_arm.items():
            m.predictions.labels(arm).inc(n)
        if candidates:
            m.candidates.inc(candidates)
        if self._batched_latency and any(counts):
            h = m.latency
            h._sum.inc(total)
            for i, n in enumerate(counts):
                if n:
                    h._buckets[i].inc(n)

    def start(self) -> "RequestTally":
        """Flush in the background while requests pause (idempotent; call after the fork)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ctrops-metrics-flush", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the background flush and flush what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.idle_flush):
            self.flush()
