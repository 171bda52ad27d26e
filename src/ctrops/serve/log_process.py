"""The server's prediction log with the writer in another process (the default of `ctrops serve`).

Why a process: in the worker, the writer thread's batch work (decoding ids,
building Arrow columns, Parquet encoding) shares the GIL and the CPU caches
with the request thread; measured in process, back to back, the request path
cost 1.7x with the thread writer and 1.17x with a writer process. Here the
request thread encodes one payload per request (`log_records`) and copies it
into a shared-memory ring (`log_ring`): microseconds, no lock shared with
another process, no system call, never a wait. A full ring drops the
request's records and counts them.

The writer (`python -m ctrops.serve.log_writer`, at `WRITER_NICENESS`) runs
the same `PredictionLog` code as the thread writer (files, rotation, retries,
schema). `ctrops serve` starts one for the whole server (`LogHub`, from the
supervisor before the workers: Python's and Arrow's ~60 MiB floor is paid
once, not per worker); each worker's `ProcessPredictionLog(hub=...)` hands it
its ring over a Unix socket. Without a hub (in-process users, tests),
`ProcessPredictionLog` starts a writer of its own.

A monitor thread in the worker (waking every `_MONITOR_SECONDS`) copies the
writer's counters for this worker from the ring header into the worker's
Prometheus metrics, builds sampled debug records (explaining a score takes
milliseconds: never on the request thread), and handles a writer that died:
the records still in the ring survive, the ones it had taken but not written
are counted as dropped; its own writer is restarted (after `_MAX_RESTARTS`
deaths within `_RESTART_WINDOW` seconds it stops restarting and says so; the
server keeps serving and the full ring counts every further request as
dropped), the hub is restarted by `LogHub` and the worker reconnects.

`close()` (the worker's shutdown, on SIGTERM) stops accepting, marks the ring
stopped and waits until the writer has written all of it, so every tracking id
served before the signal is in the log; the hub finalises its files when the
supervisor closes it after the workers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict
from typing import Any, Callable

import numpy as np

from ctrops.jsonable import to_jsonable
from ctrops.serve import log_ring as lr
from ctrops.serve.log_hub import (_MAX_RESTARTS, _MONITOR_SECONDS, _RESTART_WINDOW, _WRITER_ENV,  # noqa: F401
                                   LogHub, process_writer_supported)
from ctrops.serve.log_records import COLUMNS, DEBUG, RAW, encode_columns, encode_lists, encode_raw
from ctrops.serve.logging_sink import LogConfig, RequestLog

log = logging.getLogger("ctrops.serve.log")



class ProcessPredictionLog:
    """`PredictionLog`'s interface (submit, submit_request, submit_debug, start, close, counters) with
    the writer in a child process fed through a shared-memory ring."""

    def __init__(self, config: LogConfig, metrics: Any = None, hub: str | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.hub = hub                     # the server's writer (LogHub.name); None: start an own writer
        self._ring: lr.Ring | None = None
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()      # the ring has one producer at a time (request and monitor threads)
        self._sync_lock = threading.Lock()
        self._stop = False
        self._closed = threading.Event()
        self._monitor: threading.Thread | None = None
        self._debug: deque = deque()
        self._deaths: deque = deque()
        self.restarting = True             # False once the writer died too often: drops from then on
        self._requests_in = 0
        self._records_in = 0
        self._push_dropped = 0             # refused at the ring (full, stopped)
        self._lost = 0                     # taken by a writer that died before writing them
        # last values copied into the Prometheus counters
        self._seen_written = self._seen_errors = self._seen_writer_dropped = 0

    # ---- request side -------------------------------------------------------------------------
    def submit_request(self, ts_ms: int, request_id: str, unit_id: str, experiment: str, arm: str,
                       model_name: str | None, model_version: int | None, tracking_prefix: str, body: bytes,
                       scores: np.ndarray, order: np.ndarray) -> bool:
        """Hand one request over with its raw (validated) body; never blocks. False when dropped (counted).

        The writer re-derives the candidate ids and passthrough objects from the body.
        """
        head, score_bytes, order_bytes = encode_raw(ts_ms, request_id, unit_id, experiment, arm, model_name,
                                                    model_version, tracking_prefix, scores, order)
        return self._push(RAW, head, score_bytes, len(order), order_bytes, body)

    def submit_columns(self, ts_ms: int, request_id: str, unit_id: str, experiment: str, arm: str,
                       model_name: str | None, model_version: int | None, tracking_prefix: str, columns: tuple,
                       scores: np.ndarray, order: np.ndarray) -> bool:
        """Hand one request over with the fast path's log columns (`logging_sink.request_from_columns`);
        never blocks. False when dropped (counted)."""
        head, score_bytes, order_bytes = encode_columns(ts_ms, request_id, unit_id, experiment, arm, model_name,
                                                        model_version, tracking_prefix, columns, scores, order)
        return self._push(COLUMNS, head, score_bytes, len(order), order_bytes)

    def submit(self, entry: RequestLog) -> bool:
        """Hand one request over with its lists of ids and passthrough objects (dearer than
        `submit_request`: the lists are encoded here). False when dropped (counted)."""
        kind, payload = encode_lists(entry)
        return self._push(kind, payload, b"", len(entry.order))

    def _push(self, kind: int, head: bytes, first: Any, n_records: int, *more: Any) -> bool:
        ring = self._ring
        with self._lock:
            ok = ring is not None and not self._stop and ring.push(kind, head, first, *more)
            if ok:
                self._requests_in += 1
                self._records_in += n_records
            else:
                self._push_dropped += 1
        if not ok and self.metrics is not None:
            self.metrics.log_dropped.inc()
        return ok

    def submit_debug(self, record: dict | Callable[[], dict]) -> None:
        """Queue a debug record, or a function the monitor thread calls to build it. Bounded; extra
        records are silently skipped (as in the thread writer)."""
        if len(self._debug) < 1000 and not self._stop:
            self._debug.append(record)

    # ---- counters -----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests handed over and not yet written or counted (in the ring, the writer's queue or its
        pending columns); syncs the metrics, so /metrics shows the writer's latest counters."""
        self.sync()
        if self._ring is None:
            return 0
        s = self._ring.slots
        return max(0, self._requests_in - int(s[lr.REQ_PULLED]) + int(s[lr.REQ_QUEUED]))

    @property
    def queued_records(self) -> int:
        if self._ring is None:
            return 0
        s = self._ring.slots
        return max(0, self._records_in - int(s[lr.REC_PULLED]) + int(s[lr.REC_QUEUED]))

    @property
    def records_written(self) -> int:
        return int(self._ring.slots[lr.RECORDS_WRITTEN]) if self._ring is not None else self._seen_written

    @property
    def write_errors(self) -> int:
        return int(self._ring.slots[lr.WRITE_ERRORS]) if self._ring is not None else self._seen_errors

    @property
    def dropped(self) -> int:
        """Requests whose records were dropped: refused at the ring, lost with a dead writer, or
        dropped by the writer (failed writes)."""
        writer = int(self._ring.slots[lr.DROPPED]) if self._ring is not None else self._seen_writer_dropped
        return self._push_dropped + self._lost + writer

    @property
    def writer_pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        pid = int(self._ring.slots[lr.WRITER_PID]) if self._ring is not None else 0
        return pid or None

    def sync(self) -> None:
        """Copy the writer's counters into the Prometheus metrics (deltas since the last sync)."""
        ring, m = self._ring, self.metrics
        if ring is None:
            return
        with self._sync_lock:
            s = ring.slots
            written, errors, dropped = int(s[lr.RECORDS_WRITTEN]), int(s[lr.WRITE_ERRORS]), int(s[lr.DROPPED])
            if m is not None:
                if written > self._seen_written:
                    m.log_records.inc(written - self._seen_written)
                if errors > self._seen_errors:
                    m.log_write_errors.inc(errors - self._seen_errors)
                if dropped > self._seen_writer_dropped:
                    m.log_dropped.inc(dropped - self._seen_writer_dropped)
                m.log_queue_depth.set(max(0, self._requests_in - int(s[lr.REQ_PULLED]) + int(s[lr.REQ_QUEUED])))
            self._seen_written, self._seen_errors, self._seen_writer_dropped = written, errors, dropped

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "ProcessPredictionLog":
        if self._ring is not None:  # started already (an app's startup can run twice): one ring only
            return self
        if not lr.supported():
            raise RuntimeError("the process log writer needs Linux memfd and x86-64 memory ordering; "
                               "set log.writer: thread")
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.config.path, **(self.config.storage_options or {}))
        fs.makedirs(root, exist_ok=True)  # fail here, in the worker's start-up, on a bad path
        self._ring = lr.Ring.create(self.config.ring_bytes)
        if self.hub is None:
            self._spawn()
        else:
            self._connect()  # if the hub is not listening yet, the monitor retries; the ring holds records
        self._monitor = threading.Thread(target=self._watch, name="ctrops-log-monitor", daemon=True)
        self._monitor.start()
        return self

    def _spawn(self) -> None:
        """Start this log's own writer process, handing it the ring's descriptor."""
        assert self._ring is not None
        fd = self._ring.fd
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "ctrops.serve.log_writer", "--ring", str(fd), str(os.getpid())],
            stdin=subprocess.PIPE, pass_fds=(fd,), close_fds=True, env={**_WRITER_ENV, **os.environ})
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(asdict(self.config)).encode() + b"\n")
        self._proc.stdin.close()

    def _connect(self) -> bool:
        """Hand the ring to the server's writer (hub mode); False when it is not there (yet)."""
        assert self._ring is not None and self.hub is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect("\0" + self.hub)
            socket.send_fds(sock, [str(os.getpid()).encode()], [self._ring.fd])
        except OSError:
            sock.close()
            return False
        self._sock = sock
        return True

    def _watch(self) -> None:
        while not self._closed.wait(_MONITOR_SECONDS):
            self._build_debug()
            self._check_writer()
            self.sync()

    def _build_debug(self) -> None:
        while self._debug:
            item = self._debug.popleft()
            try:
                record = item() if callable(item) else item
                payload = json.dumps(record, default=to_jsonable).encode()
            except Exception:
                log.exception("building a debug record failed")
                continue
            with self._lock:
                if self._ring is not None:
                    self._ring.push(DEBUG, payload)  # a full ring skips it, as the thread writer's bound does

    def _writer_gone(self) -> bool:
        """Whether the writer that held this ring has died (own process exited, or the hub's
        connection closed) without finishing it."""
        ring = self._ring
        if ring is None or ring.slots[lr.WRITER_DONE]:
            return False
        if self.hub is None:
            return self._proc is not None and self._proc.poll() is not None
        if self._sock is None:
            return False
        try:
            return self._sock.recv(1, socket.MSG_DONTWAIT) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except OSError:  # would block (alive), or transient: a second reader of the ring must never start
            return False

    def _count_lost(self) -> int:
        """After a writer died: what it had taken and not written is lost (counted); what is still in
        the ring stays for the next writer."""
        s = self._ring.slots
        lost = int(s[lr.REQ_PULLED] - s[lr.REQ_SETTLED])
        self._lost += lost
        if self.metrics is not None and lost:
            self.metrics.log_dropped.inc(lost)
        s[lr.REQ_SETTLED] = s[lr.REQ_PULLED]
        s[lr.REQ_QUEUED] = 0
        s[lr.REC_QUEUED] = 0
        return lost

    def _check_writer(self) -> None:
        if self._ring is None:
            return
        if self.hub is not None:
            if self._writer_gone():
                lost = self._count_lost()
                self._sock.close()
                self._sock = None
                log.error("the prediction log writer went away; %d requests it had taken are lost; reconnecting",
                          lost)
            if self._sock is None:
                self._connect()  # the server's supervisor restarts the hub
            return
        if not self._writer_gone():
            return
        proc = self._proc
        lost = self._count_lost()
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > _RESTART_WINDOW:
            self._deaths.popleft()
        if not self.restarting:
            return
        if len(self._deaths) > _MAX_RESTARTS:
            self.restarting = False
            log.error("the prediction log writer died %d times in %.0f s (last exit status %s); not restarting "
                      "it: the server keeps serving and counts every request's records as dropped",
                      len(self._deaths), _RESTART_WINDOW, proc.returncode)
            return
        log.error("the prediction log writer (pid %d) died with status %s; %d requests it had taken are lost; "
                  "restarting it", proc.pid, proc.returncode, lost)
        self._spawn()

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, let the writer write everything in the ring, wait for it (up to
        `timeout`). Its own writer also finalises its files; the server's hub finalises them when
        the server stops (`LogHub.close`). Safe to call twice."""
        with self._lock:
            self._stop = True
        self._closed.set()
        if self._monitor is not None:
            self._monitor.join()
            self._monitor = None
        ring = self._ring
        if ring is None:
            return
        self._build_debug()
        self._check_writer()  # a writer that died just now: restart it (or reconnect) to drain the ring
        ring.slots[lr.STOP] = 1
        deadline = time.monotonic() + timeout
        if self.hub is None and self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        else:
            while not ring.slots[lr.WRITER_DONE] and time.monotonic() < deadline:
                if self._writer_gone() or self._sock is None:
                    self._check_writer()
                time.sleep(0.02)
        if not ring.slots[lr.WRITER_DONE]:
            alive = self._proc.poll() is None if self.hub is None and self._proc is not None else \
                self._sock is not None and not self._writer_gone()
            unwritten = self._requests_in - int(ring.slots[lr.REQ_SETTLED])
            if alive:
                log.error("the prediction log writer did not finish this worker's %d requests within %.0f s; it "
                          "keeps writing them after this worker exits", unwritten, timeout)
            else:
                log.error("the prediction log writer is gone; %d requests unwritten", unwritten)
                self._lost += max(0, unwritten)
                if self.metrics is not None and unwritten > 0:
                    self.metrics.log_dropped.inc(unwritten)
        self.sync()
        s = ring.slots
        self._seen_written, self._seen_errors, self._seen_writer_dropped = (
            int(s[lr.RECORDS_WRITTEN]), int(s[lr.WRITE_ERRORS]), int(s[lr.DROPPED]))
        with self._lock:
            self._ring = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        ring.close()
