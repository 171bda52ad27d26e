"""Readers: Criteo TSV (native, against a pure-Python parse), LIBFFM, CSV, Parquet; rejects; gzip; CRLF."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pytest

from _data_helpers import expand_blank_lines, random_criteo_lines, reference_criteo, write_lines
from ctrops.data.features import FeatureEncoder
from ctrops.data.readers import KeyedChunk, iter_criteo, iter_keyed_chunks, read_libffm
from ctrops.data.rejects import RejectLog
from ctrops.data.spec import FieldSpec
from ctrops.errors import ConfigError, DataError


def read_all(path, fmt="criteo", spec=None, seed=0, rejects=None, **kw):
    spec = spec or FieldSpec.criteo()
    chunks = list(iter_keyed_chunks(path, fmt, spec, seed, rejects=rejects, **kw))
    return KeyedChunk.concat(chunks, spec.n_fields)


@pytest.mark.parametrize("seed", [0, 12345])
@pytest.mark.parametrize("crlf, gz, blank", [(False, False, 0), (True, False, 7), (False, True, 0), (True, True, 5)])
def test_native_criteo_equals_python_reference(tmp_path, seed, crlf, gz, blank):
    rng = np.random.default_rng(seed + 3 * crlf + gz)
    lines = random_criteo_lines(rng, 400, bad_fraction=0.1)
    path = tmp_path / "in.tsv"   # no .gz suffix: gzip is found by its magic bytes
    write_lines(path, lines, crlf=crlf, gz=gz, blank_every=blank)
    rejects = RejectLog(str(path), tmp_path / "rejects.jsonl")
    got = KeyedChunk.concat(list(iter_criteo(path, seed=seed, rejects=rejects, chunk_bytes=4096)), 39)
    rejects.close()
    labels, keys, bad_lines = reference_criteo(expand_blank_lines(lines, blank), seed)
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.keys, keys)
    assert rejects.count == len(bad_lines) > 0
    records = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == bad_lines
    physical = expand_blank_lines(lines, blank)
    for r in records:
        assert r["file"] == str(path)
        assert r["raw"] == physical[r["line"] - 1]
        assert r["reason"]


def test_reject_reasons_are_specific(tmp_path):
    good = random_criteo_lines(np.random.default_rng(1), 3)
    cols = good[0].split("\t")
    lines = [good[0], "\t".join(cols[:-2]), "\t".join(["x", *cols[1:]]),
             "\t".join([cols[0], "12a", *cols[2:]]), good[1]]
    path = tmp_path / "r.tsv"
    write_lines(path, lines)
    log = RejectLog(str(path), tmp_path / "rej.jsonl")
    chunk = read_all(path, rejects=log)
    log.close()
    assert chunk.n_rows == 2
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert "expected 40 columns, found 38" in reasons[0]
    assert "bad label" in reasons[1] and "'label'" in reasons[1]
    assert "non-numeric value in field 'I1'" in reasons[2]


def test_mostly_bad_file_fails_naming_file_and_first_lines(tmp_path):
    rng = np.random.default_rng(2)
    lines = random_criteo_lines(rng, 60) + ["garbage line"] * 90
    path = tmp_path / "bad.tsv"
    write_lines(path, lines)
    with pytest.raises(DataError) as info:
        read_all(path, rejects=RejectLog(str(path)))
    msg = str(info.value)
    assert str(path) in msg and "line 61" in msg and "90 of 150" in msg


def test_small_file_with_no_good_row_fails(tmp_path):
    path = tmp_path / "tiny.tsv"
    write_lines(path, ["not\ta\tcriteo\tline"] * 3)
    with pytest.raises(DataError, match="3 of 3 rows"):
        read_all(path)


def test_few_bad_rows_are_tolerated(tmp_path):
    lines = random_criteo_lines(np.random.default_rng(3), 200)
    lines[50] = "oops"
    path = tmp_path / "ok.tsv"
    write_lines(path, lines)
    log = RejectLog(str(path))
    assert read_all(path, rejects=log).n_rows == 199 and log.count == 1 and log.first[0].line == 51


def test_empty_criteo_file_gives_empty_result(tmp_path, caplog):
    path = tmp_path / "empty.tsv"
    path.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        chunk = read_all(path)
    assert chunk.n_rows == 0 and "empty" in caplog.text


def test_empty_gzip_file(tmp_path):
    path = tmp_path / "empty.tsv.gz"
    path.write_bytes(gzip.compress(b""))
    assert read_all(path).n_rows == 0


def test_missing_input_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot open"):
        read_all(tmp_path / "absent.tsv")


def test_criteo_spec_subset_and_raw_field(tmp_path):
    lines = random_criteo_lines(np.random.default_rng(4), 50)
    path = tmp_path / "s.tsv"
    write_lines(path, lines)
    spec = FieldSpec.from_dict({"label": "label", "numeric": [{"name": "I2", "transform": "raw"}],
                                "categorical": ["C3"]})
    chunk = read_all(path, spec=spec)
    i2 = [line.split("\t")[2] for line in lines]
    present = np.array([v != "" for v in i2])
    np.testing.assert_array_equal(chunk.keys[:, 0] != 0, present)
    np.testing.assert_allclose(chunk.values[present, 0], [float(v) for v in i2 if v != ""], rtol=1e-6)
    with pytest.raises(ConfigError, match="does not have"):
        read_all(path, spec=FieldSpec.from_dict({"label": "label", "categorical": ["C27"]}))


# ---------------------------------------------------------------------------- LIBFFM

def test_libffm_reader(tmp_path):
    text = ("1 0:3:1 1:7:0.5\r\n"
            "0 0:2:1\n"
            "\n"
            "-1 1:9:2.25 2:1:1\n"
            "+1 0:1:1\n"
            "1 0:3\n"          # bad triple
            "2 0:1:1\n"        # bad label
            "1 a:1:1\n"        # bad triple
            "0\n")             # a row without entries is valid
    path = tmp_path / "x.ffm"
    path.write_text(text)
    log = RejectLog(str(path), tmp_path / "rej.jsonl")
    X = read_libffm(path, rejects=log)
    log.close()
    assert X.n_rows == 5 and X.n_fields == 3 and X.n_features == 10
    np.testing.assert_array_equal(X.labels, [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(X.indptr, [0, 2, 3, 5, 6, 6])
    np.testing.assert_array_equal(X.fields, [0, 1, 0, 1, 2, 0])
    np.testing.assert_array_equal(X.indices, [3, 7, 2, 9, 1, 1])
    np.testing.assert_allclose(X.values, [1, 0.5, 1, 2.25, 1, 1])
    records = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [6, 7, 8]
    assert "entry #1" in records[0]["reason"] and "bad label" in records[1]["reason"]


def test_libffm_gzip_and_declared_sizes(tmp_path):
    path = tmp_path / "x.ffm.gz"
    path.write_bytes(gzip.compress(b"1 0:3:1\n0 1:4:1\n"))
    X = read_libffm(path, n_fields=5, n_features=100)
    assert X.n_fields == 5 and X.n_features == 100 and X.n_rows == 2
    with pytest.raises(DataError, match="out of range"):
        read_libffm(path, n_features=4)


def test_libffm_empty(tmp_path):
    path = tmp_path / "e.ffm"
    path.write_text("")
    X = read_libffm(path)
    assert X.n_rows == 0 and X.n_features == 0


# ---------------------------------------------------------------------------- CSV / Parquet

CSV_SPEC = FieldSpec.from_dict({
    "label": "click", "weight": "w", "missing_values": ["null"],
    "numeric": ["depth", {"name": "price", "transform": "raw"}],
    "categorical": ["ad", "user"], "id": ["rid"]})


def csv_rows():
    return [
        {"click": 1, "w": 1.0, "depth": 3, "price": 2.5, "ad": "a1", "user": "u1", "rid": "r1"},
        {"click": 0, "w": 2.0, "depth": None, "price": None, "ad": "a2", "user": None, "rid": "r2"},
        {"click": 0, "w": 1.0, "depth": 1, "price": 10.0, "ad": "a1", "user": "null", "rid": "r3"},
        {"click": 1, "w": 0.5, "depth": 40, "price": 0.0, "ad": "a,3", "user": "u2", "rid": "r4"},
    ]


def write_csv(path, rows, extra_lines=(), crlf=False):
    cols = ["rid", "click", "w", "depth", "price", "ad", "user", "unused"]
    nl = "\r\n" if crlf else "\n"
    out = [",".join(cols)]
    for r in rows:
        vals = []
        for c in cols:
            v = r.get(c)
            s = "" if v is None else str(v)
            vals.append(f'"{s}"' if "," in s or c == "ad" else s)
        out.append(",".join(vals))
    out.extend(extra_lines)
    path.write_text(nl.join(out) + nl)


@pytest.mark.parametrize("crlf", [False, True])
def test_csv_equals_dict_rows(tmp_path, crlf):
    path = tmp_path / "x.csv"
    write_csv(path, csv_rows(), crlf=crlf)
    got = read_all(path, "csv", CSV_SPEC, seed=5)
    enc = FeatureEncoder(CSV_SPEC, seed=5)
    want = enc.keyed_rows(csv_rows())
    np.testing.assert_array_equal(got.keys, want.keys)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.weights, want.weights)
    np.testing.assert_array_equal(got.values, want.values)
    assert (got.keys[2, 3] == 0) and (got.keys[1, 3] == 0)  # "null" and empty are missing


def test_csv_bad_rows_with_line_numbers(tmp_path):
    rows = csv_rows()
    path = tmp_path / "bad.csv"
    write_csv(path, rows[:2], extra_lines=["r9,1,1.0,3,2.5,a,u,x,TOO_MANY", "r8,7,1.0,3,2.5,a,u,x"])
    with path.open("a") as fh:
        fh.write("r7,1,1.0,deep,2.5,a,u,x\nr6,1,-1,3,2.5,a,u,x\nr5,1,1,3,2.5,a,u,x\n")
    log = RejectLog(str(path), tmp_path / "rej.jsonl")
    got = read_all(path, "csv", CSV_SPEC, rejects=log)
    log.close()
    assert got.n_rows == 3
    records = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    by_line = {r["line"]: r["reason"] for r in records}
    assert set(by_line) == {4, 5, 6, 7}
    assert "columns" in by_line[4] and "bad label" in by_line[5]
    assert "'depth'" in by_line[6] and "bad weight" in by_line[7]


def test_csv_header_only_and_empty(tmp_path, caplog):
    path = tmp_path / "h.csv"
    path.write_text("rid,click,w,depth,price,ad,user\n")
    with caplog.at_level(logging.WARNING):
        assert read_all(path, "csv", CSV_SPEC).n_rows == 0
    assert "header but no rows" in caplog.text
    empty = tmp_path / "e.csv"
    empty.write_text("")
    assert read_all(empty, "csv", CSV_SPEC).n_rows == 0


def test_csv_missing_spec_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("click,ad\n1,a\n")
    with pytest.raises(ConfigError, match="not in the file's header"):
        read_all(path, "csv", CSV_SPEC)


def test_csv_gzip(tmp_path):
    plain = tmp_path / "x.csv"
    write_csv(plain, csv_rows())
    gz = tmp_path / "x.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(read_all(gz, "csv", CSV_SPEC).keys, read_all(plain, "csv", CSV_SPEC).keys)


def test_parquet_equals_dict_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = csv_rows()
    table = pa.table({
        "rid": [r["rid"] for r in rows],
        "click": pa.array([r["click"] for r in rows], pa.int8()),
        "w": [r["w"] for r in rows],
        "depth": pa.array([r["depth"] for r in rows], pa.int64()),
        "price": [r["price"] for r in rows],
        "ad": pa.array([r["ad"] for r in rows]).dictionary_encode(),
        "user": [r["user"] for r in rows],
    })
    path = tmp_path / "x.parquet"
    pq.write_table(table, path)
    got = read_all(path, "parquet", CSV_SPEC, seed=1)
    want = FeatureEncoder(CSV_SPEC, seed=1).keyed_rows(rows)
    np.testing.assert_array_equal(got.keys, want.keys)
    np.testing.assert_array_equal(got.values, want.values)
    # integer categorical columns hash like their decimal text
    int_spec = FieldSpec.from_dict({"label": "click", "categorical": ["depth"]})
    got_int = read_all(path, "parquet", int_spec)
    want_int = FeatureEncoder(int_spec).keyed_rows([{"depth": r["depth"]} for r in rows])
    np.testing.assert_array_equal(got_int.keys, want_int.keys)


def test_parquet_bad_label_rows_rejected(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"click": [1, 3, 0, None], "ad": ["a", "b", "c", "d"]}), path)
    log = RejectLog(str(path))
    spec = FieldSpec.from_dict({"label": "click", "categorical": ["ad"]})
    assert read_all(path, "parquet", spec, rejects=log).n_rows == 2
    assert [r.line for r in log.first] == [2, 4]


def test_unknown_format():
    with pytest.raises(ConfigError, match="unknown input format"):
        list(iter_keyed_chunks("x", "json", FieldSpec.criteo()))


def test_parallel_segments_equal_single_thread(tmp_path):
    lines = random_criteo_lines(np.random.default_rng(8), 9000, bad_fraction=0.05)
    path = tmp_path / "big.tsv"
    write_lines(path, lines, blank_every=97)
    assert path.stat().st_size > (1 << 20)   # segments are only cut in buffers of 1 MiB and more
    logs, chunks = [], []
    for threads in (1, 3):
        log = RejectLog(str(path))
        log.keep = 10**6
        chunks.append(KeyedChunk.concat(list(iter_criteo(path, rejects=log, chunk_bytes=4 << 20,
                                                         n_threads=threads)), 39))
        logs.append(log)
    np.testing.assert_array_equal(chunks[0].keys, chunks[1].keys)
    np.testing.assert_array_equal(chunks[0].labels, chunks[1].labels)
    assert [r.line for r in logs[0].first] == [r.line for r in logs[1].first]
    assert logs[0].count == logs[1].count > 0
