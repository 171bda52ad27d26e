"""Small, fully specified models for tests, test vectors and other-language readers.

`make_model_parts` builds a model over categorical fields whose values are
"v0".."v{n-1}", with the header and table of a real fitted FeatureEncoder, and
`encode_rows` turns raw rows into a FieldMatrix by exactly the rules of
docs/model-format.md (missing -> 2f, unknown -> 2f+1, vocab lookup or
2*n_fields + key % hash_space). This second, minimal encoder is the spec's
algorithm written out; tests hold it equal to FeatureEncoder.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ctrops.artifact import vocab
from ctrops.artifact.format import ModelParts
from ctrops.data.features import FeatureEncoder
from ctrops.data.hashing import feature_key, reserved_missing, reserved_rare
from ctrops.data.matrix import FieldMatrix
from ctrops.data.spec import FieldDef, FieldSpec
from ctrops.models.params import ModelParams

VOCAB_KEYS = "vocab_keys"
VOCAB_VALUES = "vocab_values"


def fit_encoder(field_names: Sequence[str], indexing: str, seed: int, hash_space: int, values_per_field: int
                ) -> tuple[dict[str, Any], dict[str, np.ndarray], int]:
    """Header, arrays and n_features of a real FeatureEncoder fitted on values "v0".."v{n-1}" of each
    categorical field (min_count=1: every value kept; hash indexing then has no table)."""
    spec = FieldSpec(label="label", fields=tuple(FieldDef(name, "categorical") for name in field_names))
    rows = [{"label": 0, **{name: f"v{i}" for name in field_names}} for i in range(values_per_field)]
    encoder = FeatureEncoder(spec, indexing=indexing, min_count=1, hash_space=hash_space, seed=seed).fit(rows)
    return encoder.to_header(), encoder.arrays(), int(encoder.n_features_)


def make_model_parts(model_type: str = "ffm", *, n_fields: int = 3, k: int = 4, values_per_field: int = 10,
                     indexing: str = "vocab", hash_space: int = 64, linear: bool = True, seed: int = 0,
                     key_seed: int = 0, scale: float = 0.3, normalize: bool = True) -> ModelParts:
    """A random model (reproducible from `seed`) with the header and table of a fitted encoder."""
    rng = np.random.default_rng(seed)
    names = [f"f{i}" for i in range(n_fields)]
    header, arrays, n_features = fit_encoder(names, indexing, key_seed, hash_space, values_per_field)
    latent_shape = {"ffm": (n_features, n_fields, k), "fm": (n_features, k), "lr": None}[model_type]
    params = ModelParams(
        model_type=model_type, n_features=n_features, n_fields=n_fields, k=k if latent_shape else 0,
        bias=float(rng.normal(scale=0.5)), normalize=normalize,
        linear=rng.normal(scale=scale, size=n_features).astype(np.float32) if linear else None,
        latent=None if latent_shape is None else rng.normal(scale=scale, size=latent_shape).astype(np.float32))
    return ModelParts(params, header, dict(arrays), {"trained_on": "synthetic", "metrics": {"log_loss": 0.5}})


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
