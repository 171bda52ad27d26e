"""Shard averaging on 2 processes vs one model on all the data: wall time and validation loss.

Data: `gen_criteo_like.py ROWS --seed 7`, split 80/20, encoded once. Both
sides train FFM with the same hyper-parameters and the same fixed number of
epochs (no early stopping, so both do the same work per row):

  single (the baseline): one FFM on all training rows, 1 thread, in this process
  shards: `train_shards` with 2 processes (this one and one worker): 2 FFMs on
          2 random halves, 1 thread each, from the same initial weights (same
          seed), mixed after every epoch (--rounds = epochs) with step
          --mix-step and accumulators kept; the time covers starting the
          worker, all fits, every exchange of weights and every mix

8 epochs: on these rows one FFM's validation loss stops improving after ~8
epochs (early stopping picks 8 at 200k rows), so both sides are trained about
as far as early stopping would take them.

The two sides alternate within each repeat; figures are medians over
--repeats runs. Targets: speed-up >= 1.6x and |averaged - single| validation
log loss <= 0.003. Run it alone on the machine
(`flock -x /tmp/ctrops-bench.lock python benchmarks/bench_shards.py`): two
processes need two free cores.

With --alternatives, also measured once each for docs/pipeline.md: averaging
independently initialised models (different seeds) and periodic mixing
(rounds=2).
"""

from __future__ import annotations

import argparse
import os

# before NumPy loads: 1-thread runs on both sides, and no BLAS thread pool in this process (a
# single-threaded process may fork its shard worker, see ctrops.pipeline.shards.worker_context)
os.environ.setdefault("OMP_NUM_THREADS", "1")
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GEN = "/work/shared/bench/gen_criteo_like.py"


def prepare(out: Path, rows: int, seed: int) -> tuple[str, str]:
    from ctrops.data.features import FeatureEncoder
    from ctrops.data.readers import iter_criteo
    from ctrops.data.spec import FieldSpec

    tsv = out / f"data_{rows}.tsv"
    if not tsv.exists():
        subprocess.run([sys.executable, GEN, str(rows), str(tsv), "--seed", str(seed)], check=True,
                       stdout=subprocess.DEVNULL)
    lines = tsv.read_text().splitlines(keepends=True)
    cut = int(len(lines) * 0.8)
    (out / "train.tsv").write_text("".join(lines[:cut]))
    (out / "valid.tsv").write_text("".join(lines[cut:]))
    spec = FieldSpec.criteo()
    enc = FeatureEncoder(spec, min_count=10)
    train_in = list(iter_criteo(out / "train.tsv", spec))
    enc.fit(train_in)
    enc.transform(train_in).save(out / "train")
    enc.transform(list(iter_criteo(out / "valid.tsv", spec))).save(out / "valid")
    return str(out / "train"), str(out / "valid")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default="bench-out/shards")
    ap.add_argument("--rounds", type=int, default=None, help="mixing rounds (default: one per epoch)")
    ap.add_argument("--mix-step", type=float, default=1.5, help="mixing step (1.0: plain mean)")
    ap.add_argument("--alternatives", action="store_true",
                    help="also one-shot averaging, plain-mean mixing and independently initialised shards, once each")
    a = ap.parse_args()
    rows = a.rows or (30_000 if a.quick else 200_000)
    epochs = a.epochs or (2 if a.quick else 8)
    rounds = a.rounds or epochs
    repeats = a.repeats or (1 if a.quick else 5)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    from ctrops.data.matrix import FieldMatrix
    from ctrops.models.estimators import FFM
    from ctrops.pipeline.shards import split_rows, train_shards
    from ctrops.tune.objective import log_loss

    train_dir, valid_dir = prepare(out, rows, 7)
    train, valid = FieldMatrix.load(train_dir), FieldMatrix.load(valid_dir)
    halves = [str(p.save(out / f"half{i}")) for i, p in enumerate(split_rows(train, 2, seed=0))]
    hyper = {"k": 4, "eta": 0.2, "l2": 2e-5, "epochs": epochs, "early_stopping": False, "seed": 0,
             "n_threads": 1}
    print(f"data: {train.n_rows} train / {valid.n_rows} valid rows, {train.n_features} features; "
          f"FFM k=4, {epochs} epochs; shards: {rounds} mixing rounds, step {a.mix_step}", flush=True)

    single_s, shard_s, overhead_s, single_cpu, shard_cpu = [], [], [], [], []
    single_loss = shard_loss = None
    for rep in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        model = FFM(**hyper).fit(train)
        single_s.append(time.perf_counter() - t0)
        single_cpu.append(time.process_time() - c0)
        single_loss = log_loss(valid.labels, model.predict_proba(valid))
        _, report = train_shards("ffm", hyper, halves, valid_dir, n_processes=2, rounds=rounds,
                                 mix_step=a.mix_step, work_dir=out / "work")
        shard_s.append(report.seconds)
        overhead_s.append(report.seconds - max(report.shard_seconds))
        # the call's critical path in CPU terms: the slower shard's fits plus what the calling process
        # did besides fitting its own shard (mixing, exchanges, starting the worker)
        local_fit = report.shard_cpu_seconds[-1]
        shard_cpu.append(max(report.shard_cpu_seconds) + report.parent_cpu_seconds - local_fit)
        shard_loss = report.averaged_valid_loss
        print(f"  repeat {rep}: single {single_s[-1]:.2f}s loss {single_loss:.5f} | "
              f"2 shards {shard_s[-1]:.2f}s loss {shard_loss:.5f} (shard fits "
              f"{', '.join(f'{s:.2f}s' for s in report.shard_seconds)}; outside the slower fit "
              f"{overhead_s[-1]:.2f}s; workers by {report.start_method})", flush=True)
    speedup = statistics.median(single_s) / statistics.median(shard_s)
    print(f"single model: median {statistics.median(single_s):.2f}s, valid log loss {single_loss:.5f}")
    print(f"2 shards mixed (same init): median {statistics.median(shard_s):.2f}s, "
          f"valid log loss {shard_loss:.5f}; median time outside the slower shard fit "
          f"{statistics.median(overhead_s):.2f}s")
    print(f"speed-up {speedup:.2f}x wall (target >= 1.6); loss difference {shard_loss - single_loss:+.5f} "
          f"(target within 0.003)")
    print(f"CPU seconds: single median {statistics.median(single_cpu):.2f}s; shards' critical path (slower "
          f"shard + calling process outside its fit) median {statistics.median(shard_cpu):.2f}s; ratio "
          f"{statistics.median(single_cpu) / statistics.median(shard_cpu):.2f}x (the wall speed-up on two "
          f"free cores); load average now {os.getloadavg()[0]:.1f}")

    if not a.alternatives:
        return
    # the alternatives docs/pipeline.md compares, once each
    _, once = train_shards("ffm", hyper, halves, valid_dir, n_processes=2, rounds=1, work_dir=out / "work1")
    _, plain = train_shards("ffm", hyper, halves, valid_dir, n_processes=2, rounds=rounds, mix_step=1.0,
                            work_dir=out / "work2")
    indep = [FFM(**{**hyper, "seed": 100 + i}).fit(FieldMatrix.load(h)).params_ for i, h in enumerate(halves)]
    from ctrops.models.scoring import predict_logits
    from ctrops.pipeline.shards import average_params

    z = predict_logits(average_params(indep, [1, 1]), valid, 1)
    indep_loss = log_loss(valid.labels, 1 / (1 + np.exp(-z)))
    one_half = log_loss(valid.labels, FFM.from_params(indep[0]).predict_proba(valid))
    print(f"alternatives: one averaging at the end {once.averaged_valid_loss:.5f} in {once.seconds:.2f}s; "
          f"plain-mean mixing (step 1.0) {plain.averaged_valid_loss:.5f} in {plain.seconds:.2f}s; "
          f"independent inits averaged once {indep_loss:.5f} (one half-data model alone {one_half:.5f})")


if __name__ == "__main__":
    main()
