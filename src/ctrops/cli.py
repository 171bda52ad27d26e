"""The `ctrops` command: one entry point, a sub-command per stage.

Heavy libraries (MLflow, Optuna, the server) are imported inside the commands
that need them, so `ctrops --help` and the hot commands start quickly.
"""

from __future__ import annotations

import importlib
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ctrops.errors import CtropsError

app = typer.Typer(help="Train, tune, ship, serve and monitor CTR/CVR models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console(stderr=True)


class Format(str, Enum):
    criteo = "criteo"
    libffm = "libffm"
    csv = "csv"
    parquet = "parquet"


class ModelKind(str, Enum):
    ffm = "ffm"
    fm = "fm"
    lr = "lr"


class Indexing(str, Enum):
    vocab = "vocab"
    hash = "hash"


def _progress():
    from ctrops.progress import RichProgress

    return RichProgress(console)


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


@app.command()
def train(
    train_path: Path = typer.Argument(..., metavar="TRAIN", help="training file (.gz is read transparently)"),
    valid: Optional[Path] = typer.Option(None, "--valid", help="validation file: early stopping and metrics"),
    fmt: Format = typer.Option(Format.criteo, "--format", help="input format"),
    spec: Optional[Path] = typer.Option(None, "--spec", help="field spec YAML (csv, parquet; criteo has a built-in one)"),
    model: ModelKind = typer.Option(ModelKind.ffm, "--model"),
    k: int = typer.Option(4, "-k", help="latent factors"),
    eta: float = typer.Option(0.2, "--eta", help="AdaGrad learning rate (ffm, fm)"),
    alpha: float = typer.Option(0.05, "--alpha", help="FTRL learning rate (lr)"),
    l2: float = typer.Option(2e-5, "--l2", help="L2 regularization (LIBFFM's lambda)"),
    l1: float = typer.Option(0.0, "--l1", help="L1 regularization: exact zeros, for pruning"),
    epochs: int = typer.Option(20, "--epochs"),
    patience: int = typer.Option(2, "--patience", help="epochs without improvement before stopping"),
    no_early_stopping: bool = typer.Option(False, "--no-early-stopping"),
    no_norm: bool = typer.Option(False, "--no-norm", help="disable instance-wise normalization"),
    linear: bool = typer.Option(False, "--linear/--no-linear", help="FFM/FM linear terms (off: they overfit, see README)"),
    linear_eta: Optional[float] = typer.Option(None, "--linear-eta",
                                               help="learning rate of the linear terms (default: --eta; try eta/20)"),
    bias: bool = typer.Option(True, "--bias/--no-bias", help="global bias (LIBFFM has none)"),
    threads: int = typer.Option(1, "--threads"),
    seed: int = typer.Option(0, "--seed"),
    indexing: Indexing = typer.Option(Indexing.vocab, "--indexing", help="vocab (compact) or hash"),
    min_count: int = typer.Option(10, "--min-count", help="values seen fewer times become the field's rare token"),
    hash_space: int = typer.Option(1_000_000, "--hash-space"),
    max_bytes: Optional[int] = typer.Option(None, "--max-bytes", help="refuse to write a larger model file"),
    float16: bool = typer.Option(False, "--float16", help="store weights as float16 (half the file)"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="binary cache of parsed data"),
    out: Path = typer.Option(Path("model.ctm"), "--out", help="model file to write"),
    report: Optional[Path] = typer.Option(None, "--report", help="JSON report to write"),
) -> None:
    """Train an FFM, FM or logistic regression model and write the model file."""
    from ctrops.workflows.train import TrainOptions, train_files

    opts = TrainOptions(model=model.value, k=k, eta=eta, alpha=alpha, l2=l2, l1=l1, epochs=epochs,
                        threads=threads, seed=seed, normalize=not no_norm, linear=linear, linear_eta=linear_eta,
                        bias=bias, early_stopping=not no_early_stopping, patience=patience,
                        indexing=indexing.value, min_count=min_count, hash_space=hash_space,
                        max_bytes=max_bytes, weight_dtype="float16" if float16 else "float32",
                        cache_dir=str(cache_dir) if cache_dir else None)
    try:
        result = train_files(str(train_path), str(out), fmt=fmt.value, valid_path=str(valid) if valid else None,
                             spec_path=str(spec) if spec else None, opts=opts,
                             report_path=str(report) if report else None, progress=_progress())
    except (CtropsError, FileNotFoundError) as exc:
        _fail(exc)
    r = result.report
    summary = (f"wrote {r['model_path']} ({r['model_bytes']:,} bytes): {r['train_rows']:,} rows, "
               f"{r['rejected_rows']:,} rejected, best epoch {r['best_epoch']}")
    if "valid_logloss" in r:
        summary += f", valid logloss {r['valid_logloss']:.5f}, AUC {r['valid_auc']:.4f}"
    console.print(summary)


@app.command()
def predict(
    model_path: Path = typer.Argument(..., metavar="MODEL"),
    input_path: Path = typer.Argument(..., metavar="INPUT"),
    fmt: Format = typer.Option(Format.criteo, "--format"),
    out: Path = typer.Option(Path("pred.txt"), "--out", help="one probability per line"),
    threads: int = typer.Option(1, "--threads"),
) -> None:
    """Score a file: one probability per input row, in order."""
    from ctrops.workflows.predict import predict_file

    try:
        res = predict_file(str(model_path), str(input_path), str(out), fmt=fmt.value, threads=threads,
                           progress=_progress())
    except (CtropsError, FileNotFoundError) as exc:
        _fail(exc)
    rate = res.rows / res.scoring_seconds if res.scoring_seconds > 0 else float("inf")
    console.print(f"wrote {res.rows:,} predictions to {res.out} ({res.rejected_rows:,} rows rejected; "
                  f"{res.seconds:.2f} s in all, scoring {rate:,.0f} rows/s)")


@app.command()
def convert(
    input_path: Path = typer.Argument(..., metavar="INPUT"),
    from_format: Format = typer.Option(..., "--from"),
    to_format: str = typer.Option(..., "--to", help="libffm or parquet"),
    out: Path = typer.Option(..., "--out"),
    spec: Optional[Path] = typer.Option(None, "--spec"),
    indexing: Indexing = typer.Option(Indexing.vocab, "--indexing"),
    min_count: int = typer.Option(10, "--min-count"),
    hash_space: int = typer.Option(1_000_000, "--hash-space"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Convert between formats (e.g. Criteo TSV to LIBFFM text, with the same encoding as training)."""
    from ctrops.data.convert import convert as run_convert
    from ctrops.data.spec import FieldSpec

    try:
        rep = run_convert(str(input_path), from_format.value, to_format, str(out),
                          spec=FieldSpec.from_yaml(spec) if spec else None, indexing=indexing.value,
                          min_count=min_count, hash_space=hash_space, seed=seed)
    except (CtropsError, FileNotFoundError) as exc:
        _fail(exc)
    console.print_json(json.dumps(rep.to_dict(), default=str))


@app.command()
def inspect(model_path: Path = typer.Argument(..., metavar="MODEL")) -> None:
    """Show a model file's header: type, sizes, encoder, metrics (arrays are not read)."""
    from ctrops.artifact.format import inspect_model

    try:
        info = inspect_model(model_path)
    except (CtropsError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(json.dumps(info, indent=2, default=str))


@app.command()
def prune(
    model_path: Path = typer.Argument(..., metavar="MODEL"),
    out: Path = typer.Option(..., "--out"),
    threshold: float = typer.Option(0.0, "--threshold", help="drop features whose every weight is below this"),
    drop: list[str] = typer.Option([], "--drop", help="FIELD=VALUE of a retired value (repeatable)"),
    valid: Optional[Path] = typer.Option(None, "--valid", help="validation file: report the log-loss change"),
    fmt: Format = typer.Option(Format.criteo, "--format", help="format of --valid"),
    max_bytes: Optional[int] = typer.Option(None, "--max-bytes"),
) -> None:
    """Shrink a model: drop near-zero features and retired values (e.g. creatives no longer served)."""
    from ctrops.artifact.format import load_model, save_parts
    from ctrops.artifact.prune import prune_model
    from ctrops.data.dataset import load_dataset
    from ctrops.data.features import FeatureEncoder

    drops: dict[str, list[str]] = {}
    for item in drop:
        name, sep, value = item.partition("=")
        if not sep:
            _fail(ValueError(f"--drop expects FIELD=VALUE, got {item!r}"))
        drops.setdefault(name, []).append(value)
    try:
        model = load_model(model_path)
        X = None
        if valid is not None:
            enc = FeatureEncoder.from_header(model.encoder_header, model.encoder_arrays)
            X, _ = load_dataset(str(valid), fmt.value, encoder=enc, rejects=False)
        parts, rep = prune_model(model, threshold=threshold, drop_values=drops or None, valid=X)
        save_parts(out, parts, max_bytes=max_bytes, dtype=model.weight_dtype)
    except (CtropsError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(json.dumps(rep.to_dict(), indent=2, default=str))


@app.command("gen-data")
def gen_data(
    out: Path = typer.Argument(..., metavar="OUT", help="Criteo-layout TSV to write (.gz allowed)"),
    rows: int = typer.Option(100_000, "--rows"),
    seed: int = typer.Option(0, "--seed"),
    ctr: float = typer.Option(0.2, "--ctr"),
) -> None:
    """Generate Criteo-shaped rows from a hidden FFM and print the Bayes-optimal log loss."""
    from ctrops.data.synthetic import write_criteo_like

    s = write_criteo_like(out, rows, seed=seed, ctr=ctr)
    typer.echo(json.dumps({"rows": s.rows, "ctr": round(s.ctr, 5), "bayes_logloss": round(s.bayes_logloss, 5),
                           "path": str(s.path)}))


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), "--out"),
         quick: bool = typer.Option(False, "--quick", help="smaller data, for a smoke run")) -> None:
    """Run the main job end to end on generated data with embedded defaults (local files, SQLite)."""
    from ctrops.workflows.demo import run_demo

    try:
        run_demo(out, console=console, quick=quick)
    except CtropsError as exc:
        _fail(exc)


def _mount(module: str, name: str) -> None:
    """Attach a stage's own sub-application when that stage is installed."""
    try:
        sub = importlib.import_module(module).app
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("ctrops"):
            return
        raise
    app.add_typer(sub, name=name)


_mount("ctrops.cli_serve", "serve")
_mount("ctrops.cli_pipeline", "pipeline")
_mount("ctrops.cli_logs", "logs")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
