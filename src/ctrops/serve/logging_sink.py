"""The prediction log: one record per returned candidate, written off the request path.

This is the writer itself, run as a thread: by in-process users and tests
directly, and by `ctrops serve` inside one writer process for the whole server
(log_process.py, log_writer.py; `log.writer: thread` keeps it in each worker).

The request thread hands the writer one compact tuple per request (the
arrays and lists it already holds: ids, scores, ranking order, tracking-id
prefix, passthrough objects, compacted while they are in cache) through a
bounded deque, or with `submit_request` the raw request body, from which the
writer re-derives ids and passthrough objects. A background thread turns whole batches of those tuples into
Arrow columns with C-level gathers (no Python work per record, only C-level
`map`/`chain` over per-candidate lists and Arrow kernels that run without the
GIL) and appends them to rotating Parquet or JSONL files on any fsspec storage.
JSONL lines are assembled by Arrow string kernels from the same columns.

When storage stalls the deque fills and further requests are dropped *and
counted* rather than slowing the ad server down; the bound is in requests and
in records, so a backlog can never hold more than a known amount of memory.
`close()` (called on SIGTERM through the server's shutdown) drains everything
and finalises the open files.

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
from functools import partial
from itertools import chain, repeat
from operator import attrgetter, is_, is_not, itemgetter
from typing import Any, Callable, NamedTuple

import fsspec
import msgspec
import numpy as np

from ctrops.jsonable import to_jsonable
from ctrops.serve.log_config import _CODECS, FORMATS, WRITER_NICENESS, WRITERS, LogConfig  # noqa: F401 (re-exported)
from ctrops.serve.tracking import SUFFIXES

log = logging.getLogger("ctrops.serve.log")

SCHEMA_VERSION = 1




class RequestLog(NamedTuple):
    """Everything the writer needs to expand one request into candidate records.

    Built from objects the request already holds (nothing is copied or
    formatted on the request thread); the writer expands it in bulk.
    """

    ts_ms: int
    request_id: str
    unit_id: str
    experiment: str
    arm: str
    model_name: str | None
    model_version: int | None
    tracking_prefix: str
    candidate_ids: Any             # a list; or one str (`compact_ids`) or UTF-8 bytes (log columns) joined by NUL
    scores: np.ndarray             # per input candidate
    order: np.ndarray              # input positions of the returned candidates, best first
    candidate_passthrough: list[dict | None]
    passthrough: dict | None


class RawRequestLog(NamedTuple):
    """One request as a caller without Python id lists hands it over: the request-level fields, the
    scores and ranking, and the raw (already validated) request body.

    The writer re-derives the candidate ids and the passthrough objects from
    the body (`request_from_body`), so the caller's cost is one tuple. Fields
    0-7 and `scores` / `order` sit at the same positions as in `RequestLog`.
    """

    ts_ms: int
    request_id: str
    unit_id: str
    experiment: str
    arm: str
    model_name: str | None
    model_version: int | None
    tracking_prefix: str
    body: bytes
    scores: np.ndarray
    order: np.ndarray


_ORDER = RequestLog._fields.index("order")
assert RawRequestLog._fields.index("order") == _ORDER and RawRequestLog._fields.index("scores") == _ORDER - 1


class PredictionLog:
    """Bounded, non-blocking prediction-log writer (one background thread)."""

    def __init__(self, config: LogConfig, metrics: Any = None) -> None:
        self.config = config
        self.metrics = metrics
        self._queue: deque = deque()
        self._debug: deque = deque()
        self._wake = threading.Event()
        self._stop = False
        self._flush = False
        self._last_round = 0.0
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.records_written = 0
        self.write_errors = 0
        # records queued = _records_in - _records_out; each counter has a single writer (the request
        # thread, the log thread), so neither needs a lock
        self._records_in = 0
        self._records_out = 0
        self._pending: list = []          # built, not yet written (compact Arrow tables)
        self._pending_requests = 0
        self._unsettled = 0               # taken from the queue, not yet written or counted as dropped
        self._pending_since = 0.0
        # Requests queued before a round, and per build: small in a server's worker, whose queue holds
        # the requests' Python objects; the writer process (`log_writer.Writer`) takes whole writes at
        # a time, its queue holding compact bytes.
        self.wake_requests = _WAKE_REQUESTS
        self.build_requests = _BUILD_REQUESTS
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
        if not self._admit(len(entry[_ORDER])):
            return False
        # Read the request's ids and passthrough objects now, while they are in the CPU cache (a few
        # microseconds), into one string and one array per key: the objects then die with the request
        # instead of being read cold by the writer later (~1 us each) and pinning allocator arenas.
        self._queue.append(RequestLog(entry[0], entry[1], entry[2], entry[3], entry[4], entry[5], entry[6],
                                      entry[7], compact_ids(entry[8]), entry[9], entry[10],
                                      compact_objects(entry[11]), entry[12]))
        if len(self._queue) == self.wake_requests:  # busy server: write now rather than hold requests' objects
            self._wake.set()
        return True

    def submit_request(self, ts_ms: int, request_id: str, unit_id: str, experiment: str, arm: str,
                       model_name: str | None, model_version: int | None, tracking_prefix: str, body: bytes,
                       scores: np.ndarray, order: np.ndarray) -> bool:
        """Queue one request's records from its raw body; never blocks. False when the queue is full
        (counted, as `submit`).

        For callers that hold the request body but no Python lists of ids and
        passthrough objects (a native request path): the writer decodes the
        candidates' ids and passthrough objects and the request's passthrough
        from `body` off the request path. The body must be the one the server
        validated, or its log part (the server's fast path hands over just
        `{"candidates":[{"id":..,"passthrough":..},..],"passthrough":..}`,
        copied verbatim from the body); one that does not decode to as many
        candidates as `scores` is counted as a write error and its records as
        dropped. The records are the same as `submit` would write.
        """
        if not self._admit(len(order)):
            return False
        if type(body) is not bytes:  # a reusable buffer (bytearray, memoryview) may change after we return
            body = bytes(body)
        self._queue.append(RawRequestLog(ts_ms, request_id, unit_id, experiment, arm, model_name, model_version,
                                         tracking_prefix, body, scores, order))
        if len(self._queue) == self.wake_requests:
            self._wake.set()
        return True

    def submit_columns(self, ts_ms: int, request_id: str, unit_id: str, experiment: str, arm: str,
                       model_name: str | None, model_version: int | None, tracking_prefix: str, columns: tuple,
                       scores: np.ndarray, order: np.ndarray) -> bool:
        """Queue one request's records from the log columns of the server's fast path (see
        `request_from_columns`); never blocks. False when the queue is full (counted, as `submit`)."""
        if not self._admit(len(order)):
            return False
        entry = request_from_columns((ts_ms, request_id, unit_id, experiment, arm, model_name, model_version,
                                      tracking_prefix), columns, scores, order)
        self._queue.append(entry)
        if len(self._queue) == self.wake_requests:
            self._wake.set()
        return True

    def submit_compacted(self, entry: RequestLog) -> bool:
        """Queue a request whose ids and passthrough objects are already compacted (`request_from_body`,
        the writer process's decoder); otherwise as `submit`."""
        if not self._admit(len(entry[_ORDER])):
            return False
        self._queue.append(entry)
        if len(self._queue) == self.wake_requests:
            self._wake.set()
        return True

    def has_room(self, n: int) -> bool:
        """Whether a request of `n` records would be queued now (nothing is counted)."""
        return (len(self._queue) < self.config.queue_size and not self._stop
                and self._records_in - self._records_out + n <= self.config.queue_records)

    def _admit(self, n: int) -> bool:
        """Count a request of `n` records in, or count it dropped when a bound is reached."""
        if not self.has_room(n):
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.log_dropped.inc()
            return False
        self._records_in += n
        return True

    def submit_debug(self, record: dict | Callable[[], dict]) -> None:
        """Queue a debug record, or a function the writer thread calls to build it (keeps slow
        explanations off the request path). Bounded; extra records are silently skipped."""
        if len(self._debug) < 1000 and not self._stop:
            self._debug.append(record)

    @property
    def depth(self) -> int:
        """Requests waiting for the writer."""
        return len(self._queue)

    @property
    def queued_records(self) -> int:
        return self._records_in - self._records_out

    @property
    def unsettled_requests(self) -> int:
        """Requests taken from the queue that are neither written nor counted as dropped yet (what a
        crash of the writer would lose besides the queue)."""
        return self._unsettled

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, thread: bool = True) -> "PredictionLog":
        """Start writing: in a thread of its own, or (thread=False) in rounds the owner's loop runs
        through `work_if_due`; one thread instead of two sharing a GIL is what a process whose only
        job is writing wants (the log writer process: ~40 µs less CPU per request)."""
        if self._thread is not None:  # started already (an app's startup can run twice): one writer only
            return self
        self._fs.makedirs(self._root, exist_ok=True)
        if thread:
            self._thread = threading.Thread(target=self._run, name="ctrops-prediction-log", daemon=True)
            self._thread.start()
        return self

    def flush(self) -> None:
        """Have the writer thread write everything queued now (into the open file; files are still
        finalised on rotation or close). For a writer process whose worker is shutting down."""
        self._flush = True
        self._wake.set()

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
            self._drain(force=True)
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
            force, self._flush = self._flush, False
            self._round(force)
            if stopping:
                try:
                    self._drain(force=True)
                finally:
                    self._close_files()
                return

    def work_if_due(self) -> bool:
        """For an owner that started the log without a thread: run one round of the writer's work
        when its thread would wake (a flush was asked, `wake_requests` requests are queued, or
        `flush_seconds` passed since the last round), or when the queue is half full (small
        `queue_size` / `queue_records` bounds). Whether a round ran.

        A round due by time also writes what it builds: with rounds as far apart as
        `flush_seconds`, waiting for the next one would hold records twice that long.
        """
        now = time.monotonic()
        timed = now - self._last_round >= self.config.flush_seconds
        half_full = (2 * len(self._queue) >= self.config.queue_size
                     or 2 * (self._records_in - self._records_out) >= self.config.queue_records)
        if not (self._flush or len(self._queue) >= self.wake_requests or half_full or timed):
            return False
        force, self._flush = self._flush, False
        self._round(force or timed)
        return True

    def _round(self, force: bool) -> None:
        """One wake of the writer: build and (when due) write what is queued, rotate the file on time."""
        self._last_round = time.monotonic()
        try:
            self._drain(force=force)
            if self._file is not None and time.monotonic() - self._file_opened >= self.config.rotate_seconds:
                self._close_files()
        except Exception:  # keep the writer alive whatever storage does
            log.exception("prediction log writer failed")
        if self.metrics is not None:
            self.metrics.log_queue_depth.set(len(self._queue))

    def _drain(self, force: bool = False) -> None:
        """Turn queued requests into Arrow columns now; write them once enough are pending.

        Converting early releases the requests' Python objects (ids, passthrough
        dicts) within a few dozen requests: held for half a second they would
        pin the allocator's arenas and keep a busy worker's memory at its peak.
        The compact columns wait until `_WRITE_REQUESTS` requests or
        `flush_seconds` have accumulated (or `force`), so row groups stay large.
        """
        pop = self._queue.popleft
        while self._queue:
            batch = []
            while self._queue and len(batch) < self.build_requests:
                self._unsettled += 1  # before the pop: a reader of depth + unsettled never misses one
                batch.append(pop())
            self._records_out += sum(map(len, map(_order_of, batch)))
            if any(type(e) is RawRequestLog for e in batch):
                batch = self._expand_raw(batch)
                if not batch:
                    continue
            try:
                self._pending.append(build_table(batch))
            except Exception:  # a request the builder cannot express: lost, but counted and logged
                log.exception("building the records of %d logged requests failed", len(batch))
                self._count_error()
                self._count_dropped(len(batch))
                self._unsettled -= len(batch)
                continue
            if not self._pending_since:
                self._pending_since = time.monotonic()
            self._pending_requests += len(batch)
            if self._pending_requests >= _WRITE_REQUESTS:
                self._write_pending()
        if self._pending and (force or self._stop or
                              time.monotonic() - self._pending_since >= self.config.flush_seconds):
            self._write_pending()
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

    def _expand_raw(self, batch: list) -> list:
        """The batch with raw-body requests turned into `RequestLog`s; a body that cannot be read is
        counted (one write error, its request dropped) and left out."""
        out = []
        for e in batch:
            if type(e) is RawRequestLog:
                try:
                    e = request_from_body(e)
                except (ValueError, TypeError) as exc:
                    log.error("the logged body of request %r cannot be read: %s", e.request_id, exc)
                    self._count_error()
                    self._count_dropped(1)
                    self._unsettled -= 1
                    continue
            out.append(e)
        return out

    def _count_error(self) -> None:
        self.write_errors += 1
        if self.metrics is not None:
            self.metrics.log_write_errors.inc()

    def _count_dropped(self, n: int) -> None:
        self.dropped += n
        if self.metrics is not None:
            self.metrics.log_dropped.inc(n)

    def _write_pending(self) -> None:
        tables, n_requests = self._pending, self._pending_requests
        self._pending, self._pending_requests, self._pending_since = [], 0, 0.0
        for table in merge_tables(tables):
            self._write_with_retry(table, n_requests if len(tables) == 1 else None)
        self._unsettled -= n_requests
        del tables
        _trim_heap()

    def _write_with_retry(self, table: Any, n_requests: int | None = None) -> None:
        for attempt in range(3):
            try:
                n = self._write(table)
                self.records_written += n
                if self.metrics is not None:
                    self.metrics.log_records.inc(n)
                return
            except Exception:
                log.exception("writing %d log records failed (attempt %d)", table.num_rows, attempt + 1)
                self._count_error()
                self._abandon_file()
                time.sleep(0.2 * (attempt + 1))
        ranks = table.column("rank").to_numpy()
        self._count_dropped(int((ranks == 1).sum()) if n_requests is None else n_requests)

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

    def _write(self, table: Any) -> int:
        """Append `table`, starting a new file whenever the open one reaches `rotate_records`."""
        offset = 0
        while offset < table.num_rows:
            if self._file is None:
                self._open()
            part = table.slice(offset, self.config.rotate_records - self._file_records)
            if self.config.format == "jsonl":
                self._file.write(jsonl_bytes(part))
            else:
                self._write_parquet(part)
            self._file.flush()
            offset += part.num_rows
            self._file_records += part.num_rows
            if self._file_records >= self.config.rotate_records:
                self._close_files()
        return table.num_rows

    def _write_parquet(self, table: Any) -> None:
        if self._parquet is not None and not self._parquet.schema.equals(table.schema):
            self._close_files()  # passthrough keys or types changed: a new file with the new schema
            self._open()
        if self._parquet is None:
            self._parquet = parquet_writer(self._file, table.schema, self.config.compression)
        self._parquet.write_table(table)  # one row group; encoding and compression run without the GIL

    def _write_debug(self, records: list[dict]) -> None:
        if self._debug_file is None:
            self._debug_paths = self._new_name("debug", "jsonl")
            self._debug_file = self._fs.open(self._debug_paths[1], "wb")
        self._debug_file.write("".join(json.dumps(r, default=to_jsonable) + "\n" for r in records).encode())
        self._debug_file.flush()


_order_of = itemgetter(_ORDER)
_WAKE_REQUESTS = 64  # queued requests that wake the writer before flush_seconds (bounds what they retain)
_BUILD_REQUESTS = 128  # requests per build_table call
_WRITE_REQUESTS = 512  # requests per write: one Parquet row group of ~50k records, a few MB of Arrow memory
_CHUNK = 32  # requests per build step: each C-level pass over one chunk holds the GIL for well under 1 ms
# low-cardinality and per-request columns: dictionary pages make them nearly free; unique ids are not
_DICTIONARY_COLUMNS = ["schema", "experiment", "arm", "model_name", "model_version", "request_id", "unit_id",
                       "ts_ms"]
_STATISTICS_COLUMNS = ["ts_ms", "model_version"]  # min/max for time and version filters; strings' cost CPU


def parquet_writer(sink: Any, schema: Any, compression: str) -> Any:
    """The Parquet writer of the log's files: dictionary pages for the low-cardinality and
    per-request columns only, statistics only where readers filter, scores byte-split."""
    import pyarrow.parquet as pq

    return pq.ParquetWriter(sink, schema, compression=compression, compression_level=_CODECS[compression],
                            use_dictionary=_DICTIONARY_COLUMNS, write_statistics=_STATISTICS_COLUMNS,
                            column_encoding={"score": "BYTE_STREAM_SPLIT"}, store_schema=False)


# ---- raw request bodies ---------------------------------------------------------------------------

class _Candidate(msgspec.Struct):
    id: Any = None
    passthrough: Any = None


class _Body(msgspec.Struct):
    """The parts of a /v1/predict body the log needs; msgspec skips the rest (context, fields)
    without building Python objects for it, about half the cost of a full decode."""

    candidates: list[_Candidate]
    passthrough: Any = None


_decode_body = msgspec.json.Decoder(_Body).decode
_candidate_id = attrgetter("id")
_candidate_passthrough = attrgetter("passthrough")


def request_from_body(raw: RawRequestLog) -> RequestLog:
    """The `RequestLog` (compacted as `PredictionLog.submit` does) of a raw request.

    ValueError when the body is not JSON of the request's shape or holds a
    different number of candidates than were scored.
    """
    try:
        doc = _decode_body(raw.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a /v1/predict body: {exc}") from None
    cands = doc.candidates
    if len(cands) != len(raw.scores):
        raise ValueError(f"the body has {len(cands)} candidates, {len(raw.scores)} were scored")
    return RequestLog(raw.ts_ms, raw.request_id, raw.unit_id, raw.experiment, raw.arm, raw.model_name,
                      raw.model_version, raw.tracking_prefix, compact_ids(list(map(_candidate_id, cands))),
                      raw.scores, raw.order, compact_objects(list(map(_candidate_passthrough, cands))),
                      doc.passthrough)


_COLUMN_DTYPES = {"f": np.dtype(np.float64), "i": np.dtype(np.int64), "b": np.dtype(bool)}
_decode_json = msgspec.json.Decoder().decode


def request_from_columns(head: tuple, columns: tuple, scores: np.ndarray, order: np.ndarray) -> RequestLog:
    """The `RequestLog` (compacted as `PredictionLog.submit` does) of a request the server's fast
    path handed over as log columns (`_fastpath.FastPath.finish`, log_body=2): `head` the
    request-level fields 0-7 of `RequestLog`, `columns` (ids, keys, kinds, columns, passthrough),
    all bytes. No Python object per candidate is made: the ids and string columns stay UTF-8
    bytes joined by NUL (checked here: the count, and valid UTF-8) until `build_table` gathers
    them into Arrow buffers in rank order (`_logcolumns.gather_joined`).

    ValueError when the parts do not fit each other or the scores.
    """
    ids, keys, kinds, cols, passthrough = columns
    n = len(scores)
    ids = _joined_bytes(ids, n, "the logged ids")
    if keys is None:
        cp = None
    else:
        kinds = kinds.decode() if not isinstance(kinds, str) else kinds
        if len(keys) != len(kinds) or len(keys) != len(cols) or not keys:
            raise ValueError("logged passthrough keys, kinds and columns differ in number")
        arrays: list = []
        for key, kind, col in zip(keys, kinds, cols):
            if kind == "s":
                arrays.append(_joined_bytes(col, n, f"the logged passthrough column {key!r}"))
            elif kind in _COLUMN_DTYPES:
                dtype = _COLUMN_DTYPES[kind]
                if len(col) != n * dtype.itemsize:
                    raise ValueError(f"the logged passthrough column {key!r} does not hold {n} values")
                arrays.append(np.frombuffer(col, dtype=dtype))
            else:
                raise ValueError(f"unknown logged passthrough kind {kind!r}")
        cp = PassthroughColumns(tuple(keys), arrays)
    rp = None if passthrough is None else _decode_json(passthrough)
    if rp is not None and type(rp) is not dict:
        raise ValueError("the logged request passthrough is not an object")
    return RequestLog(*head, ids, scores, order, cp, rp)


def _joined_bytes(text: Any, n: int, what: str) -> bytes:
    """`text` (n UTF-8 strings joined by NUL) as bytes, checked; ValueError naming `what` otherwise."""
    if type(text) is not bytes:
        text = bytes(text)
    if (text.count(b"\0") != n - 1) if n else text:
        raise ValueError(f"{what} do not split into the {n} candidates scored")
    if not text.isascii():
        try:
            text.decode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} are not UTF-8 text: {exc}") from None
    return text


def _joined_text(items: Any) -> Any:
    """A request's items for the general builders: NUL-joined bytes (see `request_from_columns`)
    as the equal joined str, anything else as it is."""
    return items.decode() if type(items) is bytes else items


# ---- memory ---------------------------------------------------------------------------------------

def _trim_heap() -> None:
    """After a write, give freed memory back to the system: Arrow's pool (mimalloc keeps freed
    segments for reuse, so a worker's memory would settle at its peak) and the C heap (glibc
    malloc_trim, through ctypes so the GIL is released while it runs, about a millisecond).

    Done once per write (a few per second), not per allocation: within a write
    the pool still serves buffers from memory it already has, which is what
    keeps the writer's CPU low (fresh pages from the system cost a fault each).
    """
    global _malloc_trim
    import pyarrow as pa

    pool = pa.default_memory_pool()
    if hasattr(pool, "release_unused"):
        pool.release_unused()
    if _malloc_trim is None:
        _malloc_trim = False
        try:
            import ctypes
            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _malloc_trim = fn
        except (OSError, AttributeError):
            pass
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


# ---- columns ------------------------------------------------------------------------------------

def merge_tables(tables: list) -> list:
    """Pending tables as few as possible: one when their schemas agree after widening (int -> double,
    null -> struct), dictionaries unified so Parquet writes each column's dictionary page once."""
    import pyarrow as pa

    if len(tables) == 1:
        return tables
    try:
        merged = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return [t.unify_dictionaries().combine_chunks() for t in tables]  # passthrough struct vs JSON text
    for name in ("passthrough", "candidate_passthrough"):
        typ = merged.schema.field(name).type
        if pa.types.is_string(typ) and not all(pa.types.is_string(t.schema.field(name).type)
                                               or pa.types.is_null(t.schema.field(name).type) for t in tables):
            return [t.unify_dictionaries().combine_chunks() for t in tables]
    return [merged.unify_dictionaries().combine_chunks()]


def build_table(batch: list[RequestLog]):
    """The Arrow table of a batch's candidate records, in rank order within each request.

    Per-request values (time, ids, arm, model) become dictionary columns: one
    entry per request and an index per record, never a copy per record.
    Tracking ids are assembled as fixed-width bytes by NumPy gathers. The
    Python-level passes over per-candidate lists (ids, passthrough objects)
    run `_CHUNK` requests at a time, so each holds the GIL for well under a
    millisecond; the gathers, encodings and compression run in Arrow/NumPy.
    """
    import pyarrow as pa

    (ts, request_ids, unit_ids, experiments, arms, model_names, versions, prefixes, candidate_ids, scores,
     orders, candidate_passthrough, passthrough) = zip(*batch)
    n = len(batch)
    counts = np.fromiter(map(len, orders), dtype=np.int64, count=n)
    sizes = np.fromiter(map(len, scores), dtype=np.int64, count=n)  # ids may be compacted to one string
    total = int(counts.sum())
    req_of_np = np.repeat(np.arange(n, dtype=np.int32), counts)
    req_of = pa.array(req_of_np)
    order_all = np.concatenate(orders).astype(np.int64, copy=False)
    flat_pos = pa.array(order_all + np.repeat(np.cumsum(sizes) - sizes, counts))  # into the flat candidates
    ranks = np.arange(1, total + 1, dtype=np.int32) - np.repeat(
        (np.cumsum(counts) - counts).astype(np.int32), counts)

    def per_request(values: tuple, typ) -> Any:
        dictionary = pa.array(values, type=typ)
        if not dictionary.null_count:
            return pa.DictionaryArray.from_arrays(req_of, dictionary)
        # Parquet takes no null inside a dictionary: null indices instead (the random arm's version)
        missing = dictionary.is_null().to_numpy(zero_copy_only=False)
        return pa.DictionaryArray.from_arrays(pa.array(req_of_np, mask=missing[req_of_np]),
                                              dictionary.fill_null(pa.scalar(0 if typ == pa.int64() else "", typ)))

    if all(type(x) is bytes for x in candidate_ids):  # the server's log columns: gathered in rank order
        ids = _gathered(candidate_ids, orders, sizes)
    else:
        candidate_ids = tuple(map(_joined_text, candidate_ids))
        ids = pa.concat_arrays([_ids_array(candidate_ids[i:i + _CHUNK]) for i in range(0, n, _CHUNK)]
                               ).take(flat_pos)
    cp = _ranked_passthrough(candidate_passthrough, orders, sizes, flat_pos)
    rp = objects_array(list(passthrough))
    columns = [
        pa.array(np.full(total, SCHEMA_VERSION, dtype=np.int16)),
        per_request(ts, pa.int64()),
        per_request(request_ids, pa.string()),
        per_request(unit_ids, pa.string()),
        per_request(experiments, pa.string()),
        per_request(arms, pa.string()),
        per_request(model_names, pa.string()),
        per_request(versions, pa.int64()),
        rp.take(req_of),
        _tracking_ids(prefixes, counts, req_of_np, order_all),
        ids,
        pa.array(np.concatenate(scores).astype(np.float64, copy=False)[flat_pos.to_numpy()]),
        pa.array(ranks),
        cp,
    ]
    return pa.Table.from_arrays(columns, schema=log_schema(rp.type, cp.type))


def _gathered(joined: tuple, orders: tuple, sizes: np.ndarray):
    """One Arrow string column of NUL-joined bytes (one per request), items in rank order."""
    import pyarrow as pa

    from ctrops.serve._logcolumns import gather_joined

    offsets, data = gather_joined(list(joined), list(orders), sizes)
    return pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data))


def _ranked_passthrough(items: tuple, orders: tuple, sizes: np.ndarray, flat_pos: Any) -> Any:
    """The candidate passthrough column of a batch in rank order (`flat_pos`: the returned
    candidates' positions in the batch's flat list of candidates).

    Requests that all handed the same keys and kinds as columns (the server's log columns,
    strings as NUL-joined bytes) are gathered column by column with no Python object per
    candidate; any other batch takes the general builders over `_CHUNK` requests at a time.
    """
    import pyarrow as pa

    if all(x is None for x in items):
        return pa.nulls(len(flat_pos))
    kinds = _shared_kinds(items)
    if kinds is not None and "str" not in kinds:
        positions = flat_pos.to_numpy()
        children = [_gathered(tuple(x.columns[j] for x in items), orders, sizes) if kind == "bytes"
                    else pa.array(np.concatenate([x.columns[j] for x in items])[positions])
                    for j, kind in enumerate(kinds)]
        return pa.StructArray.from_arrays(children, names=list(items[0].keys))
    items = tuple(map(_text_columns, items))
    return _concat_objects([_passthrough_chunk(items[i:i + _CHUNK], sizes[i:i + _CHUNK])
                            for i in range(0, len(items), _CHUNK)]).take(flat_pos)


def _text_columns(item: Any) -> Any:
    """A request's candidate passthrough for the general builders: joined bytes columns as str."""
    if type(item) is PassthroughColumns and any(type(c) is bytes for c in item.columns):
        return PassthroughColumns(item.keys, [_joined_text(c) for c in item.columns])
    return item


def _concat_objects(chunks: list[list]) -> Any:
    """One passthrough column over chunks: types widened to a common one (int -> double, null ->
    struct) when they differ, else JSON text for all."""
    import pyarrow as pa

    arrays = [c if not isinstance(c, list) else objects_array(c) for c in chunks]
    chunks = [c if isinstance(c, list) else None for c in chunks]
    types = {a.type for a in arrays}
    if len(types) == 1:
        return pa.concat_arrays(arrays)
    try:
        common = pa.unify_schemas([pa.schema([("c", t)]) for t in types], promote_options="permissive")[0].type
        if pa.types.is_string(common) and not all(pa.types.is_string(t) or pa.types.is_null(t) for t in types):
            raise pa.ArrowInvalid("struct and JSON text")
        return pa.concat_arrays([a if a.type == common else a.cast(common) for a in arrays])
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.concat_arrays([a if pa.types.is_string(a.type) else
                                 pa.array(encode_objects(c if c is not None else a.to_pylist()), type=pa.string())
                                 for a, c in zip(arrays, chunks)])


_SUFFIX_BYTES = np.frombuffer("".join(SUFFIXES).encode("ascii"), dtype=np.uint8).reshape(-1, 4)


def _tracking_ids(prefixes: tuple, counts: np.ndarray, req_of: np.ndarray, positions: np.ndarray):
    """prefix (28 hex digits per request) + suffix (4 per candidate position), as fixed-width bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = len(req_of)
    if set(map(len, prefixes)) == {28}:
        joined = "".join(prefixes)
        if joined.isascii():
            out = np.empty((total, 32), dtype=np.uint8)
            out[:, :28] = np.repeat(np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(-1, 28), counts,
                                    axis=0)
            out[:, 28:] = _SUFFIX_BYTES[positions]
            offsets = np.arange(0, 32 * total + 1, 32, dtype=np.int32)
            return pa.StringArray.from_buffers(total, pa.py_buffer(offsets), pa.py_buffer(out))
    return pc.binary_join_element_wise(pa.array(prefixes, pa.string()).take(pa.array(req_of)),
                                       pa.array(SUFFIXES, pa.string()).take(pa.array(positions)), "")


def _ids_array(per_request: tuple) -> Any:
    """Candidate ids of some requests as one Arrow string column (integers written as decimal text).

    Most requests arrive as one joined string (`compact_ids`); Arrow splits
    them at the separators without the GIL. Lists (integer ids, a separator
    inside an id) go through `_text_array`.
    """
    if all(type(x) is str for x in per_request):
        return _split_joined(per_request)
    return _text_array(list(chain.from_iterable(x.split(_SEP) if type(x) is str else x for x in per_request)))


def _split_joined(joined: tuple):
    """One Arrow string column of the items of strings joined by NUL (split by Arrow, without the GIL)."""
    import pyarrow.compute as pc

    return pc.split_pattern(strings_array(list(joined)), _SEP).flatten()


def _joined_or_listed(per_request: tuple):
    """One Arrow string column of some requests' strings, each request's a list or joined by NUL."""
    if all(type(x) is str for x in per_request):
        return _split_joined(per_request)
    return strings_array(list(chain.from_iterable(x.split(_SEP) if type(x) is str else x for x in per_request)))


def compact_ids(ids: list) -> Any:
    """A request's string ids as one string joined by NUL (one C-level pass), else the list as given."""
    if not ids:
        return ids
    try:
        joined = _SEP.join(ids)
    except TypeError:  # integer ids
        return ids
    return joined if joined.count(_SEP) == len(ids) - 1 else ids


class PassthroughColumns(NamedTuple):
    """A request's candidate passthrough objects, all with the same keys: one column per key
    (a NumPy array for numbers and booleans; for strings a list, one str of them joined by NUL
    (`compact_objects`), or their UTF-8 bytes joined by NUL as the server's fast path hands them
    over, see `request_from_columns`)."""

    keys: tuple
    columns: list


def compact_objects(objs: list) -> Any:
    """`PassthroughColumns` when every candidate sent an object with the same keys of one simple kind
    each; None when none sent one; else the list as given (the writer's general path)."""
    if not objs:
        return objs
    first = objs[0]
    if first is None:
        return None if objs.count(None) == len(objs) else objs
    if type(first) is not dict or not first:
        return objs
    keys = tuple(first)
    columns: list = []
    try:
        if sum(map(len, objs)) != len(keys) * len(objs):  # TypeError when a None is among them
            return objs
        for k in keys:
            col = list(map(itemgetter(k), objs))  # KeyError: other keys
            kinds = set(map(type, col))
            if kinds == _FLOAT or kinds == _INT_FLOAT:
                columns.append(np.array(col, dtype=np.float64))
            elif kinds == _INT:
                columns.append(np.array(col, dtype=np.int64))  # OverflowError beyond int64
            elif kinds == _STR:
                columns.append(col)
            elif kinds == _BOOL:
                columns.append(np.array(col, dtype=bool))
            else:
                return objs
    except (TypeError, KeyError, OverflowError):
        return objs
    return PassthroughColumns(keys, columns)


def _passthrough_chunk(items: tuple, sizes: np.ndarray) -> Any:
    """One Arrow column for some requests' candidate passthrough: built from their columns when all
    requests share keys and kinds, all-null when none sent any, else a list of objects for `objects_array`."""
    import pyarrow as pa

    if all(x is None for x in items):
        return pa.nulls(int(sizes.sum()))
    kinds = _shared_kinds(items)
    if kinds is not None:
        children = []
        for j, kind in enumerate(kinds):
            if kind == "str":
                children.append(_joined_or_listed(tuple(x.columns[j] for x in items)))
            else:
                children.append(pa.array(np.concatenate([x.columns[j] for x in items])))
        return pa.StructArray.from_arrays(children, names=list(items[0].keys))
    out: list = []
    for x, n in zip(items, sizes.tolist()):
        if x is None:
            out.extend([None] * n)
        elif type(x) is PassthroughColumns:
            cols = [c.tolist() if isinstance(c, np.ndarray) else c.split(_SEP) if type(c) is str else c
                    for c in x.columns]
            out.extend(dict(zip(x.keys, row)) for row in zip(*cols))
        else:
            out.extend(x)
    return out


def _shared_kinds(items: tuple) -> list[str] | None:
    """The column kinds (`_column_kind`) when every request handed its candidate passthrough as
    `PassthroughColumns` with the same keys and kinds, else None."""
    if not items or not all(type(x) is PassthroughColumns for x in items):
        return None
    keys, kinds = items[0].keys, [_column_kind(c) for c in items[0].columns]
    same = all(x.keys == keys and [_column_kind(c) for c in x.columns] == kinds for x in items)
    return kinds if same else None


def _column_kind(col: Any) -> str:
    return "bytes" if type(col) is bytes else "str" if isinstance(col, (list, str)) else col.dtype.str


_SEP = "\x00"


def _text_array(values: list):
    """Ids as an Arrow string column (integers written as decimal text)."""
    try:
        return strings_array(values)
    except TypeError:
        return strings_array(list(map(str, values)))


def strings_array(values: list):
    """An Arrow string column from a list of str, built from one join instead of per-item conversion.

    `pa.array` converts a Python string in ~200 ns; joining them and counting
    their lengths are C-level passes of ~20 ns each. That gives the UTF-8 data
    and offsets directly when the text is ASCII (one character, one byte),
    which ids and passthrough strings nearly always are. TypeError for a non-str item.
    """
    import pyarrow as pa

    joined = "".join(values)
    if not joined.isascii():
        return pa.array(values, type=pa.string())
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=len(values)), out=offsets[1:])
    if offsets[-1] < 2**31:
        return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets.astype(np.int32)),
                                           pa.py_buffer(joined.encode("ascii")))
    return pa.array(values, type=pa.string())


_FLOAT, _INT, _INT_FLOAT, _STR, _BOOL = {float}, {int}, {int, float}, {str}, {bool}
_SIMPLE_KINDS = (_FLOAT, _INT, _INT_FLOAT, _STR, _BOOL)
_NONE_TYPE = type(None)


def objects_array(objs: list[dict | None]):
    """Arrow column of flat passthrough objects: a struct typed from the values when Arrow can infer
    one, else their JSON text (a string column); all-null or key-less objects give a null column.

    Ad servers send the same keys for every candidate (bid, price), so the
    common case is built column by column with C-level gathers; anything else
    goes through Arrow's own inference over the dicts, which gives the same
    types but costs about a microsecond per object.
    """
    import pyarrow as pa

    fast = _uniform_struct(objs)
    if fast is not None:
        return fast
    try:
        arr = pa.array(objs)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return pa.array(encode_objects(objs), type=pa.string())
    if pa.types.is_struct(arr.type) and arr.type.num_fields == 0:
        return pa.nulls(len(objs))
    if not (pa.types.is_struct(arr.type) or pa.types.is_null(arr.type)):
        return pa.array(encode_objects(objs), type=pa.string())
    return arr


def _uniform_struct(objs: list[dict | None]):
    """The struct column when every present object has the same keys, each holding one simple kind
    (numbers, strings or booleans; None allowed); None when that does not hold."""
    import pyarrow as pa

    present = list(filter(None, objs))  # truthiness is cheap; `is None` on a dict goes through __eq__
    n_none = len(objs) - len(present)
    if n_none:
        if len(present) + sum(map(partial(is_, None), objs)) != len(objs):
            return None  # empty objects besides None: Arrow's inference decides
        if not present:
            return pa.nulls(len(objs))
    first = present[0]
    if type(first) is not dict or not first:
        return None
    keys = tuple(first)
    # same size and every key found below (itemgetter raises otherwise) = the same key set
    if sum(map(len, present)) != len(keys) * len(present):
        return None
    children = []
    for k in keys:
        try:
            col = list(map(itemgetter(k), present))
        except (KeyError, TypeError):
            return None
        kinds = set(map(type, col))
        if kinds == _FLOAT or kinds == _INT_FLOAT:
            children.append(pa.array(np.fromiter(col, dtype=np.float64, count=len(col))))
        elif kinds == _INT:
            try:
                children.append(pa.array(np.fromiter(col, dtype=np.int64, count=len(col))))
            except OverflowError:
                return None  # an integer beyond int64: let Arrow's inference decide (JSON text)
        elif kinds == _STR:
            children.append(strings_array(col))
        else:
            kinds.discard(_NONE_TYPE)
            if kinds not in _SIMPLE_KINDS:
                return None
            typ = (pa.float64() if float in kinds else pa.int64() if kinds == _INT else
                   pa.string() if kinds == _STR else pa.bool_())
            try:
                children.append(pa.array(col, type=typ))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                return None
    arr = pa.StructArray.from_arrays(children, names=list(keys))
    if n_none:
        present_at = np.fromiter(map(is_not, objs, repeat(None)), dtype=bool, count=len(objs))
        index = np.cumsum(present_at) - 1
        arr = arr.take(pa.array(index, mask=~present_at))
    return arr


def parquet_schema(passthrough_type=None, candidate_passthrough_type=None):
    """Schema of a Parquet log file as readers see it; the passthrough columns take their values' type."""
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


def log_schema(passthrough_type=None, candidate_passthrough_type=None):
    """The writer's in-memory schema: `parquet_schema` with per-request columns dictionary-encoded
    (Parquet stores them as dictionary pages and readers get plain strings / integers back)."""
    import pyarrow as pa

    schema = parquet_schema(passthrough_type, candidate_passthrough_type)
    for name in _PER_REQUEST:
        i = schema.get_field_index(name)
        schema = schema.set(i, pa.field(name, pa.dictionary(pa.int32(), schema.field(i).type)))
    return schema


_PER_REQUEST = ("ts_ms", "request_id", "unit_id", "experiment", "arm", "model_name", "model_version")


# ---- JSONL from the columns ---------------------------------------------------------------------

def jsonl_bytes(table) -> bytes:
    """The table as JSON lines (keys in schema order), assembled by Arrow string kernels.

    Per-request fields are formatted once per request (a request's records
    start where `rank` is 1) and repeated by a gather; strings are escaped by
    substring replacement, numbers formatted by Arrow (shortest round-trip).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return b""
    ranks = table.column("rank").to_numpy()
    first = ranks == 1
    first[0] = True  # a slice may start inside a request: its rows share the first row's request fields
    starts = pa.array(np.flatnonzero(first))
    req_of = pa.array(np.cumsum(first) - 1)
    head_cols = ("schema", "ts_ms", "request_id", "unit_id", "experiment", "arm", "model_name",
                 "model_version", "passthrough")
    pieces: list[Any] = []
    for i, name in enumerate(head_cols):
        pieces.append(("{" if i == 0 else ",") + _json_str(name) + ":")
        pieces.append(json_text(table.column(name).take(starts), raw_strings=name == "passthrough"))
    pieces.append(',"tracking_id":')
    head = pc.binary_join_element_wise(*pieces, "").take(req_of)
    line = pc.binary_join_element_wise(
        head, json_text(table.column("tracking_id"), escape=False),
        ',"candidate_id":', json_text(table.column("candidate_id")),
        ',"score":', json_text(table.column("score")),
        ',"rank":', json_text(table.column("rank")),
        ',"candidate_passthrough":', json_text(table.column("candidate_passthrough"), raw_strings=True),
        "}\n", "")
    if isinstance(line, pa.ChunkedArray):
        line = line.combine_chunks()
    if line.null_count:  # a null piece would silently drop its record: fail the write instead (retried, counted)
        raise ValueError(f"{line.null_count} JSONL records came out null")
    offsets = np.frombuffer(line.buffers()[1], dtype=np.int32, count=len(line) + 1, offset=4 * line.offset)
    return memoryview(line.buffers()[2])[int(offsets[0]):int(offsets[-1])].tobytes()


def json_text(col, *, raw_strings: bool = False, escape: bool = True):
    """JSON text of every value of an Arrow column (null -> "null"). `raw_strings`: the strings already
    are JSON text (passthrough objects Arrow could not type); `escape=False`: known-safe strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    typ = col.type
    if pa.types.is_dictionary(typ):  # format each distinct entry once
        return pc.fill_null(json_text(col.dictionary, raw_strings=raw_strings, escape=escape).take(col.indices),
                            "null")
    if pa.types.is_null(typ):
        return pa.array(["null"] * len(col), type=pa.string()) if len(col) < 64 else \
            pc.fill_null(pa.nulls(len(col), pa.string()), "null")
    if pa.types.is_string(typ):
        if raw_strings:
            text = col
        elif not escape:
            text = pc.binary_join_element_wise('"', col, '"', "")
        else:
            data = _string_bytes(col)
            if (data < 0x20).any():  # control characters: the json module's escaping, per value (rare)
                text = pa.array([None if v is None else _json_str(v) for v in col.to_pylist()], type=pa.string())
            else:
                esc = col
                if (data == 0x5C).any():
                    esc = pc.replace_substring(esc, "\\", "\\\\")
                if (data == 0x22).any():
                    esc = pc.replace_substring(esc, '"', '\\"')
                text = pc.binary_join_element_wise('"', esc, '"', "")
    elif pa.types.is_floating(typ):
        text = pc.cast(col, pa.string())
        values = col.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < 1e16)
        if whole.any():  # Arrow writes 3.0 as "3": keep floats floats for JSON readers
            text = pc.if_else(pa.array(whole), pc.binary_join_element_wise(text, ".0", ""), text)
        if not np.isfinite(values).all():
            text = pc.if_else(pc.is_finite(col), text, pa.scalar(None, pa.string()))  # NaN/inf are not JSON
    elif pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        text = pc.cast(col, pa.string())
    elif pa.types.is_struct(typ):
        parts: list[Any] = []
        for i, child in enumerate(col.flatten()):
            parts.append(("{" if i == 0 else ",") + _json_str(typ.field(i).name) + ":")
            parts.append(json_text(child))
        parts.append("}")
        text = pc.binary_join_element_wise(*parts, "") if typ.num_fields else \
            pc.binary_join_element_wise(pc.fill_null(pc.cast(col.is_valid(), pa.string()), "x"), "", "")
        text = pc.if_else(col.is_valid(), text, pa.scalar(None, pa.string()))
    else:  # not produced by this module's builders; correct, if slow
        text = pa.array([_encode_value(v) for v in col.to_pylist()], type=pa.string())
    return pc.fill_null(text, "null")


def _string_bytes(arr) -> np.ndarray:
    """The UTF-8 bytes of a string array's values (one view, no copy)."""
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint8)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=4 * arr.offset)
    return np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]


_json_str = json.encoder.encode_basestring_ascii
_c_encoder = json.encoder.c_make_encoder
_encode_value = (
    (lambda v, _e=_c_encoder(None, None, _json_str, None, ":", ",", False, False, True): "".join(_e(v, 0)))
    if _c_encoder is not None else json.JSONEncoder(separators=(",", ":")).encode)
_NUMBERS = frozenset((int, float))
_STRINGS = frozenset((str,))


def encode_objects(objs: list[dict | None]) -> list[str | None]:
    """JSON text of each flat passthrough object (None stays None), fast when they share their keys.

    The common case is one format string applied with C-level map over
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
