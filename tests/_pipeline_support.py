"""Small Criteo-shaped train/valid files and pipeline configs for the pipeline tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ctrops.data.synthetic import write_criteo_like


def criteo_split(directory: Path, rows: int = 6000, valid_fraction: float = 0.3, seed: int = 3) -> tuple[str, str]:
    """One generated file split into train and valid (two seeds would be two different worlds)."""
    directory.mkdir(parents=True, exist_ok=True)
    full = directory / "all.tsv"
    write_criteo_like(full, rows, seed=seed)
    lines = full.read_text().splitlines(keepends=True)
    cut = int(len(lines) * (1 - valid_fraction))
    (directory / "train.tsv").write_text("".join(lines[:cut]))
    (directory / "valid.tsv").write_text("".join(lines[cut:]))
    return str(directory / "train.tsv"), str(directory / "valid.tsv")


def config(tmp: Path, train: str, valid: str, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "ctr-test",
        "run_dir": str(tmp / "run"),
        "tracking": {"root": str(tmp / "mlflow")},
        "data": {"source": "files", "train": train, "valid": valid, "format": "criteo", "spec": "criteo"},
        "features": {"min_count": 3},
        "model": {"type": "ffm", "params": {"epochs": 3, "patience": 1, "seed": 0}},
        "tune": {"n_trials": 3, "n_workers": 1, "seed": 0},
        "gate": {"max_logloss_regression": 0.05, "max_auc_regression": 0.05},
        "publish": {"storage": str(tmp / "storage"), "canary_rows": 3},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
