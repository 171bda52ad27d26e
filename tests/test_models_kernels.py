"""Native kernels against the NumPy reference and against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from _models_data import make_matrix, random_params

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import DataError
from ctrops.models import _ffm, reference, scoring
from ctrops.models.params import ModelParams

COMBOS = [(n, lin, b) for n in (True, False) for lin in (True, False) for b in (True, False)]


@pytest.fixture(scope="module")
def data() -> FieldMatrix:
    return make_matrix(400, n_fields=7, card=9, seed=3, missing=0.25, real_values=True)


@pytest.mark.parametrize("model_type", ["ffm", "fm", "lr"])
@pytest.mark.parametrize("k", [4, 3, 8])
@pytest.mark.parametrize("normalize,linear,bias", COMBOS)
def test_batch_predictions_equal_reference(data, model_type, k, normalize, linear, bias):
    params = random_params(model_type, data.n_features, data.n_fields, k, linear=linear, bias=bias,
                           normalize=normalize, seed=k)
    got = scoring.predict_logits(params, data)
    want = reference.logits(params, data)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scoring.predict_proba(params, data), reference.predict_proba(params, data),
                               atol=1e-6)


def test_parallel_batch_prediction_equals_serial():
    X = make_matrix(_ffm.PARALLEL_MIN_ROWS * 2, n_fields=5, card=7, seed=1)
    params = random_params("ffm", X.n_features, X.n_fields, 4)
    np.testing.assert_array_equal(scoring.predict_logits(params, X, n_threads=2),
                                  scoring.predict_logits(params, X, n_threads=1))


def _request(rng, n_fields, n_features, n_ctx, n_cand, per_cand):
    ctx_f = rng.choice(n_fields, size=n_ctx, replace=False).astype(np.int32)
    ctx_j = rng.integers(0, n_features, size=n_ctx).astype(np.int32)
    ctx_x = rng.uniform(0.5, 2, size=n_ctx).astype(np.float32)
    lengths = rng.integers(0, per_cand + 1, size=n_cand)
    lengths[0] = per_cand
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    nnz = int(indptr[-1])
    cf = rng.integers(0, n_fields, size=nnz).astype(np.int32)
    cj = rng.integers(0, n_features, size=nnz).astype(np.int32)
    cx = rng.uniform(0.5, 2, size=nnz).astype(np.float32)
    return ctx_f, ctx_j, ctx_x, indptr, cf, cj, cx


@pytest.mark.parametrize("model_type", ["ffm", "fm", "lr"])
@pytest.mark.parametrize("k", [4, 5])
@pytest.mark.parametrize("normalize,linear,bias", COMBOS)
def test_score_candidates_equals_reference_rows(model_type, k, normalize, linear, bias):
    rng = np.random.default_rng(k)
    n_fields, n_features = 12, 300
    params = random_params(model_type, n_features, n_fields, k, linear=linear, bias=bias, normalize=normalize,
                           seed=7)
    ctx_f, ctx_j, ctx_x, indptr, cf, cj, cx = _request(rng, n_fields, n_features, 8, 6, 4)
    got = scoring.score_candidates(params, ctx_f, ctx_j, ctx_x, indptr, cf, cj, cx)
    want = []
    for c in range(len(indptr) - 1):
        lo, hi = indptr[c], indptr[c + 1]
        z = reference.row_logit(params, np.concatenate([ctx_f, cf[lo:hi]]), np.concatenate([ctx_j, cj[lo:hi]]),
                                np.concatenate([ctx_x, cx[lo:hi]]))
        want.append(1 / (1 + np.exp(-z)))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_score_candidates_converts_dtypes_and_fills_out():
    rng = np.random.default_rng(0)
    params = random_params("ffm", 100, 6, 4)
    req = _request(rng, 6, 100, 4, 5, 3)
    fast = scoring.score_candidates(params, *req)
    slow_args = [a.astype(np.int64) if a.dtype.kind == "i" else a.astype(np.float64) for a in req]
    out = np.full(5, -1.0)
    res = scoring.score_candidates(params, *slow_args, out=out)
    assert res is out
    np.testing.assert_allclose(out, fast, atol=1e-7)
    half = ModelParams(model_type="ffm", n_features=100, n_fields=6, k=4, bias=params.bias,
                       linear=params.linear.astype(np.float16), latent=params.latent.astype(np.float16))
    np.testing.assert_allclose(scoring.score_candidates(half, *req), fast, atol=2e-2)


def test_score_candidates_rejects_out_of_range_indices():
    rng = np.random.default_rng(0)
    params = random_params("ffm", 100, 6, 4)
    ctx_f, ctx_j, ctx_x, indptr, cf, cj, cx = _request(rng, 6, 100, 4, 3, 2)
    cj = cj.copy()
    cj[0] = 100
    with pytest.raises(DataError, match="candidate feature index 100"):
        scoring.score_candidates(params, ctx_f, ctx_j, ctx_x, indptr, cf, cj, cx)
    ctx_f = ctx_f.copy()
    ctx_f[0] = 6
    with pytest.raises(DataError, match="context field 6"):
        scoring.score_candidates(params, ctx_f, ctx_j, ctx_x, indptr, cf, cj, cx)
    with pytest.raises(DataError, match="cand_indptr"):
        scoring.score_candidates(params, ctx_f[:0], ctx_j[:0], ctx_x[:0], np.array([0, 2, 1]), cf[:2], cj[:2],
                                 cx[:2])


@pytest.mark.parametrize("model_type", ["ffm", "fm", "lr"])
def test_contributions_sum_to_logit(model_type):
    params = random_params(model_type, 50, 5, 4, seed=2)
    f = np.array([0, 1, 2, 4], dtype=np.int32)
    j = np.array([3, 17, 22, 49], dtype=np.int32)
    x = np.array([1.0, 0.5, 2.0, 1.0], dtype=np.float32)
    c = scoring.contributions(params, f, j, x)
    assert c.logit == pytest.approx(reference.row_logit(params, f, j, x), abs=1e-6)
    parts = c.bias + sum(e["contribution"] for e in c.linear) + sum(p["contribution"] for p in c.pairs)
    assert parts == pytest.approx(c.logit, abs=1e-9)
    assert len(c.pairs) == (0 if model_type == "lr" else 6)
    top = scoring.contributions(params, f, j, x, top_pairs=2)
    assert top.logit == pytest.approx(c.logit)
    if model_type != "lr":
        assert len(top.pairs) == 2 and abs(top.pairs[0]["contribution"]) >= abs(top.pairs[1]["contribution"])


# --- gradients -----------------------------------------------------------------------------------

def _row_loss(params, f, j, x, y):
    z = reference.row_logit(params, f, j, x)
    return float(np.logaddexp(0.0, -z if y > 0.5 else z))


def _numeric_grad(params: ModelParams, arr: np.ndarray, flat_positions, f, j, x, y, eps=1e-6):
    grads = []
    for pos in flat_positions:
        old = arr.flat[pos]
        arr.flat[pos] = old + eps
        up = _row_loss(params, f, j, x, y)
        arr.flat[pos] = old - eps
        down = _row_loss(params, f, j, x, y)
        arr.flat[pos] = old
        grads.append((up - down) / (2 * eps))
    return np.array(grads)


@pytest.mark.parametrize("model_type", ["ffm", "fm"])
@pytest.mark.parametrize("k", [4, 3])
@pytest.mark.parametrize("label", [0.0, 1.0])
def test_one_adagrad_step_follows_the_loss_gradient(model_type, k, label):
    """One step from accumulators at 1 with l2 = 0 moves each weight by -eta * g / sqrt(1 + g^2)."""
    n_fields, n_features, eta = 4, 10, 0.05  # the step formula is exact for any eta
    f = np.array([0, 1, 2, 3], dtype=np.int32)
    j = np.array([1, 4, 6, 9], dtype=np.int32)
    x = np.array([1.0, 0.7, 1.5, 0.4], dtype=np.float32)
    params = random_params(model_type, n_features, n_fields, k, seed=11)
    p64 = ModelParams(model_type=model_type, n_features=n_features, n_fields=n_fields, k=k, bias=params.bias,
                      linear=params.linear.astype(np.float64), latent=params.latent.astype(np.float64))
    lat_positions = [int(np.ravel_multi_index(ix, p64.latent.shape)) for ix in
                     ([(jj, ff, d) for jj in j for ff in f for d in range(k) if ff != f[list(j).index(jj)]]
                      if model_type == "ffm" else [(jj, d) for jj in j for d in range(k)])]
    g_lat = _numeric_grad(p64, p64.latent, lat_positions, f, j, x, label)
    g_lin = _numeric_grad(p64, p64.linear, list(j), f, j, x, label)
    g_bias = 1 / (1 + np.exp(-reference.row_logit(p64, f, j, x))) - label

    state = np.ones(params.latent.shape[:-1] + (2 * k,), dtype=np.float32)
    state[..., :k] = params.latent
    lin_state = np.ones((n_features, 2), dtype=np.float32)
    lin_state[:, 0] = params.linear
    bias_state = np.array([params.bias, 1.0])
    one = np.zeros(1, dtype=np.int64)
    _ffm.fm_family_epoch(_ffm.MODEL_CODES[model_type], np.array([0, 4], dtype=np.int64), f, j, x,
                         np.array([label], dtype=np.float32), np.empty(0, dtype=np.float32), one,
                         state.reshape(-1), n_fields, k, lin_state.reshape(-1), bias_state, eta, 0.0, 0.0, True, 1)
    moved = (state[..., :k] - params.latent).astype(np.float64).reshape(-1)[lat_positions]
    rtol = 2e-3 if k % 4 == 0 else 1e-4    # k % 4 == 0 uses the approximate rsqrt, like LIBFFM
    np.testing.assert_allclose(moved, -eta * g_lat / np.sqrt(1 + g_lat ** 2), rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(lin_state[j, 0] - params.linear[j], -eta * g_lin / np.sqrt(1 + g_lin ** 2),
                               rtol=1e-3, atol=1e-7)
    assert bias_state[0] - params.bias == pytest.approx(-eta * g_bias / np.sqrt(1 + g_bias ** 2), rel=1e-6)
    # the accumulators grew by g^2
    np.testing.assert_allclose(lin_state[j, 1], 1 + g_lin ** 2, rtol=1e-4)
    assert np.all(np.abs(moved) > 0)


def test_ftrl_first_step_matches_closed_form():
    """From z = n = 0 the first FTRL step gives w = -alpha * g / (beta + |g|) (no l1, l2)."""
    alpha, beta = 0.1, 1.0
    j = np.array([2, 5], dtype=np.int32)
    x = np.array([1.0, 0.5], dtype=np.float32)
    zn = np.zeros(16)
    bias = np.zeros(2)
    _ffm.lr_ftrl_epoch(np.array([0, 2], dtype=np.int64), j, x, np.array([1.0], dtype=np.float32),
                       np.empty(0, dtype=np.float32), np.zeros(1, dtype=np.int64), zn, bias, alpha, beta, 0.0,
                       0.0, 1)
    g = (0.5 - 1.0) * x.astype(np.float64)   # p = sigmoid(0) = 0.5, y = 1
    w = _ffm.ftrl_weights(zn, alpha, beta, 0.0, 0.0)
    np.testing.assert_allclose(w[j], -alpha * g / (beta + np.abs(g)), rtol=1e-6)
    assert np.count_nonzero(w) == 2
    assert _ffm.ftrl_weights(zn, alpha, beta, 0.6, 0.0)[j].tolist() == [0.0, 0.0]   # |z| <= l1 -> exact zero


def test_l1_proximal_step_makes_exact_zeros():
    k, n_fields = 4, 3
    f = np.array([0, 1, 2], dtype=np.int32)
    j = np.array([0, 1, 2], dtype=np.int32)
    x = np.ones(3, dtype=np.float32)
    state = np.ones((3, n_fields, 2 * k), dtype=np.float32)
    state[..., :k] = 1e-4
    lin_state = np.ones((3, 2), dtype=np.float32)
    lin_state[:, 0] = 1e-4
    _ffm.fm_family_epoch(0, np.array([0, 3], dtype=np.int64), f, j, x, np.array([1.0], dtype=np.float32),
                         np.empty(0, dtype=np.float32), np.zeros(1, dtype=np.int64), state.reshape(-1), n_fields,
                         k, lin_state.reshape(-1), np.empty(0), 0.1, 0.0, 2.0, True, 1)
    touched = np.array([state[0, 1, :k], state[0, 2, :k], state[1, 0, :k], state[1, 2, :k]])
    assert np.all(touched == 0.0)
    assert np.all(lin_state[:, 0] == 0.0)
    assert np.all(state[0, 0, :k] == np.float32(1e-4))     # a (feature, own field) block is never used


@pytest.mark.parametrize("model_type", ["ffm", "fm"])
def test_score_candidates_with_empty_context_or_candidates(model_type):
    rng = np.random.default_rng(3)
    params = random_params(model_type, 80, 6, 4, seed=4)
    _, _, _, indptr, cf, cj, cx = _request(rng, 6, 80, 3, 4, 3)
    none = np.empty(0, dtype=np.int32)
    got = scoring.score_candidates(params, none, none, np.empty(0, dtype=np.float32), indptr, cf, cj, cx)
    want = [reference.row_logit(params, cf[lo:hi], cj[lo:hi], cx[lo:hi]) for lo, hi in zip(indptr[:-1], indptr[1:])]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-np.array(want))), atol=1e-6)
    empty = scoring.score_candidates(params, cf[:2], cj[:2], cx[:2], np.zeros(1, dtype=np.int64), none, none,
                                     np.empty(0, dtype=np.float32))
    assert empty.shape == (0,)


@pytest.mark.parametrize("k", [4, 8])
def test_one_hot_rows_equal_reference(k):
    """All-ones values take a separate k=4 code path (no value products)."""
    X = make_matrix(300, n_fields=9, card=11, seed=5, missing=0.2)
    assert np.all(X.values == 1.0)
    params = random_params("ffm", X.n_features, X.n_fields, k, seed=1)
    np.testing.assert_allclose(scoring.predict_logits(params, X), reference.logits(params, X), atol=1e-5)
    rng = np.random.default_rng(2)
    ctx_f, ctx_j, _, indptr, cf, cj, _ = _request(rng, 9, X.n_features, 5, 7, 3)
    got = scoring.score_candidates(params, ctx_f, ctx_j, np.ones(len(ctx_f), dtype=np.float32), indptr, cf, cj,
                                   np.ones(len(cf), dtype=np.float32))
    want = [reference.row_logit(params, np.concatenate([ctx_f, cf[lo:hi]]), np.concatenate([ctx_j, cj[lo:hi]]),
                                np.ones(len(ctx_f) + hi - lo)) for lo, hi in zip(indptr[:-1], indptr[1:])]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-np.array(want))), atol=1e-6)


def _epochs_both_paths(rows, n_fields, n_features, l1, epochs=3):
    """Train the same rows with the AVX2+FMA kernels and with the SSE kernels; returns both states."""
    indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    f = np.array([e[0] for r in rows for e in r], dtype=np.int32)
    j = np.array([e[1] for r in rows for e in r], dtype=np.int32)
    x = np.array([e[2] for r in rows for e in r], dtype=np.float32)
    y = (np.arange(len(rows)) % 3 == 0).astype(np.float32)
    init = np.ones((n_features, n_fields, 8), dtype=np.float32)
    init[..., :4] = np.random.default_rng(0).random((n_features, n_fields, 4), dtype=np.float32) * 0.5
    out = []
    for avx2 in (True, False):
        _ffm.set_avx2_training(avx2)
        state = init.copy()
        try:
            for e in range(epochs):
                order = np.random.default_rng(e).permutation(len(rows)).astype(np.int64)
                _ffm.fm_family_epoch(0, indptr, f, j, x, y, np.empty(0, dtype=np.float32), order, state.reshape(-1),
                                     n_fields, 4, np.empty(0, dtype=np.float32), np.empty(0), 0.2, 2e-5, l1, True, 1)
        finally:
            _ffm.set_avx2_training(True)
        out.append(state)
    return out


@pytest.mark.skipif(not _ffm.AVX2_TRAINING, reason="this CPU has no AVX2+FMA")
@pytest.mark.parametrize("values", ["ones", "real"])
@pytest.mark.parametrize("l1", [0.0, 1e-3])
def test_avx2_training_kernels_equal_the_sse_ones(values, l1):
    """Two pairs per 256-bit register must train what the one-pair SSE loop trains (up to FMA rounding)."""
    rng = np.random.default_rng(7)
    n_fields, n_features = 9, 40
    rows = []
    for r in range(200):
        n = int(rng.integers(2, n_fields + 1))
        fields = np.sort(rng.choice(n_fields, size=n, replace=False))
        vals = np.ones(n) if values == "ones" else rng.uniform(0.2, 2.0, n)
        rows.append([(int(ff), int(rng.integers(n_features)), float(v)) for ff, v in zip(fields, vals)])
    avx2, sse = _epochs_both_paths(rows, n_fields, n_features, l1)
    np.testing.assert_allclose(avx2, sse, rtol=2e-4, atol=2e-5)
    assert not np.array_equal(avx2, np.ones_like(avx2))


@pytest.mark.skipif(not _ffm.AVX2_TRAINING, reason="this CPU has no AVX2+FMA")
def test_avx2_training_with_shared_blocks_updates_in_turn():
    """Repeated fields (LIBFFM rows may have several features in a field) and repeated features make two
    pairs write one weight block; those pairs must be applied one after the other, as the SSE loop does."""
    rows = [[(0, 1, 1.0), (1, 2, 1.0), (1, 3, 1.0), (2, 2, 1.0), (2, 2, 0.5), (3, 1, 1.0)],
            [(0, 5, 1.0), (0, 5, 1.0), (1, 5, 1.0), (1, 6, 1.0), (2, 5, 1.0)],
            [(0, 1, 1.0), (1, 1, 1.0), (2, 1, 1.0), (3, 1, 1.0)]] * 20
    avx2, sse = _epochs_both_paths(rows, 4, 8, 0.0, epochs=5)
    np.testing.assert_allclose(avx2, sse, rtol=2e-4, atol=2e-5)


def test_linear_terms_take_their_own_learning_rate():
    """`eta_linear` sets the linear weights' AdaGrad step; the latent weights keep `eta`."""
    f = np.array([0, 1, 2], dtype=np.int32)
    j = np.array([1, 4, 6], dtype=np.int32)
    x = np.ones(3, dtype=np.float32)
    moves = {}
    for eta_linear in (-1.0, 0.02):
        state = np.ones((8, 3, 8), dtype=np.float32)
        state[..., :4] = 0.1
        lin = np.zeros((8, 2), dtype=np.float32)
        lin[:, 1] = 1.0
        _ffm.fm_family_epoch(0, np.array([0, 3], dtype=np.int64), f, j, x, np.array([1.0], dtype=np.float32),
                             np.empty(0, dtype=np.float32), np.zeros(1, dtype=np.int64), state.reshape(-1), 3, 4,
                             lin.reshape(-1), np.empty(0), 0.2, 0.0, 0.0, True, 1, eta_linear)
        moves[eta_linear] = (lin[j, 0].copy(), state[..., :4].copy())
    (lin_default, lat_default), (lin_small, lat_small) = moves[-1.0], moves[0.02]
    np.testing.assert_allclose(lin_small, lin_default * 0.1, rtol=1e-5)   # a step of eta_linear / eta as large
    np.testing.assert_array_equal(lat_small, lat_default)                 # the latent step is unchanged
    assert np.all(lin_default > 0)


def _train_with_fast_rows(rows, n_fields, n_features, fast, epochs=3):
    """Train `rows` with the AVX2 kernels, letting the usual rows take the unchecked update or not."""
    indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    f = np.array([e[0] for r in rows for e in r], dtype=np.int32)
    j = np.array([e[1] for r in rows for e in r], dtype=np.int32)
    x = np.ones(len(f), dtype=np.float32)
    y = (np.arange(len(rows)) % 4 == 0).astype(np.float32)
    state = np.ones((n_features, n_fields, 8), dtype=np.float32)
    state[..., :4] = np.random.default_rng(1).random((n_features, n_fields, 4), dtype=np.float32) * 0.5
    _ffm.set_fast_rows(fast)
    try:
        for e in range(epochs):
            order = np.random.default_rng(e).permutation(len(rows)).astype(np.int64)
            _ffm.fm_family_epoch(0, indptr, f, j, x, y, np.empty(0, dtype=np.float32), order, state.reshape(-1),
                                 n_fields, 4, np.empty(0, dtype=np.float32), np.empty(0), 0.2, 2e-5, 0.0, True, 1)
    finally:
        _ffm.set_fast_rows(True)
    return state


@pytest.mark.skipif(not _ffm.AVX2_TRAINING, reason="this CPU has no AVX2+FMA")
def test_unchecked_update_of_usual_rows_equals_the_general_loop():
    """One-hot rows with distinct features and fields skip the alias tests; they must train bit for bit
    what the general loop trains. Rows that repeat a feature or a field (which must not take the
    unchecked loop) are mixed in, as are odd and even row lengths."""
    rng = np.random.default_rng(5)
    n_fields, n_features = 12, 300
    rows = []
    for r in range(400):
        n = int(rng.integers(2, n_fields + 1))
        fields = rng.choice(n_fields, size=n, replace=False)          # distinct, in any order
        feats = rng.choice(n_features, size=n, replace=False)
        if r % 7 == 0:
            feats[-1] = feats[0]                                       # a repeated feature
        if r % 11 == 0 and n > 2:
            fields[1] = fields[2]                                      # a repeated field
        rows.append([(int(ff), int(jj), 1.0) for ff, jj in zip(fields, feats)])
    fast = _train_with_fast_rows(rows, n_fields, n_features, True)
    general = _train_with_fast_rows(rows, n_fields, n_features, False)
    np.testing.assert_array_equal(fast, general)
    assert not np.array_equal(fast[..., :4], _train_with_fast_rows(rows, n_fields, n_features, True, epochs=1)[..., :4])


def test_rows_longer_than_the_table_limit_score_like_the_reference():
    """Rows of more than 128 entries take another pair loop (no per-row tables on the stack)."""
    rng = np.random.default_rng(9)
    n_fields, n_features, k = 150, 400, 4
    params = random_params("ffm", n_features, n_fields, k, seed=3)
    lengths = [140, 3, 150, 129, 128]
    indptr = np.cumsum([0] + lengths).astype(np.int64)
    f = np.concatenate([np.sort(rng.choice(n_fields, size=n, replace=False)) for n in lengths]).astype(np.int32)
    j = rng.integers(0, n_features, indptr[-1]).astype(np.int32)
    x = rng.uniform(0.5, 1.5, indptr[-1]).astype(np.float32)
    X = FieldMatrix.from_arrays(indptr, f, j, x, np.zeros(len(lengths), dtype=np.float32), n_fields, n_features)
    np.testing.assert_allclose(scoring.predict_logits(params, X), reference.logits(params, X), rtol=1e-5, atol=1e-4)
