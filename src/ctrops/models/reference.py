"""Pure-NumPy scoring by the formula in `params.py`.

Slow on purpose and written to be obviously right: the native kernels, the
request path and other-language readers are all tested against it.
"""

from __future__ import annotations

import numpy as np

from ctrops.data.matrix import FieldMatrix
from ctrops.models.params import ModelParams


def row_logit(params: ModelParams, fields: np.ndarray, indices: np.ndarray, values: np.ndarray) -> float:
    """Logit of one row given its entries."""
    x = values.astype(np.float64)
    z = float(params.bias)
    if params.linear is not None:
        z += float(np.dot(params.linear[indices].astype(np.float64), x))
    if params.model_type == "lr" or len(x) < 2:
        return z
    r = 1.0 / float(np.dot(x, x)) if params.normalize and np.dot(x, x) > 0 else 1.0
    pair = 0.0
    lat = params.latent.astype(np.float64, copy=False)
    for a in range(len(x)):
        for b in range(a + 1, len(x)):
            if params.model_type == "ffm":
                va, vb = lat[indices[a], fields[b]], lat[indices[b], fields[a]]
            else:
                va, vb = lat[indices[a]], lat[indices[b]]
            pair += float(np.dot(va, vb)) * x[a] * x[b]
    return z + r * pair


def logits(params: ModelParams, X: FieldMatrix) -> np.ndarray:
    """Logits of every row of `X`."""
    out = np.empty(X.n_rows, dtype=np.float64)
    for r in range(X.n_rows):
        lo, hi = int(X.indptr[r]), int(X.indptr[r + 1])
        out[r] = row_logit(params, X.fields[lo:hi], X.indices[lo:hi], X.values[lo:hi])
    return out


def predict_proba(params: ModelParams, X: FieldMatrix) -> np.ndarray:
    """Click probabilities of every row of `X`."""
    return 1.0 / (1.0 + np.exp(-logits(params, X)))
