"""ctrops FFM (default: bias, no linear terms; --linear adds them) against xLearn 0.40 FFM, same files, one run.

Data: Criteo-shaped rows from /work/shared/bench/gen_criteo_like.py (--seed 7);
the first --rows rows of --data are used, the first 5/6 train and the last 1/6
validate (1M / 200k by default). ctrops' own converter writes both LIBFFM text
files (`ctrops.data.convert.convert`, hash indexing into 1e6 features,
min_count 10): the encoder is fitted on the training part only and the same
fitted encoder converts the validation part. Both tools then learn from these
two files: xLearn reads them itself, ctrops loads them with
`load_dataset(..., "libffm", n_fields=39, n_features=2*39+1e6)`.

Models (one thread each, run one after the other, never at the same time):
  xLearn   create_ffm(), task binary, lr 0.2, lambda 2e-5, k 4, adagrad,
           instance-wise normalization (its default), metric none (so early
           stopping watches the validation log loss), stop_window 2, nthread 1.
  ctrops   FFM(k=4, eta=0.2, l2=2e-5, linear=--linear, bias=True, normalize=True,
           early_stopping=True, patience 2, n_threads=1).
Both run up to --epochs epochs (15) with early stopping on the validation
file and keep their best epoch's weights (xLearn: stops after the validation
loss rose stop_window+1 epochs in a row; ctrops: after 2 epochs without a new
best).

Measured: validation log loss of each tool's best-epoch model, computed for
BOTH by `ctrops.models.metrics.log_loss` (xLearn's from its own predictions,
`setSigmoid` + `predict`), best epoch, and median wall seconds per epoch.
xLearn's per-epoch "Time cost" covers the training pass plus its validation
pass, so ctrops' epoch time in the comparison is also training + validation
(its training pass alone is printed too). The machine may be shared: wall
times are noisy; ctrops' CPU seconds are printed beside them.

    python benchmarks/bench_xlearn.py            # 1.2M rows, up to 15 epochs
    python benchmarks/bench_xlearn.py --quick    # 100k rows, 3 epochs (smoke run)
    python benchmarks/bench_xlearn.py --rows 300000

xLearn lives in its own virtualenv (benchmarks/setup_baselines.sh builds
bench-out/baselines-venv; /tmp/basevenv is used when that is missing;
CTROPS_BASELINE_PYTHON overrides). Generated files go to bench-out/xlearn/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ctrops.data.convert import convert
from ctrops.data.dataset import load_dataset
from ctrops.data.features import FeatureEncoder
from ctrops.data.spec import FieldSpec
from ctrops.models.estimators import FFM
from ctrops.models.metrics import log_loss

ROOT = Path(__file__).resolve().parents[1]
GEN = Path("/work/shared/bench/gen_criteo_like.py")
DEFAULT_DATA = Path("/tmp/h1/full/criteo_like_1200000_seed7.tsv")
OUT = ROOT / "bench-out" / "xlearn"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from libffm_columns import BASE_PY  # noqa: E402  (the baselines' virtualenv)
HASH_SPACE = 1_000_000
K, ETA, L2 = 4, 0.2, 2e-5
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# xLearn's per-epoch row, colour codes removed: "[  50%      ]     1    0.488922    0.479169    0.36"
EPOCH_ROW = re.compile(r"^\[\s*\d+%\s*\]\s+(\d+)\s+([-\d.eE+]+)\s+([-\d.eE+]+)\s+([-\d.eE+]+)\s*$")


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            n += block.count(b"\n")
    return n


def source_data(path: Path, rows: int) -> Path:
    """The Criteo-shaped TSV to read; generated (seed 7) when the given file is missing."""
    if path.exists():
        return path
    out = OUT / f"criteo_like_{rows}_seed7.tsv"
    if not out.exists():
        print(f"{path} not found: generating {rows} rows into {out}", flush=True)
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(GEN), str(rows), str(out), "--seed", "7"], check=True)
    return out


def split_tsv(src: Path, rows: int, train: Path, valid: Path) -> tuple[int, int]:
    """First `rows` lines of src: the first rows - rows//6 to train, the rest to valid."""
    n_valid = rows // 6
    n_train = rows - n_valid
    done = 0
    with open(src, "rb") as fh, open(train, "wb") as ft, open(valid, "wb") as fv:
        for line in fh:
            if done >= rows:
                break
            (ft if done < n_train else fv).write(line)
            done += 1
    if done < rows:
        raise SystemExit(f"{src} has only {done} rows, --rows asked for {rows}")
    return n_train, n_valid


def make_libffm(data: Path, rows: int, min_count: int, fresh: bool) -> dict:
    """Write train.ffm / valid.ffm under bench-out/xlearn/ (reused when data and settings are unchanged)."""
    OUT.mkdir(parents=True, exist_ok=True)
    st = data.stat()
    stamp = {"data": str(data.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "rows": rows,
             "min_count": min_count, "hash_space": HASH_SPACE, "indexing": "hash"}
    tag = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]
    d = OUT / f"rows{rows}_{tag}"
    info_path = d / "libffm.json"
    if info_path.exists() and not fresh:
        info = json.loads(info_path.read_text())
        print(f"LIBFFM files reused from {d}", flush=True)
        return info
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.bin"):          # xLearn's binary caches of older text files
        old.unlink()
    t0 = time.perf_counter()
    train_tsv, valid_tsv = d / "train.tsv", d / "valid.tsv"
    n_train, n_valid = split_tsv(data, rows, train_tsv, valid_tsv)
    enc = FeatureEncoder(FieldSpec.criteo(), indexing="hash", min_count=min_count, hash_space=HASH_SPACE, seed=0)
    rep_tr = convert(train_tsv, "criteo", "libffm", d / "train.ffm", encoder=enc)   # fits enc in place
    if not enc.is_fitted:
        raise SystemExit("the converter did not fit the encoder on the training part")
    rep_va = convert(valid_tsv, "criteo", "libffm", d / "valid.ffm", encoder=enc)   # same fitted encoder
    train_tsv.unlink()
    valid_tsv.unlink()
    info = {"dir": str(d), "train": rep_tr.output, "valid": rep_va.output, "n_train": rep_tr.rows_written,
            "n_valid": rep_va.rows_written, "rejected": rep_tr.rows_rejected + rep_va.rows_rejected,
            "n_fields": enc.n_fields, "n_features": 2 * enc.n_fields + HASH_SPACE, "min_count": min_count,
            "source": str(data), "rows_asked": rows, "seconds": time.perf_counter() - t0}
    if (info["n_train"], info["n_valid"]) != (n_train, n_valid):
        print(f"note: converter kept {info['n_train']}/{n_train} train and {info['n_valid']}/{n_valid} valid rows")
    info_path.write_text(json.dumps(info, indent=1))
    print(f"LIBFFM files written in {info['seconds']:.1f}s: {d}", flush=True)
    return info


XLEARN_SCRIPT = r"""
import json, sys, time, resource
import xlearn as xl
a = json.loads(sys.argv[1])
m = xl.create_ffm()
m.setTrain(a["train"])
m.setValidate(a["valid"])
t = time.perf_counter()
m.fit({"task": "binary", "lr": a["lr"], "lambda": a["lambda"], "k": a["k"], "epoch": a["epochs"],
       "metric": "none", "opt": "adagrad", "nthread": 1, "stop_window": 2, "log": a["log"]}, a["model"])
fit_s = time.perf_counter() - t
sys.stdout.flush()
p = xl.create_ffm()
p.setTest(a["valid"])
p.setSigmoid()
p.predict(a["model"], a["pred"])
sys.stdout.flush()
ru = resource.getrusage(resource.RUSAGE_SELF)
print("BENCH_FIT_SECONDS", fit_s, "BENCH_CPU_SECONDS", ru.ru_utime + ru.ru_stime, flush=True)
"""


def run_xlearn(info: dict, epochs: int) -> dict:
    d = Path(info["dir"])
    args = {"train": info["train"], "valid": info["valid"], "model": str(d / "xlearn_model.out"),
            "pred": str(d / "xlearn_valid_pred.txt"), "log": str(d / "xlearn_log"),
            "epochs": epochs, "lr": ETA, "lambda": L2, "k": K}
    Path(args["pred"]).unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # xLearn 0.40 builds its log file name from $USER and aborts ("basic_string: construction from
    # null is not valid") when USER is unset, as it is in some containers
    env.setdefault("USER", os.environ.get("LOGNAME") or "ctrops")
    if not env["USER"]:
        env["USER"] = "ctrops"
    t0 = time.perf_counter()
    res = subprocess.run([str(BASE_PY), "-c", XLEARN_SCRIPT, json.dumps(args)], capture_output=True,
                         text=True, env=env, timeout=4 * 3600)
    wall = time.perf_counter() - t0
    out = ANSI.sub("", res.stdout)
    (d / "xlearn_stdout.txt").write_text(out + "\n--- stderr ---\n" + ANSI.sub("", res.stderr))
    if res.returncode != 0:
        raise SystemExit(f"xLearn failed (exit {res.returncode}); output in {d / 'xlearn_stdout.txt'}:\n"
                         f"{out[-1500:]}\n{res.stderr[-1500:]}")
    epochs_seen, train_loss, test_loss, seconds = [], [], [], []
    for line in out.splitlines():
        m = EPOCH_ROW.match(line.strip())
        if m:
            epochs_seen.append(int(m.group(1)))
            train_loss.append(float(m.group(2)))
            test_loss.append(float(m.group(3)))
            seconds.append(float(m.group(4)))
    if not epochs_seen:
        raise SystemExit(f"no per-epoch rows found in xLearn's output ({d / 'xlearn_stdout.txt'})")
    stop = re.search(r"Early-stopping at epoch (\d+)", out)
    best_epoch = int(stop.group(1)) if stop else epochs_seen[int(np.argmin(test_loss))]
    nfeat = re.search(r"Number of Feature: (\d+)", out)
    fit = re.search(r"BENCH_FIT_SECONDS ([\d.]+) BENCH_CPU_SECONDS ([\d.]+)", out)
    p = np.loadtxt(args["pred"], dtype=np.float64, ndmin=1)
    return {"epochs_run": len(epochs_seen), "train_loss": train_loss, "valid_loss_printed": test_loss,
            "epoch_seconds": seconds, "best_epoch": best_epoch, "early_stopped": bool(stop),
            "n_features_seen": int(nfeat.group(1)) if nfeat else None,
            "fit_seconds": float(fit.group(1)) if fit else None,
            "process_cpu_seconds": float(fit.group(2)) if fit else None,
            "process_wall_seconds": wall, "pred": p}


def run_ctrops(info: dict, epochs: int, linear: bool):
    kw = dict(n_fields=info["n_fields"], n_features=info["n_features"], rejects=False)
    X_tr, _ = load_dataset(info["train"], "libffm", **kw)
    X_va, _ = load_dataset(info["valid"], "libffm", **kw)
    model = FFM(k=K, eta=ETA, l2=L2, linear=linear, bias=True, normalize=True, epochs=epochs,
                early_stopping=True, n_threads=1, seed=0)
    t0 = time.perf_counter()
    model.fit(X_tr, X_va)
    fit_s = time.perf_counter() - t0
    p = model.predict_proba(X_va, n_threads=1)
    return model, X_va.labels.astype(np.float64), p, fit_s, (X_tr.n_rows, X_va.n_rows, X_tr.nnz)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Criteo-shaped TSV (default: %(default)s)")
    ap.add_argument("--rows", type=int, default=None, help="rows used, 5/6 train + 1/6 valid (default 1200000)")
    ap.add_argument("--epochs", type=int, default=None, help="most epochs, early stopping on both (default 15)")
    ap.add_argument("--min-count", type=int, default=10, help="converter's min_count (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100k rows, 3 epochs")
    ap.add_argument("--fresh", action="store_true", help="rewrite the LIBFFM files even when reusable")
    ap.add_argument("--linear", action="store_true",
                    help="ctrops with linear terms too (xLearn's model shape; off by default in ctrops)")
    a = ap.parse_args()
    rows = a.rows or (100_000 if a.quick else 1_200_000)
    epochs = a.epochs or (3 if a.quick else 15)
    if not BASE_PY.exists():
        raise SystemExit(f"xLearn's python not found ({BASE_PY}): run benchmarks/setup_baselines.sh "
                         "or set CTROPS_BASELINE_PYTHON")

    data = source_data(a.data, rows)
    info = make_libffm(data, rows, a.min_count, a.fresh)
    print(f"data: {info['source']} first {rows} rows -> train {info['n_train']} / valid {info['n_valid']} rows; "
          f"LIBFFM by ctrops.data.convert (hash into {HASH_SPACE}, min_count {info['min_count']}); "
          f"n_fields {info['n_fields']}, n_features {info['n_features']}", flush=True)
    print(f"xLearn python: {BASE_PY}; settings: k={K} lr/eta={ETA} lambda/l2={L2} adagrad, normalization on, "
          f"1 thread, up to {epochs} epochs with early stopping on the validation log loss", flush=True)

    # one after the other: xLearn's subprocess first, then ctrops in this process
    print("running xLearn ...", flush=True)
    xl = run_xlearn(info, epochs)
    print("running ctrops ...", flush=True)
    model, y, p_ct, ct_fit_s, (n_tr, n_va, nnz) = run_ctrops(info, epochs, a.linear)
    if len(xl["pred"]) != len(y):
        raise SystemExit(f"xLearn wrote {len(xl['pred'])} predictions for {len(y)} validation rows")

    xl_loss = log_loss(y, xl["pred"])
    ct_loss = log_loss(y, p_ct)
    hist = model.history_
    ct_epoch_s = [h["seconds"] + h["valid_seconds"] for h in hist]
    ct_train_s = [h["seconds"] for h in hist]
    ct_cpu_s = [h["cpu_seconds"] + h["valid_cpu_seconds"] for h in hist]
    xl_med = statistics.median(xl["epoch_seconds"])
    ct_med = statistics.median(ct_epoch_s)
    const = log_loss(y, np.full(len(y), float(np.mean(y))))

    print()
    print(f"{'tool':<28}{'best valid log loss':>21}{'best epoch':>12}{'epochs run':>12}{'median s/epoch':>16}")
    print(f"{'xLearn 0.40 FFM':<28}{xl_loss:>21.5f}{xl['best_epoch']:>12d}{xl['epochs_run']:>12d}{xl_med:>16.2f}")
    label = "ctrops FFM (linear, bias)" if a.linear else "ctrops FFM (bias; default)"
    print(f"{label:<28}{ct_loss:>21.5f}{model.best_epoch_:>12d}{len(hist):>12d}{ct_med:>16.2f}")
    print(f"ratio ctrops/xLearn: log loss {ct_loss / xl_loss:.4f} (difference {ct_loss - xl_loss:+.5f}), "
          f"seconds per epoch {ct_med / xl_med:.3f} (xLearn/ctrops speed-up {xl_med / ct_med:.2f}x)")
    print(f"target (ctrops log loss <= xLearn's): {'MET' if ct_loss <= xl_loss else 'NOT MET'}")
    print()
    print("seconds per epoch are wall time of the training pass + the validation pass (xLearn's 'Time cost')")
    print("xLearn per epoch: valid loss (its own print) " + ", ".join(f"{v:.5f}" for v in xl["valid_loss_printed"])
          + "; seconds " + ", ".join(f"{s:.2f}" for s in xl["epoch_seconds"])
          + f"; early stopped: {xl['early_stopped']}; features it saw: {xl['n_features_seen']}")
    print("ctrops per epoch: valid loss " + ", ".join(f"{h['valid_loss']:.5f}" for h in hist)
          + "; seconds " + ", ".join(f"{s:.2f}" for s in ct_epoch_s)
          + f" (training pass alone: median {statistics.median(ct_train_s):.2f} s; "
          f"CPU train+valid median {statistics.median(ct_cpu_s):.2f} s)")
    print(f"xLearn process: {xl['process_wall_seconds']:.1f} s wall, fit {xl['fit_seconds'] or float('nan'):.1f} s, "
          f"{xl['process_cpu_seconds'] or float('nan'):.1f} s CPU; ctrops fit {ct_fit_s:.1f} s")
    print(f"constant (train CTR) valid log loss {const:.5f}; check: ctrops internal best valid loss "
          f"{model.best_valid_loss_:.5f}, xLearn printed best {min(xl['valid_loss_printed']):.5f}")
    print(json.dumps({
        "rows": rows, "n_train": n_tr, "n_valid": n_va, "nnz_train": nnz, "max_epochs": epochs,
        "early_stopping": True,
        "xlearn": {"valid_logloss": xl_loss, "best_epoch": xl["best_epoch"], "epochs_run": xl["epochs_run"],
                   "median_s_per_epoch": xl_med, "epoch_seconds": xl["epoch_seconds"],
                   "valid_loss_printed": xl["valid_loss_printed"]},
        "ctrops": {"linear": a.linear, "valid_logloss": ct_loss, "best_epoch": int(model.best_epoch_), "epochs_run": len(hist),
                   "median_s_per_epoch": ct_med, "median_train_only_s": statistics.median(ct_train_s),
                   "epoch_seconds": ct_epoch_s, "valid_loss": [h["valid_loss"] for h in hist]},
        "ratio_logloss_ctrops_over_xlearn": ct_loss / xl_loss,
        "ratio_s_per_epoch_ctrops_over_xlearn": ct_med / xl_med,
        "target_met": bool(ct_loss <= xl_loss)}))


if __name__ == "__main__":
    main()
