"""Typed entry points to the native scorers, in the model layout of `params.py`.

`score_candidates` is the request path of the server: one context, N
candidate ads. It passes arrays straight to the kernel, which checks dtypes
and index bounds itself, so a request pays a few microseconds of Python.
`contributions` explains one row for the sampled debug log.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import DataError, ModelFileError
from ctrops.models import _ffm
from ctrops.models.params import ModelParams

_EMPTY_F32 = np.empty(0, dtype=np.float32)
_BAD_ARRAYS, _OUT_OF_RANGE = 1, 2


def as_native(params: ModelParams) -> ModelParams:
    """`params` with float32 C-contiguous arrays (a copy only when needed, e.g. float16 files).

    Call once after loading a model; the scorers below copy on every call
    otherwise.
    """
    def fix(arr):
        if arr is None or (arr.dtype == np.float32 and arr.flags.c_contiguous):
            return arr
        return np.ascontiguousarray(arr, dtype=np.float32)

    linear, latent = fix(params.linear), fix(params.latent)
    if linear is params.linear and latent is params.latent:
        return params
    return ModelParams(model_type=params.model_type, n_features=params.n_features, n_fields=params.n_fields,
                       k=params.k, bias=params.bias, linear=linear, latent=latent, normalize=params.normalize,
                       extra=params.extra)


def candidate_model(params: ModelParams) -> "_ffm.CandidateModel":
    """The model's weights checked once for the request path (`FeatureEncoder.score_request`)."""
    params = as_native(params)
    latent = None if params.latent is None else params.latent.reshape(-1)
    return _ffm.CandidateModel(params.model_type, latent, params.linear, float(params.bias), bool(params.normalize),
                               int(params.n_fields), int(params.n_features), int(params.k))


def _layout(params: ModelParams) -> tuple[int, int, int]:
    """(model code, floats per feature, floats per field) of the model layout."""
    code = _ffm.MODEL_CODES[params.model_type]
    if params.model_type == "ffm":
        return code, params.n_fields * params.k, params.k
    if params.model_type == "fm":
        return code, params.k, 0
    return code, 0, 0


def predict_logits(params: ModelParams, X: FieldMatrix, n_threads: int = 1) -> np.ndarray:
    """Logit of every row of X (float64), parallel over rows for large batches."""
    from ctrops.models.estimators import _native_arrays, check_matrix

    params = as_native(params)
    check_matrix(X, what="prediction data", n_fields=params.n_fields, n_features=params.n_features)
    if params.k > _ffm.MAX_K:
        raise ModelFileError(f"k={params.k} exceeds the supported maximum {_ffm.MAX_K}")
    code, sj, sf = _layout(params)
    indptr, fields, indices, values = _native_arrays(X)
    out = np.empty(X.n_rows, dtype=np.float64)
    latent = _EMPTY_F32 if params.latent is None else params.latent.reshape(-1)
    linear = _EMPTY_F32 if params.linear is None else params.linear
    _ffm.predict_logits(code, indptr, fields, indices, values, latent, sj, sf, params.k, linear, 1,
                        float(params.bias), bool(params.normalize), out, max(int(n_threads), 1))
    return out


def predict_proba(params: ModelParams, X: FieldMatrix, n_threads: int = 1) -> np.ndarray:
    """Click probability of every row of X."""
    return 1.0 / (1.0 + np.exp(-predict_logits(params, X, n_threads)))


def score_candidates(params: ModelParams, ctx_fields: np.ndarray, ctx_indices: np.ndarray,
                     ctx_values: np.ndarray, cand_indptr: np.ndarray, cand_fields: np.ndarray,
                     cand_indices: np.ndarray, cand_values: np.ndarray,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Click probabilities of N candidates shown in one context.

    Candidate c's entries are cand_*[cand_indptr[c]:cand_indptr[c+1]]. Each
    candidate is scored as the row (context entries + its entries), exactly as
    `reference.row_logit` would, but the context-only part is computed once.
    Fast path: int32 fields/indices, float32 values, int64 indptr, float32
    model arrays (see `as_native`); other dtypes are converted first.
    """
    n_cand = len(cand_indptr) - 1
    if out is None:
        out = np.empty(max(n_cand, 0), dtype=np.float64)
    code = _ffm.MODEL_CODES[params.model_type]
    k = params.k
    n_fields = params.n_fields
    sj = n_fields * k if code == 0 else k
    status = _ffm.score_candidates(code, params.latent, sj, k, k, params.linear, params.bias, params.normalize,
                                   n_fields, params.n_features, ctx_fields, ctx_indices, ctx_values,
                                   cand_indptr, cand_fields, cand_indices, cand_values, out)
    if status == 0:
        return out
    if status == _BAD_ARRAYS:
        return _score_candidates_slow(params, ctx_fields, ctx_indices, ctx_values, cand_indptr, cand_fields,
                                      cand_indices, cand_values, out)
    raise DataError(_range_message(params, ctx_fields, ctx_indices, cand_fields, cand_indices))


def _score_candidates_slow(params, ctx_fields, ctx_indices, ctx_values, cand_indptr, cand_fields, cand_indices,
                           cand_values, out) -> np.ndarray:
    """Convert dtypes / layouts, validate shapes with messages, then call the fast path once more."""
    params = as_native(params)
    cf = np.ascontiguousarray(ctx_fields, dtype=np.int32)
    cj = np.ascontiguousarray(ctx_indices, dtype=np.int32)
    cv = np.ascontiguousarray(ctx_values, dtype=np.float32)
    ptr = np.ascontiguousarray(cand_indptr, dtype=np.int64)
    af = np.ascontiguousarray(cand_fields, dtype=np.int32)
    aj = np.ascontiguousarray(cand_indices, dtype=np.int32)
    av = np.ascontiguousarray(cand_values, dtype=np.float32)
    if not (cf.ndim == cj.ndim == cv.ndim == 1 and len(cf) == len(cj) == len(cv)):
        raise DataError(f"context arrays must be 1-d of equal length, got {cf.shape}, {cj.shape}, {cv.shape}")
    if ptr.ndim != 1 or len(ptr) < 1 or ptr[0] != 0 or np.any(np.diff(ptr) < 0):
        raise DataError("cand_indptr must be a non-decreasing 1-d array starting at 0")
    nnz = int(ptr[-1])
    if not (len(af) == len(aj) == len(av) == nnz):
        raise DataError(f"candidate arrays must have cand_indptr[-1]={nnz} entries, "
                        f"got {len(af)}, {len(aj)}, {len(av)}")
    n_cand = len(ptr) - 1
    target = out
    if not (isinstance(out, np.ndarray) and out.dtype == np.float64 and out.flags.c_contiguous
            and out.size >= n_cand):
        target = np.empty(n_cand, dtype=np.float64)
    code = _ffm.MODEL_CODES[params.model_type]
    sj = params.n_fields * params.k if code == 0 else params.k
    status = _ffm.score_candidates(code, params.latent, sj, params.k, params.k, params.linear, params.bias,
                                   params.normalize, params.n_fields, params.n_features, cf, cj, cv, ptr, af, aj,
                                   av, target)
    if status == _OUT_OF_RANGE:
        raise DataError(_range_message(params, cf, cj, af, aj))
    if status != 0:
        raise DataError(f"cannot score candidates with this model (k={params.k}, arrays rejected by the kernel)")
    if target is not out:
        if out is not None and isinstance(out, np.ndarray):
            out[:n_cand] = target
            return out
        return target
    return out


def _range_message(params: ModelParams, cf, cj, af, aj) -> str:
    for name, arr, limit in (("context field", cf, params.n_fields), ("context feature index", cj, params.n_features),
                             ("candidate field", af, params.n_fields),
                             ("candidate feature index", aj, params.n_features)):
        arr = np.asarray(arr)
        if arr.size and (arr.min() < 0 or arr.max() >= limit):
            bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
            return (f"{name} {bad} outside [0, {limit}) of the model; "
                    f"the request was not encoded with the model's own encoder")
    return "an entry is outside the model's fields or features"


@dataclass(frozen=True)
class Contributions:
    """What made up one row's logit (for the sampled debug log of the server)."""

    bias: float
    linear: list[dict]        # {"field", "index", "value", "weight", "contribution"}
    pairs: list[dict]         # {"fields": (fa, fb), "indices": (ja, jb), "contribution"} (r applied)
    scale: float              # r of the instance-wise normalization (1.0 when off)
    logit: float

    def to_dict(self) -> dict:
        return {"bias": self.bias, "linear": self.linear, "pairs": self.pairs, "scale": self.scale,
                "logit": self.logit}


def contributions(params: ModelParams, fields, indices, values, *, top_pairs: int | None = None) -> Contributions:
    """Per-feature linear terms and per-pair interaction terms of one row.

    The terms sum to the logit (bias + linear + pairs). With `top_pairs`, only
    the largest pairs by absolute contribution are listed (the logit stays exact).
    """
    f = np.asarray(fields, dtype=np.int64)
    j = np.asarray(indices, dtype=np.int64)
    x = np.asarray(values, dtype=np.float64)
    if not (f.shape == j.shape == x.shape and f.ndim == 1):
        raise DataError("fields, indices and values must be 1-d arrays of equal length")
    if f.size and (f.min() < 0 or f.max() >= params.n_fields or j.min() < 0 or j.max() >= params.n_features):
        raise DataError(_range_message(params, f, j, f[:0], j[:0]))
    logit = float(params.bias)
    linear = []
    if params.linear is not None:
        w = params.linear[j].astype(np.float64)
        for a in range(len(x)):
            c = float(w[a] * x[a])
            linear.append({"field": int(f[a]), "index": int(j[a]), "value": float(x[a]), "weight": float(w[a]),
                           "contribution": c})
            logit += c
    pairs: list[dict] = []
    scale = 1.0
    if params.model_type != "lr" and len(x) > 1:
        ss = float(np.dot(x, x))
        scale = 1.0 / ss if params.normalize and ss > 0 else 1.0
        lat = params.latent.astype(np.float64, copy=False)
        a_idx, b_idx = np.triu_indices(len(x), k=1)
        if params.model_type == "ffm":
            va, vb = lat[j[a_idx], f[b_idx]], lat[j[b_idx], f[a_idx]]
        else:
            va, vb = lat[j[a_idx]], lat[j[b_idx]]
        terms = np.einsum("pk,pk->p", va, vb) * x[a_idx] * x[b_idx] * scale
        logit += float(terms.sum())
        keep = np.argsort(-np.abs(terms), kind="stable")
        if top_pairs is not None:
            keep = keep[:top_pairs]
        pairs = [{"fields": (int(f[a_idx[p]]), int(f[b_idx[p]])), "indices": (int(j[a_idx[p]]), int(j[b_idx[p]])),
                  "contribution": float(terms[p])} for p in keep]
    return Contributions(bias=float(params.bias), linear=linear, pairs=pairs, scale=scale, logit=logit)
