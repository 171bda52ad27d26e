"""Data-in speed: Criteo text -> FieldMatrix, and one request's raw values -> entries.

    python benchmarks/bench_parse.py                 # 1.2M generated Criteo rows
    python benchmarks/bench_parse.py --quick         # 60k rows: a smoke run
    python benchmarks/bench_parse.py --data FILE.tsv # your own Criteo TSV

Figures (medians of --repeats runs; wall and CPU seconds both printed because
the machine is shared):
1. rows/s of `load_dataset(path, "criteo")`: native parse + log2bin + hash +
   vocabulary count + table encode, no cache. Baseline in the same run: the
   plain Python/NumPy way (split lines, Python log2bin, dict vocabulary with
   counts, dict look-ups into an index array) on the first --baseline-rows rows.
   Also the cached re-load (binary cache hit) against the parse.
2. microseconds of `encoder.encode_request(context, candidates)` for 30 context
   fields and 100 candidates x 9 ad fields of raw str/int values (median of
   individually timed calls). Baseline: the same encoding written as a Python
   dict-based encoder over a {(field, token): index} vocabulary; its output is
   checked equal to the native one.

Generated data comes from /work/shared/bench/gen_criteo_like.py when present
(else ctrops.data.synthetic) and is kept under bench-out/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ctrops.data import _parse
from ctrops.data._hashing import field_keys
from ctrops.data.dataset import load_dataset
from ctrops.data.features import FeatureEncoder
from ctrops.data.spec import FieldSpec
from ctrops.data.tokens import log2bin_token, stored_key

GENERATOR = Path("/work/shared/bench/gen_criteo_like.py")
N_INT = 13


def ensure_data(rows: int, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"criteo_{rows}.tsv"
    if path.exists() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(".tmp.tsv")
    if GENERATOR.exists():
        subprocess.run([sys.executable, str(GENERATOR), str(rows), str(tmp), "--seed", "7"], check=True,
                       stdout=subprocess.DEVNULL)
    else:
        from ctrops.data.synthetic import write_criteo_like  # type: ignore[attr-defined]

        write_criteo_like(tmp, rows, seed=7)
    os.replace(tmp, path)
    return path


def timed(fn, repeats: int):
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), result


# ---------------------------------------------------------------- baseline: plain Python/NumPy

def baseline_load(path: Path, max_rows: int, min_count: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The straightforward Python encoder: tokens, Counter per field, dict vocabulary, index array."""
    labels: list[float] = []
    columns: list[list[str | None]] = [[] for _ in range(39)]
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= max_rows:
                break
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 40:
                continue
            labels.append(float(parts[0]))
            for f in range(N_INT):
                v = parts[f + 1]
                columns[f].append(log2bin_token(float(v)) if v else None)
            for f in range(N_INT, 39):
                columns[f].append(parts[f + 1] or None)
    n_fields = 39
    next_index = 2 * n_fields
    vocab: list[dict[str, int]] = []
    for f in range(n_fields):
        counts = Counter(t for t in columns[f] if t is not None)
        kept = sorted(t for t, c in counts.items() if c >= min_count)
        vocab.append({t: next_index + j for j, t in enumerate(kept)})
        next_index += len(kept)
    indices = np.empty((len(labels), n_fields), np.int32)
    for f in range(n_fields):
        d, missing, rare = vocab[f], 2 * f, 2 * f + 1
        indices[:, f] = [missing if t is None else d.get(t, rare) for t in columns[f]]
    return np.asarray(labels, np.float32), indices.ravel(), next_index


# ---------------------------------------------------------------- request path

def request_pool(path: Path, n: int) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rows.append(line.rstrip("\r\n").split("\t"))
            if len(rows) >= n:
                break
    return rows


def make_request(rows: list[list[str]], spec: FieldSpec, n_candidates: int):
    names = spec.field_names
    ctx_names, ad_names = names[:30], names[30:]

    def value(name: str, text: str):
        if text == "":
            return None
        return int(text) if name.startswith("I") else text

    # the row with the fewest empty context values; an empty one is sent as None (a missing value)
    best = max(rows, key=lambda r: sum(r[1 + spec.field_index(n)] != "" for n in ctx_names))
    context = {n: value(n, best[1 + spec.field_index(n)]) for n in ctx_names}
    candidates = []
    for c in range(n_candidates):
        row = rows[1 + c % (len(rows) - 1)]
        cand = {n: value(n, row[1 + spec.field_index(n)]) for n in ad_names}
        candidates.append(cand | {"ad_id": f"ad{c}"})
    return context, candidates


class PythonRequestEncoder:
    """The request encoding as a Python programmer would write it first: dicts all the way."""

    def __init__(self, enc: FeatureEncoder, tokens_by_field: dict[int, set[str]]) -> None:
        self.field_of = {name: f for f, name in enumerate(enc.field_names)}
        self.numeric = {f for f, d in enumerate(enc.spec.fields) if d.kind == "numeric"}
        self.n_fields = enc.n_fields
        self.vocab: dict[tuple[int, str], int] = {}
        for f, toks in tokens_by_field.items():
            toks = sorted(toks)
            idx = _parse.lookup_keys(enc.table_keys_, enc.table_values_,
                                     np.array([stored_key(int(k)) for k in field_keys(f, toks, enc.seed)],
                                              np.uint64))
            for t, i in zip(toks, idx.tolist()):
                if i >= 0:
                    self.vocab[(f, t)] = i

    def index(self, f: int, v) -> int:
        if v is None or v == "":
            return 2 * f
        token = log2bin_token(float(v)) if f in self.numeric else str(v)
        return self.vocab.get((f, token), 2 * f + 1)

    def encode(self, context, candidates):
        ctx = {f: 2 * f for f in range(self.n_fields)}
        for name, v in context.items():
            f = self.field_of.get(name)
            if f is not None:
                ctx[f] = self.index(f, v)
        own = []
        in_cands: set[int] = set()
        for cand in candidates:
            entries = {}
            for name, v in cand.items():
                f = self.field_of.get(name)
                if f is not None:
                    entries[f] = self.index(f, v)
            in_cands.update(entries)
            own.append(entries)
        ctx_fields = [f for f in range(self.n_fields) if f not in in_cands]
        cand_f, cand_i, indptr = [], [], [0]
        for entries in own:
            for f in sorted(in_cands):
                cand_f.append(f)
                cand_i.append(entries.get(f, ctx[f]))
            indptr.append(len(cand_f))
        return (np.array(ctx_fields, np.int32), np.array([ctx[f] for f in ctx_fields], np.int32),
                np.ones(len(ctx_fields), np.float32), np.array(indptr, np.int64),
                np.array(cand_f, np.int32), np.array(cand_i, np.int32), np.ones(len(cand_f), np.float32))


def same_request_output(native, python) -> bool:
    if not np.array_equal(native.ctx_fields, python[0]) or not np.array_equal(native.ctx_indices, python[1]):
        return False
    for c in range(native.n_candidates):
        lo, hi = native.cand_indptr[c], native.cand_indptr[c + 1]
        a = sorted(zip(native.cand_fields[lo:hi].tolist(), native.cand_indices[lo:hi].tolist()))
        plo, phi = python[3][c], python[3][c + 1]
        b = sorted(zip(python[4][plo:phi].tolist(), python[5][plo:phi].tolist()))
        if a != b:
            return False
    return True


def median_call_us(fn, calls: int) -> float:
    samples = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter_ns()
        fn()
        samples[i] = time.perf_counter_ns() - t
    return float(np.median(samples)) / 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--rows", type=int, default=None, help="generated rows (default 1.2M, --quick 60k)")
    ap.add_argument("--data", type=Path, default=None, help="an existing Criteo TSV instead of generated data")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--baseline-rows", type=int, default=None)
    ap.add_argument("--calls", type=int, default=None, help="timed encode_request calls")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    args = ap.parse_args()
    rows = args.rows or (60_000 if args.quick else 1_200_000)
    repeats = args.repeats or (2 if args.quick else 3)
    baseline_rows = args.baseline_rows or (20_000 if args.quick else 100_000)
    calls = args.calls or (500 if args.quick else 5000)
    path = args.data or ensure_data(rows, args.out)
    spec = FieldSpec.criteo()
    size_mb = path.stat().st_size / 1e6
    print(f"data: {path} ({size_mb:.0f} MB); {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")

    # 1. parse + encode
    def native_load():
        return load_dataset(path, "criteo", encoder=FeatureEncoder(spec, min_count=10), rejects=False)

    wall, cpu, (X, rep) = timed(native_load, repeats)
    native_rate = X.n_rows / wall
    print(f"load_dataset criteo (native, {min(4, os.cpu_count() or 1)} threads): {X.n_rows} rows in "
          f"{wall:.2f} s wall / {cpu:.2f} s CPU = {native_rate:,.0f} rows/s "
          f"({size_mb / wall:.0f} MB/s); n_features {X.n_features}")
    b_wall, b_cpu, (b_labels, b_idx, b_nf) = timed(lambda: baseline_load(path, baseline_rows, 10), 1 if repeats < 3 else 2)
    b_rows = len(b_labels)
    base_rate = b_rows / b_wall
    print(f"baseline Python/NumPy parser: {b_rows} rows in {b_wall:.2f} s wall / {b_cpu:.2f} s CPU = "
          f"{base_rate:,.0f} rows/s")
    print(f"  -> parse+encode speed-up: {native_rate / base_rate:.1f}x (wall), "
          f"{(X.n_rows / cpu) / (b_rows / b_cpu):.1f}x (CPU)")

    cache = Path(tempfile.mkdtemp(prefix="bench-parse-cache-", dir=args.out))
    try:
        enc = FeatureEncoder(spec, min_count=10)
        load_dataset(path, "criteo", encoder=enc, cache_dir=cache, rejects=False)
        c_wall, c_cpu, (Xc, rc) = timed(lambda: load_dataset(path, "criteo", encoder=FeatureEncoder(spec, min_count=10),
                                                             cache_dir=cache, rejects=False), max(3, repeats))
        assert rc.cache_hit
        print(f"cached re-load (binary cache hit): {c_wall * 1000:.1f} ms wall = {wall / c_wall:.0f}x faster "
              f"than parsing")
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    # 2. request path
    pool = request_pool(path, 200)
    context, candidates = make_request(pool, spec, 100)
    tokens: dict[int, set[str]] = {f: set() for f in range(spec.n_fields)}
    for r in pool:
        for f in range(spec.n_fields):
            v = r[1 + f]
            if v:
                tokens[f].add(log2bin_token(float(v)) if f < N_INT else v)
    py_enc = PythonRequestEncoder(rep.encoder, tokens)
    native = rep.encoder.encode_request(context, candidates)
    ok = same_request_output(native, py_enc.encode(context, candidates))
    n_ad = len(candidates[0]) - 1
    for _ in range(200):
        rep.encoder.encode_request(context, candidates)
    rounds = []
    py_rounds = []
    for _ in range(repeats):
        rounds.append(median_call_us(lambda: rep.encoder.encode_request(context, candidates), calls))
        py_rounds.append(median_call_us(lambda: py_enc.encode(context, candidates), max(50, calls // 20)))
    us, py_us = statistics.median(rounds), statistics.median(py_rounds)
    cpu_rounds = []
    for _ in range(repeats):
        # this thread only: idle OpenMP workers of the load above would be charged to process_time
        c0 = time.thread_time()
        for _ in range(calls):
            rep.encoder.encode_request(context, candidates)
        cpu_rounds.append((time.thread_time() - c0) / calls * 1e6)
    print(f"encode_request ({len(context)} context fields, {len(candidates)} candidates x {n_ad} ad fields "
          f"+ 1 unknown key): {us:.1f} us median wall (rounds: {', '.join(f'{r:.1f}' for r in rounds)}); "
          f"{statistics.median(cpu_rounds):.1f} us thread CPU per call (mean)")
    print(f"baseline Python dict encoder: {py_us:.1f} us median; outputs equal: {ok}")
    print(f"  -> request encode speed-up: {py_us / us:.1f}x")
    if not ok:
        raise SystemExit("native and Python request encodings differ")


if __name__ == "__main__":
    main()
