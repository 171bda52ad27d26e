"""Training speed and quality of the native FFM against LIBFFM, in one run.

Data: Criteo-shaped rows from /work/shared/bench/gen_criteo_like.py (--seed 7),
or a Criteo TSV given with --data. The first 5/6 of the rows train, the last
1/6 validate (1M / 200k by default). Encoding uses ctrops' FeatureEncoder when
it exists, else a hashing encoder in this file (log2bin integers, categorical
tokens hashed into 1e6 features, missing values at the field's reserved index).

Measured: seconds per epoch of ctrops FFM (k=4, eta=0.2, l2=2e-5, LIBFFM's
defaults and its normalization; no linear terms, like LIBFFM) on 1 and 2
threads, validation log loss per epoch, best epoch, peak RSS. Baseline in the
same run: LIBFFM through the `pylibffm` package in a separate virtualenv
(--baseline-python), same rows and features; if it cannot run, the published
LIBFFM figure (7-8 s/epoch for 1M Criteo rows) is printed, labelled as quoted.

    python benchmarks/bench_train.py            # 1.2M rows
    python benchmarks/bench_train.py --quick    # 100k rows smoke run
    python benchmarks/bench_train.py --rounds 3 # 1-thread comparison repeated: median of per-round ratios
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ctrops.data.matrix import FieldMatrix
from ctrops.models.estimators import FFM
from ctrops.models.metrics import log_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from libffm_columns import BASE_PY, libffm_columns  # noqa: E402

GEN = Path("/work/shared/bench/gen_criteo_like.py")
N_INT, N_CAT = 13, 26
N_FIELDS = N_INT + N_CAT
HASH_SPACE = 1_000_000
QUOTED_LIBFFM_S_PER_EPOCH = (7.0, 8.0)


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), measured as the LIBFFM child measures its own."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0


def generate(rows: int, out: Path) -> str:
    """Run the shared generator once (cached by file name); returns its summary line."""
    summary = out.with_suffix(".summary")
    if not out.exists():
        res = subprocess.run([sys.executable, str(GEN), str(rows), str(out), "--seed", "7"],
                             check=True, capture_output=True, text=True)
        summary.write_text(res.stdout + res.stderr)
    return summary.read_text().strip() if summary.exists() else ""


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def encode_fallback(path: Path) -> FieldMatrix:
    """Hash every Criteo column into 2*39 + 1e6 features (the contract's `hash` indexing)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from ctrops.data._hashing import field_keys

    names = ["label"] + [f"I{i}" for i in range(1, N_INT + 1)] + [f"C{i}" for i in range(1, N_CAT + 1)]
    table = pacsv.read_csv(
        path, read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types={n: (pa.float64() if n[0] in "lI" else pa.string())
                                                           for n in names}))
    n = table.num_rows
    labels = table.column("label").to_numpy().astype(np.float32)
    cols = np.empty((n, N_FIELDS), dtype=np.int64)
    base = 2 * N_FIELDS
    for f in range(N_INT):
        v = table.column(f"I{f + 1}").to_numpy(zero_copy_only=False)
        missing = np.isnan(v)
        v = np.where(missing, 0.0, v)
        with np.errstate(divide="ignore", invalid="ignore"):
            token = np.where(v > 2, 100_000 + np.floor(np.log(np.maximum(v, 1.0)) ** 2), np.trunc(v))
        key = _splitmix(token.astype(np.int64).astype(np.uint64) * np.uint64(64) + np.uint64(f + 1))
        cols[:, f] = np.where(missing, 2 * f, base + (key % np.uint64(HASH_SPACE)).astype(np.int64))
    for c in range(N_CAT):
        f = N_INT + c
        enc = pc.dictionary_encode(table.column(f"C{c + 1}")).combine_chunks()
        keys = field_keys(f, enc.dictionary.to_pylist())
        idx = base + (keys % np.uint64(HASH_SPACE)).astype(np.int64)
        codes = enc.indices.to_numpy(zero_copy_only=False)
        null = np.asarray(enc.indices.is_null())
        codes = np.where(null, 0, codes).astype(np.int64)
        empty = np.array([s == "" for s in enc.dictionary.to_pylist()] or [False])
        cols[:, f] = np.where(null | empty[codes], 2 * f, idx[codes])
    indptr = np.arange(0, (n + 1) * N_FIELDS, N_FIELDS, dtype=np.int64)
    fields = np.tile(np.arange(N_FIELDS, dtype=np.int32), n)
    return FieldMatrix.from_arrays(indptr, fields, cols.reshape(-1), np.ones(n * N_FIELDS, dtype=np.float32),
                                   labels, N_FIELDS, base + HASH_SPACE)


def encode(path: Path) -> tuple[FieldMatrix, str]:
    try:
        from ctrops.data.features import FeatureEncoder  # noqa: F401  (the data team's encoder)
        from ctrops.data.readers import load_dataset
        from ctrops.data.spec import FieldSpec
        spec = FieldSpec.criteo()
        enc = FeatureEncoder(spec, indexing="hash", hash_space=HASH_SPACE)
        X, _report = load_dataset(str(path), "criteo", spec=spec, encoder=enc)
        return X, "ctrops FeatureEncoder (hash, 1e6)"
    except Exception as exc:  # encoder not there yet or a different signature: fall back
        return encode_fallback(path), f"in-benchmark hashing (1e6); FeatureEncoder unavailable: {exc!s:.80}"


def run_libffm(train: FieldMatrix, valid: FieldMatrix, epochs: int, workdir: Path, threads: int) -> dict | None:
    """Train LIBFFM (pylibffm) in its own virtualenv on the same rows; per-epoch times from its log.

    pylibffm's LIBFFM is built with OpenMP and never calls omp_set_num_threads, so
    it runs Hogwild on every core unless OMP_NUM_THREADS says otherwise: the
    thread count is set here explicitly, or a "1 thread" figure is really 2.
    """
    if not BASE_PY.exists():
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    # LIBFFM's columns (libffm_columns.py): the (field, feature) pairs of both sets, same model size
    cols, col_fields = libffm_columns(np.concatenate([train.fields, valid.fields]),
                                      np.concatenate([train.indices, valid.indices]), train.n_features)
    npz = workdir / "libffm_input.npz"
    np.savez(npz, tr_indptr=train.indptr, tr_cols=cols[: train.nnz], tr_y=train.labels,
             va_indptr=valid.indptr, va_cols=cols[train.nnz:], va_y=valid.labels, fields=col_fields)
    script = f"""
import sys, time, numpy as np, scipy.sparse as sp, pylibffm
d = np.load({str(npz)!r})
n = len(d['fields'])
def csr(p, c): return sp.csr_matrix((np.ones(len(c), dtype=np.float32), c, p), shape=(len(p) - 1, n))
tr, va = csr(d['tr_indptr'], d['tr_cols']), csr(d['va_indptr'], d['va_cols'])
tp, _ = pylibffm.make_bin({str(workdir)!r}, tr, d['tr_y'], d['fields'])
vp, _ = pylibffm.make_bin({str(workdir)!r}, va, d['va_y'], d['fields'])
sys.stdout.flush()
t, c = time.perf_counter(), time.process_time()
m = pylibffm.train_with_bin(tp, dict(eta=0.2, k=4, nr_iters={epochs}, normalization=True, auto_stop=True), vp)
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's size at fork and survives exec
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print('TOTAL_SECONDS', time.perf_counter() - t, 'CPU_SECONDS', time.process_time() - c, 'PEAK_RSS_KIB', hwm,
      flush=True)
"""
    try:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        res = subprocess.run([str(BASE_PY), "-c", script], capture_output=True, text=True, timeout=3600, env=env)
    except subprocess.TimeoutExpired:
        return None
    if res.returncode != 0:
        print("LIBFFM baseline failed:", res.stderr[-500:])
        return None
    # LIBFFM prints: iter, tr_logloss, [va_logloss,] tr_time (cumulative seconds)
    rows = [line.split() for line in res.stdout.splitlines() if re.match(r"^\s*\d+\s+[\d.]+", line)]
    cum = [float(r[-1]) for r in rows]
    per_epoch = np.diff([0.0, *cum]) if cum else np.array([])
    va = [float(r[2]) for r in rows if len(r) >= 4]
    total = re.search(r"TOTAL_SECONDS ([\d.]+) CPU_SECONDS ([\d.]+) PEAK_RSS_KIB (\d+)", res.stdout)
    return {"epoch_seconds": per_epoch.tolist(), "valid_loss": va,
            "total_seconds": float(total.group(1)) if total else None,
            "cpu_seconds_per_epoch": float(total.group(2)) / max(len(rows), 1) if total else None,
            "peak_rss_mib": int(total.group(3)) / 1024 if total else None,
            "log": res.stdout[-2000:]}


def time_ffm(train: FieldMatrix, valid: FieldMatrix, threads: int, epochs: int) -> FFM:
    # early stopping on, as LIBFFM's auto_stop: both then keep a copy of the best epoch's weights
    model = FFM(k=4, eta=0.2, l2=2e-5, epochs=epochs, normalize=True, linear=False, bias=False,
                early_stopping=True, patience=epochs, n_threads=threads, seed=0)
    return model.fit(train, valid)


def compare_rounds(train: FieldMatrix, valid: FieldMatrix, epochs: int, workdir: Path, rounds: int,
                   ours_first: float, libffm_first: float) -> list[float]:
    """Repeat the 1-thread pair of runs, alternating which goes first, and report the ratio per round.

    A ratio is taken within a round (the two runs minutes apart), never across
    rounds, and the median over rounds is the figure: the machine's background
    load moves both tools' epochs by tens of percent between rounds.
    """
    ratios = [libffm_first / ours_first]
    print(f"round 1: LIBFFM {libffm_first:.2f} s, ctrops {ours_first:.2f} s per epoch -> {ratios[0]:.2f}x")
    for r in range(2, rounds + 1):
        base = run_libffm(train, valid, epochs, workdir, 1)
        model = time_ffm(train, valid, 1, epochs)
        ours = float(np.median([h["seconds"] for h in model.history_]))
        del model
        if not base or not base["epoch_seconds"]:
            print(f"round {r}: LIBFFM did not run")
            continue
        lib = float(np.median(base["epoch_seconds"]))
        ratios.append(lib / ours)
        print(f"round {r}: LIBFFM {lib:.2f} s, ctrops {ours:.2f} s per epoch -> {ratios[-1]:.2f}x", flush=True)
    print(f"speed-up vs LIBFFM on 1 thread over {len(ratios)} rounds: median {np.median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k rows, 3 epochs")
    ap.add_argument("--data", type=Path, help="a Criteo-layout TSV instead of generated rows")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=Path("bench-out/train"))
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of the 1-thread comparison; after the first, each runs LIBFFM then ctrops again "
                         "and the median of the per-round ratios is printed (a shared machine's load drifts: "
                         "one pair of runs can land 30%% apart)")
    args = ap.parse_args(argv)
    rows = args.rows or (100_000 if args.quick else 1_200_000)
    epochs = args.epochs or (3 if args.quick else 6)
    args.workdir.mkdir(parents=True, exist_ok=True)

    path = args.data or args.workdir / f"criteo_like_{rows}_seed7.tsv"
    summary = "" if args.data else generate(rows, path)
    t0 = time.perf_counter()
    X, how = encode(path)
    print(f"data: {path} rows={X.n_rows} nnz={X.nnz} encoded in {time.perf_counter() - t0:.1f}s by {how}")
    if summary:
        print("generator:", summary.splitlines()[-1])
    n_train = X.n_rows * 5 // 6
    train, valid = X.take(slice(0, n_train)), X.take(slice(n_train, X.n_rows))
    del X  # like `ctrops train TRAIN --valid VALID`: the two sets, not a third copy of both
    pairs = float(np.mean(np.diff(train.indptr) * (np.diff(train.indptr) - 1) / 2))
    print(f"train {train.n_rows} rows, valid {valid.n_rows} rows, {pairs:.0f} field pairs per row, "
          f"{train.n_features} features")

    results = {}
    for threads in (1, 2):
        model = time_ffm(train, valid, threads, epochs)
        secs = [h["seconds"] for h in model.history_]
        cpu = [h["cpu_seconds"] for h in model.history_]
        cpu_with_valid = [h["cpu_seconds"] + h["valid_cpu_seconds"] for h in model.history_]
        va = [h["valid_loss"] for h in model.history_]
        best = int(np.argmin(va))
        results[threads] = {"median_s": float(np.median(secs)), "median_cpu_s": float(np.median(cpu)),
                            "median_cpu_with_valid_s": float(np.median(cpu_with_valid)),
                            "best_epoch": best + 1, "best_valid": va[best]}
        print(f"ctrops FFM {threads} thread(s): median {np.median(secs):.2f} s/epoch wall, "
              f"{np.median(cpu):.2f} s/epoch CPU (wall per epoch: {', '.join(f'{s:.2f}' for s in secs)}); "
              f"valid log loss per epoch {', '.join(f'{v:.5f}' for v in va)}; best {va[best]:.5f} "
              f"at epoch {best + 1}")
        if threads == 1:
            p = model.predict_proba(valid)
            print(f"  check: metrics.log_loss on valid with the final weights = {log_loss(valid.labels, p):.5f}")
        del model
    ours_rss = peak_rss_mib()
    print(f"peak RSS {ours_rss:.0f} MiB (this process: data, model, AdaGrad state)")

    bases = {} if args.no_baseline else {t: run_libffm(train, valid, epochs, args.workdir, t) for t in (1, 2)}
    if bases and all(b and b["epoch_seconds"] for b in bases.values()):
        for threads, base in bases.items():
            lib = float(np.median(base["epoch_seconds"]))
            lib_best = min(base["valid_loss"]) if base["valid_loss"] else float("nan")
            print(f"LIBFFM (pylibffm, measured, same data, {threads} thread(s), OMP_NUM_THREADS={threads}): "
                  f"median {lib:.2f} s/epoch (epochs: {', '.join(f'{s:.2f}' for s in base['epoch_seconds'])}); "
                  f"best valid log loss {lib_best:.5f}; CPU per epoch {base['cpu_seconds_per_epoch']:.2f} s")
            print(f"speed-up vs LIBFFM on {threads} thread(s) (wall, median s/epoch): "
                  f"{lib / results[threads]['median_s']:.2f}x")
            if base["cpu_seconds_per_epoch"]:
                # LIBFFM's CPU time per epoch includes its validation pass; add ours for a like-for-like figure
                lib_cpu = base["cpu_seconds_per_epoch"]
                ours_cpu = results[threads]["median_cpu_with_valid_s"]
                print(f"  CPU per epoch, training + validation pass: LIBFFM {lib_cpu:.2f} s, ctrops {ours_cpu:.2f} s "
                      f"-> {lib_cpu / ours_cpu:.2f}x")
            print(f"  valid log loss difference (ctrops - LIBFFM): {results[threads]['best_valid'] - lib_best:+.5f}")
            if base.get("peak_rss_mib"):
                print(f"  peak RSS: LIBFFM process {base['peak_rss_mib']:.0f} MiB, ctrops {ours_rss:.0f} MiB "
                      f"-> ratio {ours_rss / base['peak_rss_mib']:.2f}")
        if args.rounds > 1:
            compare_rounds(train, valid, epochs, args.workdir, args.rounds, results[1]["median_s"],
                           float(np.median(bases[1]["epoch_seconds"])))
    else:
        lo, hi = QUOTED_LIBFFM_S_PER_EPOCH
        print(f"LIBFFM baseline not measured; QUOTED (not measured) figure: {lo:.0f}-{hi:.0f} s/epoch for 1M "
              f"Criteo rows, 1 thread")
        scale = 1_000_000 / max(train.n_rows, 1)
        for threads in (1, 2):
            per_m = results[threads]["median_s"] * scale
            print(f"ctrops {threads} thread(s): {per_m:.2f} s/epoch per 1M rows; ratio vs quoted midpoint "
                  f"{(lo + hi) / 2 / per_m:.2f}x")
    for base in bases.values():
        if base:
            base.pop("log", None)
    print(json.dumps({"ctrops": results, "libffm": bases}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
