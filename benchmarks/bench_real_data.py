"""Real data: the KDD Cup 2012 Track 2 slice, FFM vs logistic regression vs a constant.

Random 80/20 splits with 5 seeds; the encoder is fitted on each split's
training rows only (unseen test values fall to the rare token, as in
production), and 10% of the training rows drive early stopping so the test
rows are never looked at before scoring. FFM must beat LR.

    python benchmarks/bench_real_data.py [--data ../shared/data/kdd2012_...csv.gz] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ctrops.data.dataset import load_dataset
from ctrops.data.features import FeatureEncoder
from ctrops.data.spec import FieldSpec
from ctrops.models.estimators import FFM, LogisticRegression
from ctrops.models.metrics import log_loss, roc_auc

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kdd2012_track2_click_prediction_small_39948.csv.gz"
SPEC = ROOT / "examples" / "specs" / "kdd2012_track2.yaml"


def one_split(table, spec: FieldSpec, seed: int, tmp: Path, quick: bool) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(table.num_rows)
    n_test = table.num_rows // 5
    n_stop = (table.num_rows - n_test) // 10
    parts = {"test": order[:n_test], "stop": order[n_test:n_test + n_stop], "fit": order[n_test + n_stop:]}
    paths = {}
    for name, rows in parts.items():
        paths[name] = tmp / f"{name}_{seed}.parquet"
        pq.write_table(table.take(rows), paths[name])
    enc = FeatureEncoder(spec, indexing="vocab", min_count=2, seed=0)
    X_fit, _ = load_dataset(paths["fit"], "parquet", encoder=enc, rejects=False)
    X_stop, _ = load_dataset(paths["stop"], "parquet", encoder=enc, rejects=False)
    X_test, _ = load_dataset(paths["test"], "parquet", encoder=enc, rejects=False)
    y = X_test.labels.astype(np.float64)
    out = {}
    p_const = np.full(len(y), float(X_fit.labels.mean()))
    out["constant"] = {"logloss": log_loss(y, p_const), "auc": 0.5}
    epochs = 8 if quick else 30
    models = {
        "lr": LogisticRegression(alpha=0.05, l2=1e-4, epochs=epochs, seed=seed),
        "ffm": FFM(k=4, eta=0.1, l2=1e-4, epochs=epochs, seed=seed),
    }
    for name, model in models.items():
        model.fit(X_fit, X_stop)
        p = model.predict_proba(X_test)
        out[name] = {"logloss": log_loss(y, p), "auc": roc_auc(y, p), "best_epoch": model.best_epoch_}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if not a.data.exists():
        print(f"skipped: {a.data} not found (the real data lives in ../shared/data)")
        return
    table = pacsv.read_csv(a.data)
    spec = FieldSpec.from_yaml(SPEC)
    seeds = range(2 if a.quick else a.seeds)
    results = []
    with tempfile.TemporaryDirectory() as d:
        for seed in seeds:
            r = one_split(table, spec, seed, Path(d), a.quick)
            results.append(r)
            print(f"seed {seed}: " + "  ".join(f"{m} ll {v['logloss']:.4f} auc {v['auc']:.4f}" for m, v in r.items()),
                  flush=True)
    summary = {}
    for m in ("constant", "lr", "ffm"):
        ll = [r[m]["logloss"] for r in results]
        auc = [r[m]["auc"] for r in results]
        summary[m] = {"logloss_mean": statistics.mean(ll), "logloss_std": statistics.pstdev(ll),
                      "auc_mean": statistics.mean(auc), "auc_std": statistics.pstdev(auc)}
    print(f"\nKDD 2012 track 2 slice, {table.num_rows:,} rows, {len(results)} random 80/20 splits")
    print(f"{'model':10s} {'log loss':>18s} {'AUC':>18s}")
    for m, s in summary.items():
        print(f"{m:10s} {s['logloss_mean']:.4f} ± {s['logloss_std']:.4f}   {s['auc_mean']:.4f} ± {s['auc_std']:.4f}")
    wins = sum(r["ffm"]["logloss"] < r["lr"]["logloss"] for r in results)
    ratio = summary["ffm"]["logloss_mean"] / summary["lr"]["logloss_mean"]
    print(f"FFM beats LR on {wins}/{len(results)} splits; log-loss ratio FFM/LR {ratio:.4f}, "
          f"FFM/constant {summary['ffm']['logloss_mean'] / summary['constant']['logloss_mean']:.4f}")
    print(json.dumps({"summary": summary, "ffm_wins": wins, "splits": len(results)}))


if __name__ == "__main__":
    main()
