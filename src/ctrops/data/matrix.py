"""The field-aware sparse matrix every model trains on and scores.

CSR layout with one extra array: for row `r`, entries `indptr[r]:indptr[r+1]`
hold (field, feature index, value) triples. Keeping fields explicit (instead
of deriving them from feature ranges) lets hashed and vocabulary indexing share
one kernel, and lets LIBFFM text files (which name the field per entry) load
without re-encoding.

The matrix saves to a directory of raw little-endian `.npy` arrays so later
epochs and re-runs memory-map it instead of parsing text again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_FORMAT_VERSION = 1
_ARRAYS = ("indptr", "fields", "indices", "values", "labels")


@dataclass(frozen=True)
class FieldMatrix:
    """Rows of (field, feature, value) entries with a 0/1 label per row.

    indptr:  int64 [n_rows + 1]
    fields:  int32 [nnz], each in [0, n_fields)
    indices: int32 [nnz], each in [0, n_features)
    values:  float32 [nnz]
    labels:  float32 [n_rows], 0.0 or 1.0
    weights: float32 [n_rows] or None (importance weight per row)
    """

    indptr: np.ndarray
    fields: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    n_fields: int
    n_features: int
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.indptr.shape != (n + 1,):
            raise ValueError(f"indptr has shape {self.indptr.shape}, expected ({n + 1},) for {n} rows")
        nnz = int(self.indptr[-1]) if n else 0
        for name in ("fields", "indices", "values"):
            arr = getattr(self, name)
            if arr.shape != (nnz,):
                raise ValueError(f"{name} has shape {arr.shape}, expected ({nnz},)")
        if self.weights is not None and self.weights.shape != (n,):
            raise ValueError(f"weights has shape {self.weights.shape}, expected ({n},)")

    @classmethod
    def from_arrays(cls, indptr, fields, indices, values, labels, n_fields: int, n_features: int,
                    weights=None) -> "FieldMatrix":
        """Build with dtype conversion (copies only when the dtype differs)."""
        return cls(
            indptr=np.ascontiguousarray(indptr, dtype=np.int64),
            fields=np.ascontiguousarray(fields, dtype=np.int32),
            indices=np.ascontiguousarray(indices, dtype=np.int32),
            values=np.ascontiguousarray(values, dtype=np.float32),
            labels=np.ascontiguousarray(labels, dtype=np.float32),
            n_fields=int(n_fields),
            n_features=int(n_features),
            weights=None if weights is None else np.ascontiguousarray(weights, dtype=np.float32),
        )

    @property
    def n_rows(self) -> int:
        return len(self.labels)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1]) if self.n_rows else 0

    def __len__(self) -> int:
        return self.n_rows

    def take(self, rows: np.ndarray | slice) -> "FieldMatrix":
        """A new matrix holding the selected rows (contiguous slices avoid copying entries)."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.n_rows)
            if step == 1:
                lo, hi = int(self.indptr[start]), int(self.indptr[stop]) if stop > start else int(self.indptr[start])
                stop = max(stop, start)
                return FieldMatrix(
                    indptr=self.indptr[start:stop + 1] - self.indptr[start],
                    fields=self.fields[lo:hi], indices=self.indices[lo:hi], values=self.values[lo:hi],
                    labels=self.labels[start:stop], n_fields=self.n_fields, n_features=self.n_features,
                    weights=None if self.weights is None else self.weights[start:stop],
                )
            rows = np.arange(start, stop, step)
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # entry positions: for each selected row, its contiguous entry range
        pos = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return FieldMatrix(
            indptr=indptr, fields=self.fields[pos], indices=self.indices[pos], values=self.values[pos],
            labels=self.labels[rows], n_fields=self.n_fields, n_features=self.n_features,
            weights=None if self.weights is None else self.weights[rows],
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the binary cache (one .npy per array plus meta.json), atomically per file."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        if self.weights is not None:
            arrays["weights"] = self.weights
        for name, arr in arrays.items():
            tmp = out / f".{name}.npy.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False))
            os.replace(tmp, out / f"{name}.npy")
        meta = {"format_version": CACHE_FORMAT_VERSION, "n_rows": self.n_rows, "nnz": self.nnz,
                "n_fields": self.n_fields, "n_features": self.n_features,
                "has_weights": self.weights is not None}
        tmp = out / ".meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, out / "meta.json")  # written last: its presence marks a complete cache
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "FieldMatrix":
        """Open a cache written by `save`; arrays are memory-mapped unless `mmap=False`."""
        src = Path(directory)
        meta_path = src / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{src} is not a complete ctrops matrix cache (no meta.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            raise ValueError(f"{meta_path}: cache format {meta.get('format_version')} is not "
                             f"{CACHE_FORMAT_VERSION}; delete the cache to rebuild it")
        mode = "r" if mmap else None
        arrays = {name: np.load(src / f"{name}.npy", mmap_mode=mode) for name in _ARRAYS}
        weights = np.load(src / "weights.npy", mmap_mode=mode) if meta.get("has_weights") else None
        return cls(**arrays, n_fields=int(meta["n_fields"]), n_features=int(meta["n_features"]),
                   weights=weights)
