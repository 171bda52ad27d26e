"""The request path (one context, many candidates) against the NumPy reference.

`score_candidates` computes each distinct candidate feature's term with the
context once per request; these tests make candidates share features heavily,
also the same feature index under two fields (possible with hash indexing), so
a wrong de-duplication would show.
"""

from __future__ import annotations

import numpy as np
import pytest
from _models_data import random_params

from ctrops.models import reference, scoring


def _reference_probs(params, ctx, indptr, cf, cj, cx):
    ctx_f, ctx_j, ctx_x = ctx
    out = []
    for lo, hi in zip(indptr[:-1], indptr[1:]):
        z = reference.row_logit(params, np.concatenate([ctx_f, cf[lo:hi]]), np.concatenate([ctx_j, cj[lo:hi]]),
                                np.concatenate([ctx_x, cx[lo:hi]]))
        out.append(1 / (1 + np.exp(-z)))
    return np.array(out)


def _shared_request(rng, n_fields, n_features, n_ctx, n_cand, one_hot):
    """Context on the first n_ctx fields; each candidate sets every other field from a tiny pool."""
    ctx_f = np.arange(n_ctx, dtype=np.int32)
    ctx_j = rng.integers(0, n_features, size=n_ctx).astype(np.int32)
    ad_fields = np.arange(n_ctx, n_fields, dtype=np.int32)
    pool = rng.integers(0, n_features, size=3).astype(np.int32)   # few values: heavy repetition
    cf = np.tile(ad_fields, n_cand)
    cj = rng.choice(pool, size=len(cf)).astype(np.int32)          # same index under several fields
    indptr = np.arange(0, len(cf) + 1, len(ad_fields), dtype=np.int64)
    if one_hot:
        ctx_x, cx = np.ones(n_ctx, np.float32), np.ones(len(cf), np.float32)
    else:
        ctx_x = rng.uniform(0.5, 2, size=n_ctx).astype(np.float32)
        cx = rng.choice(np.array([0.5, 1.0, 3.0], np.float32), size=len(cf))
    return (ctx_f, ctx_j, ctx_x), indptr, cf, cj, cx


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_repeated_candidate_features_equal_reference(one_hot, normalize):
    rng = np.random.default_rng(11)
    params = random_params("ffm", 50, 10, 4, linear=True, bias=True, normalize=normalize, seed=2)
    ctx, indptr, cf, cj, cx = _shared_request(rng, 10, 50, 6, 40, one_hot)
    got = scoring.score_candidates(params, *ctx, indptr, cf, cj, cx)
    np.testing.assert_allclose(got, _reference_probs(params, ctx, indptr, cf, cj, cx), atol=1e-6)


def test_candidates_with_ragged_and_empty_rows_equal_reference():
    """Candidates of different lengths (one with no entries) and fields repeated within a candidate."""
    rng = np.random.default_rng(5)
    params = random_params("ffm", 40, 8, 4, linear=False, bias=True, normalize=True, seed=9)
    ctx = (np.array([0, 1, 2], np.int32), np.array([3, 4, 5], np.int32), np.ones(3, np.float32))
    rows = [[(3, 7), (4, 7), (5, 8)], [], [(3, 7)], [(6, 9), (6, 9), (7, 1)], [(3, 7), (4, 7), (5, 8)]]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    cf = np.array([f for r in rows for f, _ in r], np.int32)
    cj = np.array([j for r in rows for _, j in r], np.int32)
    cx = rng.uniform(0.5, 2, size=len(cf)).astype(np.float32)
    cx[-3:] = cx[:3]                         # the last candidate repeats the first one exactly
    got = scoring.score_candidates(params, *ctx, indptr, cf, cj, cx)
    np.testing.assert_allclose(got, _reference_probs(params, ctx, indptr, cf, cj, cx), atol=1e-6)
    assert got[0] == got[4]


def test_many_candidates_equal_reference():
    """More candidate entries than the first scratch sizes (the distinct-feature table grows)."""
    rng = np.random.default_rng(8)
    params = random_params("ffm", 5000, 12, 4, linear=True, bias=True, normalize=True, seed=4)
    ctx_f = np.arange(8, dtype=np.int32)
    ctx = (ctx_f, rng.integers(0, 5000, size=8).astype(np.int32), np.ones(8, np.float32))
    n_cand = 700
    cf = np.tile(np.arange(8, 12, dtype=np.int32), n_cand)
    cj = rng.integers(0, 5000, size=len(cf)).astype(np.int32)
    cx = np.ones(len(cf), np.float32)
    indptr = np.arange(0, len(cf) + 1, 4, dtype=np.int64)
    got = scoring.score_candidates(params, *ctx, indptr, cf, cj, cx)
    np.testing.assert_allclose(got, _reference_probs(params, ctx, indptr, cf, cj, cx), atol=1e-6)
