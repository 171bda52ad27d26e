"""`ctrops predict`: score a file with a model file, one probability per line."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctrops.data.dataset import load_dataset
from ctrops.data.features import FeatureEncoder
from ctrops.data.matrix import FieldMatrix
from ctrops.errors import ConfigError
from ctrops.progress import ProgressSink, SilentProgress, bytes_callback
from ctrops.workflows.train import PREBUILT_INDEXING


@dataclass
class PredictResult:
    rows: int
    rejected_rows: int
    seconds: float
    scoring_seconds: float
    out: Path
    probabilities: np.ndarray


def _clip_to_model(X: FieldMatrix, n_fields: int, n_features: int) -> FieldMatrix:
    """LIBFFM rows may name features the model never saw: route them to no weight at all.

    Entries outside the model's index space are removed (LIBFFM's ffm-predict
    ignores them the same way) rather than failing the whole file.
    """
    keep = (X.indices < n_features) & (X.fields < n_fields)
    if keep.all():
        return FieldMatrix(X.indptr, X.fields, X.indices, X.values, X.labels, n_fields, n_features, X.weights)
    row_of = np.repeat(np.arange(X.n_rows), np.diff(X.indptr))
    counts = np.bincount(row_of[keep], minlength=X.n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return FieldMatrix.from_arrays(indptr, X.fields[keep], X.indices[keep], X.values[keep], X.labels,
                                   n_fields, n_features, X.weights)


def predict_file(model_path: str, input_path: str, out: str, *, fmt: str, threads: int = 1,
                 progress: ProgressSink | None = None) -> PredictResult:
    from ctrops.artifact.format import load_model
    from ctrops.models.scoring import predict_logits

    progress = progress or SilentProgress()
    t0 = time.perf_counter()
    model = load_model(model_path)
    header = model.encoder_header
    if header.get("indexing") == PREBUILT_INDEXING:
        if fmt != "libffm":
            raise ConfigError(f"{model_path} was trained on LIBFFM-indexed rows; predict needs --format libffm")
        encoder = None
    else:
        if fmt == "libffm":
            raise ConfigError(f"{model_path} encodes raw values; LIBFFM rows carry no raw values "
                              f"(use the format it was trained on)")
        encoder = FeatureEncoder.from_header(header, model.encoder_arrays)
    size = os.path.getsize(input_path) if os.path.exists(input_path) else None
    progress.start("reading input", size)
    try:
        X, read = load_dataset(input_path, fmt, encoder=encoder, progress=bytes_callback(progress), n_threads=threads)
    finally:
        progress.finish()
    params = model.params
    if encoder is None:
        X = _clip_to_model(X, params.n_fields, params.n_features)
    t1 = time.perf_counter()
    z = predict_logits(params, X, threads)
    p = 1.0 / (1.0 + np.exp(-z))
    scoring = time.perf_counter() - t1
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with open(tmp, "w") as fh:
        if len(p):
            fh.write("\n".join(np.char.mod("%.6f", p).tolist()))
            fh.write("\n")
    os.replace(tmp, out_path)
    return PredictResult(rows=len(p), rejected_rows=read.rows_rejected, seconds=time.perf_counter() - t0,
                         scoring_seconds=scoring, out=out_path, probabilities=p)
