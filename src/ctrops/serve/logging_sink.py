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
from itertools import chain
from operator import itemgetter
from typing import Any, Callable, NamedTuple

import fsspec
import numpy as np

from ctrops.jsonable import to_jsonable
from ctrops.errors import ConfigError
from ctrops.serve.tracking import MAX_CANDIDATES, SUFFIXES

log = logging.getLogger("ctrops.serve.log")

SCHEMA_VERSION = 1
WRITER_NICENESS = 5
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

    def submit_debug(self, record: dict | Callable[[], dict]) -> None:
        """Queue a debug record, or a function the writer thread calls to build it (keeps slow
        explanations off the request path). Bounded; extra records are silently skipped."""
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
        try:  # below the request threads (Linux niceness is per thread); the bounded queue absorbs bursts
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        except (AttributeError, OSError):
            pass
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
            item = self._debug.popleft()
            try:
                debug.append(item() if callable(item) else item)
            except Exception:
                log.exception("building a debug record failed")
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
        lines: list[str] = []
        for i, e in enumerate(batch):
            if i % _CHUNK == _CHUNK - 1:
                time.sleep(0)  # a yield point for the request thread
            head = (f'{{"schema":{SCHEMA_VERSION},"ts_ms":{e.ts_ms},"request_id":{_json_str(e.request_id)},'
                    f'"unit_id":{_json_str(e.unit_id)},"experiment":{_json_str(e.experiment)},'
                    f'"arm":{_json_str(e.arm)},"model_name":{_json_value(e.model_name)},'
                    f'"model_version":{_json_value(e.model_version)},'
                    f'"passthrough":{_json_value(e.passthrough)},"tracking_id":"{e.tracking_prefix}')
            row = (head.replace("%", "%%") + '%s","candidate_id":%s,"score":%r,"rank":%d,'
                   '"candidate_passthrough":%s}\n')
            order = e.order.tolist()
            scores = e.scores.tolist()
            ids = _ids_as_text(e.candidate_ids)
            cp = [("null" if x is None else x) for x in encode_objects(e.candidate_passthrough)]
            lines.extend(map(row.__mod__, zip(
                map(SUFFIXES.__getitem__, order), map(_json_str, map(ids.__getitem__, order)),
                map(scores.__getitem__, order), range(1, len(order) + 1), map(cp.__getitem__, order))))
        self._file.write("".join(lines).encode())
        return len(lines)

    def _write_parquet(self, batch: list[RequestLog]) -> int:
        """Build small tables (short GIL holds), then write them in one call that releases the GIL."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for start in range(0, len(batch), _CHUNK):
            tables.append(self._build_table(batch[start:start + _CHUNK]))
            time.sleep(0)  # a yield point: the request thread gets the GIL between chunks
        total = 0
        group: list = []
        for table in tables + [None]:
            if group and (table is None or not table.schema.equals(group[0].schema)):
                merged = pa.concat_tables(group)
                if self._parquet is not None and not self._parquet.schema.equals(merged.schema):
                    self._close_files()  # passthrough keys or types changed: a new file with the new schema
                    self._open()
                if self._parquet is None:
                    self._parquet = pq.ParquetWriter(self._file, merged.schema, compression="zstd",
                                                     compression_level=1, use_dictionary=_DICTIONARY_COLUMNS)
                self._parquet.write_table(merged)
                total += merged.num_rows
                group = []
            if table is not None:
                group.append(table)
        return total

    def _build_table(self, batch: list[RequestLog]):
        """Columns built per chunk with NumPy/Arrow gathers; Python work is per request, not per record."""
        import pyarrow as pa
        import pyarrow.compute as pc

        counts = np.fromiter((len(e.order) for e in batch), dtype=np.int64, count=len(batch))
        total = int(counts.sum())
        req_of = np.repeat(np.arange(len(batch)), counts)
        take = pa.array(req_of)

        def per_request(values: list, typ) -> pa.Array:
            return pa.array(values, type=typ).take(take)

        order_all = np.concatenate([e.order for e in batch]).astype(np.int64)
        sizes = np.fromiter((len(e.candidate_ids) for e in batch), dtype=np.int64, count=len(batch))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        flat_pos = pa.array(order_all + np.repeat(starts, counts))
        flat_ids = _ids_as_text(list(chain.from_iterable(e.candidate_ids for e in batch)))
        flat_cp = list(chain.from_iterable(e.candidate_passthrough for e in batch))
        cp = objects_array(flat_cp).take(flat_pos)
        rp = objects_array([e.passthrough for e in batch]).take(take)
        prefixes = per_request([e.tracking_prefix for e in batch], pa.string())
        suffixes = _SUFFIX_ARROW().take(pa.array(order_all))
        columns = {
            "schema": pa.array(np.full(total, SCHEMA_VERSION, dtype=np.int16)),
            "ts_ms": per_request([e.ts_ms for e in batch], pa.int64()),
            "request_id": per_request([e.request_id for e in batch], pa.string()),
            "unit_id": per_request([e.unit_id for e in batch], pa.string()),
            "experiment": per_request([e.experiment for e in batch], pa.string()),
            "arm": per_request([e.arm for e in batch], pa.string()),
            "model_name": per_request([e.model_name for e in batch], pa.string()),
            "model_version": per_request([e.model_version for e in batch], pa.int64()),
            "passthrough": rp,
            "tracking_id": pc.binary_join_element_wise(prefixes, suffixes, ""),
            "candidate_id": pa.array(flat_ids, type=pa.string()).take(flat_pos),
            "score": pa.array(np.concatenate([e.scores[e.order] for e in batch]).astype(np.float64)),
            "rank": pa.array(np.concatenate([_RANKS[:c] for c in counts.tolist()])),
            "candidate_passthrough": cp,
        }
        return pa.table(columns, schema=parquet_schema(rp.type, cp.type))

    def _write_debug(self, records: list[dict]) -> None:
        if self._debug_file is None:
            self._debug_paths = self._new_name("debug", "jsonl")
            self._debug_file = self._fs.open(self._debug_paths[1], "wb")
        self._debug_file.write("".join(json.dumps(r, default=to_jsonable) + "\n" for r in records).encode())
        self._debug_file.flush()


_CHUNK = 16  # requests per build step of the writer: bounds how long it holds the GIL at a stretch
# low-cardinality columns only: dictionary-encoding unique ids costs CPU and saves nothing
_DICTIONARY_COLUMNS = ["schema", "experiment", "arm", "model_name", "model_version", "request_id", "unit_id"]
_RANKS = np.arange(1, MAX_CANDIDATES + 1, dtype=np.int32)
_json_str = json.encoder.encode_basestring_ascii
_c_encoder = json.encoder.c_make_encoder
_encode_value = (
    (lambda v, _e=_c_encoder(None, None, _json_str, None, ":", ",", False, False, True): "".join(_e(v, 0)))
    if _c_encoder is not None else json.JSONEncoder(separators=(",", ":")).encode)


def _json_value(v: Any) -> str:
    """JSON text of a scalar or a flat passthrough object."""
    if v is None:
        return "null"
    if type(v) is str:
        return _json_str(v)
    return _encode_value(v)


def _json_or_none(v: Any) -> str | None:
    return None if v is None else _encode_value(v)


_NUMBERS = frozenset((int, float))
_STRINGS = frozenset((str,))


def encode_objects(objs: list[dict | None]) -> list[str | None]:
    """JSON text of each flat passthrough object (None stays None), fast when they share their keys.

    Ad servers send the same passthrough keys for every candidate (bid, price),
    so the common case is one format string applied with C-level map over
    columns; anything else falls back to the json module per object.
    """
    present = [o for o in objs if o is not None]
    if not present:
        return [None] * len(objs)
    keys = tuple(present[0])
    encoded: list[str] | None = None
    if keys and all(map(keys.__eq__, map(tuple, present))):
        getter = itemgetter(*keys)
        columns = [list(map(getter, present))] if len(keys) == 1 else [list(c) for c in zip(*map(getter, present))]
        specs = []
        for i, col in enumerate(columns):
            kinds = set(map(type, col))
            if kinds <= _NUMBERS:
                specs.append("%r")
            elif kinds == _STRINGS:
                columns[i] = list(map(_json_str, col))
                specs.append("%s")
            else:
                break
        else:
            fmt = "{" + ",".join(_json_str(k).replace("%", "%%") + ":" + spec for k, spec in zip(keys, specs)) + "}"
            encoded = list(map(fmt.__mod__, zip(*columns)))
    if encoded is None:
        encoded = list(map(_encode_value, present))
    if len(present) == len(objs):
        return encoded
    it = iter(encoded)
    return [None if o is None else next(it) for o in objs]


def _ids_as_text(ids: list) -> list[str]:
    kinds = set(map(type, ids))
    if kinds <= {str}:
        return ids
    return list(map(str, ids))


_suffix_arrow = None


def _SUFFIX_ARROW():
    global _suffix_arrow
    if _suffix_arrow is None:
        import pyarrow as pa
        _suffix_arrow = pa.array(SUFFIXES, type=pa.string())
    return _suffix_arrow


def objects_array(objs: list[dict | None]):
    """Arrow column of flat passthrough objects: a struct typed from the values when Arrow can infer
    one (all C-level), else their JSON text; all-null or key-less objects give a null column."""
    import pyarrow as pa

    try:
        arr = pa.array(objs)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        return pa.array(encode_objects(objs), type=pa.string())
    if pa.types.is_struct(arr.type) and arr.type.num_fields == 0:
        return pa.nulls(len(objs))
    if not (pa.types.is_struct(arr.type) or pa.types.is_null(arr.type)):
        return pa.array(encode_objects(objs), type=pa.string())
    return arr


def parquet_schema(passthrough_type=None, candidate_passthrough_type=None):
    """Schema of a Parquet log file; the two passthrough columns take the type of their values."""
    import pyarrow as pa
    passthrough_type = passthrough_type or pa.string()
    candidate_passthrough_type = candidate_passthrough_type or pa.string()
    return pa.schema([
        ("schema", pa.int16()), ("ts_ms", pa.int64()), ("request_id", pa.string()),
        ("unit_id", pa.string()), ("experiment", pa.string()), ("arm", pa.string()),
        ("model_name", pa.string()), ("model_version", pa.int64()), ("passthrough", passthrough_type),
        ("tracking_id", pa.string()), ("candidate_id", pa.string()), ("score", pa.float64()),
        ("rank", pa.int32()), ("candidate_passthrough", candidate_passthrough_type),
    ])


