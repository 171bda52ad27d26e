"""What the LIBFFM/xLearn baselines share: where their virtualenv is, and LIBFFM's column numbering.

LIBFFM gives every feature column one field, while a ctrops feature number may
occur in several fields (hash collisions), so the (field, feature) pairs that
occur are numbered as columns. LIBFFM sizes its model by the largest column it
sees: the last pair takes the last of ctrops' feature numbers, so both tools
allocate a model of the same size (e.g. 1e6 hash bins); the numbers in between
never occur and are never touched, in either tool.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# the baselines' own virtualenv: benchmarks/setup_baselines.sh builds it
BASE_PY = Path(os.environ.get("CTROPS_BASELINE_PYTHON") or next(
    (str(p) for p in (Path(__file__).resolve().parents[1] / "bench-out/baselines-venv/bin/python",
                      Path("/tmp/basevenv/bin/python")) if p.exists()),
    "bench-out/baselines-venv/bin/python"))


def libffm_columns(fields: np.ndarray, indices: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(column of every entry as int32, field of every column as int32) for entries (field, feature)."""
    key = fields.astype(np.int64) * (n_features + 1) + indices
    uniq, inv = np.unique(key, return_inverse=True)
    n_cols = max(len(uniq), n_features)
    col_ids = np.arange(len(uniq), dtype=np.int64)
    col_ids[-1] = n_cols - 1
    col_fields = np.zeros(n_cols, dtype=np.int32)
    col_fields[col_ids] = (uniq // (n_features + 1)).astype(np.int32)
    return col_ids[inv].astype(np.int32), col_fields
