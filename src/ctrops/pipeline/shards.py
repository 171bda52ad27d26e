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

With one averaging at the end, though, each shard model has only seen its
share of the rows, and the mean stays measurably worse than one model on all
rows. `rounds > 1` mixes periodically (iterative parameter mixing): after every
round of `epochs // rounds` epochs the shard models are averaged, the mix is
pushed `mix_step` times the mean move from the previous mix (the plain mean of
N half-data moves is about 1/N of a full-data move), and every shard continues
from the mix with its own AdaGrad/FTRL accumulators, so step sizes keep
shrinking as they would in one model. docs/pipeline.md has the measurements.

Where the wall time goes: a spawned worker spends 0.4-0.9 s starting Python
and importing NumPy and ctrops before it trains, a fifth of a 4-epoch shard
fit at 200k rows. So the calling process trains one shard itself, and the workers are
forked when forking is safe (the calling process has a single thread: no
OpenMP or BLAS pool, no logging thread whose lock a child could inherit held),
else forked from a `forkserver` that imported ctrops once. Workers live for the
whole call and keep their models between rounds. Shard rows are memory-mapped
matrix caches (nothing is pickled), and weights cross processes through raw
`.npy` buffers in tmpfs that both sides map, one copy each way per round.
`save_params` / `load_params` remain for weights at rest (`.npz`, no pickle).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
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
    averaged = _combine(params, w / w.sum())
    averaged.extra = {"averaged_from": len(params), "hyperparameters": first.extra.get("hyperparameters", {})}
    return averaged


def _combine(params: Sequence[ModelParams], coefs: Sequence[float]) -> ModelParams:
    """`sum(coef_i * params_i)` over same-layout models: a mean, or a mix that extrapolates.

    Computed in place in the weights' own dtype: float32 sums of a handful of
    models lose nothing that matters, and a float64 accumulator doubled the
    memory traffic of the largest array (this runs once per mixing round).
    """
    def weighted(arrays: list[np.ndarray]) -> np.ndarray:
        dtype = arrays[0].dtype.type
        acc = np.multiply(arrays[0], dtype(coefs[0]))
        scratch = np.empty_like(acc)
        for c, a in zip(coefs[1:], arrays[1:]):
            acc += np.multiply(a, dtype(c), out=scratch)
        return acc

    first = params[0]
    return ModelParams(
        model_type=first.model_type, n_features=first.n_features, n_fields=first.n_fields, k=first.k,
        bias=float(sum(c * p.bias for c, p in zip(coefs, params))),
        linear=None if first.linear is None else weighted([p.linear for p in params]),
        latent=None if first.latent is None else weighted([p.latent for p in params]),
        normalize=first.normalize, extra=dict(first.extra),
    )


def _single_threaded() -> bool:
    """True when this process runs only its main thread (Linux: one entry in /proc/self/task)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def worker_context() -> Any:
    """How to start shard workers: fork when it is safe, else a forkserver with ctrops imported.

    A forked child starts in milliseconds with everything imported, but it
    inherits only the forking thread: a lock held by any other thread (an
    OpenMP pool after multi-threaded training, a BLAS pool, a logging or
    live-display thread) stays held forever in the child. A process with a
    single thread has no such lock. The forkserver is itself a fresh process
    (so it is safe) that imports ctrops once and forks the workers from there;
    `spawn` remains where neither exists.
    """
    methods = mp.get_all_start_methods()
    if "fork" in methods and _single_threaded():
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["ctrops.pipeline.shards", "ctrops.models.estimators"])
        return ctx
    return mp.get_context("spawn")


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
    round_valid_loss: list[float] = field(default_factory=list)  # the mix after each round (mixing + early stop)
    # CPU time: of each shard's fits, and of the calling process over the whole call (its own shards'
    # fits included); on a shared machine these say what the wall times would be on free cores
    shard_cpu_seconds: list[float] = field(default_factory=list)
    parent_cpu_seconds: float = 0.0
    start_method: str = ""  # how the workers started: fork, forkserver, spawn (none: one process)

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
                 rounds: int = 1, mix_step: float = 1.5,
                 work_dir: str | os.PathLike | None = None) -> tuple[ModelParams, ShardReport]:
    """Fit one `model_type` model per shard in parallel processes and average them.

    `shards` are matrix cache directories (or matrices, cached into
    `work_dir`), all encoded by one encoder. Every shard model gets the same
    hyper-parameters, seed included, hence the same initial weights.

    `rounds == 1`: each shard trains to the end (with `valid` and early
    stopping, each stops early on it), then the models are averaged once.
    `rounds > 1`: the epochs are split into `rounds` rounds; after each round
    the shard models are averaged, moved `mix_step` times the mean step from
    the previous mix (1.0: the plain mean; 1.5, the default, measured best of
    the stable steps with 2 shards; one shard is never extrapolated), and
    every shard continues from the
    mix *with its AdaGrad/FTRL accumulators kept*. With `valid` and early
    stopping, the mix is scored after each round and training stops after
    `patience` rounds without improvement, keeping the best mix.
    With `valid`, the result is scored on it (`averaged_valid_loss`).
    """
    if model_type not in FACTORIZATION_TYPES:
        raise ConfigError(f"shard averaging needs a weight-based model ({', '.join(FACTORIZATION_TYPES)}), "
                          f"got {model_type!r}: trees cannot be averaged")
    if not shards:
        raise ConfigError("train_shards needs at least one shard")
    if rounds < 1:
        raise ConfigError(f"shards.rounds must be >= 1, got {rounds}")
    if not 0.0 < mix_step <= 4.0:
        raise ConfigError(f"the mixing step must be in (0, 4], got {mix_step}")
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
    early = bool(hyper.get("early_stopping", True)) and valid_matrix is not None
    patience = int(hyper.get("patience", 2))
    if rounds > 1:
        hyper["epochs"] = max(1, epochs // rounds)
    # one-shot averaging: shards stop early on their own (the validation set is all they see of the
    # others); mixing: the *mix* is what stops early, so shards train their round's epochs blind
    shard_valid = valid_dir if (early and rounds == 1) else None

    t0, c0 = time.perf_counter(), time.process_time()
    team = _ShardTeam(model_type, hyper, shard_dirs, shard_valid, n_proc, work)
    mixed: ModelParams | None = None
    best: ModelParams | None = None
    best_loss, best_round, since_best = np.inf, 0, 0
    round_losses: list[float] = []
    summaries: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            fitted, summaries = team.run_round(r, mixed)
            rows = [res["rows"] for res in summaries]
            if mixed is not None and mix_step != 1.0 and len(shard_dirs) > 1:
                mixed = _extrapolate(mixed, fitted, rows, mix_step)
            else:
                mixed = average_params(fitted, rows)
            if rounds > 1 and early:
                loss = _valid_loss(mixed, valid_matrix)
                round_losses.append(loss)
                if loss < best_loss:
                    # every round's mix is a new model (nothing writes into it later): keep it as is
                    best, best_loss, best_round, since_best = mixed, loss, r + 1, 0
                else:
                    since_best += 1
                    if since_best >= patience:
                        break
    finally:
        team.close()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    assert mixed is not None
    result = best if best is not None else mixed
    result.extra["shards"] = len(shard_dirs)
    result.extra["rounds"] = rounds
    if rounds > 1:
        result.extra["mix_step"] = mix_step
        result.extra["best_round"] = best_round or len(round_losses) or rounds
    best_epochs = [res["best_epoch"] for res in summaries]
    if rounds > 1:  # the chosen model is a mix: the epochs behind it, the same for every shard
        best_epochs = [int(result.extra["best_round"]) * int(hyper["epochs"])] * len(summaries)
    report = ShardReport(n_shards=len(shard_dirs), n_processes=n_proc, rounds=rounds,
                         rows_per_shard=[res["rows"] for res in summaries], seconds=seconds,
                         shard_seconds=team.fit_seconds, shard_cpu_seconds=team.fit_cpu_seconds,
                         parent_cpu_seconds=cpu_seconds,
                         shard_valid_loss=[res["valid_loss"] for res in summaries],
                         shard_best_epoch=best_epochs,
                         round_valid_loss=round_losses, start_method=team.start_method)
    if valid_matrix is not None:
        report.averaged_valid_loss = best_loss if best is not None else _valid_loss(result, valid_matrix)
    return result, report


def _valid_loss(params: ModelParams, valid: FieldMatrix) -> float:
    from ctrops.models.scoring import predict_logits

    z = predict_logits(params, valid, 1)
    return log_loss(valid.labels, 1.0 / (1.0 + np.exp(-z)), valid.weights)


def _extrapolate(previous: ModelParams, fitted: Sequence[ModelParams], rows: Sequence[float],
                 step: float) -> ModelParams:
    """`previous + step * (row-weighted mean of fitted - previous)`, in one weighted sum.

    Each shard's round moves the weights by what a 1/N-th of the data says;
    the plain mean of N such moves is about 1/N of the move one model on all
    rows would make, so mixing with the plain mean crawls (measured in
    docs/pipeline.md). A step above 1 moves further along the mean direction.
    """
    w = np.asarray(rows, dtype=np.float64)
    w = w / w.sum()
    mixed = _combine([previous, *fitted], [1.0 - step, *(step * w)])
    mixed.extra = {"averaged_from": len(fitted), "hyperparameters": fitted[0].extra.get("hyperparameters", {})}
    return mixed


# ----------------------------------------------------------------- shard processes
def _exchange_root(work: Path) -> Path:
    """Where weights cross processes: tmpfs when there is one (a memory copy), else the work dir."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else work
    return Path(tempfile.mkdtemp(prefix="ctrops-mix-", dir=base))


class _Exchange:
    """Named weight buffers (raw .npy files memory-mapped by both sides) in one directory.

    A writer copies weights into the buffer of its name; a reader maps it and
    copies out. The round protocol (the parent only reads after a worker's
    reply, workers only read after the parent's next command) keeps readers
    and writers apart, so no locking is needed.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._maps: dict[str, np.ndarray] = {}

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        buf = self._maps.get(key)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = np.lib.format.open_memmap(self.root / f"{key}.npy", mode="w+", dtype=dtype, shape=tuple(shape))
            self._maps[key] = buf
        return buf

    def write(self, name: str, params: ModelParams) -> None:
        np.copyto(self._buffer(f"{name}.bias", (1,), np.float64), params.bias)
        for part in ("linear", "latent"):
            arr = getattr(params, part)
            if arr is not None:
                np.copyto(self._buffer(f"{name}.{part}", arr.shape, arr.dtype), arr)

    def read(self, name: str, like: ModelParams) -> ModelParams:
        """Weights of `name`, laid out as `like`, as read-only maps of the buffers.

        No copy: the caller uses them before the writer's next turn (to average
        them, or to copy them into a model's state).
        """
        def load(part: str) -> np.ndarray:
            return np.load(self.root / f"{name}.{part}.npy", mmap_mode="r")

        return replace(like, bias=float(load("bias")[0]),
                       linear=None if like.linear is None else load("linear"),
                       latent=None if like.latent is None else load("latent"), extra=dict(like.extra))


class _ShardModels:
    """The models of the shards one process trains, kept alive across rounds (their accumulators too)."""

    def __init__(self, model_type: str, hyper: Mapping[str, Any], shard_dirs: Sequence[str],
                 ids: Sequence[int], valid_dir: str | None) -> None:
        self.ids = list(ids)
        self.models = {i: make_model(model_type, hyper) for i in self.ids}
        self.data = {i: FieldMatrix.load(shard_dirs[i]) for i in self.ids}
        self.valid = FieldMatrix.load(valid_dir) if valid_dir else None

    def run_round(self, r: int, start: ModelParams | None) -> dict[int, tuple[ModelParams, dict[str, Any]]]:
        out = {}
        for i in self.ids:
            model = self.models[i]
            if start is not None:
                # continue from the mix but keep this shard's accumulators: restarting them (as
                # `from_params` does) gives every round full step sizes again, which cost accuracy
                model._params_to_state(start)
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit(self.data[i], self.valid, warm_start=r > 0)
            out[i] = (model.params_, {"rows": self.data[i].n_rows, "seconds": time.perf_counter() - t0,
                                      "cpu_seconds": time.process_time() - c0,
                                      "best_epoch": int(getattr(model, "best_epoch_", 0) or 0),
                                      "valid_loss": getattr(model, "best_valid_loss_", None)})
        return out


def _shard_worker(conn: Any, model_type: str, hyper: dict[str, Any], shard_dirs: list[str], ids: list[int],
                  valid_dir: str | None, exchange_dir: str) -> None:
    """A worker process: train its shards round by round on the parent's command."""
    import traceback

    try:
        models = _ShardModels(model_type, hyper, shard_dirs, ids, valid_dir)
        exchange = _Exchange(exchange_dir)
        while True:
            cmd = conn.recv()
            if cmd is None:
                break
            r, has_start = cmd
            start = None
            if has_start:
                like = models.models[ids[0]].params_
                start = exchange.read("mix", like)
            summaries = {}
            for i, (params, summary) in models.run_round(r, start).items():
                exchange.write(f"shard{i}", params)
                summaries[i] = summary
            conn.send(("ok", summaries))
    except BaseException as exc:  # the parent re-raises it with the shard numbers
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        except OSError:
            pass
    finally:
        conn.close()


class _ShardTeam:
    """The calling process plus `n_proc - 1` workers; shard i belongs to process i % n_proc.

    The calling process takes the last group: one worker fewer to start, and
    its models' weights never leave memory. Workers are started once and
    keep their models between rounds.
    """

    def __init__(self, model_type: str, hyper: Mapping[str, Any], shard_dirs: Sequence[str],
                 valid_dir: str | None, n_proc: int, work: Path) -> None:
        groups = [[i for i in range(len(shard_dirs)) if i % n_proc == p] for p in range(n_proc)]
        self.n_shards = len(shard_dirs)
        self.fit_seconds = [0.0] * self.n_shards
        self.fit_cpu_seconds = [0.0] * self.n_shards
        self.exchange: _Exchange | None = None
        self.workers: list[tuple[Any, Any, list[int]]] = []
        self.start_method = "none"
        if n_proc > 1:
            ctx = worker_context()
            self.start_method = ctx.get_start_method()
            root = _exchange_root(work)
            self.exchange = _Exchange(root)
            for ids in groups[:-1]:
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(target=_shard_worker, name=f"ctrops-shard-{ids[0]}", daemon=True,
                                   args=(child_end, model_type, dict(hyper), list(shard_dirs), ids, valid_dir,
                                         str(root)))
                proc.start()
                child_end.close()
                self.workers.append((proc, parent_end, ids))
        self.local = _ShardModels(model_type, hyper, shard_dirs, groups[-1], valid_dir)

    def run_round(self, r: int, start: ModelParams | None) -> tuple[list[ModelParams], list[dict[str, Any]]]:
        if start is not None and self.exchange is not None:
            self.exchange.write("mix", start)
        for proc, conn, ids in self.workers:
            try:
                conn.send((r, start is not None))
            except OSError:
                pass  # the worker is gone; its error report (or its death) surfaces at recv below
        fitted: dict[int, ModelParams] = {}
        summaries: dict[int, dict[str, Any]] = {}
        for i, (params, summary) in self.local.run_round(r, start).items():
            fitted[i], summaries[i] = params, summary
        like = next(iter(fitted.values()))
        for proc, conn, ids in self.workers:
            try:
                status, payload = conn.recv()
            except (EOFError, OSError):
                raise RuntimeError(f"shard worker for shard(s) {ids} died (exit code {proc.exitcode}) "
                                   f"in round {r}") from None
            if status != "ok":
                raise RuntimeError(f"shard worker for shard(s) {ids} failed in round {r}: {payload}")
            for i in ids:
                summaries[i] = payload[i]
                fitted[i] = self.exchange.read(f"shard{i}", like)
        for i, summary in summaries.items():
            self.fit_seconds[i] += summary["seconds"]
            self.fit_cpu_seconds[i] += summary["cpu_seconds"]
        order = range(self.n_shards)
        return [fitted[i] for i in order], [summaries[i] for i in order]

    def close(self) -> None:
        for proc, conn, _ in self.workers:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, conn, _ in self.workers:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join()
            conn.close()
        self.workers = []
        if self.exchange is not None:
            shutil.rmtree(self.exchange.root, ignore_errors=True)
