"""The shipped test vectors: still reproducible, and readable by a reader written from the spec alone."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np

from ctrops.artifact import make_vectors
from ctrops.artifact.format import load_model
from ctrops.artifact.testing import encode_rows
from ctrops.data import _hashing
from ctrops.data.hashing import feature_key
from ctrops.models import reference

VECTORS = make_vectors.VECTORS_DIR
CASES = json.loads((VECTORS / make_vectors.CASES_NAME).read_text(encoding="utf-8"))


def test_regenerating_reproduces_the_shipped_files_byte_for_byte(tmp_path):
    model, cases = make_vectors.build(tmp_path)
    assert model.read_bytes() == (VECTORS / make_vectors.MODEL_NAME).read_bytes()
    assert cases.read_text(encoding="utf-8") == (VECTORS / make_vectors.CASES_NAME).read_text(encoding="utf-8")


def test_feature_keys_match_reference_and_native():
    for case in CASES["feature_keys"]:
        assert feature_key(case["field"], case["token"], case["seed"]) == case["key"]
        assert _hashing.feature_key(case["field"], case["token"], case["seed"]) == case["key"]
        assert int(case["key_hex"], 16) == case["key"]


def test_shipped_model_scores_the_expected_probabilities():
    path = VECTORS / CASES["model_file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CASES["model_file_sha256"]
    with load_model(path) as model:
        parts = model.to_parts()
        X = encode_rows(parts, [c["input"] for c in CASES["rows"]])
        for r, case in enumerate(CASES["rows"]):
            lo, hi = int(X.indptr[r]), int(X.indptr[r + 1])
            assert [[int(f), int(j), float(v)] for f, j, v in zip(X.fields[lo:hi], X.indices[lo:hi],
                                                                  X.values[lo:hi])] == case["entries"]
        probs = reference.predict_proba(model.params, X)
    np.testing.assert_allclose(probs, [c["probability"] for c in CASES["rows"]], rtol=0, atol=1e-12)


# --- a reader written only from docs/model-format.md (struct + json + hashlib, no ctrops.artifact) ---

def _spec_reader(path: Path) -> tuple[dict, dict]:
    raw = path.read_bytes()
    magic, version, flags, header_len, header_sha = struct.unpack_from("<8sIIQ32s", raw, 0)
    assert magic == b"\x89CTM\r\n\x1a\n" and version == 1 and flags == 0
    blob = raw[64:64 + header_len]
    assert hashlib.sha256(blob).digest() == header_sha
    header = json.loads(blob)
    assert header["file_size"] == len(raw)
    arrays = {}
    codes = {"<f8": "d", "<f4": "f", "<u8": "Q", "<i4": "i"}
    for sec in header["sections"]:
        data = raw[sec["offset"]:sec["offset"] + sec["nbytes"]]
        assert sec["offset"] % 64 == 0 and hashlib.sha256(data).hexdigest() == sec["sha256"]
        count = math.prod(sec["shape"])
        arrays[sec["name"]] = (struct.unpack(f"<{count}{codes[sec['dtype']]}", data), sec["shape"])
    return header, arrays


def _spec_index(header, arrays, field: int, value) -> int:
    if value is None or value == "":
        return 2 * field
    key = feature_key(field, str(value), header["encoder"]["seed"])
    keys, _ = arrays["encoder.vocab_keys"]
    values, _ = arrays["encoder.vocab_values"]
    key = key or 1
    slot = key & (len(keys) - 1)
    while keys[slot] != 0:
        if keys[slot] == key:
            return values[slot]
        slot = (slot + 1) & (len(keys) - 1)
    return 2 * field + 1


def test_a_reader_written_from_the_spec_reproduces_the_vectors():
    header, arrays = _spec_reader(VECTORS / CASES["model_file"])
    n_fields, k = header["n_fields"], header["k"]
    bias = arrays["bias"][0][0]
    linear = arrays["linear"][0]
    latent = arrays["latent"][0]  # flat [n_features, n_fields, k]

    def w(j, f):
        base = (j * n_fields + f) * k
        return latent[base:base + k]

    for case in CASES["rows"]:
        entries = [(f, _spec_index(header, arrays, f, case["input"].get(name)), 1.0)
                   for f, name in enumerate(header["field_names"])]
        assert [list(e) for e in entries] == case["entries"]
        z = bias + sum(linear[j] * x for _, j, x in entries)
        r = 1.0 / sum(x * x for *_, x in entries) if header["normalize"] else 1.0
        for a in range(len(entries)):
            for b in range(a + 1, len(entries)):
                (fa, ja, xa), (fb, jb, xb) = entries[a], entries[b]
                z += r * sum(p * q for p, q in zip(w(ja, fb), w(jb, fa))) * xa * xb
        assert abs(z - case["logit"]) < CASES["tolerance"]["logit_abs"]
        assert abs(1 / (1 + math.exp(-z)) - case["probability"]) < CASES["tolerance"]["probability_abs"]


def test_the_production_encoder_and_predictor_agree_with_the_vectors():
    from ctrops.data.features import FeatureEncoder
    from ctrops.predict import Predictor

    path = VECTORS / CASES["model_file"]
    with load_model(path) as model:
        encoder = FeatureEncoder.from_header(model.encoder_header, model.encoder_arrays)
        rows = [{"label": 0, **c["input"]} for c in CASES["rows"]]
        X = encoder.transform(rows)
        expected_indices = [e[1] for c in CASES["rows"] for e in c["entries"]]
        assert X.indices.tolist() == expected_indices
    predictor = Predictor.from_file(path)
    try:
        for case in CASES["rows"]:
            got = predictor.score({}, [case["input"]])
            assert abs(float(got[0]) - case["probability"]) < CASES["tolerance"]["probability_abs"]
    finally:
        predictor.close()
