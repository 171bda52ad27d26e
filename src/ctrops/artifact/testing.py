"""Small, fully specified models for tests, test vectors and other-language readers.

`make_model_parts` builds a model over categorical fields whose values are
"v0".."v{n-1}" with a real vocabulary table (or hash indexing), and
`encode_rows` turns raw rows into a FieldMatrix by exactly the rules of
docs/model-format.md (missing -> 2f, unknown -> 2f+1, vocab lookup or
2*n_fields + key % hash_space). Having this minimal encoder here keeps the
format's tests and test vectors independent of the full feature pipeline.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ctrops.artifact import vocab
from ctrops.artifact.format import ModelParts
from ctrops.data.hashing import feature_key, reserved_missing, reserved_rare
from ctrops.data.matrix import FieldMatrix
from ctrops.models.params import ModelParams

VOCAB_KEYS = "vocab_keys"
VOCAB_VALUES = "vocab_values"


def encoder_header_for(field_names: Sequence[str], indexing: str, seed: int, hash_space: int,
                       min_count: int = 1) -> dict[str, Any]:
    """An encoder header for categorical-only fields (the shape docs/model-format.md describes)."""
    return {"indexing": indexing, "seed": seed, "hash_space": hash_space, "min_count": min_count,
            "field_names": list(field_names),
            "fields": [{"name": n, "kind": "categorical", "transform": None} for n in field_names]}


def make_model_parts(model_type: str = "ffm", *, n_fields: int = 3, k: int = 4, values_per_field: int = 10,
                     indexing: str = "vocab", hash_space: int = 64, linear: bool = True, seed: int = 0,
                     key_seed: int = 0, scale: float = 0.3, normalize: bool = True) -> ModelParts:
    """A random model (reproducible from `seed`) with a matching encoder header and arrays."""
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(n_fields)]
    reserved = 2 * n_fields
    arrays: dict[str, np.ndarray] = {}
    if indexing == "vocab":
        fields = np.repeat(np.arange(n_fields), values_per_field)
        tokens = [f"v{i}" for _ in range(n_fields) for i in range(values_per_field)]
        keys = np.array([feature_key(int(f), t, key_seed) for f, t in zip(fields, tokens)], dtype=np.uint64)
        n_features = reserved + keys.size
        arrays[VOCAB_KEYS], arrays[VOCAB_VALUES] = vocab.build_table(keys, np.arange(keys.size) + reserved)
    elif indexing == "hash":
        n_features = reserved + hash_space
    else:
        raise ValueError(f"indexing must be 'vocab' or 'hash', got {indexing!r}")
    latent_shape = {"ffm": (n_features, n_fields, k), "fm": (n_features, k), "lr": None}[model_type]
    params = ModelParams(
        model_type=model_type, n_features=n_features, n_fields=n_fields, k=k if latent_shape else 0,
        bias=float(rng.normal(scale=0.5)), normalize=normalize,
        linear=rng.normal(scale=scale, size=n_features).astype(np.float32) if linear else None,
        latent=None if latent_shape is None else rng.normal(scale=scale, size=latent_shape).astype(np.float32))
    header = encoder_header_for(names, indexing, key_seed, hash_space)
    return ModelParts(params, header, arrays, {"trained_on": "synthetic", "metrics": {"log_loss": 0.5}})


def encode_rows(parts: ModelParts, rows: Sequence[Mapping[str, Any]], labels: Sequence[float] | None = None
                ) -> FieldMatrix:
    """Encode raw rows {field name: value} of categorical fields, one entry per field, value 1.0."""
    header = parts.encoder_header
    names = list(header["field_names"])
    seed, indexing = int(header["seed"]), header["indexing"]
    n_fields = len(names)
    fields, indices = [], []
    for row in rows:
        for f, name in enumerate(names):
            fields.append(f)
            indices.append(_index(parts, f, row.get(name), seed, indexing, n_fields))
    n = len(rows)
    y = np.zeros(n) if labels is None else np.asarray(labels, dtype=np.float32)
    return FieldMatrix.from_arrays(np.arange(n + 1) * n_fields, fields, indices, np.ones(len(fields)), y,
                                   n_fields, parts.params.n_features)


def _index(parts: ModelParts, field: int, value: Any, seed: int, indexing: str, n_fields: int) -> int:
    if value is None or value == "":
        return reserved_missing(field)
    key = feature_key(field, str(value), seed)
    if indexing == "hash":
        return 2 * n_fields + key % int(parts.encoder_header["hash_space"])
    found = int(vocab.lookup(parts.encoder_arrays[VOCAB_KEYS], parts.encoder_arrays[VOCAB_VALUES],
                             np.array([key], dtype=np.uint64))[0])
    return found if found >= 0 else reserved_rare(field)
