"""Prometheus metrics of one server process.

Each app gets its own registry so tests can build many apps in one process.
With several workers, set PROMETHEUS_MULTIPROC_DIR (prometheus-client's
multiprocess mode) to have /metrics aggregate all of them; otherwise each
scrape sees the worker that answered it.
"""

from __future__ import annotations

import os

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
