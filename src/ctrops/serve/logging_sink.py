"""The prediction log: one record per returned candidate, written off the request path.

A request hands the writer one compact tuple (no per-candidate dicts) through
a bounded deque; a background thread expands it into records and appends them
to rotating JSONL or Parquet files on any fsspec storage. When storage stalls
the deque fills and further requests are dropped *and counted* rather than
slowing the ad server down. `close()` (called on SIGTERM through the server's
shutdown) drains everything and finalises the open files.

Files are written under a hidden `.inprogress` name and renamed when complete,
so a reader globbing `predictions-*.jsonl` / `*.parquet` never sees half a file.
The record schema is documented in docs/prediction-log.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec
import numpy as np

from ctrops.errors import ConfigError

log = logging.getLogger("ctrops.serve.log")

SCHEMA_VERSION = 1
FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class LogConfig:
    path: str                         # local directory or fsspec URL (s3://bucket/prefix)
    format: str = "jsonl"             # "jsonl" or "parquet"
    rotate_records: int = 1_000_000   # start a new file after this many records ...
    rotate_seconds: float = 300.0     # ... or after this long
    queue_size: int = 20_000          # requests waiting for the writer before drops start
    flush_seconds: float = 0.5        # the writer wakes at least this often
    debug_every: int = 1000           # every n-th request also logs features and weights; 0 = never
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"log.format must be one of {FORMATS}, got {self.format!r}")
        for name in ("rotate_records", "queue_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"log.{name} must be at least 1")
        if self.rotate_seconds <= 0 or self.flush_seconds <= 0:
            raise ConfigError("log.rotate_seconds and log.flush_seconds must be positive")
        if self.debug_every < 0:
            raise ConfigError("log.debug_every must be 0 (off) or a positive request count")


class RequestLog(NamedTuple):
    """Everything the writer needs to expand one request into candidate records."""

    ts_ms: int
    request_id: str
    unit_id: str
    experiment: str
    arm: str
    model_name: str | None
    model_version: int | None
    tracking_prefix: str
    candidate_ids: list[Any]
    scores: np.ndarray             # per input candidate
    order: np.ndarray              # input positions of the returned candidates, best first
    candidate_passthrough: list[dict | None]
    passthrough: dict | None


class PredictionLog:
    """Bounded, non-blocking prediction-log writer (one background thread)."""

    def __init__(self, config: LogConfig, metrics: Any = None) -> None:
        self.config = config
        self.metrics = metrics
        self._queue: deque = deque()
        self._debug: deque = deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        self.records_written = 0
        self.write_errors = 0
        self._fs, self._root = fsspec.core.url_to_fs(config.path, **(config.storage_options or {}))
        self._seq = 0
        self._file = None
        self._file_final: str | None = None
        self._file_tmp: str | None = None
        self._file_records = 0
        self._file_opened = 0.0
        self._parquet = None
        self._debug_file = None
        self._debug_paths: tuple[str, str] | None = None

    # ---- request side -------------------------------------------------------------------------
    def submit(self, entry: RequestLog) -> bool:
        """Queue one request's records; never blocks. False when the queue is full (counted)."""
        if len(self._queue) >= self.config.queue_size or self._stop:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.log_dropped.inc()
            return False
        self._queue.append(entry)
        return True

    def submit_debug(self, record: dict) -> None:
        if len(self._debug) < 1000 and not self._stop:
            self._debug.append(record)

    @property
    def depth(self) -> int:
        return len(self._queue)

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "PredictionLog":
        self._fs.makedirs(self._root, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="ctrops-prediction-log", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, write everything queued, finalise files. Safe to call twice."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("prediction log writer did not finish within %.0f s; %d requests unwritten",
                          timeout, len(self._queue))
            self._thread = None
        else:
            self._drain()
            self._close_files()

    # ---- writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(self.config.flush_seconds)
            self._wake.clear()
            stopping = self._stop
            try:
                self._drain()
                if self._file is not None and time.monotonic() - self._file_opened >= self.config.rotate_seconds:
                    self._close_files()
            except Exception:  # keep the writer alive whatever storage does
                log.exception("prediction log writer failed")
            if self.metrics is not None:
                self.metrics.log_queue_depth.set(len(self._queue))
            if stopping:
                try:
                    self._drain()
                finally:
                    self._close_files()
                return

    def _drain(self) -> None:
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        if batch:
            self._write_with_retry(batch)
        debug = []
        while self._debug:
            debug.append(self._debug.popleft())
        if debug:
            try:
                self._write_debug(debug)
            except Exception:
                log.exception("writing %d debug records failed", len(debug))
                self._count_error()

    def _count_error(self) -> None:
        self.write_errors += 1
        if self.metrics is not None:
            self.metrics.log_write_errors.inc()

    def _write_with_retry(self, batch: list[RequestLog]) -> None:
        for attempt in range(3):
            try:
                n = self._write(batch)
                self.records_written += n
                if self.metrics is not None:
                    self.metrics.log_records.inc(n)
                return
            except Exception:
                log.exception("writing %d logged requests failed (attempt %d)", len(batch), attempt + 1)
                self._count_error()
                self._abandon_file()
                time.sleep(0.2 * (attempt + 1))
        self.dropped += len(batch)
        if self.metrics is not None:
            self.metrics.log_dropped.inc(len(batch))

    # ---- files --------------------------------------------------------------------------------
    def _new_name(self, kind: str, ext: str) -> tuple[str, str]:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{kind}-{stamp}-{os.getpid()}-{self._seq:05d}.{ext}"
        final = f"{self._root.rstrip('/')}/{name}"
        tmp = f"{self._root.rstrip('/')}/.{name}.inprogress"
        return final, tmp

    def _open(self) -> None:
        self._file_final, self._file_tmp = self._new_name("predictions", self.config.format)
        self._file = self._fs.open(self._file_tmp, "wb")
        self._file_records = 0
        self._file_opened = time.monotonic()
        self._parquet = None

    def _close_files(self) -> None:
        if self._file is not None:
            if self._parquet is not None:
                self._parquet.close()
            self._file.close()
            self._fs.mv(self._file_tmp, self._file_final)
            self._file = self._parquet = None
        if self._debug_file is not None:
            self._debug_file.close()
            self._fs.mv(*self._debug_paths[::-1])
            self._debug_file = None

    def _abandon_file(self) -> None:
        """After a failed write, drop the handle so the next attempt starts a fresh file."""
        try:
            if self._file is not None:
                self._file.close()
                self._fs.mv(self._file_tmp, self._file_final)
        except Exception:
            log.exception("could not finalise %s", self._file_tmp)
        self._file = self._parquet = None

    def _write(self, batch: list[RequestLog]) -> int:
        if self._file is None:
            self._open()
        n = (self._write_jsonl if self.config.format == "jsonl" else self._write_parquet)(batch)
        self._file.flush()
        self._file_records += n
        if self._file_records >= self.config.rotate_records:
            self._close_files()
        return n

    def _write_jsonl(self, batch: list[RequestLog]) -> int:
        dumps = json.dumps
        lines: list[str] = []
        for e in batch:
            head = (f'{{"schema":{SCHEMA_VERSION},"ts_ms":{e.ts_ms},"request_id":{dumps(e.request_id)},'
                    f'"unit_id":{dumps(e.unit_id)},"experiment":{dumps(e.experiment)},'
                    f'"arm":{dumps(e.arm)},"model_name":{dumps(e.model_name)},'
                    f'"model_version":{dumps(e.model_version)},"tracking_id":"{e.tracking_prefix}')
            scores = e.scores.tolist()
            for rank, pos in enumerate(e.order.tolist(), 1):
                lines.append(
                    f'{head}{pos:04x}","candidate_id":{dumps(e.candidate_ids[pos])},'
                    f'"score":{scores[pos]!r},"rank":{rank},'
                    f'"passthrough":{_passthrough_json(e.passthrough, e.candidate_passthrough[pos])}}}\n')
        self._file.write("".join(lines).encode())
        return len(lines)

    def _write_parquet(self, batch: list[RequestLog]) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols: dict[str, list] = {k: [] for k in PARQUET_SCHEMA_NAMES}
        for e in batch:
            order = e.order.tolist()
            m = len(order)
            scores = e.scores.tolist()
            cols["schema"].extend([SCHEMA_VERSION] * m)
            cols["ts_ms"].extend([e.ts_ms] * m)
            cols["request_id"].extend([e.request_id] * m)
            cols["unit_id"].extend([e.unit_id] * m)
            cols["experiment"].extend([e.experiment] * m)
            cols["arm"].extend([e.arm] * m)
            cols["model_name"].extend([e.model_name] * m)
            cols["model_version"].extend([e.model_version] * m)
            pre = e.tracking_prefix
            cols["tracking_id"].extend([f"{pre}{pos:04x}" for pos in order])
            ids = e.candidate_ids
            cols["candidate_id"].extend([str(ids[pos]) for pos in order])
            cols["score"].extend([scores[pos] for pos in order])
            cols["rank"].extend(range(1, m + 1))
            cp = e.candidate_passthrough
            cols["passthrough"].extend([_passthrough_json(e.passthrough, cp[pos]) for pos in order])
        table = pa.table(cols, schema=parquet_schema())
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._file, table.schema, compression="zstd")
        self._parquet.write_table(table)
        return table.num_rows

    def _write_debug(self, records: list[dict]) -> None:
        if self._debug_file is None:
            self._debug_paths = self._new_name("debug", "jsonl")
            self._debug_file = self._fs.open(self._debug_paths[1], "wb")
        self._debug_file.write("".join(json.dumps(r, default=_json_default) + "\n" for r in records).encode())
        self._debug_file.flush()


PARQUET_SCHEMA_NAMES = ("schema", "ts_ms", "request_id", "unit_id", "experiment", "arm", "model_name",
                        "model_version", "tracking_id", "candidate_id", "score", "rank", "passthrough")


def parquet_schema():
    import pyarrow as pa
    return pa.schema([
        ("schema", pa.int16()), ("ts_ms", pa.int64()), ("request_id", pa.string()),
        ("unit_id", pa.string()), ("experiment", pa.string()), ("arm", pa.string()),
        ("model_name", pa.string()), ("model_version", pa.int64()), ("tracking_id", pa.string()),
        ("candidate_id", pa.string()), ("score", pa.float64()), ("rank", pa.int32()),
        ("passthrough", pa.string()),
    ])


def _passthrough_json(request: dict | None, candidate: dict | None) -> str:
    if request is None and candidate is None:
        return "null"
    if request is None:
        return json.dumps(candidate)
    if candidate is None:
        return json.dumps(request)
    return json.dumps({**request, **candidate})  # candidate keys win (bid, price of this ad)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot log {type(obj).__name__}")
