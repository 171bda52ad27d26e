"""Bookkeeping of malformed input rows: count, record, and know when to give up.

Ad logs always carry a few broken lines (truncated writes, a stray header, a
shifted column). Failing a nightly training run on one of them is worse than
training without it, so a reader skips the row and records it here. But a file
that is mostly broken (wrong delimiter, wrong format flag, wrong spec) must
stop the run with a message showing the first bad lines, because training on
its few surviving rows would silently produce a bad model.

The reject file is JSON lines, one object per rejected row:
    {"file": ..., "line": <1-based physical line>, "reason": ..., "raw": <line text>}
It is created only when the first row is rejected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ctrops.errors import DataError

DEFAULT_MAX_REJECT_FRACTION = 0.5
DEFAULT_MIN_ROWS_FOR_CHECK = 100
_MAX_RAW_CHARS = 4096


@dataclass(frozen=True)
class RejectedRow:
    line: int
    reason: str
    raw: str


class RejectLog:
    """Collects the rejected rows of one input file.

    The run fails (DataError) when, after at least `min_rows` rows, more than
    `max_fraction` of them were rejected, or when a file with rows has no good
    row at all. `path=None` keeps only the count and the first `keep` rows.
    """

    def __init__(self, source: str, path: str | os.PathLike | None = None, *,
                 max_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
                 min_rows: int = DEFAULT_MIN_ROWS_FOR_CHECK, keep: int = 5) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        self.source = str(source)
        self.path = Path(path) if path is not None else None
        self.max_fraction = max_fraction
        self.min_rows = min_rows
        self.keep = keep
        self.count = 0
        self.first: list[RejectedRow] = []
        self._fh: IO[str] | None = None
        self._written = False

    def add(self, line: int, reason: str, raw: str | bytes) -> None:
        """Record one rejected row (`line` is 1-based)."""
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        raw = raw.rstrip("\r\n")[:_MAX_RAW_CHARS]
        self.count += 1
        if len(self.first) < self.keep:
            self.first.append(RejectedRow(line, reason, raw))
        if self.path is not None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "w", encoding="utf-8")
                self._written = True
            self._fh.write(json.dumps({"file": self.source, "line": line, "reason": reason, "raw": raw},
                                      ensure_ascii=False) + "\n")

    def check(self, rows_seen: int, *, final: bool = False) -> None:
        """Raise DataError if the rejected share of `rows_seen` rows is past the limit."""
        if self.count == 0 or rows_seen <= 0:
            return
        too_many = rows_seen >= self.min_rows and self.count / rows_seen > self.max_fraction
        nothing_good = final and self.count >= rows_seen
        if too_many or nothing_good:
            self.close()
            shown = "; ".join(f"line {r.line}: {r.reason}: {r.raw[:120]!r}" for r in self.first)
            where = f" (all rejected rows are in {self.path})" if self.path is not None else ""
            raise DataError(f"{self.count} of {rows_seen} rows are malformed, more than "
                            f"{self.max_fraction:.0%} allowed; is the format/spec right? "
                            f"First bad lines: {shown}{where}", path=self.source)

    @property
    def written_path(self) -> Path | None:
        """The reject file, if any row was written to it."""
        return self.path if self._written else None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RejectLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
