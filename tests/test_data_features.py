"""FeatureEncoder: index layout, rare/missing/unseen, vocab vs hash, log2bin, header round trip, requests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ctrops.data import _parse
from ctrops.data.features import FeatureEncoder, table_capacity
from ctrops.data.hashing import feature_key
from ctrops.data.spec import FieldSpec
from ctrops.data.tokens import categorical_token, log2bin_token, raw_feature_key, stored_key
from ctrops.errors import ConfigError, DataError, ModelFileError

SPEC = FieldSpec.from_dict({
    "label": "y",
    "numeric": ["n", {"name": "r", "transform": "raw"}],
    "categorical": ["a", "b", "c"],
    "missing_values": ["null"],
})


def rows_for_fit():
    rows = []
    for i in range(30):
        rows.append({"y": i % 2, "n": i % 5, "r": float(i), "a": "x" if i < 20 else "y",
                     "b": f"b{i % 3}", "c": "once" if i == 0 else ("twice" if i in (1, 2) else None)})
    return rows


# ------------------------------------------------------------------ log2bin

@pytest.mark.parametrize("v, token", [
    (0, "0"), (1, "1"), (2, "2"), (2.0, "2"), (1.999, "1"), (-1, "-1"), (-1.5, "-1"), (-0.5, "0"),
    (2.0001, "~0"), (3, "~1"), (math.e ** 2, "~4"), (10, "~5"), (1000, "~47"), (1e9, "~429"),
])
def test_log2bin_edges(v, token):
    assert log2bin_token(v) == token
    assert _parse.log2bin_token_native(float(v)) == token


def test_log2bin_native_equals_python_on_random_values():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(-1000, 10**7, 3000).astype(float), rng.normal(0, 50, 3000),
                             np.exp(rng.uniform(-3, 20, 3000)), np.exp(np.arange(0, 12, 0.5))])
    for v in values.tolist():
        assert _parse.log2bin_token_native(v) == log2bin_token(v), v


def test_categorical_tokens():
    assert categorical_token("7") == categorical_token(7) == categorical_token(7.0) == "7"
    assert categorical_token(7.5) == "7.5" and categorical_token(b"ab") == "ab"


# ------------------------------------------------------------------ layout

def test_vocab_layout_rare_missing_unseen():
    enc = FeatureEncoder(SPEC, indexing="vocab", min_count=2).fit(rows_for_fit())
    F = SPEC.n_fields
    X = enc.transform([
        {"n": None, "r": None, "a": "x", "b": "b1", "c": "twice"},      # missing numerics, kept cats
        {"n": 3, "r": 2.5, "a": "never", "b": "null", "c": "once"},     # unseen, "null" missing, rare
    ])
    assert X.n_rows == 2 and X.nnz == 2 * F
    np.testing.assert_array_equal(X.fields, np.tile(np.arange(F), 2))
    row0, row1 = X.indices[:F], X.indices[F:]
    assert row0[0] == 0 and row0[1] == 2                         # missing -> 2f
    assert all(i >= 2 * F for i in row0[2:])                     # kept values
    assert row1[2] == 2 * 2 + 1                                  # unseen -> rare of field a
    assert row1[3] == 2 * 3                                      # "null" is missing
    assert row1[4] == 2 * 4 + 1                                  # seen once < min_count -> rare
    assert row1[1] >= 2 * F and X.values[F + 1] == np.float32(2.5)   # raw value kept
    assert X.values[0] == 1.0 and X.values[1] == 1.0
    assert X.n_features == enc.n_features_ == 2 * F + enc.n_kept_


def test_vocab_indices_follow_field_then_key_order():
    enc = FeatureEncoder(SPEC, min_count=1, seed=3).fit(rows_for_fit())
    F = SPEC.n_fields
    keys, values = _parse_table(enc)
    order = np.argsort(values)
    assert values[order].tolist() == list(range(2 * F, 2 * F + enc.n_kept_))
    fields = [_field_of(enc, k) for k in keys[order]]
    assert fields == sorted(fields)
    for f in set(fields):
        ks = [k for k, ff in zip(keys[order], fields) if ff == f]
        assert ks == sorted(ks)


def _parse_table(enc):
    used = enc.table_keys_ != 0
    return enc.table_keys_[used], enc.table_values_[used]


def _field_of(enc, key):
    # find the field by re-hashing every fitted token
    for row in rows_for_fit():
        chunk = enc.keyed_rows([row])
        hit = np.flatnonzero(chunk.keys[0] == key)
        if hit.size:
            return int(hit[0])
    raise AssertionError("key not from the fit rows")


def test_table_lookup_equals_sorted_key_lookup():
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(1, 2**63, 5000, dtype=np.int64).astype(np.uint64))
    values = rng.permutation(len(keys)).astype(np.int32)
    tk, tv = _parse.build_table(keys, values, table_capacity(len(keys)))
    assert len(tk) >= 2 * len(keys) and len(tk) & (len(tk) - 1) == 0
    probe = np.concatenate([keys, rng.integers(1, 2**63, 2000, dtype=np.int64).astype(np.uint64)])
    got = _parse.lookup_keys(tk, tv, probe)
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], probe)
    pos = np.minimum(pos, len(keys) - 1)
    found = keys[order][pos] == probe
    want = np.where(found, values[order][pos], -1)
    np.testing.assert_array_equal(got, want)


def test_hash_mode_indices_and_rare_routing():
    F = SPEC.n_fields
    rows = rows_for_fit()
    enc = FeatureEncoder(SPEC, indexing="hash", min_count=2, hash_space=97, seed=9).fit(rows)
    assert enc.n_features_ == 2 * F + 97
    X = enc.transform([{"a": "x", "c": "once", "b": "b0"}])
    a_key = stored_key(feature_key(2, "x", 9))
    assert X.indices[2] == 2 * F + a_key % 97
    assert X.indices[4] == 2 * 4 + 1                # rare even in hash mode
    plain = FeatureEncoder(SPEC, indexing="hash", min_count=1, hash_space=97, seed=9).fit(rows)
    assert plain.arrays() == {} and len(plain.table_keys_) == 0
    X2 = plain.transform([{"a": "never-seen"}])
    assert X2.indices[2] == 2 * F + stored_key(feature_key(2, "never-seen", 9)) % 97


def test_weights_count_toward_min_count():
    spec = FieldSpec.from_dict({"label": "y", "weight": "w", "categorical": ["a"]})
    enc = FeatureEncoder(spec, min_count=3).fit([{"y": 1, "w": 5.0, "a": "heavy"}, {"y": 0, "w": 1.0, "a": "light"}])
    X = enc.transform([{"a": "heavy"}, {"a": "light"}])
    assert X.indices[0] == 2 and X.indices[1] == 1
    assert X.weights is not None and X.weights.tolist() == [1.0, 1.0]


def test_invalid_settings():
    with pytest.raises(ConfigError, match="indexing"):
        FeatureEncoder(SPEC, indexing="onehot").fit(rows_for_fit())
    with pytest.raises(ConfigError, match="hash_space"):
        FeatureEncoder(SPEC, indexing="hash", hash_space=0).fit(rows_for_fit())
    with pytest.raises(ConfigError, match="not fitted"):
        FeatureEncoder(SPEC).transform(rows_for_fit())
    with pytest.raises(DataError, match="'n'"):
        FeatureEncoder(SPEC, min_count=1).fit([{"n": "abc"}])


# ------------------------------------------------------------------ persistence

@pytest.mark.parametrize("indexing, min_count", [("vocab", 2), ("hash", 2), ("hash", 1)])
def test_header_round_trip_with_memory_maps(tmp_path, indexing, min_count):
    enc = FeatureEncoder(SPEC, indexing=indexing, min_count=min_count, hash_space=1000, seed=4).fit(rows_for_fit())
    header = json.loads(json.dumps(enc.to_header()))
    arrays = {}
    for name, arr in enc.arrays().items():
        np.save(tmp_path / f"{name}.npy", arr)
        arrays[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    back = FeatureEncoder.from_header(header, arrays)
    for name, arr in arrays.items():
        assert np.shares_memory(getattr(back, "table_keys_" if "keys" in name else "table_values_"), arr)
    probe = rows_for_fit() + [{"a": "new", "n": 1e6, "r": -3.0}]
    a, b = enc.transform(probe), back.transform(probe)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)
    assert back.n_features_ == enc.n_features_ and back.to_header() == enc.to_header()
    ctx, cands = {"n": 3}, [{"a": "x"}, {"a": "y", "r": 1.0}]
    ra, rb = enc.encode_request(ctx, cands), back.encode_request(ctx, cands)
    for x, y in zip(ra, rb):
        np.testing.assert_array_equal(x, y)
    saved = enc.save(tmp_path / "enc")
    np.testing.assert_array_equal(FeatureEncoder.load(saved).transform(probe).indices, a.indices)


def test_from_header_refuses_bad_input():
    enc = FeatureEncoder(SPEC, min_count=1).fit(rows_for_fit())
    header, arrays = enc.to_header(), enc.arrays()
    with pytest.raises(ModelFileError, match="format"):
        FeatureEncoder.from_header({**header, "format": "other"}, arrays)
    with pytest.raises(ModelFileError, match="lack"):
        FeatureEncoder.from_header(header, {})
    with pytest.raises(ModelFileError, match="power of two"):
        FeatureEncoder.from_header(header, {k: v[:-1] for k, v in arrays.items()})
    with pytest.raises(ModelFileError, match="uint64/int32"):
        FeatureEncoder.from_header(header, {"vocab_keys": arrays["vocab_keys"].astype(np.int64),
                                            "vocab_values": arrays["vocab_values"]})


# ------------------------------------------------------------------ request path

def _joined_rows_equal(enc, context, candidates):
    got = enc.encode_request(context, candidates)
    want = enc.transform([{**(context or {}), **c} for c in candidates])
    F = enc.n_fields
    assert got.n_candidates == len(candidates)
    assert got.ctx_fields.dtype == np.int32 and got.cand_indptr.dtype == np.int64
    assert got.ctx_values.dtype == np.float32 and got.cand_indices.dtype == np.int32
    for c in range(len(candidates)):
        lo, hi = got.cand_indptr[c], got.cand_indptr[c + 1]
        fields = np.concatenate([got.ctx_fields, got.cand_fields[lo:hi]])
        idx = np.concatenate([got.ctx_indices, got.cand_indices[lo:hi]])
        val = np.concatenate([got.ctx_values, got.cand_values[lo:hi]])
        order = np.argsort(fields, kind="stable")
        np.testing.assert_array_equal(fields[order], np.arange(F))
        np.testing.assert_array_equal(idx[order], want.indices[c * F:(c + 1) * F])
        np.testing.assert_array_equal(val[order], want.values[c * F:(c + 1) * F])


@pytest.mark.parametrize("indexing, min_count", [("vocab", 2), ("hash", 2), ("hash", 1)])
def test_encode_request_equals_transform_of_joined_rows(indexing, min_count):
    enc = FeatureEncoder(SPEC, indexing=indexing, min_count=min_count, hash_space=500, seed=2).fit(rows_for_fit())
    rng = np.random.default_rng(5)
    pool = {"n": [None, 0, 1, 2, 3, 4, 2.5, "3", "", "null", float("nan"), 10**12, -7],
            "r": [None, 0.0, 1.5, -2, "4.25", ""],
            "a": ["x", "y", "z", "", None, "null", 7, 7.0],
            "b": ["b0", "b1", "b2", "b9", None, 3],
            "c": ["once", "twice", None, float("nan")]}
    for trial in range(60):
        names = list(pool)
        ctx = {n: pool[n][rng.integers(len(pool[n]))] for n in names if rng.random() < 0.6}
        ctx["tracking_id"] = "ignored"
        cands = []
        for _ in range(int(rng.integers(0, 6))):
            cands.append({n: pool[n][rng.integers(len(pool[n]))] for n in names if rng.random() < 0.4})
        _joined_rows_equal(enc, ctx, cands)
    _joined_rows_equal(enc, None, [{"a": "x"}])
    _joined_rows_equal(enc, {"a": "x", "b": "b1"}, [{"a": "y"}, {"b": "b2"}, {}])


def test_encode_request_candidate_wins_and_shared_fields_stay_in_context():
    enc = FeatureEncoder(SPEC, min_count=1).fit(rows_for_fit())
    out = enc.encode_request({"a": "x", "b": "b0", "n": 1}, [{"a": "y"}, {"a": "x"}])
    assert 0 in out.ctx_fields and 3 in out.ctx_fields and 2 not in out.ctx_fields
    assert out.cand_fields.tolist() == [2, 2]
    x_idx = enc.transform([{"a": "x"}]).indices[2]
    y_idx = enc.transform([{"a": "y"}]).indices[2]
    assert out.cand_indices.tolist() == [y_idx, x_idx]


def test_encode_request_many_candidates_and_mapping_types():
    enc = FeatureEncoder(SPEC, min_count=1).fit(rows_for_fit())
    from types import MappingProxyType

    cands = tuple(MappingProxyType({"a": "x" if i % 2 else "y", "b": f"b{i % 3}"}) for i in range(300))
    _joined_rows_equal(enc, MappingProxyType({"n": 2}), [dict(c) for c in cands])
    out = enc.encode_request({"n": 2}, cands)
    assert out.n_candidates == 300


def test_encode_request_rejects_non_numbers():
    enc = FeatureEncoder(SPEC, min_count=1).fit(rows_for_fit())
    with pytest.raises(DataError, match="'n'"):
        enc.encode_request({"n": "abc"}, [{}])
    with pytest.raises(DataError, match="'r'"):
        enc.encode_request({}, [{"r": float("inf")}])


def test_raw_feature_key_is_the_empty_token():
    assert raw_feature_key(1, 5) == stored_key(feature_key(1, "", 5))


def test_encode_request_non_ascii_values():
    rows = [{"y": 1, "a": "日本", "b": "é", "c": "plain", "n": 3}] * 2 + [{"y": 0, "a": "ascii", "b": "ü"}]
    enc = FeatureEncoder(SPEC, min_count=1).fit(rows)
    x = enc.transform([{"a": "日本", "b": "é"}])
    assert x.indices[2] >= 2 * SPEC.n_fields and x.indices[3] >= 2 * SPEC.n_fields
    _joined_rows_equal(enc, {"c": "plain", "b": "ü"}, [{"a": "日本", "b": "é"}, {"a": "ascii"}, {"a": "ß"}])


def test_arrow_table_input_with_empty_strings():
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"y": ["1", "0"], "n": ["", "4"], "r": ["2.5", ""], "a": ["x", ""], "b": ["", "b1"],
                      "c": ["null", "once"]})
    enc = FeatureEncoder(SPEC, min_count=1).fit(table)
    want = enc.transform([{"y": 1, "r": 2.5, "a": "x"}, {"y": 0, "n": 4, "b": "b1", "c": "once"}])
    got = enc.transform(table)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.values, want.values)
    np.testing.assert_array_equal(got.labels, [1, 0])
    with pytest.raises(DataError, match="row 2"):
        enc.transform(pa.table({"y": ["1", "x"], "n": ["1", "1"], "r": ["1", "1"], "a": ["x", "x"],
                                "b": ["b", "b"], "c": ["c", "c"]}))


def test_encode_request_reentry_keeps_results_apart():
    enc = FeatureEncoder(SPEC, min_count=1).fit(rows_for_fit())
    inner_results = []

    class Token:
        """A value whose str() runs another request on the same encoder (as a thread switch could)."""

        def __str__(self) -> str:
            inner_results.append(enc.encode_request({"a": "y", "b": "b2"}, [{"c": "once"}] * 3))
            return "x"

    out = enc.encode_request({"n": 2, "b": "b1"}, [{"a": Token()}, {"a": "y"}])
    want = enc.encode_request({"n": 2, "b": "b1"}, [{"a": "x"}, {"a": "y"}])
    for got, exp in zip(out, want):
        np.testing.assert_array_equal(got, exp)
    again = enc.encode_request({"a": "y", "b": "b2"}, [{"c": "once"}] * 3)
    for got, exp in zip(inner_results[0], again):
        np.testing.assert_array_equal(got, exp)
