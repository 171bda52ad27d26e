"""Generate the test vectors shipped with docs/model-format.md.

    python -m ctrops.artifact.make_vectors [OUT_DIR]   (default: the vectors/ folder beside this file)

Writes `tiny_ffm.ctm` (3 categorical fields, k=4, vocab indexing, linear terms)
and `tiny_ffm.json`: feature keys of a few (field, token, seed) triples, raw
input rows with the entries they encode to, and the expected logit and click
probability of each row from `ctrops.models.reference`. A reader in another
language that reproduces the keys, the entries and the probabilities (to 1e-6)
implements the format correctly. Output is deterministic: re-running it
reproduces the shipped files byte for byte (a test holds that).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ctrops.artifact.format import save_parts
from ctrops.artifact.storage import sha256_file
from ctrops.artifact.testing import encode_rows, make_model_parts
from ctrops.data.hashing import feature_key
from ctrops.models import reference

VECTORS_DIR = Path(__file__).with_name("vectors")
MODEL_NAME = "tiny_ffm.ctm"
CASES_NAME = "tiny_ffm.json"
KEY_SEED = 7

KEY_TRIPLES: list[tuple[int, str, int]] = [
    (0, "", 0), (0, "a", 0), (1, "a", 0), (0, "a", 1), (3, "v1", 7), (12, "68fd1e64", 0),
    (25, "e5ba7672", 0), (2, "café", 0), (1, "広告", 42), (65535, "x", 2**64 - 1),
]

ROWS: list[dict[str, Any]] = [
    {"f0": "v0", "f1": "v1", "f2": "v2"},
    {"f0": "v3", "f1": "v3", "f2": "v3"},
    {"f0": "v5", "f1": "unseen-value", "f2": "v1"},       # unknown -> rare index of field 1 (3)
    {"f0": "v2", "f1": "", "f2": "v4"},                    # empty -> missing index of field 1 (2)
    {"f0": "v4", "f2": "v0"},                              # absent field -> missing
    {"f0": "V4", "f1": "v4 ", "f2": "café"},               # case and spaces matter: all unknown
    {"f0": "v1", "f1": "v5", "f2": "v5"},
]


def build(out_dir: Path = VECTORS_DIR) -> tuple[Path, Path]:
    """Write the model file and the JSON cases into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = make_model_parts("ffm", n_fields=3, k=4, values_per_field=6, seed=20261123, key_seed=KEY_SEED)
    parts.metadata = {"purpose": "test vectors for docs/model-format.md", "generator": "ctrops.artifact.make_vectors"}
    model_path = out_dir / MODEL_NAME
    save_parts(model_path, parts)
    X = encode_rows(parts, ROWS)
    logits = reference.logits(parts.params, X)
    cases = []
    for r, row in enumerate(ROWS):
        lo, hi = int(X.indptr[r]), int(X.indptr[r + 1])
        cases.append({
            "input": row,
            "entries": [[int(f), int(j), float(v)] for f, j, v in zip(X.fields[lo:hi], X.indices[lo:hi],
                                                                      X.values[lo:hi])],
            "logit": float(logits[r]),
            "probability": float(1.0 / (1.0 + np.exp(-logits[r]))),
        })
    doc = {
        "description": "Test vectors for the ctrops model file format v1 (docs/model-format.md). "
                       "Rows are raw values per field name; every field is categorical and encodes to one "
                       "entry of value 1.0: empty or absent -> 2*field, a value not in the vocabulary table -> "
                       "2*field+1, else the table's index for feature_key(field, value, seed).",
        "model_file": MODEL_NAME,
        "model_file_sha256": sha256_file(model_path),
        "tolerance": {"logit_abs": 1e-6, "probability_abs": 1e-6},
        "feature_keys": [{"field": f, "token": t, "seed": s, "key": feature_key(f, t, s),
                          "key_hex": f"{feature_key(f, t, s):016x}"} for f, t, s in KEY_TRIPLES],
        "rows": cases,
    }
    cases_path = out_dir / CASES_NAME
    cases_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return model_path, cases_path


if __name__ == "__main__":
    for written in build(Path(sys.argv[1]) if len(sys.argv) > 1 else VECTORS_DIR):
        print(written)
