"""One request of 100 candidates (30 context + 9 ad fields) from raw values, in process.

Target (issue "Foundation"): median under 150 us for the whole request, feature
lookup included, with an FFM of k=4 and about 1e6 features; a tuned NumPy
scorer over a Python dict vocabulary needs 600-700 us (350 us of it scoring
pre-hashed indices). Both are measured here in the same run, on the same model
and requests, and must agree to 1e-5.

    python benchmarks/bench_request.py                       # ~1e6 features, Zipf and uniform values
    python benchmarks/bench_request.py --popularity uniform  # one value popularity only
    python benchmarks/bench_request.py --quick               # ~1e5 features

Needs ~1.5 GB RAM and ~1 min. ctrops' whole request is `Predictor.score` (one
native call: encode the raw values, then score); its scoring-only figure is
`score_candidates` on the request's pre-encoded arrays. Timings of the four
variants alternate in blocks, so load changes on a shared machine hit all alike.
"""

from __future__ import annotations

import argparse
import json
import os
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
    """What a team writes without a native core, tuned: per-field dict look-ups, then vectorised FFM terms.

    Tuned as such a scorer is in practice: one dict per field (no tuple keys);
    each weight row the request uses is gathered exactly once with `np.take`
    (a row's cache lines are all read anyway: gathering only its context part,
    W[a, :30], measured slower, and the ad x ad pairs then re-read the rest of
    each row from memory), after which every term works on the small gathered
    block; float32 throughout.
    """

    def __init__(self, predictor: Predictor, names, vocab) -> None:
        enc = predictor.encoder
        self.names = names
        self.ctx_names = names[:N_CTX]
        self.ad_names = names[N_CTX:]
        self.lookup: list[dict[str, int]] = []
        for f, name in enumerate(names):  # the same vocabulary, as one Python dict per field
            e = enc.encode_request({name: None}, [{name: v} for v in vocab])
            self.lookup.append(dict(zip(vocab.tolist(), e.cand_indices.tolist())))
        self.ctx_rare = [2 * f + 1 for f in range(N_CTX)]
        self.ad_rare = [2 * (N_CTX + g) + 1 for g in range(N_AD)]
        self.ad_lookup = [(self.lookup[N_CTX + g], n, r) for g, (n, r) in enumerate(zip(self.ad_names, self.ad_rare))]
        p = predictor.params
        self.W2 = np.asarray(p.latent).reshape(p.n_features, -1)   # one row of n_fields * k floats per feature
        self.w, self.b = np.asarray(p.linear), p.bias
        self.ctx_i, self.ctx_j = np.triu_indices(N_CTX, 1)
        self.ad_i, self.ad_j = np.triu_indices(N_AD, 1)
        self.ad_f = np.arange(N_CTX, N_CTX + N_AD)

    def indices(self, ctx, cands):
        lk = self.lookup
        c = np.array([lk[f].get(ctx.get(n), r) for f, (n, r) in enumerate(zip(self.ctx_names, self.ctx_rare))],
                     dtype=np.int64)
        ad = self.ad_lookup
        a = np.array([d.get(cand.get(n), r) for cand in cands for d, n, r in ad], dtype=np.int64)
        return c, a.reshape(len(cands), N_AD)

    def score_indices(self, c, a):
        W2 = self.W2
        n = len(a)
        Wc = np.take(W2, c, axis=0).reshape(N_CTX, N_CTX + N_AD, K)              # context rows, once
        Wa = np.take(W2, a.reshape(-1), axis=0).reshape(n, N_AD, N_CTX + N_AD, K)  # candidate rows, once
        cc = np.einsum("pk,pk->", Wc[self.ctx_i, self.ctx_j], Wc[self.ctx_j, self.ctx_i])
        Wc_ad = Wc[:, self.ad_f, :].transpose(1, 0, 2).reshape(N_AD, N_CTX * K)  # ctx vectors facing each ad field
        ca = np.einsum("nam,am->n", Wa[:, :, :N_CTX, :].reshape(n, N_AD, N_CTX * K), Wc_ad)
        ai, aj = self.ad_i, self.ad_j
        aa = np.einsum("npk,npk->n", Wa[:, ai, N_CTX + aj], Wa[:, aj, N_CTX + ai])
        r = np.float32(1.0 / (N_CTX + N_AD))
        z = self.b + self.w[c].sum() + self.w[a].sum(axis=1) + r * (cc + ca + aa)
        return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))

    def score(self, ctx, cands):
        return self.score_indices(*self.indices(ctx, cands))


def interleaved_medians(variants: dict, rounds: int) -> dict[str, float]:
    """Median microseconds per call of each variant, timed in alternating blocks.

    variants: name -> (fn, argument tuples, calls in total). Blocks of each
    variant alternate over `rounds`, so a change in machine load during the run
    hits every variant alike and the ratios stay fair. Each call gets the next
    request of the variant's list (no request is timed twice in a row).
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    at = {name: 0 for name in variants}
    for _ in range(rounds):
        for name, (fn, args, calls) in variants.items():
            for _ in range(max(1, calls // rounds)):
                x = args[at[name] % len(args)]
                at[name] += 1
                t0 = time.perf_counter_ns()
                fn(*x)
                times[name].append((time.perf_counter_ns() - t0) / 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(predictor: Predictor, base: NumpyScorer, names, vocab, popularity: str, repeats: int) -> dict:
    """Whole-request and scoring-only medians of ctrops and the NumPy scorer on one request mix."""
    from ctrops.models.scoring import score_candidates

    reqs = make_requests(names, vocab, 200, popularity=popularity)
    # the two implementations must agree before their speed means anything
    worst = max(float(np.max(np.abs(predictor.score(c, x) - base.score(c, x)))) for c, x in reqs[:20])
    assert worst < 1e-5, f"native and NumPy scorers disagree by {worst}"
    prm = predictor.params
    pre = [tuple(predictor.encode(c, x)) for c, x in reqs]
    base_idx = [base.indices(c, x) for c, x in reqs]
    slow = max(300, repeats // 10)
    warm = {"ctrops": (predictor.score, reqs, 200), "numpy": (base.score, reqs, 20)}
    interleaved_medians(warm, 1)
    med = interleaved_medians({
        "ctrops_request_us": (predictor.score, reqs, repeats),
        "numpy_request_us": (base.score, reqs, slow),
        "ctrops_kernel_only_us": (lambda *e: score_candidates(prm, *e), pre, repeats),
        "numpy_scoring_only_us": (base.score_indices, base_idx, slow),
    }, rounds=10)
    res = {"popularity": popularity, "max_abs_diff": worst, **med}
    res["speedup_request"] = res["numpy_request_us"] / res["ctrops_request_us"]
    res["speedup_scoring"] = res["numpy_scoring_only_us"] / res["ctrops_kernel_only_us"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3000)
    ap.add_argument("--popularity", choices=("zipf", "uniform", "both"), default="both",
                    help="value popularity: zipf (ad traffic), uniform (every request cold in cache) or both")
    a = ap.parse_args()
    per_field = 2_600 if a.quick else 25_640  # 39 fields x 25,640 ~ 1e6 features
    pops = ("zipf", "uniform") if a.popularity == "both" else (a.popularity,)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        names, vocab, path = build_model(per_field, Path(d))
        predictor = Predictor.from_file(path)
        build_s = time.perf_counter() - t0
        base = NumpyScorer(predictor, names, vocab)
        head = {"n_features": predictor.params.n_features, "model_bytes": predictor.nbytes,
                "build_seconds": round(build_s, 1)}
        results = [measure(predictor, base, names, vocab, pop, a.repeats) for pop in pops]
        predictor.close()
    print(f"features {head['n_features']:,}, model {head['model_bytes'] / 1e6:.0f} MB, "
          f"load average {os.getloadavg()[0]:.1f}")
    for res in results:
        print(f"[{res['popularity']}] agree to {res['max_abs_diff']:.1e}")
        print(f"  request (lookup + scoring), 100 candidates: ctrops {res['ctrops_request_us']:.0f} us  "
              f"numpy {res['numpy_request_us']:.0f} us  -> {res['speedup_request']:.1f}x   (target < 150 us)")
        print(f"  scoring pre-encoded request:                 ctrops {res['ctrops_kernel_only_us']:.0f} us  "
              f"numpy {res['numpy_scoring_only_us']:.0f} us  -> {res['speedup_scoring']:.1f}x")
        print(json.dumps({**head, **{k: (round(v, 2) if isinstance(v, float) and k != "max_abs_diff" else v)
                                     for k, v in res.items()}}))


if __name__ == "__main__":
    main()
