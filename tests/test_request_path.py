"""The request path (one context, many candidates) against the NumPy reference.

`score_candidates` computes each distinct candidate feature's term with the
context once per request; these tests make candidates share features heavily,
also the same feature index under two fields (possible with hash indexing), so
a wrong de-duplication would show. `FeatureEncoder.score_request` (what
`Predictor.score` runs) encodes and scores in one native call and must equal
encode_request followed by score_candidates.
"""

from __future__ import annotations

import numpy as np
import pytest
from _models_data import random_params

from ctrops.data.features import FeatureEncoder
from ctrops.data.spec import FieldSpec
from ctrops.errors import DataError
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


# ------------------------------------------------------------------ encode + score in one call

SPEC = FieldSpec.from_dict({
    "label": "y",
    "numeric": ["n", {"name": "r", "transform": "raw"}],
    "categorical": ["a", "b", "c"],
    "missing_values": ["null"],
})
POOL = {"n": [None, 0, 1, 2, 3, 4, 2.5, "3", "", "null", float("nan"), 10**12, -7],
        "r": [None, 0.0, 1.5, -2, "4.25", ""],
        "a": ["x", "y", "z", "", None, "null", 7, 7.0],
        "b": ["b0", "b1", "b2", "b9", None, 3],
        "c": ["once", "twice", None, float("nan")]}


def _fitted(indexing, min_count):
    rows = [{"y": i % 2, "n": i % 5, "r": float(i), "a": "x" if i < 20 else "y", "b": f"b{i % 3}",
             "c": "once" if i == 0 else ("twice" if i in (1, 2) else None)} for i in range(30)]
    return FeatureEncoder(SPEC, indexing=indexing, min_count=min_count, hash_space=500, seed=2).fit(rows)


@pytest.mark.parametrize("model_type", ["ffm", "fm", "lr"])
@pytest.mark.parametrize("indexing, min_count", [("vocab", 2), ("hash", 2), ("hash", 1)])
def test_score_request_equals_encode_then_score(model_type, indexing, min_count):
    """The fused native call gives exactly what encode_request + score_candidates give, on requests
    where candidates override context fields, lack fields other candidates set, or carry ids."""
    enc = _fitted(indexing, min_count)
    params = random_params(model_type, enc.n_features_, SPEC.n_fields, 4, seed=3)
    model = scoring.candidate_model(params)
    rng = np.random.default_rng(9)
    names = list(POOL)
    for trial in range(80):
        ctx = {n: POOL[n][rng.integers(len(POOL[n]))] for n in names if rng.random() < 0.6}
        ctx["request_id"] = "ignored"
        cands = [{n: POOL[n][rng.integers(len(POOL[n]))] for n in names if rng.random() < 0.4}
                 for _ in range(int(rng.integers(0, 12)))]
        e = enc.encode_request(ctx, cands)
        want = scoring.score_candidates(params, *e)
        got = enc.score_request(ctx, cands, model)
        assert got.dtype == np.float64 and got.shape == (len(cands),)
        np.testing.assert_array_equal(got, want)


def test_score_request_rejects_a_model_that_does_not_fit_the_encoder():
    enc = _fitted("vocab", 1)
    small = random_params("ffm", 5, SPEC.n_fields, 4, seed=1)        # fewer features than the encoder makes
    with pytest.raises(DataError, match="feature index .* outside \\[0, 5\\)"):
        enc.score_request({"a": "x"}, [{"b": "b1"}], scoring.candidate_model(small))


def test_predictor_scores_like_the_reference(tmp_path):
    from ctrops.artifact.format import save_model
    from ctrops.predict import Predictor

    enc = _fitted("vocab", 1)
    params = random_params("ffm", enc.n_features_, SPEC.n_fields, 4, seed=5)
    save_model(tmp_path / "m.ctm", params, enc.to_header(), enc.arrays(), {})
    ctx, cands = {"n": 3, "a": "x", "r": 1.5}, [{"b": "b1", "c": "once"}, {"b": "b2", "a": "y"}, {}]
    with Predictor.from_file(tmp_path / "m.ctm") as p:
        got = p.score(ctx, cands)
    X = enc.transform([{**ctx, **c} for c in cands])
    z = [reference.row_logit(params, X.fields[lo:hi], X.indices[lo:hi], X.values[lo:hi])
         for lo, hi in zip(X.indptr[:-1], X.indptr[1:])]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-np.array(z))), atol=1e-6)


def test_score_request_reentry_keeps_results_apart():
    """A call arriving while another is inside the encoder (a thread switch during str() of an odd
    value) is served by a second encoder; both results stay right, also on the next re-entry."""
    enc = _fitted("vocab", 1)
    params = random_params("ffm", enc.n_features_, SPEC.n_fields, 4, seed=6)
    model = scoring.candidate_model(params)
    inner = []

    class Token:
        def __str__(self) -> str:
            inner.append(enc.score_request({"a": "y", "b": "b2"}, [{"c": "once"}] * 3, model))
            return "x"

    for _ in range(2):
        out = enc.score_request({"n": 2, "b": "b1"}, [{"a": Token()}, {"a": "y"}], model)
        np.testing.assert_array_equal(out, enc.score_request({"n": 2, "b": "b1"}, [{"a": "x"}, {"a": "y"}], model))
    want = enc.score_request({"a": "y", "b": "b2"}, [{"c": "once"}] * 3, model)
    assert len(inner) == 2
    for got in inner:
        np.testing.assert_array_equal(got, want)
