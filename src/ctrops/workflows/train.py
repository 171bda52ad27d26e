"""`ctrops train`: files in, a validated model file and a JSON report out.

The workflow is a plain function so the demo, the pipeline and tests run the
exact code path users run from the command line.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrops.jsonable import to_jsonable
from ctrops.data.dataset import ReadReport, load_dataset
from ctrops.data.features import FeatureEncoder
from ctrops.data.matrix import FieldMatrix
from ctrops.data.spec import FieldSpec
from ctrops.errors import ConfigError, DataError
from ctrops.progress import ProgressSink, SilentProgress, bytes_callback

PREBUILT_INDEXING = "prebuilt"  # LIBFFM text: rows arrive already indexed, no raw-value encoder


@dataclass
class TrainOptions:
    """Everything `ctrops train` accepts; defaults follow LIBFFM's where it has one."""

    model: str = "ffm"
    k: int = 4
    eta: float = 0.2
    l2: float = 2e-5
    l1: float = 0.0
    alpha: float = 0.05  # FTRL learning rate of the 'lr' model (eta drives ffm/fm)
    epochs: int = 20
    threads: int = 1
    seed: int = 0
    normalize: bool = True
    linear: bool = False  # see FFM's docstring: unscaled linear terms overfit
    linear_eta: float | None = None  # learning rate of the linear terms (None: eta)
    bias: bool = True
    early_stopping: bool = True
    patience: int = 2
    indexing: str = "vocab"
    min_count: int = 10
    hash_space: int = 1_000_000
    max_bytes: int | None = None
    weight_dtype: str = "float32"
    cache_dir: str | None = None

    def estimator(self):
        from ctrops.models.estimators import FFM, FM, LogisticRegression

        if self.model in ("ffm", "fm"):
            cls = FFM if self.model == "ffm" else FM
            return cls(k=self.k, eta=self.eta, l2=self.l2, l1=self.l1, epochs=self.epochs,
                       normalize=self.normalize, linear=self.linear, bias=self.bias,
                       early_stopping=self.early_stopping, patience=self.patience,
                       n_threads=self.threads, seed=self.seed, linear_eta=self.linear_eta)
        if self.model == "lr":
            return LogisticRegression(alpha=self.alpha, l1=self.l1, l2=self.l2, epochs=self.epochs,
                                      early_stopping=self.early_stopping, patience=self.patience,
                                      n_threads=self.threads, seed=self.seed)
        raise ConfigError(f"--model must be one of ffm, fm, lr; got {self.model!r}")


@dataclass
class TrainResult:
    model_path: Path
    report: dict[str, Any]
    estimator: Any = field(repr=False)
    encoder: FeatureEncoder | None = field(repr=False)
    valid: FieldMatrix | None = field(repr=False)


def _read(path: str, fmt: str, encoder: FeatureEncoder | None, opts: TrainOptions,
          progress: ProgressSink, what: str) -> tuple[FieldMatrix, ReadReport]:
    size = os.path.getsize(path) if "://" not in path and os.path.exists(path) else None
    progress.start(f"reading {what}", size)
    try:
        return load_dataset(path, fmt, encoder=encoder if fmt != "libffm" else None,
                            cache_dir=opts.cache_dir, progress=bytes_callback(progress), n_threads=opts.threads)
    finally:
        progress.finish()


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from ctrops.models.metrics import calibration_ratio, log_loss, normalized_entropy, roc_auc

    return {"logloss": float(log_loss(y, p)), "auc": float(roc_auc(y, p)),
            "normalized_entropy": float(normalized_entropy(y, p)),
            "calibration": float(calibration_ratio(y, p))}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def train_files(train_path: str, out: str, *, fmt: str, valid_path: str | None = None,
                spec_path: str | None = None, opts: TrainOptions | None = None,
                report_path: str | None = None, progress: ProgressSink | None = None) -> TrainResult:
    """Read, encode, fit (early stopping on `valid_path`), write the model file and the report."""
    from ctrops.artifact.format import save_model

    opts = opts or TrainOptions()
    progress = progress or SilentProgress()
    t_start = time.perf_counter()
    encoder: FeatureEncoder | None = None
    if fmt != "libffm":
        spec = FieldSpec.from_yaml(spec_path) if spec_path else None
        if spec is None:
            if fmt != "criteo":
                raise ConfigError(f"--format {fmt} needs --spec SPEC.yaml (label, categorical and numeric columns)")
            spec = FieldSpec.criteo()
        encoder = FeatureEncoder(spec, indexing=opts.indexing, min_count=opts.min_count,
                                 hash_space=opts.hash_space, seed=opts.seed)
    elif spec_path:
        raise ConfigError("--spec does not apply to --format libffm (its rows are already indexed)")

    train, train_read = _read(train_path, fmt, encoder, opts, progress, "training data")
    if train.n_rows == 0:
        raise DataError(train_read.message or "no training rows were read", path=train_path)
    valid, valid_read = None, None
    if valid_path:
        valid, valid_read = _read(valid_path, fmt, encoder, opts, progress, "validation data")
        if fmt == "libffm":  # both files index the same space; widen to the larger one
            n_feat = max(train.n_features, valid.n_features)
            n_fld = max(train.n_fields, valid.n_fields)
            train = _widen(train, n_fld, n_feat)
            valid = _widen(valid, n_fld, n_feat)

    est = opts.estimator()
    progress.start(f"training {opts.model.upper()}", opts.epochs)

    def on_epoch(epoch: int, info: dict) -> bool:
        note = f"train {info['train_loss']:.5f}"
        if info.get("valid_loss") is not None:
            note += f"  valid {info['valid_loss']:.5f}"
        progress.advance(1, note=note)
        return False

    try:
        est.fit(train, valid, callback=on_epoch)
    finally:
        progress.finish()

    report: dict[str, Any] = {
        "model": opts.model, "options": {k: v for k, v in vars(opts).items()},
        "train_rows": train.n_rows, "rejected_rows": train_read.rows_rejected,
        "train_reject_file": str(Path(train_read.reject_path).resolve()) if train_read.reject_path else None,
        "valid_rows": valid.n_rows if valid is not None else 0,
        "valid_rejected_rows": valid_read.rows_rejected if valid_read else 0,
        "n_features": int(est.params_.n_features), "n_fields": int(est.params_.n_fields),
        "best_epoch": int(est.best_epoch_),
        "epoch_seconds": [round(h["seconds"], 4) for h in est.history_],
        "train_logloss": [h["train_loss"] for h in est.history_],
        "valid_logloss_per_epoch": [h["valid_loss"] for h in est.history_],
        "read_seconds": round(train_read.seconds + (valid_read.seconds if valid_read else 0.0), 3),
    }
    if valid is not None:
        p = est.predict_proba(valid)
        m = _metrics(valid.labels, p)
        report.update({"valid_logloss": m["logloss"], "valid_auc": m["auc"],
                       "valid_normalized_entropy": m["normalized_entropy"],
                       "valid_calibration": m["calibration"]})
    metadata = {"created_by": "ctrops train", "train_path": str(train_path), "valid_path": valid_path,
                "format": fmt, "train_rows": train.n_rows, "best_epoch": report["best_epoch"],
                "metrics": {k: report[k] for k in ("valid_logloss", "valid_auc") if k in report},
                "hyperparameters": est.get_params()}
    if encoder is not None:
        enc_header, enc_arrays = encoder.to_header(), encoder.arrays()
    else:
        enc_header = {"indexing": PREBUILT_INDEXING, "source_format": "libffm",
                      "n_fields": int(est.params_.n_fields), "n_features": int(est.params_.n_features)}
        enc_arrays = {}
    info = save_model(out, est.params_, enc_header, enc_arrays, metadata, max_bytes=opts.max_bytes,
                      dtype=opts.weight_dtype)
    report.update({"model_path": str(info.path), "model_bytes": int(info.nbytes),
                   "total_seconds": round(time.perf_counter() - t_start, 3),
                   "peak_rss_bytes": peak_rss_bytes()})
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report, indent=2, default=to_jsonable))
    return TrainResult(model_path=Path(info.path), report=report, estimator=est, encoder=encoder, valid=valid)


def _widen(X: FieldMatrix, n_fields: int, n_features: int) -> FieldMatrix:
    if (X.n_fields, X.n_features) == (n_fields, n_features):
        return X
    return FieldMatrix(X.indptr, X.fields, X.indices, X.values, X.labels, n_fields, n_features, X.weights)


