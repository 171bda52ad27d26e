"""Small field-aware data sets drawn from a known model, for the model tests."""

from __future__ import annotations

import numpy as np

from ctrops.data.matrix import FieldMatrix
from ctrops.models.params import ModelParams


def make_matrix(n_rows: int, *, n_fields: int = 6, card: int = 20, seed: int = 0, interaction: float = 3.0,
                missing: float = 0.0, real_values: bool = False, weights: bool = False) -> FieldMatrix:
    """Rows with one feature per field (some dropped when `missing` > 0).

    Clicks come from a bias, a small linear part and strong XOR-like
    interactions between field pairs (0,1) and (2,3): a model without field
    interactions cannot express them, a field-aware one can.
    """
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(1234)
    ids = rng.integers(0, card, size=(n_rows, n_fields))
    lin = world.normal(0, 0.3, size=(n_fields, card))
    sign = world.choice([-1.0, 1.0], size=(2, card))
    z = -1.0 + lin[np.arange(n_fields), ids].sum(axis=1)
    z += interaction * sign[0, ids[:, 0]] * sign[1, ids[:, 1]]
    if n_fields > 3:
        z += interaction * 0.7 * sign[0, ids[:, 2]] * sign[1, ids[:, 3]]
    labels = (rng.random(n_rows) < 1 / (1 + np.exp(-z))).astype(np.float32)
    keep = rng.random((n_rows, n_fields)) >= missing
    keep[:, 0] = True
    lengths = keep.sum(axis=1)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    fields = np.broadcast_to(np.arange(n_fields), (n_rows, n_fields))[keep]
    indices = (fields * card + ids[keep])
    values = rng.uniform(0.5, 2.0, size=len(fields)) if real_values else np.ones(len(fields))
    w = rng.uniform(0.5, 2.0, size=n_rows) if weights else None
    return FieldMatrix.from_arrays(indptr, fields, indices, values, labels, n_fields, n_fields * card, weights=w)


def random_params(model_type: str, n_features: int, n_fields: int, k: int, *, linear: bool = True,
                  bias: bool = True, normalize: bool = True, seed: int = 0) -> ModelParams:
    rng = np.random.default_rng(seed)
    shape = {"ffm": (n_features, n_fields, k), "fm": (n_features, k), "lr": None}[model_type]
    latent = None if shape is None else rng.normal(0, 0.3, size=shape).astype(np.float32)
    lin = rng.normal(0, 0.5, size=n_features).astype(np.float32) if (linear or model_type == "lr") else None
    return ModelParams(model_type=model_type, n_features=n_features, n_fields=n_fields,
                       k=k if shape is not None else 0, bias=float(rng.normal()) if bias else 0.0,
                       linear=lin, latent=latent, normalize=normalize)
