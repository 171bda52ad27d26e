"""The prediction log: every returned candidate recorded, files rotated and finalised, drops counted."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from ctrops.errors import ConfigError
from ctrops.serve.app import create_app
from ctrops.serve.logging_sink import LogConfig, PredictionLog, RequestLog
from serve_support import HashScorer, injected_loader, make_config, request_body

ARMS = [{"name": "production", "share": 70, "model": "production"},
        {"name": "random", "share": 30, "random": True}]


def entry(i: int, n: int = 3, top: int | None = None) -> RequestLog:
    scores = np.linspace(0.1, 0.9, n)[::-1].copy()
    order = np.argsort(-scores, kind="stable")[:top]
    return RequestLog(1_700_000_000_000 + i, f"r{i}", f"u{i}", "exp", "production", "ctr", 4,
                      f"{i:028x}", [f"ad{j}" for j in range(n)], scores, order,
                      [{"bid": 1.5}] + [None] * (n - 1), {"auction": f"a{i}"})


def read_jsonl(directory):
    rows = []
    for path in sorted(directory.glob("predictions-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def test_jsonl_records_and_rotation(tmp_path):
    sink = PredictionLog(LogConfig(str(tmp_path), "jsonl", rotate_records=7, flush_seconds=0.01)).start()
    for i in range(10):
        assert sink.submit(entry(i))
        time.sleep(0.002)
    sink.close()
    assert not list(tmp_path.glob(".*inprogress"))
    assert len(list(tmp_path.glob("predictions-*.jsonl"))) >= 2  # 30 records, a new file after every 7+
    rows = read_jsonl(tmp_path)
    assert len(rows) == 30
    first = [r for r in rows if r["request_id"] == "r0"]
    assert [r["rank"] for r in first] == [1, 2, 3]
    assert first[0]["candidate_id"] == "ad0" and first[0]["tracking_id"] == f"{0:028x}0000"
    assert first[0]["passthrough"] == {"auction": "a0"} and first[0]["candidate_passthrough"] == {"bid": 1.5}
    assert first[1]["passthrough"] == {"auction": "a0"} and first[1]["candidate_passthrough"] is None
    assert first[0]["score"] == pytest.approx(0.9) and first[2]["score"] == pytest.approx(0.1)
    assert set(first[0]) == {"schema", "ts_ms", "request_id", "unit_id", "experiment", "arm", "model_name",
                             "model_version", "tracking_id", "candidate_id", "score", "rank", "passthrough",
                             "candidate_passthrough"}


def test_parquet_records(tmp_path):
    sink = PredictionLog(LogConfig(str(tmp_path), "parquet", flush_seconds=0.01)).start()
    for i in range(5):
        sink.submit(entry(i, n=4, top=2))
    sink.close()
    table = pq.read_table(sorted(tmp_path.glob("predictions-*.parquet")))
    assert table.num_rows == 10
    rows = table.to_pylist()
    jsonl_dir = tmp_path / "j"
    sink = PredictionLog(LogConfig(str(jsonl_dir), "jsonl", flush_seconds=0.01)).start()
    for i in range(5):
        sink.submit(entry(i, n=4, top=2))
    sink.close()
    # the two formats hold the same records
    for a, b in zip(rows, read_jsonl(jsonl_dir)):
        assert a == b  # Parquet stores passthrough objects as typed structs, JSONL as objects
    assert [r["rank"] for r in rows[:2]] == [1, 2] and rows[0]["model_version"] == 4
    assert rows[0]["tracking_id"] == f"{0:028x}0000" and rows[0]["candidate_passthrough"] == {"bid": 1.5}


def test_parquet_passthrough_schema_changes_start_a_new_file(tmp_path):
    sink = PredictionLog(LogConfig(str(tmp_path), "parquet", flush_seconds=0.01)).start()
    sink.submit(entry(0))
    time.sleep(0.3)
    sink.submit(entry(1)._replace(candidate_passthrough=[{"bid": "high"}, None, None]))  # str instead of float
    time.sleep(0.3)
    sink.submit(entry(2)._replace(candidate_passthrough=[{"bid": 1}, {"bid": "x"}, None]))  # mixed: JSON text
    sink.close()
    files = sorted(tmp_path.glob("predictions-*.parquet"))
    assert len(files) == 3
    firsts = [pq.read_table(f).to_pylist()[0]["candidate_passthrough"] for f in files]
    assert firsts == [{"bid": 1.5}, {"bid": "high"}, '{"bid":1}']


def test_integer_and_escaped_candidate_ids(tmp_path):
    e = entry(0)._replace(candidate_ids=[7, 'say "hi"', "caf\u00e9"])
    for fmt in ("jsonl", "parquet"):
        sink = PredictionLog(LogConfig(str(tmp_path / fmt), fmt, flush_seconds=0.01)).start()
        sink.submit(e)
        sink.close()
    assert [r["candidate_id"] for r in read_jsonl(tmp_path / "jsonl")] == ["7", 'say "hi"', "caf\u00e9"]
    table = pq.read_table(sorted((tmp_path / "parquet").glob("*.parquet")))
    assert table.column("candidate_id").to_pylist() == ["7", 'say "hi"', "caf\u00e9"]


def test_full_queue_drops_and_counts(tmp_path):
    sink = PredictionLog(LogConfig(str(tmp_path), "jsonl", queue_size=3))  # writer not started: a stall
    results = [sink.submit(entry(i)) for i in range(5)]
    assert results == [True, True, True, False, False] and sink.dropped == 2
    sink.close()  # drains what was queued
    assert len(read_jsonl(tmp_path)) == 9


def test_bad_log_config():
    with pytest.raises(ConfigError, match="log.format"):
        LogConfig("/tmp/x", "csv")


def test_every_served_tracking_id_is_logged_with_debug_sample(tmp_path):
    cfg = make_config(tmp_path, debug_every=10)
    loader = injected_loader(cfg, ARMS, {"production": HashScorer(5)})
    served = {}
    with TestClient(create_app(cfg, loader=loader)) as c:
        for i in range(40):
            out = c.post("/v1/predict", json=request_body(3, user=f"user{i}",
                                                          passthrough={"auction": i})).json()
            for cand in out["candidates"]:
                served[cand["tracking_id"]] = (out["arm"], cand["id"], cand["score"], cand["rank"])
    rows = read_jsonl(tmp_path / "logs")
    logged = {r["tracking_id"]: (r["arm"], r["candidate_id"], r["score"], r["rank"]) for r in rows}
    assert logged.keys() == served.keys()
    for tid, (arm, cid, score, rank) in logged.items():
        assert (arm, cid, rank) == (served[tid][0], served[tid][1], served[tid][3])
        assert abs(score - served[tid][2]) <= 1e-9  # the response rounds to 9 decimals, the log keeps float64
    assert {r["arm"] for r in rows} == {"production", "random"}
    debug = [json.loads(x) for p in (tmp_path / "logs").glob("debug-*.jsonl") for x in p.read_text().splitlines()]
    assert len(debug) >= 2 and all(d["tracking_id"] in served for d in debug)
    assert all("explain" in d and d["arm"] == "production" for d in debug)


@pytest.mark.parametrize("objs", [
    [{"bid": 1.5, "w": 2}, {"bid": 2, "w": 3}],
    [{"b": 'x"y'}, None, {"b": "\u00e9"}],
    [{"a": 1}, {"b": 2}],
    [{"a": True}, {"a": None}],
    [None, None],
    [{"%s": 1.0}, {"%s": 1e-300}],
    [{}, {}],
])
def test_encode_objects_is_json(objs):
    from ctrops.serve.logging_sink import encode_objects

    out = encode_objects(objs)
    assert [None if o is None else json.loads(o) for o in out] == objs


def expected_records(entries: list[RequestLog]) -> list[dict]:
    """The documented records of some requests, expanded one by one in plain Python."""
    out = []
    for e in entries:
        for rank, pos in enumerate(e.order.tolist(), 1):
            out.append({"schema": 1, "ts_ms": e.ts_ms, "request_id": e.request_id, "unit_id": e.unit_id,
                        "experiment": e.experiment, "arm": e.arm, "model_name": e.model_name,
                        "model_version": e.model_version, "passthrough": e.passthrough,
                        "tracking_id": f"{e.tracking_prefix}{pos:04x}", "candidate_id": str(e.candidate_ids[pos]),
                        "score": float(e.scores[pos]), "rank": rank,
                        "candidate_passthrough": e.candidate_passthrough[pos]})
    return out


def varied_entries() -> list[RequestLog]:
    """More requests than one build step, with every kind of value the writer special-cases."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(150):
        n = int(rng.integers(1, 9))
        scores = rng.random(n)
        if i % 7 == 0:
            scores[0] = 1.0  # a whole number: JSONL keeps it a float
        order = np.argsort(-scores, kind="stable")[:None if i % 3 else max(1, n // 2)]  # some top_k
        ids: list = [f"ad{i}-{j}" for j in range(n)]
        cp: list = [{"bid": float(rng.random()), "slot": j} for j in range(n)]
        if i == 5:
            ids = [j * 1000 for j in range(n)]  # integer ids
        if i == 6:
            ids = ['q"uote', "back\\slash", "caf\u00e9", "tab\there", "nul\x00", "ok", "x", "y"][:n]
        if i == 7:
            cp = [None] * n
        if i == 8:
            cp = [None] + [{"bid": 2, "slot": j} for j in range(1, n)]
        out.append(RequestLog(1_700_000_000_000 + i, f"r{i}", f"u{i % 5}", "exp", ["production", "candidate"][i % 2],
                              "ctr", None if i % 11 == 0 else 3, f"{i:028x}", ids, scores, order, cp,
                              None if i % 4 == 0 else {"auction": f"a{i}", "floor": 0.5}))
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_bulk_writer_matches_record_by_record_expansion(tmp_path, fmt):
    entries = varied_entries()
    sink = PredictionLog(LogConfig(str(tmp_path), fmt))  # not started: close() drains in one batch
    for e in entries:
        assert sink.submit(e)
    sink.close()
    if fmt == "jsonl":
        rows = read_jsonl(tmp_path)
    else:
        rows = pq.read_table(sorted(tmp_path.glob("predictions-*.parquet"))).to_pylist()
    want = expected_records(entries)
    assert len(rows) == len(want) == sink.records_written
    for got, exp in zip(rows, want):
        if fmt == "parquet" and isinstance(exp["candidate_passthrough"], dict):
            exp = {**exp, "candidate_passthrough": {k: float(v) if k == "bid" else v
                                                    for k, v in exp["candidate_passthrough"].items()}}
        assert got == exp
    if fmt == "jsonl":  # floats stay floats, also when whole
        text = "".join(p.read_text() for p in sorted(tmp_path.glob("predictions-*.jsonl")))
        assert '"score":1.0,' in text


def test_records_bound_drops_and_counts(tmp_path):
    sink = PredictionLog(LogConfig(str(tmp_path), "jsonl", queue_records=7))
    results = [sink.submit(entry(i)) for i in range(4)]  # 3 records each
    assert results == [True, True, False, False] and sink.dropped == 2 and sink.queued_records == 6
    sink.close()
    assert len(read_jsonl(tmp_path)) == 6 and sink.queued_records == 0


def body_of(e: RequestLog) -> bytes:
    """A /v1/predict body holding the entry's candidates (with fields the log must skip)."""
    doc = {"request_id": e.request_id, "context": {"site": "news", "n": [1, {"x": None}]},
           "candidates": [{"fields": {"ad": f"a{j}", "price": 0.5}, "id": cid}
                          | ({} if p is None and j % 2 else {"passthrough": p})
                          for j, (cid, p) in enumerate(zip(e.candidate_ids, e.candidate_passthrough))]}
    if e.passthrough is not None or e.ts_ms % 2:
        doc["passthrough"] = e.passthrough
    return json.dumps(doc).encode()


def columns_of(e: RequestLog) -> tuple | None:
    """The entry as the fast path's log columns (their documented format), or None where the fast
    path would hand over the body instead (a NUL in an id, passthrough objects of no one shape)."""
    from ctrops.serve.logging_sink import PassthroughColumns, compact_objects

    if any(type(i) is str and "\x00" in i for i in e.candidate_ids):
        return None
    ids = "\x00".join(map(str, e.candidate_ids)).encode()
    request_pt = None if e.passthrough is None else json.dumps(e.passthrough).encode()
    cp = compact_objects(list(e.candidate_passthrough))
    if cp is None:
        return ids, None, b"", (), request_pt
    if type(cp) is not PassthroughColumns:
        return None
    kinds = "".join("s" if isinstance(c, list) else {"f": "f", "i": "i", "b": "b"}[c.dtype.kind] for c in cp.columns)
    cols = tuple("\x00".join(c).encode() if isinstance(c, list) else c.tobytes() for c in cp.columns)
    return ids, cp.keys, kinds.encode(), cols, request_pt


def submit_raw(sink: PredictionLog, e: RequestLog) -> bool:
    return sink.submit_request(e.ts_ms, e.request_id, e.unit_id, e.experiment, e.arm, e.model_name,
                               e.model_version, e.tracking_prefix, body_of(e), e.scores, e.order)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_submit_request_writes_the_same_records_as_submit(tmp_path, fmt):
    entries = varied_entries()
    tables = {}
    for how in ("submit", "raw", "columns"):
        sink = PredictionLog(LogConfig(str(tmp_path / how), fmt, flush_seconds=0.01)).start()
        for i, e in enumerate(entries):
            columns = columns_of(e) if how == "columns" else None
            assert (sink.submit(e) if how == "submit" else submit_raw(sink, e) if columns is None
                    else sink.submit_columns(*e[:8], columns, e.scores, e.order))
            if i % 40 == 0:
                time.sleep(0.03)  # several writes, so raw and compacted requests meet in different batches
        sink.close()
        assert sink.dropped == 0 and sink.write_errors == 0 and sink.queued_records == 0
        if fmt == "jsonl":
            tables[how] = read_jsonl(tmp_path / how)
        else:
            # a write whose passthrough types differ starts a file with its own schema: read them one by one
            tables[how] = [r for f in sorted((tmp_path / how).glob("predictions-*.parquet"))
                           for r in pq.read_table(f).to_pylist()]
    assert len(tables["raw"]) == len(expected_records(entries))
    assert tables["raw"] == tables["submit"] == tables["columns"]


def test_submit_request_and_submit_mix_in_one_batch(tmp_path):
    entries = varied_entries()[:20]
    sink = PredictionLog(LogConfig(str(tmp_path), "jsonl"))  # not started: close() drains in one batch
    for i, e in enumerate(entries):
        assert sink.submit(e) if i % 2 else submit_raw(sink, e)
    sink.close()
    assert read_jsonl(tmp_path) == expected_records(entries)


def test_submit_request_with_an_unreadable_body_is_counted(tmp_path):
    sink = PredictionLog(LogConfig(str(tmp_path), "jsonl"))
    e = entry(0)
    assert sink.submit_request(*e[:8], b'{"candidates": [{"id": "ad0"}]}', e.scores, e.order)  # 1 of 3
    assert sink.submit_request(*e[:8], b"not json", e.scores, e.order)
    assert sink.submit_request(*e[:8], bytearray(body_of(e)), e.scores, e.order)
    sink.close()
    assert sink.write_errors == 2 and sink.dropped == 2
    assert [r["candidate_id"] for r in read_jsonl(tmp_path)] == ["ad0", "ad1", "ad2"]


def test_submit_request_queue_bounds_drop_and_count(tmp_path):
    sink = PredictionLog(LogConfig(str(tmp_path), "jsonl", queue_records=7))
    e = entry(0)
    results = [sink.submit_request(*e[:8], body_of(e), e.scores, e.order) for _ in range(4)]
    assert results == [True, True, False, False] and sink.dropped == 2 and sink.queued_records == 6
    sink.close()
    assert len(read_jsonl(tmp_path)) == 6 and sink.queued_records == 0


def test_starting_the_log_twice_runs_one_writer(tmp_path):
    """An app's startup can run twice (a second lifespan): the second start must not add a writer thread
    that would close the first one's files under it."""
    import threading

    sink = PredictionLog(LogConfig(str(tmp_path), "jsonl", flush_seconds=0.01))
    sink.start()
    sink.start()
    try:
        assert sum(t.name == "ctrops-prediction-log" for t in threading.enumerate()) == 1
        for e in varied_entries()[:20]:
            assert sink.submit(e)
    finally:
        sink.close()
    assert sink.write_errors == 0 and len(read_jsonl(tmp_path)) == len(expected_records(varied_entries()[:20]))
