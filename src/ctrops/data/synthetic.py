"""Criteo-shaped click logs drawn from a hidden field-aware model.

The demo and the tests need realistic data on a fresh clone, without network
and without the shared benchmark tools; drawing clicks from a known FFM also
gives the Bayes-optimal log loss, so a run can say how close to the limit it is.
Rows use the Criteo layout: label, integer fields I1..In, categorical fields
C1..Cm as 8-hex-digit tokens, empty where missing.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CARDINALITIES = np.array([3, 10, 40, 150, 600, 2500, 10000, 50000])


@dataclass(frozen=True)
class SyntheticSummary:
    rows: int
    ctr: float
    bayes_logloss: float
    path: Path


class CriteoLikeWorld:
    """A hidden model and the value distributions of every field."""

    def __init__(self, n_int: int = 13, n_cat: int = 26, k: int = 4, seed: int = 0,
                 n_pairs: int = 60) -> None:
        rng = np.random.default_rng([seed, 11])
        self.n_int, self.n_cat, self.k = n_int, n_cat, k
        self.cards = rng.choice(_CARDINALITIES, size=n_cat)
        self.zipf = rng.uniform(1.1, 1.6, size=n_cat)
        self.miss_cat = rng.choice([0.0, 0.0, 0.05, 0.3], size=n_cat)
        self.miss_int = rng.choice([0.0, 0.05, 0.25], size=n_int)
        self.int_scale = rng.uniform(0.5, 3.0, size=n_int)
        n_fields = n_int + n_cat
        # every field owns 128 bins (ints) or `card` ids (cats) plus one 'missing' slot
        sizes = np.concatenate([np.full(n_int, 129), self.cards + 1])
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        n_feat = int(self.offsets[-1])
        self.w = rng.normal(0, 0.15, size=n_feat)
        pairs = [(i, j) for i in range(n_fields) for j in range(i + 1, n_fields)]
        chosen = rng.choice(len(pairs), size=min(n_pairs, len(pairs)), replace=False)
        self.pairs = [pairs[c] for c in chosen]
        self.latent = {}
        for i, j in self.pairs:  # latent vectors only where a pair interacts
            self.latent[(i, j)] = rng.normal(0, 0.3, size=(int(sizes[i]), k))
            self.latent[(j, i)] = rng.normal(0, 0.3, size=(int(sizes[j]), k))
        self.bias: float | None = None
        self.target_ctr = 0.2

    def draw(self, n: int, rng: np.random.Generator):
        """Features (local ids per field, -1 = missing), raw ints, labels, true probabilities."""
        local = np.empty((n, self.n_int + self.n_cat), dtype=np.int64)
        raw_int = np.floor(rng.lognormal(self.int_scale, 1.3, size=(n, self.n_int)) - 1).clip(0).astype(np.int64)
        for f in range(self.n_int):
            b = np.floor(np.log1p(raw_int[:, f]) ** 2).clip(0, 127).astype(np.int64)
            local[:, f] = np.where(rng.random(n) < self.miss_int[f], -1, b)
        for c in range(self.n_cat):
            card, a = int(self.cards[c]), self.zipf[c]
            u = rng.random(n)
            ranks = (1 + u * (card ** (1 - a) - 1)) ** (1 / (1 - a))
            ids = np.minimum(ranks.astype(np.int64) - 1, card - 1).clip(0)
            local[:, self.n_int + c] = np.where(rng.random(n) < self.miss_cat[c], -1, ids)
        slot = np.where(local < 0, np.array([self.offsets[f + 1] - self.offsets[f] - 1
                                             for f in range(local.shape[1])]), local)
        logit = self.w[slot + self.offsets[:-1]].sum(axis=1)
        for i, j in self.pairs:
            logit += (self.latent[(i, j)][slot[:, i]] * self.latent[(j, i)][slot[:, j]]).sum(axis=1)
        if self.bias is None:  # fit the bias once so the click rate is near the target
            lo, hi = -20.0, 20.0
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if (1 / (1 + np.exp(-(logit + mid)))).mean() > self.target_ctr else (mid, hi)
            self.bias = lo
        p = 1 / (1 + np.exp(-(logit + self.bias)))
        y = (rng.random(n) < p).astype(np.int8)
        return local, raw_int, y, p


def write_criteo_like(path: str | Path, rows: int, *, seed: int = 0, ctr: float = 0.2,
                      chunk: int = 100_000) -> SyntheticSummary:
    """Write `rows` Criteo-layout lines to `path` (gzip if it ends in .gz)."""
    world = CriteoLikeWorld(seed=seed)
    world.target_ctr = ctr
    rng = np.random.default_rng([seed, 12])
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    clicks, ll, done = 0, 0.0, 0
    with opener(path, "wt", newline="\n") as out:
        while done < rows:
            n = min(chunk, rows - done)
            local, raw_int, y, p = world.draw(n, rng)
            ints = np.where(local[:, :world.n_int] < 0, "", raw_int.astype(str))
            cat_ids = local[:, world.n_int:]
            tokens = (cat_ids * 2654435761 + np.arange(world.n_cat) * 97) & 0xFFFFFFFF
            cats = np.where(cat_ids < 0, "", np.char.zfill(np.char.mod("%x", tokens), 8))
            table = np.concatenate([y.astype(str)[:, None], ints, cats], axis=1)
            out.write("\n".join("\t".join(row) for row in table.tolist()))
            out.write("\n")
            pc = np.clip(p, 1e-12, 1 - 1e-12)
            ll += float(-(y * np.log(pc) + (1 - y) * np.log1p(-pc)).sum())
            clicks += int(y.sum())
            done += n
    return SyntheticSummary(rows=rows, ctr=clicks / max(rows, 1), bayes_logloss=ll / max(rows, 1), path=path)
