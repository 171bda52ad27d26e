"""Batch and request-path scoring speed of the native FFM kernels, against NumPy, in one run.

Model: an FFM over 2*39 + 1e6 hashed features, 39 fields, k=4 (the size of a
Criteo model), weights drawn at random (speed does not depend on their values).
Rows: 39 entries, one per field, feature ids drawn with a Zipf-like popularity.

Measured (medians of repeats):
- batch: rows/s of `scoring.predict_proba` on 1 and 2 threads vs a vectorised
  NumPy scorer of the same model (pairs gathered with fancy indexing in chunks);
- batch, against LIBFFM in the same run: `ffm_predict` of LIBFFM (through
  `pylibffm.Model.predict`, in its own virtualenv, built by
  benchmarks/setup_baselines.sh) on the same rows held in memory, with a
  model of the same size; stricter than the issue's baseline (ffm-predict as
  a whole process on a text file, 55-75k rows/s here), which also parses;
- request: microseconds for one request of 100 candidates (30 context fields +
  9 ad fields) through `scoring.score_candidates` vs scoring the same 100 full
  rows with the batch kernel and with NumPy; cycling through 50 requests of
  random ads (weights mostly fetched from memory) and repeating one request
  (weights in cache, the usual case for a live ad inventory).

    python benchmarks/bench_predict_batch.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ctrops.data.matrix import FieldMatrix
from ctrops.models import reference, scoring
from ctrops.models.params import ModelParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from libffm_columns import BASE_PY, libffm_columns  # noqa: E402

N_FIELDS, K, HASH_SPACE = 39, 4, 1_000_000
N_FEATURES = 2 * N_FIELDS + HASH_SPACE


def make_model(seed: int = 0) -> ModelParams:
    rng = np.random.default_rng(seed)
    latent = (rng.random((N_FEATURES, N_FIELDS, K), dtype=np.float32) - 0.5) * np.float32(0.5)
    linear = (rng.random(N_FEATURES, dtype=np.float32) - 0.5) * np.float32(0.2)
    return ModelParams("ffm", N_FEATURES, N_FIELDS, K, bias=-1.2, linear=linear, latent=latent, normalize=True)


def feature_ids(rng: np.random.Generator, n: int, n_fields: int, first_field: int = 0) -> np.ndarray:
    """[n, n_fields] feature ids, popular ones far more frequent (rank ~ Pareto)."""
    ranks = np.minimum(rng.pareto(1.2, size=(n, n_fields)) * 50, HASH_SPACE - 1).astype(np.int64)
    fields = np.arange(first_field, first_field + n_fields)
    return (2 * N_FIELDS + (ranks * 2654435761 + fields * 97) % HASH_SPACE).astype(np.int32)


def make_rows(n: int, seed: int = 1) -> FieldMatrix:
    rng = np.random.default_rng(seed)
    ids = feature_ids(rng, n, N_FIELDS)
    indptr = np.arange(0, (n + 1) * N_FIELDS, N_FIELDS, dtype=np.int64)
    fields = np.tile(np.arange(N_FIELDS, dtype=np.int32), n)
    return FieldMatrix.from_arrays(indptr, fields, ids.reshape(-1), np.ones(n * N_FIELDS, np.float32),
                                   np.zeros(n, np.float32), N_FIELDS, N_FEATURES)


class NumpyFFM:
    """Vectorised NumPy scorer for rows with one entry per field (fixed width)."""

    def __init__(self, params: ModelParams, width: int, chunk: int = 2048) -> None:
        self.p = params
        self.a, self.b = np.triu_indices(width, k=1)
        self.chunk = chunk

    def predict_proba(self, X: FieldMatrix) -> np.ndarray:
        width = int(X.indptr[1] - X.indptr[0])
        J = X.indices.reshape(-1, width)
        F = X.fields.reshape(-1, width)
        V = X.values.reshape(-1, width).astype(np.float32)
        out = np.empty(X.n_rows)
        for s in range(0, X.n_rows, self.chunk):
            j, f, v = J[s:s + self.chunk], F[s:s + self.chunk], V[s:s + self.chunk]
            va = self.p.latent[j[:, self.a], f[:, self.b]]
            vb = self.p.latent[j[:, self.b], f[:, self.a]]
            pair = np.einsum("rpk,rpk->r", va, vb * (v[:, self.a] * v[:, self.b])[:, :, None])
            r = 1.0 / np.maximum((v * v).sum(axis=1), 1e-30) if self.p.normalize else 1.0
            z = self.p.bias + (self.p.linear[j] * v).sum(axis=1) + r * pair
            out[s:s + self.chunk] = 1.0 / (1.0 + np.exp(-z))
        return out


def libffm_rows_per_second(X: FieldMatrix, repeats: int, threads: int) -> float | None:
    """LIBFFM's in-memory prediction speed on the same rows (None when the baseline venv is missing).

    LIBFFM numbers (field, feature) pairs as columns; the last pair takes the last
    feature number, so LIBFFM allocates a model as large as ctrops' (it sizes the
    model by the largest column). One training pass gives it a model to score with.
    """
    if not BASE_PY.exists():
        return None
    cols, col_fields = libffm_columns(X.fields, X.indices, X.n_features)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "rows.npz"
        np.savez(npz, indptr=X.indptr, cols=cols, fields=col_fields,
                 y=(np.arange(X.n_rows) % 4 == 0).astype(np.float32))
        script = f"""
import time, statistics, numpy as np, scipy.sparse as sp, pylibffm
d = np.load({str(npz)!r})
x = sp.csr_matrix((np.ones(len(d['cols']), dtype=np.float32), d['cols'], d['indptr']),
                  shape=(len(d['indptr']) - 1, len(d['fields'])))
m = pylibffm.train(x, d['y'], d['fields'], {tmp!r}, dict(nr_iters=1, k=4, normalization=True))
m.W = np.ascontiguousarray(m.W)  # pylibffm hands back a strided view, which it would copy on every call
m.predict(x, d['fields'])
def median_time(rows):
    times = []
    for _ in range({repeats}):
        t = time.perf_counter(); m.predict(rows, d['fields']); times.append(time.perf_counter() - t)
    return statistics.median(times)
# time one row too and keep the difference: LIBFFM's scoring time without pylibffm's per-call costs
print('MEDIAN_SECONDS', median_time(x) - median_time(x[:1]))
"""
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        res = subprocess.run([str(BASE_PY), "-c", script], capture_output=True, text=True, env=env, timeout=1800)
    found = re.search(r"MEDIAN_SECONDS ([\d.e-]+)", res.stdout)
    if res.returncode != 0 or not found:
        print("  LIBFFM baseline failed:", res.stderr[-300:])
        return None
    return (X.n_rows - 1) / float(found.group(1))


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def make_request(rng, n_cand: int = 100, n_ctx: int = 30, n_ad: int = 9):
    ctx_j = feature_ids(rng, 1, n_ctx).reshape(-1)
    ctx_f = np.arange(n_ctx, dtype=np.int32)
    ctx_x = np.ones(n_ctx, np.float32)
    cand_j = feature_ids(rng, n_cand, n_ad, first_field=n_ctx).reshape(-1)
    cand_f = np.tile(np.arange(n_ctx, n_ctx + n_ad, dtype=np.int32), n_cand)
    cand_x = np.ones(n_cand * n_ad, np.float32)
    indptr = np.arange(0, (n_cand + 1) * n_ad, n_ad, dtype=np.int64)
    return ctx_f, ctx_j, ctx_x, indptr, cand_f, cand_j, cand_x


def request_rows(req) -> FieldMatrix:
    ctx_f, ctx_j, ctx_x, indptr, cf, cj, cx = req
    n = len(indptr) - 1
    n_ad = int(indptr[1])
    fields = np.concatenate([np.tile(ctx_f, (n, 1)), cf.reshape(n, n_ad)], axis=1).reshape(-1)
    idx = np.concatenate([np.tile(ctx_j, (n, 1)), cj.reshape(n, n_ad)], axis=1).reshape(-1)
    vals = np.concatenate([np.tile(ctx_x, (n, 1)), cx.reshape(n, n_ad)], axis=1).reshape(-1)
    w = len(ctx_f) + n_ad
    return FieldMatrix.from_arrays(np.arange(0, (n + 1) * w, w), fields, idx, vals, np.zeros(n), N_FIELDS,
                                   N_FEATURES)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k rows, fewer repeats")
    ap.add_argument("--rows", type=int, default=None)
    args = ap.parse_args(argv)
    n_rows = args.rows or (20_000 if args.quick else 200_000)
    repeats = 3 if args.quick else 7

    params = make_model()
    X = make_rows(n_rows)
    numpy_scorer = NumpyFFM(params, N_FIELDS)
    small = X.take(slice(0, 20))
    assert np.allclose(scoring.predict_proba(params, small), reference.predict_proba(params, small), atol=1e-5)
    assert np.allclose(numpy_scorer.predict_proba(small), reference.predict_proba(params, small), atol=1e-5)

    print(f"batch: {n_rows} rows x {N_FIELDS} fields, k={K}, {N_FEATURES} features "
          f"(model {params.nbytes / 2**20:.0f} MiB), median of {repeats}")
    scoring.predict_proba(params, X, n_threads=1)          # page in the touched weights
    t1 = median_seconds(lambda: scoring.predict_proba(params, X, n_threads=1), repeats)
    t2 = median_seconds(lambda: scoring.predict_proba(params, X, n_threads=2), repeats)
    np_rows = min(n_rows, 20_000)
    Xn = X.take(slice(0, np_rows))
    tn = median_seconds(lambda: numpy_scorer.predict_proba(Xn), max(3, repeats // 2)) * (n_rows / np_rows)
    print(f"  native 1 thread : {n_rows / t1:12,.0f} rows/s")
    print(f"  native 2 threads: {n_rows / t2:12,.0f} rows/s")
    print(f"  NumPy vectorised: {n_rows / tn:12,.0f} rows/s (timed on {np_rows} rows)")
    print(f"  ratio native 1 thread / NumPy: {tn / t1:.1f}x; 2 threads / NumPy: {tn / t2:.1f}x")
    for threads, t in ((1, t1), (2, t2)):
        lib = libffm_rows_per_second(X, repeats, threads)
        if lib is None:
            print(f"  LIBFFM not measured (no {BASE_PY}); the issue quotes ffm-predict at 55-75k rows/s here")
            break
        print(f"  LIBFFM ffm_predict in memory, OMP_NUM_THREADS={threads}: {lib:12,.0f} rows/s -> ctrops "
              f"{threads} thread(s) / LIBFFM = {n_rows / t / lib:.1f}x")

    rng = np.random.default_rng(5)
    requests = [make_request(rng) for _ in range(50)]
    full_rows = [request_rows(r) for r in requests]
    out = np.empty(100)
    for req, rows in zip(requests[:5], full_rows[:5]):
        assert np.allclose(scoring.score_candidates(params, *req, out=out),
                           scoring.predict_proba(params, rows), atol=1e-6)
    n_req_rep = 40 if args.quick else 200

    def per_request(fn) -> float:
        samples = []
        for _ in range(n_req_rep):
            for i in range(len(requests)):
                t = time.perf_counter()
                fn(i)
                samples.append(time.perf_counter() - t)
        return float(np.median(samples)) * 1e6

    def per_request_numpy(fn) -> float:
        return median_seconds(lambda: [fn(i) for i in range(len(requests))], 5) / len(requests) * 1e6

    us_cand = per_request(lambda i: scoring.score_candidates(params, *requests[i], out=out))
    hot = []
    for _ in range(n_req_rep * 10):
        t = time.perf_counter()
        scoring.score_candidates(params, *requests[0], out=out)
        hot.append(time.perf_counter() - t)
    us_hot = float(np.median(hot)) * 1e6
    us_batch = per_request(lambda i: scoring.predict_proba(params, full_rows[i], n_threads=1))
    us_numpy = per_request_numpy(lambda i: numpy_scorer.predict_proba(full_rows[i]))
    print("request: 100 candidates, 30 context + 9 ad fields, k=4 (median per request)")
    print(f"  score_candidates           : {us_cand:8.1f} us   (50 requests in turn, random ads of a 600 MiB model)")
    print(f"  score_candidates, one request repeated (its weights cached, like a small live ad set): "
          f"{us_hot:.1f} us")
    print(f"  batch kernel on 100 rows   : {us_batch:8.1f} us   ({us_batch / us_cand:.1f}x slower)")
    print(f"  NumPy vectorised, 100 rows : {us_numpy:8.1f} us   ({us_numpy / us_cand:.1f}x slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
