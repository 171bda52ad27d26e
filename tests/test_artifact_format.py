"""The .ctm model file: round trips, zero-copy loading, and refusal of bad files."""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from pathlib import Path

import numpy as np
import pytest

from ctrops.artifact.format import (
    MAGIC,
    PREAMBLE,
    PREAMBLE_SIZE,
    file_size_of,
    inspect_model,
    load_model,
    save_model,
    save_parts,
)
from ctrops.artifact.testing import encode_rows, make_model_parts
from ctrops.errors import ModelFileError
from ctrops.models import reference


def _save(tmp_path: Path, parts, name: str = "m.ctm", **kw) -> Path:
    path = tmp_path / name
    save_parts(path, parts, **kw)
    return path


def _sections(path: Path) -> dict[str, dict]:
    return {s["name"]: s for s in inspect_model(path)["sections"]}


def _rewrite_header(path: Path, edit) -> None:
    """Apply `edit` to the JSON header and re-seal it (new header sha256), keeping the layout."""
    raw = bytearray(path.read_bytes())
    magic, version, flags, length, _, reserved = PREAMBLE.unpack_from(raw)
    header = json.loads(raw[PREAMBLE_SIZE:PREAMBLE_SIZE + length])
    edit(header)
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert len(blob) <= length, "edit must not grow the header"
    blob = blob + b" " * (length - len(blob))  # JSON allows trailing whitespace
    raw[:PREAMBLE_SIZE] = PREAMBLE.pack(magic, version, flags, length, hashlib.sha256(blob).digest(), reserved)
    raw[PREAMBLE_SIZE:PREAMBLE_SIZE + length] = blob
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("model_type", ["ffm", "fm", "lr"])
@pytest.mark.parametrize("indexing", ["vocab", "hash"])
@pytest.mark.parametrize("linear", [True, False])
def test_round_trip_float32_is_exact(tmp_path, model_type, indexing, linear):
    parts = make_model_parts(model_type, indexing=indexing, linear=linear or model_type == "lr", seed=3)
    info = save_parts(tmp_path / "m.ctm", parts)
    assert info.nbytes == (tmp_path / "m.ctm").stat().st_size == file_size_of(parts)
    with load_model(tmp_path / "m.ctm") as model:
        p, q = parts.params, model.params
        assert (q.model_type, q.n_features, q.n_fields, q.k, q.normalize) == \
            (p.model_type, p.n_features, p.n_fields, p.k, p.normalize)
        assert q.bias == p.bias
        for name in ("linear", "latent"):
            a, b = getattr(p, name), getattr(q, name)
            assert (a is None) == (b is None)
            if a is not None:
                assert b.dtype == np.float32 and np.array_equal(a, b)
        assert model.encoder_header == parts.encoder_header
        assert set(model.encoder_arrays) == set(parts.encoder_arrays)
        for name, arr in parts.encoder_arrays.items():
            assert model.encoder_arrays[name].dtype == arr.dtype
            assert np.array_equal(model.encoder_arrays[name], arr)
        assert model.metadata == parts.metadata
        assert model.field_names == parts.encoder_header["field_names"]
        assert model.checksum == info.checksum


@pytest.mark.parametrize("model_type", ["ffm", "fm", "lr"])
def test_float16_halves_weights_and_scores_closely(tmp_path, model_type):
    parts = make_model_parts(model_type, n_fields=4, values_per_field=200, seed=5)
    f32 = _save(tmp_path, parts, "a.ctm")
    f16 = _save(tmp_path, parts, "b.ctm", dtype="float16")
    weights32 = sum(s["nbytes"] for n, s in _sections(f32).items() if n in ("linear", "latent"))
    weights16 = sum(s["nbytes"] for n, s in _sections(f16).items() if n in ("linear", "latent"))
    assert weights16 * 2 == weights32
    with load_model(f16) as model:
        assert model.weight_dtype == "float16"
        assert model.params.linear.dtype == np.float32
        np.testing.assert_allclose(model.params.linear, parts.params.linear, rtol=1e-3, atol=1e-4)
        rows = [{"f0": "v1", "f1": "v7", "f2": "nope", "f3": ""}, {"f0": "v3", "f1": "v2", "f2": "v9", "f3": "v0"}]
        X = encode_rows(parts, rows)
        np.testing.assert_allclose(reference.predict_proba(model.params, X), reference.predict_proba(parts.params, X),
                                   atol=2e-3)


def test_arrays_are_zero_copy_views_of_the_map(tmp_path):
    parts = make_model_parts("ffm", seed=1)
    path = _save(tmp_path, parts)
    model = load_model(path)
    latent = model.params.latent
    assert not latent.flags.owndata and not latent.flags.writeable
    base = latent
    while isinstance(base, np.ndarray):
        base = base.base
    owner = base.obj if isinstance(base, memoryview) else base
    assert isinstance(owner, mmap.mmap) and owner is model._buffer
    offset = _sections(path)["latent"]["offset"]
    assert latent.__array_interface__["data"][0] - np.frombuffer(owner, np.uint8).__array_interface__["data"][0] \
        == offset
    for arr in (model.params.linear, *model.encoder_arrays.values()):
        assert not arr.flags.owndata
    # the arrays outlive the ModelFile object: the map stays open while they are used
    model.close()
    assert np.array_equal(latent, parts.params.latent)
    del latent, arr, base, owner
    model2 = load_model(path)
    mapping = model2._buffer
    model2.close()
    assert mapping.closed  # nothing else held an array: unmapped at once
    model3 = load_model(path)
    kept = model3.params
    mapping = model3._buffer
    model3.close()
    assert not mapping.closed and np.array_equal(kept.latent, parts.params.latent)


def test_load_without_mmap_matches(tmp_path):
    parts = make_model_parts("fm", seed=2)
    path = _save(tmp_path, parts)
    with load_model(path, mmap=False) as model:
        assert np.array_equal(model.params.latent, parts.params.latent)


def test_inspect_reads_header_only(tmp_path):
    parts = make_model_parts("ffm", seed=4)
    path = _save(tmp_path, parts)
    info = inspect_model(path)
    assert info["model_type"] == "ffm" and info["k"] == 4 and info["indexing"] == "vocab"
    assert info["file_size"] == path.stat().st_size
    # corrupt the weights: inspect (header only) still works, load refuses
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert inspect_model(path)["n_features"] == parts.params.n_features
    with pytest.raises(ModelFileError):
        load_model(path)


def test_sections_are_aligned_to_64_bytes(tmp_path):
    path = _save(tmp_path, make_model_parts("ffm", seed=6))
    for sec in _sections(path).values():
        assert sec["offset"] % 64 == 0


def test_truncated_file_is_refused(tmp_path):
    path = _save(tmp_path, make_model_parts("ffm", seed=7))
    raw = path.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 100, 30, 0):
        path.write_bytes(raw[:cut])
        with pytest.raises(ModelFileError, match=str(path)) as err:
            load_model(path)
        assert any(word in str(err.value) for word in ("truncated", "too short", "empty"))


def test_trailing_bytes_are_refused(tmp_path):
    path = _save(tmp_path, make_model_parts("lr", seed=7))
    path.write_bytes(path.read_bytes() + b"\0" * 64)
    with pytest.raises(ModelFileError, match="trailing"):
        load_model(path)


def test_bit_flip_in_a_section_is_refused(tmp_path):
    path = _save(tmp_path, make_model_parts("ffm", seed=8))
    latent = _sections(path)["latent"]
    raw = bytearray(path.read_bytes())
    raw[latent["offset"] + 13] ^= 0x04
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum mismatch in section 'latent'"):
        load_model(path)
    # verify=False skips the section checksums (a caller that verified on download)
    with load_model(path, verify=False) as model:
        assert model.params.latent.shape[0] > 0


def test_bit_flip_in_the_header_is_refused(tmp_path):
    path = _save(tmp_path, make_model_parts("ffm", seed=8))
    raw = bytearray(path.read_bytes())
    raw[PREAMBLE_SIZE + 20] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="header checksum"):
        load_model(path, verify=False)


def test_wrong_magic_and_version_are_refused(tmp_path):
    path = _save(tmp_path, make_model_parts("lr", seed=9))
    raw = bytearray(path.read_bytes())
    bad = bytearray(raw)
    bad[:8] = b"PK\x03\x04xxxx"
    path.write_bytes(bytes(bad))
    with pytest.raises(ModelFileError, match="not a ctrops model file"):
        load_model(path)
    bad = bytearray(raw)
    struct.pack_into("<I", bad, 8, 99)
    path.write_bytes(bytes(bad))
    with pytest.raises(ModelFileError, match="version 99 is not supported"):
        inspect_model(path)
    assert raw[:8] == MAGIC


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_in_a_file_are_refused(tmp_path, bad_value):
    path = _save(tmp_path, make_model_parts("ffm", seed=10))
    latent = _sections(path)["latent"]
    raw = bytearray(path.read_bytes())
    struct.pack_into("<f", raw, latent["offset"] + 4 * 17, bad_value)
    new_sha = hashlib.sha256(raw[latent["offset"]:latent["offset"] + latent["nbytes"]]).hexdigest()
    path.write_bytes(bytes(raw))

    def reseal(header):
        for sec in header["sections"]:
            if sec["name"] == "latent":
                sec["sha256"] = new_sha
    _rewrite_header(path, reseal)
    with pytest.raises(ModelFileError, match=r"non-finite weight .* at flat index 17"):
        load_model(path)


def test_saving_non_finite_weights_is_refused(tmp_path):
    parts = make_model_parts("fm", seed=11)
    parts.params.linear[3] = np.nan
    with pytest.raises(ModelFileError, match="linear weights hold a non-finite value at flat index 3"):
        save_parts(tmp_path / "m.ctm", parts)
    assert not list(tmp_path.iterdir())


def test_float16_overflow_is_refused(tmp_path):
    parts = make_model_parts("lr", seed=12)
    parts.params.linear[2] = 1e6
    with pytest.raises(ModelFileError, match="overflows float16"):
        save_parts(tmp_path / "m.ctm", parts, dtype="float16")


def test_size_guard_on_save_names_both_sizes_and_writes_nothing(tmp_path):
    parts = make_model_parts("ffm", values_per_field=100, seed=13)
    size = file_size_of(parts)
    with pytest.raises(ModelFileError, match=rf"would be {size} bytes, over the limit of {size - 1} bytes"):
        save_parts(tmp_path / "m.ctm", parts, max_bytes=size - 1)
    assert not list(tmp_path.iterdir())
    save_parts(tmp_path / "m.ctm", parts, max_bytes=size)


def test_size_guard_on_load(tmp_path):
    path = _save(tmp_path, make_model_parts("ffm", seed=14))
    size = path.stat().st_size
    with pytest.raises(ModelFileError, match=rf"{size} bytes, over the limit of 1000 bytes"):
        load_model(path, max_bytes=1000)


def test_missing_file_and_header_lies_are_refused(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "absent.ctm")
    path = _save(tmp_path, make_model_parts("ffm", seed=15))

    def wrong_shape(header):
        header["n_features"] += 1
    _rewrite_header(path, wrong_shape)
    with pytest.raises(ModelFileError, match="section 'linear' has shape"):
        load_model(path)


def test_section_beyond_the_end_is_refused(tmp_path):
    path = _save(tmp_path, make_model_parts("ffm", seed=16))

    def shift(header):
        header["sections"][-1]["offset"] += 128  # the last section ends where the file ends
    _rewrite_header(path, shift)
    with pytest.raises(ModelFileError, match="section 'encoder.vocab_values' ends at byte"):
        load_model(path, verify=False)


def test_save_is_atomic_and_replaces(tmp_path):
    path = _save(tmp_path, make_model_parts("lr", seed=17))
    first = path.read_bytes()
    _save(tmp_path, make_model_parts("lr", seed=18))
    assert path.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["m.ctm"]  # no temp files left behind


def test_direct_save_model_signature(tmp_path):
    parts = make_model_parts("fm", seed=19)
    info = save_model(tmp_path / "x.ctm", parts.params, parts.encoder_header, parts.encoder_arrays,
                      {"auc": 0.75, "trained_rows": np.int64(1000)})
    assert info.weight_dtype == "float32"
    assert inspect_model(info.path)["metadata"] == {"auc": 0.75, "trained_rows": 1000}


def test_any_single_corrupted_byte_is_refused_or_harmless(tmp_path):
    """Flip every 7th byte (one at a time): the loader either refuses with ModelFileError or the
    byte was padding, in which case the model is unchanged."""
    parts = make_model_parts("ffm", values_per_field=3, seed=20)
    path = _save(tmp_path, parts)
    raw = path.read_bytes()
    refused = 0
    for pos in range(0, len(raw), 7):
        bad = bytearray(raw)
        bad[pos] ^= 0x5A
        path.write_bytes(bytes(bad))
        try:
            with load_model(path) as model:
                assert np.array_equal(model.params.latent, parts.params.latent)
                assert np.array_equal(model.encoder_arrays["vocab_keys"], parts.encoder_arrays["vocab_keys"])
        except ModelFileError as exc:
            assert str(path) in str(exc)
            refused += 1
    assert refused > len(raw) // 7 * 0.8


def test_a_folder_is_not_a_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_model(tmp_path)
    with pytest.raises(ModelFileError, match="not a regular file"):
        inspect_model(tmp_path)
