"""The server's one prediction-log writer process, as the supervisor starts and watches it.

Apart from `log_process` (the workers' side) so that the supervisor imports
only the standard library here: it never touches a record, and NumPy, fsspec
and Arrow in the supervisor would cost the server ~20 MiB for nothing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict

from ctrops.serve import log_ring as lr
from ctrops.serve.log_config import LogConfig

log = logging.getLogger("ctrops.serve.log")

_MONITOR_SECONDS = 0.5
# The writer's memory (unless the environment says otherwise): Arrow allocates through malloc, which
# the writer trims after every write, instead of mimalloc (which kept ~15 MiB more per writer), and one
# malloc arena for its few threads instead of one per thread (measured: anon memory 77 -> 59 MiB).
_WRITER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1"}
_MAX_RESTARTS = 5
_RESTART_WINDOW = 60.0


def process_writer_supported() -> bool:
    """Whether this platform can run the writer process (see `log_ring.supported`)."""
    return lr.supported()


class LogHub:
    """The server's one writer process for all its workers (`ctrops serve` with `log.writer: process`).

    Started by the supervisor before the workers; each worker's
    `ProcessPredictionLog(hub=name)` hands its ring over an abstract Unix socket.
    A monitor thread restarts the writer if it dies (workers reconnect and count
    what it had taken as dropped); `close()` after the workers have stopped lets
    it finish every ring and finalise its files.
    """

    def __init__(self, config: LogConfig) -> None:
        self.config = config
        self.name = f"ctrops-log-{os.getpid()}-{secrets.token_hex(6)}"
        self._proc: subprocess.Popen | None = None
        self._closed = threading.Event()
        self._monitor: threading.Thread | None = None
        self._deaths: deque = deque()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "LogHub":
        self._spawn()
        self._monitor = threading.Thread(target=self._watch, name="ctrops-log-hub-monitor", daemon=True)
        self._monitor.start()
        return self

    def _spawn(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "ctrops.serve.log_writer", "--hub", self.name],
                                      stdin=subprocess.PIPE, close_fds=True, env={**_WRITER_ENV, **os.environ})
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(asdict(self.config)).encode() + b"\n")
        self._proc.stdin.flush()  # stays open: closing it tells the writer to finish

    def _watch(self) -> None:
        while not self._closed.wait(_MONITOR_SECONDS):
            proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > _RESTART_WINDOW:
                self._deaths.popleft()
            if len(self._deaths) > _MAX_RESTARTS:
                log.error("the prediction log writer died %d times in %.0f s (last exit status %s); not "
                          "restarting it: the server keeps serving and counts every request's records as dropped",
                          len(self._deaths), _RESTART_WINDOW, proc.returncode)
                return
            log.error("the prediction log writer (pid %d) died with status %s; restarting it", proc.pid,
                      proc.returncode)
            self._spawn()

    def close(self, timeout: float = 60.0) -> None:
        """Tell the writer to finish (after the workers closed their logs) and wait for it."""
        self._closed.set()
        if self._monitor is not None:
            self._monitor.join()
            self._monitor = None
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the prediction log writer (pid %d) did not finish within %.0f s; it keeps writing after "
                      "the server exits", proc.pid, timeout)
        except OSError:
            pass
