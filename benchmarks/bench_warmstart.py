"""Warm-started CMA-ES vs cold TPE on next week's data: trials needed to reach the same loss.

Setting (the fourth talk's weekly retrain): week 0 and week 1 come from
`gen_criteo_like.py --week 0/1` (same hidden FFM, drifted by a quarter of the
weights' spread). A 30-trial TPE study on week 0 plays last week's production
study. On week 1, per repetition r:

  cold: TPE (seed r), 30 trials, defaults enqueued first  -> best loss B_r
  warm: what `ctrops.tune.tune` does with last week's study (seed r), 15 trials:
        defaults, then CMA-ES warm-started from the week-0 trials (with
        --replay N, week 0's best N parameter sets first)
        -> first trial whose running best <= B_r

The figure is the median over repetitions of that trial count, and the ratio
30 / median (how many times fewer trials warm needs to reach cold's 30-trial
result); the target is a count <= 15, i.e. a ratio >= 2. A repetition where
warm does not reach B_r within its budget counts as budget + 1.
`--replay 3` measures replaying last week's best 3 trials first, for comparison.

Size and objective: --rows per week (80/20 train/valid split), FFM trained
with at most --epochs epochs, early stopping with the library's patience of 2
choosing the epoch. Every trial uses seed 0, so one parameter set always gets
the same loss. 50k rows with 6 epochs is the more telling setting (a smooth
objective: a 2 % change of eta moves the validation loss by ~2e-4, of l2 by
< 1e-5, while tuning gains ~0.01 over the defaults), but one trial took
20-90 s on the shared machine, so the recorded run uses 20k rows with 4
epochs (docs/pipeline.md). Trial counts do not depend on CPU speed, so the
run can share the machine (run it under `nice`).
--quick: 20k rows, 2 reps, 10 cold / 6 warm, 3 epochs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

GEN = "/work/shared/bench/gen_criteo_like.py"
REUSE = "--reuse" in sys.argv


def make_week(out: Path, rows: int, week: int, seed: int) -> tuple[str, str]:
    """Generate one week, split 80/20, encode with the week's own encoder into matrix caches."""
    from ctrops.data.features import FeatureEncoder
    from ctrops.data.readers import iter_criteo
    from ctrops.data.spec import FieldSpec

    tsv = out / f"week{week}.tsv"
    if not tsv.exists():
        subprocess.run([sys.executable, GEN, str(rows), str(tsv), "--seed", str(seed), "--week", str(week)],
                       check=True, stdout=subprocess.DEVNULL)
    lines = tsv.read_text().splitlines(keepends=True)
    cut = int(len(lines) * 0.8)
    paths = {}
    for part, chunk in (("train", lines[:cut]), ("valid", lines[cut:])):
        p = out / f"week{week}_{part}.tsv"
        p.write_text("".join(chunk))
        paths[part] = p
    spec = FieldSpec.criteo()
    enc = FeatureEncoder(spec, min_count=5)
    train_in = list(iter_criteo(paths["train"], spec))
    enc.fit(train_in)
    enc.transform(train_in).save(out / f"week{week}_train")
    enc.transform(list(iter_criteo(paths["valid"], spec))).save(out / f"week{week}_valid")
    return str(out / f"week{week}_train"), str(out / f"week{week}_valid")


def run_study(args: tuple) -> tuple[str, int, list[float], float]:
    """One study in its own process: (mode, rep, values by trial number, seconds)."""
    mode, rep, train, valid, n_trials, source_db, out, epochs, patience, replay = args
    from ctrops.tune import Objective, TuningData, load_source_trials, space_for, tune

    db = Path(out) / f"{mode}_{rep}.db"
    if REUSE and db.exists():  # re-analyse a finished run without re-training
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
            done = sorted((t for t in study.trials if t.value is not None), key=lambda t: t.number)
        except ValueError:  # an interrupted run left a file without a study: run it again
            done = []
        if len(done) >= n_trials:
            return mode, rep, [t.value for t in done][:n_trials], sum(
                (t.datetime_complete - t.datetime_start).total_seconds() for t in done[:n_trials])

    space = space_for("ffm")
    obj = Objective("ffm", TuningData(train, valid), space,
                    fixed={"epochs": epochs, "patience": patience, "n_threads": 1, "seed": 0})
    source = load_source_trials(source_db, space) if source_db else None
    t0 = time.perf_counter()
    res = tune(obj, space, n_trials=n_trials, study_path=Path(out) / f"{mode}_{rep}.db", source_trials=source,
               seed=rep, n_replayed=replay)
    return mode, rep, res.values, time.perf_counter() - t0


def trials_to_reach(values: list[float], target: float) -> int | None:
    best = float("inf")
    for i, v in enumerate(values, 1):
        best = min(best, v)
        if best <= target:
            return i
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="bench-out/warmstart")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--tol", type=float, default=5e-4,
                    help="secondary criterion: trials to get within TOL of cold's best")
    ap.add_argument("--reuse", action="store_true", help="reuse finished studies in --out (re-analysis)")
    ap.add_argument("--epochs", type=int, default=None, help="most epochs per trial (early stopping picks)")
    ap.add_argument("--patience", type=int, default=2, help="early-stopping patience of every trial")
    ap.add_argument("--replay", type=int, default=0,
                    help="week-0 best parameter sets the warm study re-runs after the defaults "
                         "(default 0, as ctrops.tune: CMA-ES alone)")
    a = ap.parse_args()
    rows = a.rows or 20_000
    reps = a.reps or (2 if a.quick else 5)
    cold_n, warm_n, source_n, epochs = (10, 6, 12, 3) if a.quick else (30, 15, 30, 4)
    epochs = a.epochs or epochs
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.reuse and (out / "week1_valid" / "meta.json").exists():
        w0 = (str(out / "week0_train"), str(out / "week0_valid"))
        w1 = (str(out / "week1_train"), str(out / "week1_valid"))
    else:
        w0 = make_week(out, rows, 0, a.seed)
        w1 = make_week(out, rows, 1, a.seed)
    print(f"data: {rows} rows/week (80/20 split), encoded in {time.perf_counter() - t0:.1f}s; FFM, at most "
          f"{epochs} epochs, patience {a.patience}; warm replays {a.replay} week-0 trial(s)", flush=True)

    with ProcessPoolExecutor(max_workers=a.procs) as pool:
        # the cold studies do not need week 0: they start at once, next to the week-0 study
        source = pool.submit(run_study, ("week0", 0, *w0, source_n, None, str(out), epochs, a.patience, 0))
        cold = [pool.submit(run_study, ("cold", r, *w1, cold_n, None, str(out), epochs, a.patience, 0))
                for r in range(reps)]
        _, _, src_values, src_s = source.result()
        print(f"week-0 study: {source_n} TPE trials in {src_s:.0f}s, best {min(src_values):.5f}", flush=True)
        source_db = str(out / "week0_0.db")
        warm = [pool.submit(run_study, ("warm", r, *w1, warm_n, source_db, str(out), epochs, a.patience,
                                        a.replay)) for r in range(reps)]
        results = [f.result() for f in cold + warm]
    by = {(m, r): (v, s) for m, r, v, s in results}
    counts, cold_counts = [], []
    print(f"{'rep':>3} {'cold best@'+str(cold_n):>14} {'warm best@'+str(warm_n):>14} {'warm trials':>11} "
          f"{'cold trials':>11} {'default':>9}  reached by")
    for r in range(reps):
        cold, _ = by[("cold", r)]
        warm, _ = by[("warm", r)]
        target = min(cold)
        n = trials_to_reach(warm, target)
        counts.append(n if n is not None else warm_n + 1)
        cold_counts.append(trials_to_reach(cold, target))
        how = "-" if n is None else ("defaults" if n == 1 else
                                     "replayed week-0 trial" if n <= 1 + a.replay else "CMA-ES")
        print(f"{r:>3} {target:>14.5f} {min(warm):>14.5f} {('>' + str(warm_n)) if n is None else n:>11} "
              f"{cold_counts[-1]:>11} {cold[0]:>9.5f}  {how}")
    near = []
    for r in range(reps):
        cold, warm = by[("cold", r)][0], by[("warm", r)][0]
        n = trials_to_reach(warm, min(cold) + a.tol)
        near.append(n if n is not None else warm_n + 1)
    for at in (5, 10, 15):
        c = statistics.median(min(by[("cold", r)][0][:at]) for r in range(reps))
        w = statistics.median(min(by[("warm", r)][0][:at]) for r in range(reps))
        print(f"median best after {at:>2} trials: cold TPE {c:.5f}, warm CMA-ES {w:.5f}")
    print(f"secondary: median trials for warm to get within {a.tol:g} of cold's {cold_n}-trial best: "
          f"{statistics.median(near):g}")
    med = statistics.median(counts)
    med_cold = statistics.median(cold_counts)
    trial_s = statistics.median([s / len(v) for v, s in by.values()])
    print(f"median trials for warm CMA-ES to reach cold TPE's {cold_n}-trial best: {med:g} "
          f"(target <= {warm_n}); cold TPE itself needed a median {med_cold:g}")
    print(f"ratio (cold budget {cold_n} / warm median {med:g}): {cold_n / med:.2f}x; "
          f"ratio (cold median trials-to-best / warm): {med_cold / med:.2f}x")
    print(f"median seconds per trial {trial_s:.2f}; total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
