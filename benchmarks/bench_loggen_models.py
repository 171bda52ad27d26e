"""Generated ad logs -> join -> FFM and LR: does the field-aware model win, and how close to the truth?

    python benchmarks/bench_loggen_models.py            # 14 days x 20k impressions/day
    python benchmarks/bench_loggen_models.py --quick    # 6 days x 4k impressions/day: a smoke run

The generator's hidden click model has field interactions (user segment x ad
category, site category x ad, device x creative format), so a field-aware FM
should beat logistic regression on its logs. Figures, on the CTR validation
day produced by `join_logs`: log loss, AUC, normalized entropy, calibration
and the worst robustness perturbation of an FFM, against the baseline LR
fitted in the same run (ratio of log losses), and against the floor: the log
loss of the generator's true click probabilities (`_true_ctr`) on the same
rows. Metrics are deterministic for a seed; no timing is involved, so one run
is enough (the fit times printed are informative only).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ctrops.data.dataset import load_dataset
from ctrops.data.features import FeatureEncoder
from ctrops.data.spec import FieldSpec
from ctrops.models import metrics
from ctrops.models.estimators import FFM, LogisticRegression
from ctrops.pipeline.evaluate import evaluate_model
from ctrops.pipeline.gate import GateConfig, evaluate_gate
from ctrops.pipeline.join import join_logs
from ctrops.pipeline.loggen import generate_logs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    days, per_day = (6, 4_000) if args.quick else (14, 20_000)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ctrops-bench-loggen-"))
    try:
        logs = work / "logs"
        gen = generate_logs(logs, days=days, impressions_per_day=per_day, seed=args.seed, include_truth=True)
        report = join_logs(logs / "impressions", logs / "clicks", work / "joined", conversions=logs / "conversions")
        split = report.ctr
        spec = FieldSpec.from_yaml(split.spec_path)
        encoder = FeatureEncoder(spec, min_count=5)
        train, _ = load_dataset(split.train_path, "parquet", encoder=encoder, rejects=False)
        valid, _ = load_dataset(split.valid_path, "parquet", encoder=encoder, rejects=False)
        truth = np.asarray(pq.read_table(split.valid_path, columns=["_true_ctr"]).column(0).to_pylist())
        floor = metrics.log_loss(valid.labels, truth)
        print(f"{days} days x {per_day} impressions/day (seed {args.seed}): train {train.n_rows:,} rows "
              f"({split.train_positives:,} clicks), valid {valid.n_rows:,} rows ({split.valid_positives:,} clicks) "
              f"from {split.split_time}; {train.n_features:,} features in {train.n_fields} fields")
        print(f"  generator: mean true CTR {gen.mean_true_ctr:.4f}; true-probability log loss on valid "
              f"(the floor) {floor:.5f}, AUC {metrics.roc_auc(valid.labels, truth):.4f}")
        names = list(spec.field_names)
        reports = {}
        for name, model in (("ffm", FFM(k=4, eta=0.1, epochs=15, seed=0)),
                            ("lr", LogisticRegression(epochs=15, seed=0))):
            t0 = time.perf_counter()
            model.fit(train, valid)
            fit_s = time.perf_counter() - t0
            r = evaluate_model(model, valid, field_names=names, robustness_fractions=(0.1,))
            reports[name] = r
            worst = max(r.robustness, key=lambda x: x.delta_log_loss)
            print(f"  {name:3s}: log loss {r.log_loss:.5f} (floor + {r.log_loss - floor:.5f}), AUC {r.auc:.4f}, "
                  f"NE {r.normalized_entropy:.4f}, calibration {r.calibration:.3f}, best epoch "
                  f"{model.best_epoch_}, worst perturbation {worst.name} +{worst.delta_log_loss:.5f}; "
                  f"fit {fit_s:.1f} s")
        ffm, lr = reports["ffm"], reports["lr"]
        print(f"  ratio ffm / lr log loss: {ffm.log_loss / lr.log_loss:.4f}; AUC gain {ffm.auc - lr.auc:+.4f}; "
              f"share of the lr-to-floor gap closed by ffm: {(lr.log_loss - ffm.log_loss) / (lr.log_loss - floor):.0%}")
        for cand, prod in (("ffm", "lr"), ("lr", "ffm")):
            d = evaluate_gate(reports[cand], reports[prod], 0, GateConfig())
            print(f"  gate {cand} over {prod}: {'pass' if d.passed else 'refuse'}"
                  + ("" if d.passed else f" ({'; '.join(d.reasons)})"))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
