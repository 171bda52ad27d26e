"""`ctrops demo` / `make demo`: the main job end to end on embedded defaults.

1. Foundation: generate Criteo-shaped data from a hidden FFM, train an FFM with
   early stopping, evaluate it against the Bayes limit, write the model file,
   reload it (memory-mapped) and score raw rows through the request path,
   checking they agree with batch scoring.
2. Pipeline (when installed): generated ad logs -> join -> tune -> train ->
   evaluate -> gate -> MLflow registry (SQLite) -> published production model.
Everything stays under `out`: local files and SQLite, no server to install.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ctrops.data.spec import FieldSpec
from ctrops.data.synthetic import write_criteo_like
from ctrops.progress import RichProgress
from ctrops.workflows.predict import predict_file
from ctrops.workflows.train import TrainOptions, train_files


def _split_lines(src: Path, train: Path, valid: Path, n_train: int) -> None:
    with open(src) as fin, open(train, "w") as ft, open(valid, "w") as fv:
        for i, line in enumerate(fin):
            (ft if i < n_train else fv).write(line)


def _raw_rows(path: Path, n: int, spec: FieldSpec) -> list[dict[str, str]]:
    """The first `n` rows of a Criteo file as field-name -> raw value dicts (missing values left out)."""
    names = spec.field_names
    rows = []
    with open(path) as fh:
        for line in fh:
            cols = line.rstrip("\n").split("\t")[1:]
            rows.append({name: v for name, v in zip(names, cols) if v != ""})
            if len(rows) == n:
                break
    return rows


def run_foundation(out: Path, console: Console, quick: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows = 60_000 if quick else 250_000
    n_train = int(rows * 0.8)
    t0 = time.perf_counter()
    console.rule("[bold]1. Train an FFM on generated Criteo-shaped data")
    data = out / "criteo_like.tsv"
    summary = write_criteo_like(data, rows, seed=7)
    train, valid = out / "train.tsv", out / "valid.tsv"
    _split_lines(data, train, valid, n_train)
    data.unlink()
    console.print(f"generated {rows:,} rows (click rate {summary.ctr:.3f}); "
                  f"Bayes-optimal log loss {summary.bayes_logloss:.4f}")
    model_path = out / "ffm.ctm"
    opts = TrainOptions(model="ffm", k=4, eta=0.2, l2=2e-5, epochs=4 if quick else 12, threads=2, seed=1)
    result = train_files(str(train), str(model_path), fmt="criteo", valid_path=str(valid), opts=opts,
                         report_path=str(out / "train_report.json"), progress=RichProgress(console))
    r = result.report
    const_p = float(np.loadtxt(train, usecols=0, dtype=np.float64).mean())  # the best constant a team could ship
    y = result.valid.labels.astype(np.float64)
    const_ll = float(-np.mean(y * np.log(const_p) + (1 - y) * np.log(1 - const_p)))
    table = Table(title="validation")
    for col in ("model", "log loss", "AUC", "calibration"):
        table.add_column(col)
    table.add_row("constant click rate", f"{const_ll:.4f}", "0.5000", "1.000")
    table.add_row(f"FFM k=4 (best epoch {r['best_epoch']})", f"{r['valid_logloss']:.4f}", f"{r['valid_auc']:.4f}",
                  f"{r['valid_calibration']:.3f}")
    table.add_row("Bayes limit (hidden model)", f"{summary.bayes_logloss:.4f}", "", "")
    console.print(table)
    console.print(f"model file {model_path} ({r['model_bytes']:,} bytes, {r['n_features']:,} features)")

    console.rule("[bold]2. Reload the model file and score raw requests")
    from ctrops.predict import Predictor

    batch = predict_file(str(model_path), str(valid), str(out / "valid_pred.txt"), fmt="criteo", threads=2)
    spec = FieldSpec.criteo()
    raw = _raw_rows(valid, 5, spec)
    with Predictor.from_file(model_path) as predictor:
        # one request per row: the integer fields and the first 17 categoricals as context,
        # the remaining categoricals as the candidate ad's fields
        ad_fields = set(spec.field_names[-9:])
        online = []
        for row in raw:
            ctx = {k: v for k, v in row.items() if k not in ad_fields}
            cand = {k: v for k, v in row.items() if k in ad_fields}
            online.append(float(predictor.score(ctx, [cand])[0]))
        ctx = {k: v for k, v in raw[0].items() if k not in ad_fields}
        cands = [{k: v for k, v in row.items() if k in ad_fields} for row in raw]
        ranked = predictor.score(ctx, cands)
    table = Table(title="raw rows scored through the request path vs batch scoring of the file")
    for col in ("row", "request path", "batch", "|diff|"):
        table.add_column(col)
    worst = 0.0
    for i, (a, b) in enumerate(zip(online, batch.probabilities[:5])):
        worst = max(worst, abs(a - b))
        table.add_row(str(i), f"{a:.6f}", f"{b:.6f}", f"{abs(a - b):.1e}")
    console.print(table)
    if worst > 1e-5:
        raise RuntimeError(f"request path and batch scoring disagree by {worst:.2e}")
    console.print("one context with the 5 rows' ads as candidates:",
                  ", ".join(f"{p:.4f}" for p in ranked))
    console.print(f"foundation part done in {time.perf_counter() - t0:.0f} s")
    return r


def demo_pipeline_config(root: Path, quick: bool = False) -> dict:
    """The weekly pipeline on generated ad logs, everything under `root` (SQLite MLflow, local storage)."""
    root = root.resolve()
    return {
        "name": "ctr-demo",
        "run_dir": str(root / "run"),
        "tracking": {"root": str(root / "mlflow")},
        "data": {"source": "generate",
                 "generate": {"days": 4 if quick else 5, "impressions_per_day": 6000 if quick else 12000, "seed": 0},
                 "join": {"valid_days": 1, "numeric_columns": ["bid_price"]}, "target": "ctr"},
        "features": {"indexing": "vocab", "min_count": 5},
        "model": {"type": "ffm", "params": {"epochs": 6 if quick else 12, "patience": 2, "n_threads": 1, "seed": 0}},
        "tune": {"n_trials": 4 if quick else 12, "n_workers": 2, "seed": 0, "warm_start": True},
        "shards": {"n": 1},
        "gate": {"max_logloss_regression": 0.01, "max_auc_regression": 0.005, "calibration_band": [0.8, 1.25]},
        "publish": {"storage": str(root / "storage"), "keep_last": 5, "canary_rows": 5, "max_bytes": 200_000_000},
    }


def run_pipeline_part(out: Path, console: Console, quick: bool = False) -> object | None:
    from ctrops.pipeline.runner import run_pipeline

    console.rule("[bold]3. Weekly pipeline: logs -> tuned model -> gate -> MLflow -> published production")
    result = run_pipeline(demo_pipeline_config(out / "pipeline", quick=quick), console=console)
    failed = getattr(result, "failed_step", None)
    if failed:
        raise RuntimeError(f"pipeline step {failed!r} failed: {getattr(result, 'error', '')}")
    return result


def run_demo(out: Path, console: Console | None = None, quick: bool = False) -> None:
    console = console or Console(stderr=True)
    out = Path(out)
    t0 = time.perf_counter()
    run_foundation(out / "foundation", console, quick=quick)
    run_pipeline_part(out, console, quick=quick)
    console.rule(f"[bold green]demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}")
