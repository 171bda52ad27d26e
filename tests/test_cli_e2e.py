"""The `ctrops` command end to end on small generated data, as a user runs it."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CTROPS = [sys.executable, "-m", "ctrops.cli"]


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CTROPS, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    if ok and proc.returncode != 0:
        raise AssertionError(f"ctrops {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from ctrops.data.synthetic import write_criteo_like

    d = tmp_path_factory.mktemp("cli")
    write_criteo_like(d / "all.tsv", 12_000, seed=3)
    lines = (d / "all.tsv").read_text().splitlines(keepends=True)
    (d / "train.tsv").write_text("".join(lines[:10_000]))
    with gzip.open(d / "valid.tsv.gz", "wt") as fh:  # gzip input read transparently
        fh.write("".join(lines[10_000:]))
    return d


def test_train_predict_inspect(data: Path) -> None:
    run("train", "train.tsv", "--valid", "valid.tsv.gz", "--format", "criteo", "--model", "ffm", "-k", "4",
        "--eta", "0.2", "--l2", "2e-5", "--epochs", "3", "--threads", "1", "--seed", "1", "--min-count", "3",
        "--out", "m.ctm", "--report", "report.json", cwd=data)
    report = json.loads((data / "report.json").read_text())
    for key in ("valid_logloss", "valid_auc", "best_epoch", "epoch_seconds", "train_rows", "rejected_rows"):
        assert key in report, key
    assert report["train_rows"] == 10_000 and report["rejected_rows"] == 0
    assert len(report["epoch_seconds"]) == 3 and 1 <= report["best_epoch"] <= 3
    assert 0.0 < report["valid_logloss"] < 0.55 and report["valid_auc"] > 0.6

    run("predict", "m.ctm", "valid.tsv.gz", "--format", "criteo", "--out", "pred.txt", cwd=data)
    preds = np.loadtxt(data / "pred.txt")
    assert preds.shape == (2_000,) and np.all((preds > 0) & (preds < 1))
    y = np.array([float(line.split("\t", 1)[0]) for line in gzip.open(data / "valid.tsv.gz", "rt")])
    ll = -np.mean(y * np.log(preds) + (1 - y) * np.log(1 - preds))
    assert ll == pytest.approx(report["valid_logloss"], abs=1e-4)  # file scoring = training's evaluation

    info = json.loads(run("inspect", "m.ctm", cwd=data).stdout)
    assert info["model_type"] == "ffm"


def test_same_seed_same_model_file_on_one_thread(data: Path) -> None:
    for name in ("a.ctm", "b.ctm"):
        run("train", "train.tsv", "--epochs", "2", "--seed", "5", "--min-count", "3", "--out", name, cwd=data)
    a, b = (data / "a.ctm").read_bytes(), (data / "b.ctm").read_bytes()
    assert a == b


def test_lr_and_fm_train(data: Path) -> None:
    for model in ("lr", "fm"):
        run("train", "train.tsv", "--valid", "valid.tsv.gz", "--model", model, "--epochs", "2",
            "--min-count", "3", "--out", f"{model}.ctm", "--report", f"{model}.json", cwd=data)
        assert json.loads((data / f"{model}.json").read_text())["valid_auc"] > 0.55


def test_convert_then_train_on_libffm(data: Path) -> None:
    run("convert", "train.tsv", "--from", "criteo", "--to", "libffm", "--out", "train.ffm", "--min-count", "3",
        cwd=data)
    first = (data / "train.ffm").read_text().splitlines()[0].split(" ")
    assert first[0] in ("0", "1") and len(first) == 40 and first[1].count(":") == 2
    run("train", "train.ffm", "--format", "libffm", "--epochs", "2", "--out", "ffm_txt.ctm", cwd=data)
    run("predict", "ffm_txt.ctm", "train.ffm", "--format", "libffm", "--out", "p2.txt", cwd=data)
    assert len(np.loadtxt(data / "p2.txt")) == 10_000


def test_malformed_rows_are_counted_and_set_aside(data: Path) -> None:
    lines = (data / "train.tsv").read_text().splitlines(keepends=True)[:3000]
    lines[10] = "1\tnot-a-number" + "\t" * 38 + "\n"
    lines[20] = "7\t1\t2\n"
    (data / "bad.tsv").write_text("".join(lines))
    run("train", "bad.tsv", "--epochs", "1", "--min-count", "2", "--out", "bad.ctm", "--report", "bad.json",
        cwd=data)
    report = json.loads((data / "bad.json").read_text())
    assert report["train_rows"] == 2998 and report["rejected_rows"] == 2
    rejects = Path(report["train_reject_file"]).read_text()
    assert "11" in rejects and "21" in rejects  # 1-based line numbers of the bad rows


def test_clear_errors_on_bad_input(data: Path) -> None:
    (data / "garbage.tsv").write_text("hello\tworld\n" * 300)
    proc = run("train", "garbage.tsv", "--epochs", "1", "--out", "g.ctm", cwd=data, ok=False)
    assert proc.returncode == 2 and "garbage.tsv" in proc.stderr
    proc = run("predict", "does-not-exist.ctm", "train.tsv", cwd=data, ok=False)
    assert proc.returncode == 2 and "does-not-exist.ctm" in proc.stderr
    (data / "broken.ctm").write_bytes(b"CTRM" + os.urandom(100))
    proc = run("predict", "broken.ctm", "train.tsv", cwd=data, ok=False)
    assert proc.returncode == 2 and "broken.ctm" in proc.stderr
    proc = run("train", "train.tsv", "--epochs", "1", "--max-bytes", "1000", "--out", "big.ctm", cwd=data, ok=False)
    assert proc.returncode == 2 and "1000" in proc.stderr and not (data / "big.ctm").exists()


def test_prune_drops_a_retired_value(data: Path) -> None:
    run("train", "train.tsv", "--epochs", "1", "--min-count", "3", "--l1", "1e-4", "--out", "p.ctm", cwd=data)
    value = (data / "train.tsv").read_text().splitlines()[0].split("\t")[14]  # C1 of the first row
    out = run("prune", "p.ctm", "--out", "pruned.ctm", "--threshold", "1e-3", "--drop", f"C1={value}",
              "--valid", "valid.tsv.gz", cwd=data).stdout
    rep = json.loads(out)
    assert rep["features_after"] < rep["features_before"] and rep["bytes_saved"] > 0
    assert rep["valid_log_loss_before"] is not None and rep["valid_log_loss_after"] is not None
    assert (data / "pruned.ctm").stat().st_size < (data / "p.ctm").stat().st_size
