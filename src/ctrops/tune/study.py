"""Run an Optuna study: warm-started CMA-ES when last week's trials fit, TPE otherwise.

The study lives in one SQLite file. That file is the unit that travels: the
pipeline logs it as an artifact of the MLflow run, and next week's tuning
reads it back as prior knowledge (see `ctrops.tune.warmstart`).

Trials run in worker processes sharing the SQLite storage, each with its own
sampler seed; the library defaults are enqueued as trial 0, so the best trial
is never worse than an untuned model. A warm start can also re-run last
week's best few parameter sets right after the defaults (`n_replayed`); that
is off by default because it measured worse than CMA-ES alone: last week's
best trial is partly last week's luck (docs/pipeline.md).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctrops.errors import ConfigError
from ctrops.tune.space import SearchSpace

STUDY_NAME = "ctrops-tuning"
# warm-starting CMA-ES builds its prior from the best 10% of the source
# trials (cmaes' gamma=0.1): fewer than 10 leave it nothing to start from
MIN_SOURCE_TRIALS = 10
# how many of last week's best distinct parameter sets a warm start re-runs right after the defaults.
# 0: measured at 20k rows/week, replaying the best 3 needed a median of 11 trials to reach cold TPE's
# 30-trial best, the best 1 a median of 8, none 7 -- on a flat, noisy optimum last week's winners are
# partly last week's luck, and WS-CMA-ES's prior (a Gaussian around the best 10 %) already starts there
N_REPLAYED_SOURCE_TRIALS = 0
log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    """What a tuning run found and how it searched."""

    best_params: dict[str, Any]
    best_value: float
    best_trial_number: int
    best_user_attrs: dict[str, Any]
    default_params: dict[str, Any]
    default_value: float | None
    n_trials: int
    sampler: str  # "cmaes-warm" or "tpe"
    warm_start_reason: str
    objective_version: str
    study_path: str
    study_name: str = STUDY_NAME
    n_source_trials: int = 0
    values: list[float] = field(default_factory=list)  # value of every complete trial, by number

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_url(study_path: str | Path) -> str:
    return f"sqlite:///{Path(study_path).resolve()}"


def _storage(study_path: str | Path) -> Any:
    import optuna

    # generous busy timeout: worker processes write trials to one SQLite file
    return optuna.storages.RDBStorage(storage_url(study_path),
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def make_sampler(space: SearchSpace, source_trials: Sequence[Any] | None, seed: int) -> tuple[Any, str]:
    """CMA-ES warm-started from `source_trials` when there are enough, else (univariate) TPE."""
    import optuna

    if source_trials and len(source_trials) >= MIN_SOURCE_TRIALS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            has_int = any(p.kind == "int" for p in space.params)
            sampler = optuna.samplers.CmaEsSampler(source_trials=list(source_trials), seed=seed,
                                                   with_margin=has_int, warn_independent_sampling=False)
        return sampler, "cmaes-warm"
    return optuna.samplers.TPESampler(seed=seed), "tpe"


def best_source_params(source_trials: Sequence[Any], space: SearchSpace, n: int,
                       exclude: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The parameters of the `n` best complete source trials, best first, without repeats.

    Trials of another space are skipped (their parameters may fall outside the
    current ranges); parameter sets equal to one in `exclude` (the defaults,
    already enqueued) are skipped too, so no budget goes to re-running a trial.
    """
    wanted = space.distributions()
    usable = [t for t in source_trials
              if t.value is not None and t.distributions == wanted and set(t.params) == set(space.names)]
    picked: list[dict[str, Any]] = []
    seen = [dict(e) for e in exclude]
    for t in sorted(usable, key=lambda t: (t.value, t.number)):
        if len(picked) >= n:
            break
        params = {name: space.param(name).typed(t.params[name]) for name in space.names}
        if params in seen:
            continue
        seen.append(params)
        picked.append(params)
    return picked


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _run_trials(study_path: str, study_name: str, objective: Callable[[Any], float], n_trials: int,
                space: SearchSpace, source_trials: Sequence[Any] | None, seed: int) -> None:
    """One worker: open the shared study with its own sampler and run its share of trials."""
    import optuna

    _quiet_optuna()
    sampler, _ = make_sampler(space, source_trials, seed)
    study = optuna.load_study(study_name=study_name, storage=_storage(study_path), sampler=sampler)
    study.optimize(objective, n_trials=n_trials, catch=(ArithmeticError, FloatingPointError))


def _shares(n_trials: int, n_workers: int) -> list[int]:
    base, extra = divmod(n_trials, n_workers)
    return [base + (1 if i < extra else 0) for i in range(n_workers) if base + (1 if i < extra else 0)]


def tune(objective: Callable[[Any], float], space: SearchSpace, *, n_trials: int, study_path: str | Path,
         source_trials: Sequence[Any] | None = None, warm_start_reason: str = "",
         n_workers: int = 1, seed: int = 0, study_name: str = STUDY_NAME,
         n_replayed: int = N_REPLAYED_SOURCE_TRIALS,
         on_progress: Callable[[int, int, float | None], None] | None = None) -> TuneResult:
    """Minimise `objective` over `space` for `n_trials` trials stored in `study_path` (SQLite).

    `source_trials` (complete trials of the same space, e.g. from
    `load_warm_start`) switch the sampler to warm-started CMA-ES, and their
    `n_replayed` best parameter sets run right after the defaults (user
    attribute `replayed_source_rank`; 0 turns the replay off). With
    `n_workers > 1` the trials run in that many processes (`objective` must
    pickle). `on_progress(done, total, best_value)` is called as trials finish.
    """
    import optuna

    if n_trials < 1:
        raise ConfigError(f"tune.n_trials must be at least 1, got {n_trials}")
    if n_workers < 1:
        raise ConfigError(f"tune.n_workers must be at least 1, got {n_workers}")
    if n_replayed < 0:
        raise ConfigError(f"the number of replayed source trials must be >= 0, got {n_replayed}")
    _quiet_optuna()
    study_path = Path(study_path)
    study_path.parent.mkdir(parents=True, exist_ok=True)
    if study_path.exists():
        study_path.unlink()  # a study file belongs to one tuning run
    sampler, sampler_name = make_sampler(space, source_trials, seed)
    study = optuna.create_study(study_name=study_name, storage=_storage(study_path), direction="minimize",
                                sampler=sampler)
    study.set_user_attr("objective_version", space.objective_version)
    study.set_user_attr("sampler", sampler_name)
    defaults = space.defaults()
    study.enqueue_trial(defaults, user_attrs={"is_default": True})
    n_queued = 1
    if sampler_name == "cmaes-warm":
        for rank, params in enumerate(best_source_params(source_trials or (), space,
                                                         min(n_replayed, n_trials - 1),
                                                         exclude=[defaults])):
            study.enqueue_trial(params, user_attrs={"replayed_source_rank": rank})
            n_queued += 1
    n_queued = min(n_queued, n_trials)

    shares = _shares(n_trials, n_workers)
    if len(shares) > 1:
        # the enqueued trials run here first: two processes polling one SQLite
        # storage can both claim the same waiting trial ("Cannot tell a COMPLETE trial")
        study.optimize(objective, n_trials=n_queued, catch=(ArithmeticError, FloatingPointError))
        shares = _shares(n_trials - n_queued, n_workers)
    if len(shares) <= 1:
        n_left = sum(shares)
        def progress_cb(st: Any, _trial: Any) -> None:
            if on_progress is not None:
                done = [t for t in st.trials if t.state.is_finished()]
                best = min((t.value for t in done if t.value is not None), default=None)
                on_progress(len(done), n_trials, best)

        if n_left:
            study.optimize(objective, n_trials=n_left, callbacks=[progress_cb],
                           catch=(ArithmeticError, FloatingPointError))
    else:
        ctx = mp.get_context("spawn")  # fork after OpenMP/threads can deadlock
        procs = [ctx.Process(target=_run_trials, name=f"ctrops-tune-{i}",
                             args=(str(study_path), study_name, objective, share, space,
                                   list(source_trials) if source_trials else None, seed + 1000 * (i + 1)))
                 for i, share in enumerate(shares)]
        for p in procs:
            p.start()
        last = -1
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            if on_progress is not None:
                done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
                if len(done) != last:
                    last = len(done)
                    best = min((t.value for t in done if t.value is not None), default=None)
                    on_progress(len(done), n_trials, best)
        for p in procs:
            p.join()
        failed = [p.name for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"tuning worker(s) {failed} exited abnormally; see their log output")
    return summarize(study, space, study_path, sampler_name, warm_start_reason,
                     n_source_trials=len(source_trials or ()))


def summarize(study: Any, space: SearchSpace, study_path: str | Path, sampler_name: str,
              warm_start_reason: str, n_source_trials: int = 0) -> TuneResult:
    """Collect best and default trials of a finished study."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"no tuning trial completed (study {study_path}); check the objective's errors")
    best = min(complete, key=lambda t: (t.value, t.number))
    default = next((t for t in complete if t.user_attrs.get("is_default")), None)
    return TuneResult(
        best_params=dict(best.params), best_value=float(best.value), best_trial_number=best.number,
        best_user_attrs=dict(best.user_attrs), default_params=space.defaults(),
        default_value=None if default is None else float(default.value),
        n_trials=len(complete), sampler=sampler_name, warm_start_reason=warm_start_reason,
        objective_version=space.objective_version, study_path=str(study_path), study_name=study.study_name,
        n_source_trials=n_source_trials,
        values=[float(t.value) for t in sorted(complete, key=lambda t: t.number)],
    )
