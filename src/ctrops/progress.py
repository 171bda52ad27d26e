"""Progress display shared by long-running commands.

Long work (parsing, epochs, trials) reports through a tiny callback protocol so
library code never depends on a terminal; the CLI plugs a rich progress bar in.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class ProgressSink(Protocol):
    def start(self, description: str, total: float | None) -> None: ...
    def advance(self, amount: float = 1.0, note: str | None = None) -> None: ...
    def finish(self) -> None: ...


class SilentProgress:
    """For library use and tests: records nothing, prints nothing."""

    def start(self, description: str, total: float | None) -> None:
        pass

    def advance(self, amount: float = 1.0, note: str | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


class RichProgress:
    """A rich progress bar per task, on stderr so stdout stays machine-readable."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None

    def start(self, description: str, total: float | None) -> None:
        self.finish()
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                                  console=self.console, transient=False,
                                  disable=not self.console.is_terminal and "pytest" in sys.modules)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, note="")

    def advance(self, amount: float = 1.0, note: str | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=amount, **({"note": note} if note else {}))

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def bytes_callback(sink: ProgressSink):
    """Adapt a sink to the readers' `progress(bytes_done, bytes_total, rows)` callback."""
    last = [0]

    def on_progress(done_bytes: int, total: int | None, rows: int) -> None:
        sink.advance(done_bytes - last[0], note=f"{rows:,} rows")
        last[0] = done_bytes

    return on_progress


@contextlib.contextmanager
def task(sink: ProgressSink, description: str, total: float | None) -> Iterator[ProgressSink]:
    sink.start(description, total)
    try:
        yield sink
    finally:
        sink.finish()
