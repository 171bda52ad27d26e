"""The request tally: batched per-request metrics equal one write per request, and reach Prometheus
when due, when idle and before /metrics renders."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ctrops.serve.metrics import LATENCY_BUCKETS, RequestTally, ServerMetrics


def _samples(metrics: ServerMetrics) -> dict[str, float]:
    out = {}
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[s.name + str(sorted(s.labels.items()))] = s.value
    return out


def test_batched_latency_equals_one_observe_per_request():
    metrics = ServerMetrics()
    tally = RequestTally(metrics, max_age=3600)
    reference = Histogram("ref_seconds", "reference", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    # every bucket edge exactly (a value equal to a bound belongs to that bound), between edges, beyond
    values = [b for b in LATENCY_BUCKETS] + [b * 0.999 for b in LATENCY_BUCKETS] + [0.0, 2.5, 1e-6, 0.0042]
    for v in values:
        tally.latency(v)
        reference.observe(v)
    assert tally._batched_latency
    before = _samples(metrics)
    assert before['ctrops_predict_latency_seconds_count[]'] == 0  # not due yet: nothing written
    tally.flush()
    after = {k.replace("ctrops_predict_latency_seconds", "ref_seconds"): v for k, v in _samples(metrics).items()
             if k.startswith("ctrops_predict_latency_seconds")}
    ref = {}
    for metric in reference.collect():
        for s in metric.samples:
            if not s.name.endswith("_created"):
                ref[s.name + str(sorted(s.labels.items()))] = s.value
    assert after == ref
    assert after["ref_seconds_count[]"] == len(values)


def test_predictions_by_arm_and_candidates_add_up():
    metrics = ServerMetrics()
    tally = RequestTally(metrics, max_age=3600)
    for _ in range(7):
        tally.prediction("production", 100)
    for _ in range(3):
        tally.prediction("random", 10)
    tally.flush()
    tally.flush()  # nothing pending: adds nothing
    s = _samples(metrics)
    assert s["ctrops_predictions_total[('arm', 'production')]"] == 7
    assert s["ctrops_predictions_total[('arm', 'random')]"] == 3
    assert s["ctrops_candidates_scored_total[]"] == 730


def test_flush_when_due_and_when_idle():
    metrics = ServerMetrics()
    tally = RequestTally(metrics, max_age=0.05, idle_flush=0.05)
    tally.prediction("production", 1)
    tally.latency(0.001)  # the first record after max_age flushes; this one is inside it
    time.sleep(0.06)
    tally.prediction("production", 1)
    tally.latency(0.001)
    s = _samples(metrics)
    assert s["ctrops_predictions_total[('arm', 'production')]"] == 2
    tally.prediction("production", 1)
    tally.latency(0.002)
    assert _samples(metrics)["ctrops_predictions_total[('arm', 'production')]"] == 2
    tally.start()
    try:
        deadline = time.monotonic() + 5
        while _samples(metrics)["ctrops_predictions_total[('arm', 'production')]"] != 3:
            assert time.monotonic() < deadline, "the idle flush never came"
            time.sleep(0.01)
    finally:
        tally.close()
    assert _samples(metrics)["ctrops_predict_latency_seconds_count[]"] == 3


def test_close_flushes_what_is_left():
    metrics = ServerMetrics()
    tally = RequestTally(metrics, max_age=3600, idle_flush=3600).start()
    tally.prediction("candidate", 5)
    tally.latency(0.0003)
    tally.close()
    assert _samples(metrics)["ctrops_predictions_total[('arm', 'candidate')]"] == 1
    assert b"ctrops_predict_latency_seconds_count 1.0" in generate_latest(metrics.registry)


def test_multiprocess_files_get_the_batched_counts(tmp_path):
    """In prometheus-client's multiprocess mode (the server's), two worker processes' batches add up."""
    code = (
        "from ctrops.serve.metrics import RequestTally, ServerMetrics\n"
        "m = ServerMetrics()\n"
        "assert m.multiprocess\n"
        "t = RequestTally(m, max_age=3600)\n"
        "for i in range(50):\n"
        "    t.prediction('production', 100); t.latency(0.0004 if i % 2 else 0.004)\n"
        "t.flush()\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    try:
        text = ServerMetrics().render().decode()
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert 'ctrops_predictions_total{arm="production"} 100.0' in text
    assert "ctrops_candidates_scored_total 10000.0" in text
    assert 'ctrops_predict_latency_seconds_bucket{le="0.0005"} 50.0' in text
    assert 'ctrops_predict_latency_seconds_bucket{le="0.005"} 100.0' in text
    assert "ctrops_predict_latency_seconds_count 100.0" in text
