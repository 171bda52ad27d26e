"""Pruning: magnitude and retired-value drops, table rebuild, report consistency."""

from __future__ import annotations

import numpy as np
import pytest

from ctrops.artifact import vocab
from ctrops.artifact.format import file_size_of, load_model, save_parts
from ctrops.artifact.prune import prune_model, remap_matrix
from ctrops.artifact.testing import VOCAB_KEYS, VOCAB_VALUES, encode_rows, make_model_parts
from ctrops.data.hashing import feature_key, reserved_rare
from ctrops.errors import ConfigError
from ctrops.models import reference


def _rows(n: int, n_fields: int, values: int, seed: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [{f"f{f}": f"v{rng.integers(values)}" for f in range(n_fields)} for _ in range(n)]


def _index_of(parts, field: int, token: str) -> int:
    key = np.array([feature_key(field, token, parts.encoder_header["seed"])], dtype=np.uint64)
    return int(vocab.lookup(parts.encoder_arrays[VOCAB_KEYS], parts.encoder_arrays[VOCAB_VALUES], key)[0])


@pytest.mark.parametrize("model_type", ["ffm", "fm", "lr"])
def test_drop_values_fall_to_the_rare_index(model_type):
    parts = make_model_parts(model_type, n_fields=3, values_per_field=8, seed=1)
    pruned, report = prune_model(parts, drop_values={"f1": ["v2", "v5", "never-seen"]})
    assert report.dropped_by_value == 2 and report.dropped_by_threshold == 0
    assert report.values_not_in_vocab == {"f1": ["never-seen"]}
    assert report.features_after == parts.params.n_features - 2 == pruned.params.n_features
    assert _index_of(pruned, 1, "v2") == -1 and _index_of(pruned, 1, "v5") == -1
    rows = _rows(40, 3, 8, seed=2) + [{"f0": "v1", "f1": "v2", "f2": "v3"}]
    before, after = encode_rows(parts, rows), encode_rows(pruned, rows)
    # a dropped value scores exactly like the rare index of the original model
    rare_rows = [{**r, "f1": "unseen"} if r["f1"] in ("v2", "v5") else r for r in rows]
    expected = reference.predict_proba(parts.params, encode_rows(parts, rare_rows))
    np.testing.assert_allclose(reference.predict_proba(pruned.params, after), expected, rtol=1e-6)
    # and every kept value scores as before
    kept = np.array([r["f1"] not in ("v2", "v5") for r in rows])
    np.testing.assert_allclose(reference.predict_proba(pruned.params, after)[kept],
                               reference.predict_proba(parts.params, before)[kept], rtol=1e-6)
    # the entry of a dropped value now holds the rare index of field 1
    assert after.indices[-2] == reserved_rare(1)


def test_threshold_drops_only_rows_entirely_below_it():
    parts = make_model_parts("ffm", n_fields=3, values_per_field=10, seed=3)
    p = parts.params
    small = [7, 12, 20]  # vocab rows (>= 6 reserved)
    for j in small:
        p.linear[j] = 1e-4
        p.latent[j] = 1e-4 * np.sign(np.random.default_rng(j).normal(size=p.latent[j].shape))
    p.linear[9], p.latent[9] = 1e-5, 1e-5
    p.latent[9, 1, 2] = 0.5  # one large latent value keeps the row
    p.linear[1], p.latent[1] = 0.0, 0.0  # reserved rows are never dropped
    pruned, report = prune_model(parts, threshold=1e-3)
    assert report.dropped_by_threshold == 3
    assert report.index_map[small].tolist() == [-1, -1, -1]
    assert report.index_map[9] >= 0 and report.index_map[1] == 1
    keep = report.index_map >= 0
    np.testing.assert_array_equal(pruned.params.latent, p.latent[keep])
    np.testing.assert_array_equal(pruned.params.linear, p.linear[keep])
    # the rebuilt table maps every surviving key to the compacted index
    old_keys, old_values = vocab.table_entries(parts.encoder_arrays[VOCAB_KEYS], parts.encoder_arrays[VOCAB_VALUES])
    got = vocab.lookup(pruned.encoder_arrays[VOCAB_KEYS], pruned.encoder_arrays[VOCAB_VALUES], old_keys)
    np.testing.assert_array_equal(got, report.index_map[old_values])


def test_threshold_zero_is_a_no_op():
    parts = make_model_parts("fm", seed=4)
    pruned, report = prune_model(parts)
    assert report.features_after == report.features_before
    np.testing.assert_array_equal(pruned.params.latent, parts.params.latent)


def test_report_bytes_and_loss_are_consistent(tmp_path):
    parts = make_model_parts("ffm", n_fields=4, values_per_field=300, seed=5)
    rng = np.random.default_rng(6)
    zero = rng.choice(np.arange(8, parts.params.n_features), size=600, replace=False)
    parts.params.linear[zero] = 0.0
    parts.params.latent[zero] = 0.0
    path = tmp_path / "big.ctm"
    save_parts(path, parts)
    rows = _rows(60, 4, 300, seed=7)
    valid = encode_rows(parts, rows, labels=rng.integers(0, 2, len(rows)))
    with load_model(path) as model:
        pruned, report = prune_model(model, threshold=1e-9, drop_values={"f0": ["v1"]}, valid=valid)
    assert report.bytes_before == path.stat().st_size
    out = save_parts(tmp_path / "small.ctm", pruned)
    assert report.bytes_after == out.nbytes == file_size_of(pruned)
    assert report.bytes_saved == report.bytes_before - report.bytes_after > 0
    assert report.features_dropped == report.dropped_by_threshold + report.dropped_by_value
    assert report.dropped_by_threshold == 600
    # loss after equals the loss of the pruned model on the raw rows encoded afresh
    y = valid.labels.astype(np.float64)
    p_after = reference.predict_proba(pruned.params, encode_rows(pruned, rows))
    expected = -np.mean(y * np.log(p_after) + (1 - y) * np.log(1 - p_after))
    assert report.valid_log_loss_after == pytest.approx(expected, rel=1e-6)
    p_before = reference.predict_proba(parts.params, valid)
    assert report.valid_log_loss_before == pytest.approx(-np.mean(y * np.log(p_before) + (1 - y) * np.log(1 - p_before)),
                                                         rel=1e-6)
    assert set(report.to_dict()) >= {"features_before", "features_after", "bytes_before", "bytes_after", "bytes_saved"}


def test_remap_matrix_matches_fresh_encoding():
    parts = make_model_parts("fm", n_fields=3, values_per_field=6, seed=8)
    pruned, report = prune_model(parts, drop_values={"f2": ["v0", "v4"], "f0": ["v3"]})
    rows = _rows(30, 3, 6, seed=9)
    remapped = remap_matrix(encode_rows(parts, rows), report.index_map, pruned.params.n_features)
    np.testing.assert_array_equal(remapped.indices, encode_rows(pruned, rows).indices)


def test_hash_indexed_models_are_refused_with_a_reason():
    parts = make_model_parts("ffm", indexing="hash", seed=10)
    with pytest.raises(ConfigError, match="cannot prune a .hash.-indexed model without a vocabulary table"):
        prune_model(parts, threshold=0.1)


def test_unknown_field_and_bad_threshold_are_refused():
    parts = make_model_parts("lr", seed=11)
    with pytest.raises(ConfigError, match="'nope', which is not a field"):
        prune_model(parts, drop_values={"nope": ["x"]})
    with pytest.raises(ConfigError, match="threshold"):
        prune_model(parts, threshold=-1.0)


def test_pruned_model_round_trips_and_keeps_metadata(tmp_path):
    parts = make_model_parts("ffm", seed=12)
    pruned, report = prune_model(parts, drop_values={"f0": ["v0"]})
    save_parts(tmp_path / "p.ctm", pruned)
    with load_model(tmp_path / "p.ctm") as model:
        assert model.params.n_features == report.features_after
        assert model.metadata["pruning"]["dropped_by_value"] == 1
        assert model.metadata["trained_on"] == "synthetic"


def test_hash_model_with_a_routing_table_prunes_shared_rows_soundly():
    parts = make_model_parts("fm", indexing="hash", hash_space=16, n_fields=2, seed=13)
    seed, reserved = parts.encoder_header["seed"], 4
    tokens = [(f, f"v{i}") for f in range(2) for i in range(12)]
    keys = np.array([feature_key(f, t, seed) for f, t in tokens], dtype=np.uint64)
    rows = reserved + (keys % np.uint64(16)).astype(np.int64)
    parts.encoder_arrays[VOCAB_KEYS], parts.encoder_arrays[VOCAB_VALUES] = vocab.build_table(keys, rows)
    row_of = dict(zip(tokens, rows.tolist()))
    shared = next(t for t in tokens if sum(r == row_of[t] for r in rows) > 1)
    alone = next(t for t in tokens if sum(r == row_of[t] for r in rows) == 1)
    drop: dict[str, list[str]] = {}
    for f, t in (shared, alone):
        drop.setdefault(f"f{f}", []).append(t)
    pruned, report = prune_model(parts, drop_values=drop)
    assert report.index_map[row_of[shared]] >= 0       # another kept value still uses the row
    assert report.index_map[row_of[alone]] == -1
    assert report.dropped_by_value == 1
    assert report.dropped_unreachable == 16 - len(set(rows.tolist()))
    assert report.features_after == reserved + len(set(rows.tolist())) - 1
    # every kept value scores as before; dropped ones as the rare index
    for (f, t), row in row_of.items():
        got = vocab.lookup(pruned.encoder_arrays[VOCAB_KEYS], pruned.encoder_arrays[VOCAB_VALUES],
                           np.array([feature_key(f, t, seed)], dtype=np.uint64))[0]
        if (f, t) in (shared, alone):
            assert got == -1
        else:
            np.testing.assert_array_equal(pruned.params.latent[got], parts.params.latent[row])


def test_drop_values_follow_the_encoder_token_rules():
    from ctrops.data.features import FeatureEncoder
    from ctrops.data.spec import FieldDef, FieldSpec

    spec = FieldSpec(label="label", fields=(FieldDef("n", "numeric", "log2bin"), FieldDef("c", "categorical"),
                                            FieldDef("r", "numeric", "raw")))
    rows = [{"label": 0, "n": n, "c": c, "r": 0.5} for n in (1, 5, 100, 1000) for c in (7, "x", "y")]
    enc = FeatureEncoder(spec, indexing="vocab", min_count=1, seed=3).fit(rows)
    n = enc.n_features_
    parts = make_model_parts("lr", n_fields=3)
    parts.params = type(parts.params)("lr", n, 3, 0, linear=np.ones(n, np.float32))
    parts.encoder_header, parts.encoder_arrays = enc.to_header(), enc.arrays()
    pruned, report = prune_model(parts, drop_values={"c": [7.0], "n": ["105"]})  # 105 shares 100's bin
    assert report.dropped_by_value == 2 and not report.values_not_in_vocab
    after = FeatureEncoder.from_header(pruned.encoder_header, pruned.encoder_arrays)
    X = after.transform([{"label": 0, "n": 100, "c": "7", "r": 1.0}, {"label": 0, "n": 5, "c": "x", "r": 1.0}])
    assert X.indices[:2].tolist() == [reserved_rare(0), reserved_rare(1)]
    assert X.indices[3] != reserved_rare(0) and X.indices[4] != reserved_rare(1)
    with pytest.raises(ConfigError, match="raw numeric field"):
        prune_model(parts, drop_values={"r": [0.5]})
