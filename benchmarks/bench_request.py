"""One request of 100 candidates (30 context + 9 ad fields) from raw values, in process.

Target (issue "Foundation"): median under 150 us for the whole request, feature
lookup included, with an FFM of k=4 and about 1e6 features; a tuned NumPy
scorer over a Python dict vocabulary needs 600-700 us (350 us of it scoring
pre-hashed indices). Both are measured here in the same run, on the same model
and requests, and must agree to 1e-5.

    python benchmarks/bench_request.py            # ~1e6 features (needs ~1.5 GB RAM, ~1 min)
    python benchmarks/bench_request.py --quick    # ~1e5 features
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ctrops.artifact.format import save_model
from ctrops.data.features import FeatureEncoder
from ctrops.data.spec import FieldSpec
from ctrops.models.params import ModelParams
from ctrops.predict import Predictor

N_CTX, N_AD, N_CAND, K = 30, 9, 100, 4


def build_model(values_per_field: int, tmp: Path, seed: int = 0):
    names = [f"ctx{i}" for i in range(N_CTX)] + [f"ad{i}" for i in range(N_AD)]
    spec = FieldSpec.from_dict({"label": "y", "categorical": names})
    rng = np.random.default_rng(seed)
    vocab = np.array([f"v{i}" for i in range(values_per_field)])
    table = pa.table({"y": np.zeros(values_per_field, np.int8),
                      **{n: pa.array(rng.permutation(vocab)) for n in names}})
    enc = FeatureEncoder(spec, indexing="vocab", min_count=1).fit(table)
    n_feat, n_fields = int(enc.n_features_), len(names)
    params = ModelParams("ffm", n_feat, n_fields, K, bias=-1.2,
                         linear=(rng.standard_normal(n_feat, dtype=np.float32) * 0.1),
                         latent=(rng.standard_normal((n_feat, n_fields, K), dtype=np.float32) * 0.1),
                         normalize=True)
    path = tmp / "bench.ctm"
    save_model(path, params, enc.to_header(), enc.arrays(), {"purpose": "bench_request"})
    return names, vocab, path


def make_requests(names, vocab, n_requests: int, seed: int = 1, popularity: str = "zipf"):
    """Requests whose values follow ad-traffic popularity (Zipf, a=1.1) or, as a cold-cache
    worst case, a uniform draw over the whole vocabulary."""
    rng = np.random.default_rng(seed)
    n = len(vocab)
    if popularity == "zipf":
        weights = 1.0 / np.arange(1, n + 1) ** 1.1
        cdf = np.cumsum(weights / weights.sum())
        pick = lambda: int(min(np.searchsorted(cdf, rng.random()), n - 1))
    else:
        pick = lambda: int(rng.integers(n))
    reqs = []
    for _ in range(n_requests):
        def value():  # 3% of values unseen in training: they fall to the field's rare index
            return f"new{rng.integers(1 << 30)}" if rng.random() < 0.03 else str(vocab[pick()])
        ctx = {n: value() for n in names[:N_CTX]}
        cands = [{n: value() for n in names[N_CTX:]} for _ in range(N_CAND)]
        reqs.append((ctx, cands))
    return reqs


class NumpyScorer:
    """What a team writes without a native core: dict lookups, then vectorised FFM terms."""

    def __init__(self, predictor: Predictor, names, vocab) -> None:
        enc = predictor.encoder
        self.names = names
        self.lookup: dict[tuple[int, str], int] = {}
        for f, name in enumerate(names):  # the same vocabulary, as a Python dict
            e = enc.encode_request({name: None}, [{name: v} for v in vocab])
            for v, j in zip(vocab.tolist(), e.cand_indices.tolist()):
                self.lookup[(f, v)] = j
        p = predictor.params
        self.W, self.w, self.b = np.asarray(p.latent), np.asarray(p.linear), p.bias
        self.ctx_f = np.arange(N_CTX)
        self.ad_f = np.arange(N_CTX, N_CTX + N_AD)
        iu = np.triu_indices(N_CTX, 1)
        self.ctx_pairs = iu
        self.ad_pairs = np.triu_indices(N_AD, 1)

    def indices(self, ctx, cands):
        get = self.lookup.get
        c = np.array([get((f, ctx.get(n)), 2 * f + 1) for f, n in enumerate(self.names[:N_CTX])])
        a = np.array([[get((N_CTX + g, cand.get(n)), 2 * (N_CTX + g) + 1) for g, n in enumerate(self.names[N_CTX:])]
                      for cand in cands])
        return c, a

    def score_indices(self, c, a):
        W = self.W
        i, j = self.ctx_pairs
        Wc = W[c]                                            # (30, 39, k)
        cc = np.einsum("pk,pk->", Wc[i, j], Wc[j, i])          # context pairs, once
        Wa = W[a]                                            # (N, 9, 39, k)
        ca = np.einsum("nack,cak->n", Wa[:, :, self.ctx_f, :], Wc[:, self.ad_f, :])
        ai, aj = self.ad_pairs
        aa = np.einsum("npk,npk->n", Wa[:, ai, N_CTX + aj, :], Wa[:, aj, N_CTX + ai, :])
        r = 1.0 / (N_CTX + N_AD)
        z = self.b + self.w[c].sum() + self.w[a].sum(axis=1) + r * (cc + ca + aa)
        return 1.0 / (1.0 + np.exp(-z))

    def score(self, ctx, cands):
        return self.score_indices(*self.indices(ctx, cands))


def median_us(fn, reqs, repeats: int) -> float:
    times = []
    for i in range(repeats):
        ctx, cands = reqs[i % len(reqs)]
        t0 = time.perf_counter_ns()
        fn(ctx, cands)
        times.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3000)
    ap.add_argument("--popularity", choices=("zipf", "uniform"), default="zipf",
                    help="value popularity: zipf (ad traffic) or uniform (every request cold in cache)")
    a = ap.parse_args()
    per_field = 2_600 if a.quick else 25_640  # 39 fields x 25,640 ~ 1e6 features
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        names, vocab, path = build_model(per_field, Path(d))
        predictor = Predictor.from_file(path)
        build_s = time.perf_counter() - t0
        reqs = make_requests(names, vocab, 200, popularity=a.popularity)
        base = NumpyScorer(predictor, names, vocab)
        ours_full = lambda c, x: predictor.score(c, x)
        pre = [predictor.encode(c, x) for c, x in reqs]
        from ctrops.models.scoring import score_candidates
        prm = predictor.params
        ours_kernel = lambda i, _: score_candidates(prm, pre[i].ctx_fields, pre[i].ctx_indices, pre[i].ctx_values,
                                                    pre[i].cand_indptr, pre[i].cand_fields, pre[i].cand_indices,
                                                    pre[i].cand_values)
        base_idx = [base.indices(c, x) for c, x in reqs]
        base_kernel = lambda i, _: base.score_indices(*base_idx[i])
        idx_reqs = [(i, None) for i in range(len(reqs))]
        # the two implementations must agree before their speed means anything
        worst = max(float(np.max(np.abs(predictor.score(c, x) - base.score(c, x)))) for c, x in reqs[:20])
        assert worst < 1e-5, f"native and NumPy scorers disagree by {worst}"
        for fn, rq in ((ours_full, reqs), (base.score, reqs)):  # warm-up
            median_us(fn, rq, 200)
        res = {
            "n_features": prm.n_features, "model_bytes": predictor.nbytes, "build_seconds": round(build_s, 1),
            "max_abs_diff": worst,
            "ctrops_request_us": median_us(ours_full, reqs, a.repeats),
            "ctrops_kernel_only_us": median_us(ours_kernel, idx_reqs, a.repeats),
            "numpy_request_us": median_us(base.score, reqs, max(300, a.repeats // 10)),
            "numpy_scoring_only_us": median_us(base_kernel, idx_reqs, max(300, a.repeats // 10)),
        }
    res["popularity"] = a.popularity
    res["speedup_request"] = res["numpy_request_us"] / res["ctrops_request_us"]
    res["speedup_scoring"] = res["numpy_scoring_only_us"] / res["ctrops_kernel_only_us"]
    print(f"features {res['n_features']:,}, model {res['model_bytes'] / 1e6:.0f} MB, values {a.popularity}, "
          f"agree to {worst:.1e}")
    print(f"request (lookup + scoring), 100 candidates: ctrops {res['ctrops_request_us']:.0f} us  "
          f"numpy {res['numpy_request_us']:.0f} us  -> {res['speedup_request']:.1f}x   (target < 150 us)")
    print(f"scoring pre-encoded request:                 ctrops {res['ctrops_kernel_only_us']:.0f} us  "
          f"numpy {res['numpy_scoring_only_us']:.0f} us  -> {res['speedup_scoring']:.1f}x")
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
