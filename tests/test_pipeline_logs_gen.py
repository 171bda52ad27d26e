"""The ad-log generator: determinism, truth counts the join must reproduce, drift, learnable interactions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ctrops.data.matrix import FieldMatrix
from ctrops.data.spec import FieldSpec
from ctrops.pipeline.join import join_logs
from ctrops.pipeline.loggen import generate_logs


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(directory).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def small(out: Path, **kw):
    kw.setdefault("days", 3)
    kw.setdefault("impressions_per_day", 800)
    kw.setdefault("n_users", 300)
    return generate_logs(out, **kw)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = small(tmp_path / "a", seed=3)
    b = small(tmp_path / "b", seed=3)
    c = small(tmp_path / "c", seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    assert a.to_dict() | {"out_dir": "", "files": {}} == b.to_dict() | {"out_dir": "", "files": {}}
    assert [Path(f).name for f in a.files["impressions"]] == ["2026-10-05.jsonl", "2026-10-06.jsonl",
                                                             "2026-10-07.jsonl"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_join_recovers_the_generator_truth(tmp_path, fmt):
    g = small(tmp_path / "logs", seed=1, format=fmt, days=4, impressions_per_day=1500, malformed_rate=0.0,
              duplicate_click_rate=0.2, early_click_rate=0.02, late_click_rate=0.05, view_through_rate=0.01,
              duplicate_conversion_rate=0.2)
    logs = tmp_path / "logs"
    r = join_logs(logs / "impressions", logs / "clicks", tmp_path / "out", conversions=logs / "conversions")
    assert r.rejected_rows == 0
    assert r.impressions == g.impressions
    assert r.attributed_clicks == g.clicks > 0
    assert r.duplicate_clicks == g.duplicate_clicks > 0
    assert r.orphan_clicks == g.orphan_clicks > 0
    assert r.early_clicks == g.early_clicks > 0
    assert r.late_clicks == g.late_clicks > 0
    assert r.attributed_conversions == g.conversions > 0
    assert r.duplicate_conversions == g.duplicate_conversions
    assert r.conversions_without_click == g.conversions_without_click > 0
    assert r.late_conversions == g.late_conversions


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_malformed_lines_are_all_rejected(tmp_path, fmt):
    g = small(tmp_path / "logs", seed=2, format=fmt, malformed_rate=0.02)
    logs = tmp_path / "logs"
    r = join_logs(logs / "impressions", logs / "clicks", tmp_path / "out", conversions=logs / "conversions")
    assert g.malformed["impressions"] > 0
    assert r.rejected == g.malformed
    assert r.impressions == g.impressions - g.malformed["impressions"]


def true_ctr_by_ad_and_week(g) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, list]] = {0: {}, 1: {}}
    for d, f in enumerate(g.files["impressions"]):
        t = pq.read_table(f) if f.endswith(".parquet") else None
        assert t is not None
        for ad, p in zip(t.column("ad_id").to_pylist(), t.column("_true_ctr").to_pylist()):
            out[d // 7].setdefault(ad, []).append(p)
    return {w: {ad: float(np.mean(ps)) for ad, ps in ads.items()} for w, ads in out.items()}


def weekly_shift(g) -> float:
    weeks = true_ctr_by_ad_and_week(g)
    common = sorted(set(weeks[0]) & set(weeks[1]))
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    return float(np.mean([abs(logit(weeks[1][a]) - logit(weeks[0][a])) for a in common]))


def test_week_drift_moves_ad_click_rates(tmp_path):
    kw = dict(days=14, impressions_per_day=1200, seed=5, format="parquet", include_truth=True, n_ads=20,
              malformed_rate=0.0)
    still = generate_logs(tmp_path / "still", week_drift=0.0, **kw)
    drifting = generate_logs(tmp_path / "drift", week_drift=1.0, **kw)
    assert weekly_shift(drifting) > 2 * weekly_shift(still)
    assert abs(still.mean_true_ctr - drifting.mean_true_ctr) < 0.5 * still.mean_true_ctr


def encode(table, spec: FieldSpec, vocab: dict | None = None) -> tuple[FieldMatrix, dict]:
    """Vocabulary-index every field (reserved 2f / 2f+1 kept free), enough for this test."""
    fit = vocab is None
    vocab = {} if fit else vocab
    n_fields = spec.n_fields
    cols = [table.column(n).to_pylist() for n in spec.field_names]
    rows = table.num_rows
    idx = np.empty((rows, n_fields), dtype=np.int32)
    for f, col in enumerate(cols):
        for r, v in enumerate(col):
            key = (f, v)
            if key not in vocab:
                if fit:
                    vocab[key] = 2 * n_fields + len(vocab)
                else:
                    idx[r, f] = 2 * f + 1
                    continue
            idx[r, f] = vocab[key]
    n_features = 2 * n_fields + len(vocab)
    X = FieldMatrix.from_arrays(np.arange(rows + 1) * n_fields, np.tile(np.arange(n_fields), rows), idx.ravel(),
                                np.ones(rows * n_fields), np.asarray(table.column("label").to_pylist()),
                                n_fields, n_features)
    return X, vocab


def test_field_interactions_let_ffm_beat_lr(tmp_path):
    from ctrops.models.estimators import FFM, LogisticRegression
    from ctrops.pipeline.evaluate import evaluate_model

    logs = tmp_path / "logs"
    generate_logs(logs, days=8, impressions_per_day=6000, seed=11, n_users=400, format="parquet",
                  week_drift=0.0)
    r = join_logs(logs / "impressions", logs / "clicks", tmp_path / "out")
    spec = FieldSpec.from_yaml(r.ctr.spec_path)
    keep = [f for f in spec.field_names if f != "user_id"]  # sparse ids need more data than a unit test has
    spec = FieldSpec.from_dict({"label": "label", "categorical": keep})
    train, vocab = encode(pq.read_table(r.ctr.train_path), spec)
    valid, _ = encode(pq.read_table(r.ctr.valid_path), spec, vocab)
    ffm = FFM(k=4, eta=0.1, epochs=8, seed=0).fit(train, valid)
    lr = LogisticRegression(epochs=8, seed=0).fit(train, valid)
    ffm_ll = evaluate_model(ffm, valid, robustness_fractions=None).log_loss
    lr_ll = evaluate_model(lr, valid, robustness_fractions=None).log_loss
    assert ffm_ll < lr_ll
