"""Slow, obviously-right reference parsing and random Criteo-like text for the data tests."""

from __future__ import annotations

import math

import numpy as np

from ctrops.data.hashing import feature_key
from ctrops.data.spec import FieldSpec
from ctrops.data.tokens import log2bin_token, stored_key

N_COLUMNS = 40


def reference_number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def reference_criteo(lines: list[str], seed: int = 0):
    """(labels, keys, rejected line numbers) of Criteo lines by the documented rules, in pure Python."""
    spec = FieldSpec.criteo()
    labels, rows, rejected = [], [], []
    for number, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if line.strip(" ") == "":
            continue
        cols = line.split("\t")
        if len(cols) != N_COLUMNS:
            rejected.append(number)
            continue
        label = reference_number(cols[0])
        if label not in (0.0, 1.0):
            rejected.append(number)
            continue
        keys = []
        ok = True
        for f in range(spec.n_fields):
            text = cols[f + 1]
            if text == "":
                keys.append(0)
            elif f < 13:
                v = reference_number(text)
                if v is None:
                    ok = False
                    break
                keys.append(stored_key(feature_key(f, log2bin_token(v), seed)))
            else:
                keys.append(stored_key(feature_key(f, text, seed)))
        if not ok:
            rejected.append(number)
            continue
        labels.append(label)
        rows.append(keys)
    return (np.array(labels, np.float32), np.array(rows, np.uint64).reshape(len(rows), spec.n_fields),
            rejected)


def random_criteo_lines(rng: np.random.Generator, n: int, bad_fraction: float = 0.0) -> list[str]:
    """Criteo-shaped lines with edge-case integers, empties and (optionally) malformed rows."""
    ints = ["", "0", "1", "2", "3", "-1", "-2", "7", "20", "1000", "123456789", "1.5", "2.5", "-0.5", "1e3"]
    lines = []
    for _ in range(n):
        label = str(rng.integers(0, 2))
        iv = [ints[i] for i in rng.integers(0, len(ints), 13)]
        cv = ["" if rng.random() < 0.1 else format(int(rng.integers(0, 40)), "08x") for _ in range(26)]
        cols = [label, *iv, *cv]
        if rng.random() < bad_fraction:
            kind = rng.integers(0, 4)
            if kind == 0:
                cols = cols[:-1]                      # wrong column count
            elif kind == 1:
                cols[1 + int(rng.integers(0, 13))] = "abc"   # non-numeric integer
            elif kind == 2:
                cols[0] = "2"                          # bad label
            else:
                cols.append("extra")
        lines.append("\t".join(cols))
    return lines


def write_lines(path, lines: list[str], crlf: bool = False, gz: bool = False, blank_every: int = 0) -> None:
    import gzip

    out = []
    for i, line in enumerate(lines):
        out.append(line + ("\r\n" if crlf else "\n"))
        if blank_every and i % blank_every == blank_every - 1:
            out.append("\n")
    data = "".join(out).encode()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)


def expand_blank_lines(lines: list[str], blank_every: int) -> list[str]:
    """The physical lines `write_lines(..., blank_every=k)` produces (for line numbering)."""
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if blank_every and i % blank_every == blank_every - 1:
            out.append("")
    return out
