"""load_dataset (cache reuse and invalidation, reports) and convert; the real data slices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from _data_helpers import random_criteo_lines, write_lines
from ctrops.data.convert import convert
from ctrops.data.dataset import load_dataset
from ctrops.data.features import FeatureEncoder
from ctrops.data.readers import read_libffm
from ctrops.data.spec import FieldSpec
from ctrops.errors import ConfigError, DataError

SHARED = Path("/work/shared/data")


@pytest.fixture()
def criteo_file(tmp_path):
    path = tmp_path / "train.tsv"
    lines = random_criteo_lines(np.random.default_rng(11), 500, bad_fraction=0.02)
    write_lines(path, lines)
    return path


def assert_same_matrix(a, b):
    for name in ("indptr", "fields", "indices", "values", "labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.n_fields, a.n_features) == (b.n_fields, b.n_features)


def test_load_dataset_fits_and_reports(criteo_file, tmp_path):
    X, rep = load_dataset(criteo_file, "criteo", rejects=tmp_path / "rej.jsonl")
    assert rep.rows_read == X.n_rows and rep.rows_rejected > 0 and rep.rows_read + rep.rows_rejected == 500
    assert rep.reject_path == str(tmp_path / "rej.jsonl") and Path(rep.reject_path).exists()
    assert rep.encoder is not None and rep.encoder.is_fitted and X.n_features == rep.encoder.n_features_
    assert X.n_fields == 39 and X.nnz == 39 * X.n_rows and rep.seconds > 0


def test_default_reject_file_is_next_to_input(criteo_file):
    _, rep = load_dataset(criteo_file, "criteo")
    assert rep.reject_path == str(criteo_file) + ".rejects.jsonl"
    _, rep2 = load_dataset(criteo_file, "criteo", rejects=False)
    assert rep2.reject_path is None and rep2.rows_rejected == rep.rows_rejected


def test_cache_reuse_restores_encoder(criteo_file, tmp_path):
    cache = tmp_path / "cache"
    enc1 = FeatureEncoder(FieldSpec.criteo(), min_count=2)
    X1, r1 = load_dataset(criteo_file, "criteo", encoder=enc1, cache_dir=cache)
    assert not r1.cache_hit
    enc2 = FeatureEncoder(FieldSpec.criteo(), min_count=2)
    X2, r2 = load_dataset(criteo_file, "criteo", encoder=enc2, cache_dir=cache)
    assert r2.cache_hit and r2.rows_rejected == r1.rows_rejected and r2.rows_read == r1.rows_read
    assert_same_matrix(X1, X2)
    assert isinstance(X2.indices, np.memmap)
    np.testing.assert_array_equal(enc1.table_keys_, enc2.table_keys_)
    assert enc2.to_header() == enc1.to_header()
    # a fitted encoder is its own cache key, and other settings miss the cache
    X3, r3 = load_dataset(criteo_file, "criteo", encoder=enc1, cache_dir=cache)
    assert not r3.cache_hit
    assert_same_matrix(X1, X3)
    assert load_dataset(criteo_file, "criteo", encoder=enc1, cache_dir=cache)[1].cache_hit
    _, r4 = load_dataset(criteo_file, "criteo", encoder=FeatureEncoder(FieldSpec.criteo(), min_count=3),
                         cache_dir=cache)
    assert not r4.cache_hit


def test_cache_invalidated_when_file_changes(criteo_file, tmp_path):
    cache = tmp_path / "cache"
    X1, _ = load_dataset(criteo_file, "criteo", cache_dir=cache)
    write_lines(criteo_file, random_criteo_lines(np.random.default_rng(12), 300))
    st = os.stat(criteo_file)
    os.utime(criteo_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    X2, r2 = load_dataset(criteo_file, "criteo", cache_dir=cache)
    assert not r2.cache_hit and X2.n_rows == 300


def test_empty_input_gives_empty_matrix_with_message(tmp_path):
    path = tmp_path / "empty.tsv"
    path.write_text("")
    X, rep = load_dataset(path, "criteo", cache_dir=tmp_path / "c")
    assert X.n_rows == 0 and X.n_fields == 39 and "no rows" in rep.message
    X2, rep2 = load_dataset(path, "criteo", cache_dir=tmp_path / "c")
    assert rep2.cache_hit and X2.n_rows == 0


def test_libffm_load_and_cache(tmp_path):
    path = tmp_path / "x.ffm"
    path.write_text("1 0:5:1 1:2:1\n0 1:8:0.5\n")
    X, rep = load_dataset(path, "libffm", cache_dir=tmp_path / "c")
    assert X.n_rows == 2 and X.n_features == 9 and X.n_fields == 2
    X2, rep2 = load_dataset(path, "libffm", cache_dir=tmp_path / "c")
    assert rep2.cache_hit
    assert_same_matrix(X, X2)


def test_csv_needs_a_spec(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="needs a field spec"):
        load_dataset(path, "csv")


def test_convert_criteo_to_libffm_round_trip(criteo_file, tmp_path):
    out = tmp_path / "out" / "train.ffm.gz"
    rep = convert(criteo_file, "criteo", "libffm", out, min_count=2)
    assert out.exists() and rep.rows_rejected > 0 and Path(rep.reject_path).exists()
    Y = read_libffm(out)
    enc = FeatureEncoder.load(rep.encoder_path)
    X, _ = load_dataset(criteo_file, "criteo", encoder=enc, rejects=False)
    np.testing.assert_array_equal(Y.indices, X.indices)
    np.testing.assert_array_equal(Y.fields, X.fields)
    np.testing.assert_array_equal(Y.labels, X.labels)
    assert rep.rows_written == X.n_rows


def test_convert_raw_values_in_libffm_text(tmp_path):
    spec = FieldSpec.from_dict({"label": "y", "numeric": [{"name": "p", "transform": "raw"}], "categorical": ["a"]})
    src = tmp_path / "x.csv"
    src.write_text("y,p,a\n1,0.125,u\n0,,v\n1,3,u\n")
    out = tmp_path / "x.ffm"
    convert(src, "csv", "libffm", out, spec=spec, min_count=1)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("1 0:") and lines[0].split()[1].endswith(":0.125")
    assert lines[1].split()[1] == "0:0:1"       # missing raw value -> missing index, value 1


def test_convert_to_parquet_and_back(criteo_file, tmp_path):
    out = tmp_path / "train.parquet"
    rep = convert(criteo_file, "criteo", "parquet", out)
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.num_rows == rep.rows_written and table.column_names[:3] == ["label", "I1", "I2"]
    enc = FeatureEncoder(FieldSpec.criteo(), min_count=2)
    X_tsv, _ = load_dataset(criteo_file, "criteo", encoder=enc, rejects=False)
    X_pq, _ = load_dataset(out, "parquet", encoder=enc)
    assert_same_matrix(X_tsv, X_pq)


def test_convert_refuses_meaningless_pairs(tmp_path):
    with pytest.raises(ConfigError, match="already feature numbers"):
        convert(tmp_path / "x.ffm", "libffm", "criteo", tmp_path / "y.tsv")
    with pytest.raises(ConfigError, match="not supported"):
        convert(tmp_path / "x.parquet", "parquet", "csv", tmp_path / "y.csv", spec=FieldSpec.criteo())


# ------------------------------------------------------------------ real data

KDD = SHARED / "kdd2012_track2_click_prediction_small_39948.csv.gz"
IPINYOU = SHARED / "ipinyou_adv2997_train_26773.csv.gz"


@pytest.mark.skipif(not KDD.exists(), reason="shared KDD 2012 slice not present")
def test_real_kdd2012_csv(tmp_path):
    spec = FieldSpec.from_dict({
        "label": "click",
        "numeric": ["impression", "depth", "position"],
        "categorical": ["url_hash", "ad_id", "advertiser_id", "query_id", "keyword_id", "title_id",
                        "description_id", "user_id"],
    })
    X, rep = load_dataset(KDD, "csv", encoder=FeatureEncoder(spec, min_count=2), rejects=tmp_path / "r.jsonl")
    assert rep.rows_read == 39948 and rep.rows_rejected == 0
    assert abs(float(X.labels.mean()) - 0.1684) < 0.001
    F = spec.n_fields
    assert X.indices.max() < X.n_features and X.n_features > 2 * F
    # rare values exist (ids are long-tailed) and position never misses
    assert (X.indices[spec.field_index("user_id")::F] == 2 * spec.field_index("user_id") + 1).any()
    assert (X.indices[spec.field_index("position")::F] >= 2 * F).all()


@pytest.mark.skipif(not IPINYOU.exists(), reason="shared iPinYou slice not present")
def test_real_ipinyou_null_is_missing(tmp_path):
    cats = ["weekday", "hour", "useragent", "IP", "region", "city", "adexchange", "domain", "slotid",
            "slotwidth", "slotheight", "slotvisibility", "slotformat", "creative", "advertiser", "slotprice"]
    spec = FieldSpec.from_dict({"label": "click", "categorical": cats, "missing_values": ["null"]})
    X, rep = load_dataset(IPINYOU, "csv", spec=spec, rejects=False)
    assert rep.rows_read == 26773 and rep.rows_rejected == 0 and X.n_fields == 16
    adx = spec.field_index("adexchange")
    assert (X.indices[adx::16] == 2 * adx).any()   # "null" ad exchange -> missing index


def test_libffm_declared_sizes_line_up_with_a_model(tmp_path):
    path = tmp_path / "v.ffm"
    path.write_text("1 0:5:1\n")
    X, _ = load_dataset(path, "libffm", n_fields=3, n_features=50, cache_dir=tmp_path / "c")
    assert (X.n_fields, X.n_features) == (3, 50)
    X2, rep = load_dataset(path, "libffm", cache_dir=tmp_path / "c")
    assert not rep.cache_hit and X2.n_features == 6
    with pytest.raises(DataError, match="out of range"):
        load_dataset(path, "libffm", n_features=5)


def test_convert_csv_to_parquet_keeps_ids_then_parquet_to_libffm(tmp_path):
    spec = FieldSpec.from_dict({"label": "y", "id": ["rid"], "passthrough": ["camp"],
                                "numeric": ["n"], "categorical": ["a"]})
    src = tmp_path / "x.csv"
    src.write_text("rid,y,n,a,camp,junk\nr1,1,5,u,c1,z\nr2,0,,v,c2,z\nr3,9,1,u,c1,z\nr4,0,2,,c3,z\n")
    pq_out = tmp_path / "x.parquet"
    rep = convert(src, "csv", "parquet", pq_out, spec=spec)
    assert rep.rows_written == 3 and rep.rows_rejected == 1
    import pyarrow.parquet as pq

    table = pq.read_table(pq_out)
    assert table.column_names == ["y", "n", "a", "rid", "camp"]
    assert table.column("rid").to_pylist() == ["r1", "r2", "r4"]
    assert table.column("n").to_pylist() == [5.0, None, 2.0] and table.column("a").to_pylist() == ["u", "v", None]
    enc = FeatureEncoder(spec, min_count=1)
    ffm = tmp_path / "x.ffm"
    convert(pq_out, "parquet", "libffm", ffm, encoder=enc)
    X_csv, _ = load_dataset(src, "csv", encoder=enc, rejects=False)
    Y = read_libffm(ffm, n_fields=2, n_features=enc.n_features_)
    np.testing.assert_array_equal(Y.indices, X_csv.indices)
    np.testing.assert_array_equal(Y.labels, X_csv.labels)


@pytest.mark.parametrize("fitted", [False, True])
def test_two_pass_equals_one_pass(criteo_file, tmp_path, fitted):
    spec = FieldSpec.criteo()
    enc1 = FeatureEncoder(spec, min_count=2)
    if fitted:
        load_dataset(criteo_file, "criteo", encoder=enc1, rejects=False)
    enc2 = FeatureEncoder.from_header(enc1.to_header(), enc1.arrays()) if fitted else FeatureEncoder(spec, min_count=2)
    X1, r1 = load_dataset(criteo_file, "criteo", encoder=enc1, rejects=tmp_path / "r1.jsonl", two_pass=False)
    X2, r2 = load_dataset(criteo_file, "criteo", encoder=enc2, rejects=tmp_path / "r2.jsonl", two_pass=True)
    assert_same_matrix(X1, X2)
    assert r1.rows_rejected == r2.rows_rejected > 0
    assert (tmp_path / "r1.jsonl").read_text() == (tmp_path / "r2.jsonl").read_text()
    assert enc2.to_header() == enc1.to_header()


def test_two_pass_keeps_weights(tmp_path):
    spec = FieldSpec.from_dict({"label": "y", "weight": "w", "categorical": ["a"]})
    src = tmp_path / "w.csv"
    src.write_text("y,w,a\n1,2.5,u\n0,0.5,v\n1,1,u\n")
    X1, _ = load_dataset(src, "csv", spec=spec, rejects=False, two_pass=False)
    X2, _ = load_dataset(src, "csv", spec=spec, rejects=False, two_pass=True)
    assert X2.weights is not None and X2.weights.tolist() == [2.5, 0.5, 1.0]
    assert_same_matrix(X1, X2)
