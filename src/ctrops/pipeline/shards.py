"""Train one model per shard in separate processes and average their weights.

Large logs are split (or arrive as several logs); each shard trains in its
own process and the weights are averaged into one model, as the first talk
does. Averaging is only meaningful when the shard models live in the same
basin: two independently initialised FFMs can reach equally good solutions
whose latent vectors are permuted or rotated relative to each other, and their
mean is then worse than either. So every shard model starts from the *same*
initial weights (same seed, same encoder, same shapes); over the few epochs
early stopping allows, they stay close enough that the mean is a good model
(it also averages out shard-specific noise).

`rounds > 1` mixes periodically (iterative parameter mixing): after every
round of `epochs // rounds` epochs the shard models are averaged and every
shard continues from the mean. The estimators restart their AdaGrad
accumulators when rebuilt from weights, so each round begins with full step
sizes; docs/pipeline.md has the measurements that chose the default.

Weights travel between processes as `.npz` files without pickled objects.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import ConfigError
from ctrops.models.params import ModelParams
from ctrops.tune.objective import FACTORIZATION_TYPES, log_loss, make_model


def save_params(params: ModelParams, path: str | os.PathLike) -> Path:
    """ModelParams to an `.npz` (arrays) with its scalars as JSON; readable without pickle."""
    arrays = {"bias": np.array([params.bias], dtype=np.float64)}
    if params.linear is not None:
        arrays["linear"] = params.linear
    if params.latent is not None:
        arrays["latent"] = params.latent
    meta = {"model_type": params.model_type, "n_features": params.n_features, "n_fields": params.n_fields,
            "k": params.k, "normalize": params.normalize, "extra": params.extra}
    arrays["meta"] = np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8)
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return out


def load_params(path: str | os.PathLike) -> ModelParams:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        return ModelParams(model_type=meta["model_type"], n_features=int(meta["n_features"]),
                           n_fields=int(meta["n_fields"]), k=int(meta["k"]), bias=float(z["bias"][0]),
                           linear=np.array(z["linear"]) if "linear" in z else None,
                           latent=np.array(z["latent"]) if "latent" in z else None,
                           normalize=bool(meta["normalize"]), extra=dict(meta.get("extra") or {}))


def average_params(params: Sequence[ModelParams], weights: Sequence[float] | None = None) -> ModelParams:
    """Weighted mean of models with identical layout (type, shapes, normalisation)."""
    if not params:
        raise ConfigError("average_params needs at least one model")
    first = params[0]
    for i, p in enumerate(params[1:], 1):
        same = (p.model_type, p.n_features, p.n_fields, p.k, p.normalize, p.linear is None, p.latent is None) == \
               (first.model_type, first.n_features, first.n_fields, first.k, first.normalize,
                first.linear is None, first.latent is None)
        if not same:
            raise ConfigError(f"shard model {i} has another layout than shard model 0 "
                              f"({p.model_type} {p.n_features}x{p.n_fields}x{p.k} vs "
                              f"{first.model_type} {first.n_features}x{first.n_fields}x{first.k}); "
                              "shards must share one encoder and one set of hyper-parameters")
    w = np.asarray(weights if weights is not None else [1.0] * len(params), dtype=np.float64)
    if w.shape != (len(params),) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(f"averaging weights must be {len(params)} non-negative numbers with a positive sum")
    w = w / w.sum()

    def mean(arrays: list[np.ndarray]) -> np.ndarray:
        acc = np.zeros(arrays[0].shape, dtype=np.float64)
        for wi, a in zip(w, arrays):
            acc += wi * a
        return acc.astype(arrays[0].dtype)

    return ModelParams(
        model_type=first.model_type, n_features=first.n_features, n_fields=first.n_fields, k=first.k,
        bias=float(sum(wi * p.bias for wi, p in zip(w, params))),
        linear=None if first.linear is None else mean([p.linear for p in params]),
        latent=None if first.latent is None else mean([p.latent for p in params]),
        normalize=first.normalize,
        extra={"averaged_from": len(params), "hyperparameters": first.extra.get("hyperparameters", {})},
    )


def _train_shard(model_type: str, hyper: Mapping[str, Any], shard_dir: str, valid_dir: str | None,
                 start_params: str | None, out_path: str) -> dict[str, Any]:
    """Worker: fit one shard (from `start_params` when mixing) and save its weights."""
    from ctrops.models import estimators

    t0 = time.perf_counter()
    shard = FieldMatrix.load(shard_dir)
    valid = FieldMatrix.load(valid_dir) if valid_dir else None
    if start_params:
        cls = {"ffm": estimators.FFM, "fm": estimators.FM, "lr": estimators.LogisticRegression}[model_type]
        model = cls.from_params(load_params(start_params), **hyper)
        model.fit(shard, valid, warm_start=True)
    else:
        model = make_model(model_type, hyper)
        model.fit(shard, valid)
    save_params(model.params_, out_path)
    return {"rows": shard.n_rows, "seconds": time.perf_counter() - t0,
            "best_epoch": int(getattr(model, "best_epoch_", 0) or 0),
            "valid_loss": getattr(model, "best_valid_loss_", None)}


@dataclass
class ShardReport:
    """How shard training went; `averaged_valid_loss` is the figure to compare with one model."""

    n_shards: int
    n_processes: int
    rounds: int
    rows_per_shard: list[int]
    seconds: float
    shard_seconds: list[float] = field(default_factory=list)
    shard_valid_loss: list[float | None] = field(default_factory=list)
    shard_best_epoch: list[int] = field(default_factory=list)
    averaged_valid_loss: float | None = None
    single_valid_loss: float | None = None  # filled in when a single-model baseline was trained

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_rows(X: FieldMatrix, n_shards: int, seed: int | None = None) -> list[FieldMatrix]:
    """`n_shards` near-equal parts: contiguous rows, or a random partition when `seed` is given."""
    if n_shards < 1 or n_shards > max(X.n_rows, 1):
        raise ConfigError(f"shards.n must be in [1, {X.n_rows}], got {n_shards}")
    bounds = np.linspace(0, X.n_rows, n_shards + 1).astype(np.int64)
    if seed is None:
        return [X.take(slice(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]
    order = np.random.default_rng(seed).permutation(X.n_rows)
    return [X.take(np.sort(order[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


def train_shards(model_type: str, hyper: Mapping[str, Any], shards: Sequence[str | os.PathLike | FieldMatrix],
                 valid: str | os.PathLike | FieldMatrix | None = None, *, n_processes: int | None = None,
                 rounds: int = 1, work_dir: str | os.PathLike | None = None) -> tuple[ModelParams, ShardReport]:
    """Fit one `model_type` model per shard in parallel processes and average them.

    `shards` are matrix cache directories (or matrices, cached into
    `work_dir`), all encoded by one encoder. Every shard model gets the same
    hyper-parameters, seed included, hence the same initial weights. With
    `valid`, each shard stops early on it and the averaged model is scored on it.
    """
    if model_type not in FACTORIZATION_TYPES:
        raise ConfigError(f"shard averaging needs a weight-based model ({', '.join(FACTORIZATION_TYPES)}), "
                          f"got {model_type!r}: trees cannot be averaged")
    if not shards:
        raise ConfigError("train_shards needs at least one shard")
    if rounds < 1:
        raise ConfigError(f"shards.rounds must be >= 1, got {rounds}")
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="ctrops-shards-"))
    work.mkdir(parents=True, exist_ok=True)
    shard_dirs = []
    for i, s in enumerate(shards):
        if isinstance(s, FieldMatrix):
            shard_dirs.append(str(s.save(work / f"shard{i}")))
        else:
            shard_dirs.append(str(s))
    valid_dir = None
    valid_matrix = None
    if valid is not None:
        if isinstance(valid, FieldMatrix):
            valid_matrix = valid
            valid_dir = str(valid.save(work / "valid"))
        else:
            valid_dir = str(valid)
            valid_matrix = FieldMatrix.load(valid_dir)
    n_proc = min(len(shard_dirs), n_processes or os.cpu_count() or 1)
    hyper = dict(hyper)
    epochs = int(hyper.get("epochs", 20))
    if rounds > 1:
        hyper["epochs"] = max(1, epochs // rounds)

    # shard models see the validation set only to stop early; without early stopping it would cost an
    # evaluation per epoch for nothing
    shard_valid = valid_dir if hyper.get("early_stopping", True) else None
    t0 = time.perf_counter()
    start: str | None = None
    results: list[dict[str, Any]] = []
    averaged: ModelParams | None = None
    with ProcessPoolExecutor(max_workers=n_proc, mp_context=mp.get_context("spawn")) as pool:
        for r in range(rounds):
            outs = [str(work / f"round{r}_shard{i}.npz") for i in range(len(shard_dirs))]
            futures = [pool.submit(_train_shard, model_type, hyper, d, shard_valid, start, o)
                       for d, o in zip(shard_dirs, outs)]
            results = [f.result() for f in futures]
            averaged = average_params([load_params(o) for o in outs], [res["rows"] for res in results])
            if r + 1 < rounds:
                start = str(save_params(averaged, work / f"round{r}_mean.npz"))
    seconds = time.perf_counter() - t0
    assert averaged is not None
    averaged.extra["shards"] = len(shard_dirs)
    averaged.extra["rounds"] = rounds
    report = ShardReport(n_shards=len(shard_dirs), n_processes=n_proc, rounds=rounds,
                         rows_per_shard=[res["rows"] for res in results], seconds=seconds,
                         shard_seconds=[res["seconds"] for res in results],
                         shard_valid_loss=[res["valid_loss"] for res in results],
                         shard_best_epoch=[res["best_epoch"] for res in results])
    if valid_matrix is not None:
        from ctrops.models.scoring import predict_logits

        z = predict_logits(averaged, valid_matrix, 1)
        report.averaged_valid_loss = log_loss(valid_matrix.labels, 1.0 / (1.0 + np.exp(-z)), valid_matrix.weights)
    return averaged, report
