"""Schema of the three ad logs and a validating reader that loses no row.

Impressions, clicks and conversions arrive as JSON lines, CSV (with a header)
or Parquet, usually one file per hour or day. docs/log-schema.md is the
human-readable contract; this module enforces it.

Why validate in Python before DuckDB: DuckDB's `ignore_errors` readers drop
bad rows without saying which, and a conversion log that silently loses 2 % of
its lines biases CVR by 2 %. Here every row either becomes a typed column
value or a record in the reject file (file, 1-based line, reason, raw text),
and counts are reported. A file that is mostly broken (wrong format flag, wrong
delimiter) stops the run instead, because training on its survivors would
quietly produce a bad model.

Timestamps are normalised to int64 microseconds since the Unix epoch, UTC
(`ts_us`), so window arithmetic in the join is exact integer arithmetic: a
click exactly at the window edge is in, one microsecond later is out.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Literal

import pyarrow as pa

from ctrops.errors import DataError

LogKind = Literal["impressions", "clicks", "conversions"]
LogFormat = Literal["jsonl", "csv", "parquet"]
LOG_KINDS: tuple[str, ...] = ("impressions", "clicks", "conversions")
LOG_FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet")

ID_COLUMN = "impression_id"  # the tracking id: joins the three logs
TIME_COLUMN = "ts"
AD_COLUMNS: tuple[str, ...] = ("ad_id", "creative_id", "campaign_id", "advertiser_id")
PRICE_COLUMNS: tuple[str, ...] = ("bid_price", "win_price")
# columns written by the reader that log rows must not use themselves
INTERNAL_COLUMNS: tuple[str, ...] = ("ts_us", "_file", "_line")

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                   ".parquet": "parquet", ".pq": "parquet"}
_MAX_RAW_CHARS = 2000


@dataclass(frozen=True)
class LogSchema:
    """Columns of one log kind.

    required: must be present and non-empty in every row (else the row is rejected).
    string_columns: optional identifiers, kept as strings (null when absent).
    float_columns: optional non-negative numbers (a non-numeric value rejects the row).
    keeps_context: whether other columns are kept (impressions carry the context fields).
    """

    kind: str
    required: tuple[str, ...]
    string_columns: tuple[str, ...]
    float_columns: tuple[str, ...]
    keeps_context: bool


IMPRESSIONS = LogSchema("impressions", required=(ID_COLUMN, TIME_COLUMN, "ad_id"),
                        string_columns=("creative_id", "campaign_id", "advertiser_id"),
                        float_columns=PRICE_COLUMNS, keeps_context=True)
CLICKS = LogSchema("clicks", required=(ID_COLUMN, TIME_COLUMN), string_columns=("click_id",),
                   float_columns=(), keeps_context=False)
CONVERSIONS = LogSchema("conversions", required=(ID_COLUMN, TIME_COLUMN), string_columns=("conversion_id",),
                        float_columns=("value",), keeps_context=False)
SCHEMAS: dict[str, LogSchema] = {s.kind: s for s in (IMPRESSIONS, CLICKS, CONVERSIONS)}


# --------------------------------------------------------------------------- timestamps

def parse_timestamp(value: Any) -> int:
    """Microseconds since the epoch (UTC) of an ISO-8601 string or an epoch number.

    ISO strings without an offset are taken as UTC. Epoch numbers (or numeric
    strings) are read by magnitude: below 1e11 seconds, below 1e14
    milliseconds, otherwise microseconds. Raises ValueError when unparsable.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, (int, float)):
        return _epoch_to_us(float(value))
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        if not text:
            raise ValueError("empty timestamp")
        try:
            return _epoch_to_us(float(text))
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 time or epoch number: {text[:40]!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _epoch_to_us(x: float) -> int:
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"not a valid epoch time: {x!r}")
    if x < 1e11:
        return int(round(x * 1_000_000))
    if x < 1e14:
        return int(round(x * 1_000))
    return int(x)


def format_timestamp(ts_us: int) -> str:
    """ISO-8601 UTC text ('...Z') of a microsecond timestamp, as the generator writes it."""
    dt = _EPOCH + timedelta(microseconds=int(ts_us))
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------- rejects

class RejectSink:
    """Appends rejected rows of every log to one JSON-lines file and counts them per kind.

    Record: {"kind", "file", "line" (1-based; the row number for Parquet), "reason", "raw"}.
    The file is created at the first rejected row. `max_fraction` guards a
    whole file: past `min_rows` rows, rejecting more than that share raises
    DataError naming the file and its first bad lines.
    """

    def __init__(self, path: str | os.PathLike | None, *, max_fraction: float = 0.5, min_rows: int = 100) -> None:
        self.path = Path(path) if path is not None else None
        self.max_fraction = max_fraction
        self.min_rows = min_rows
        self.counts: dict[str, int] = {k: 0 for k in LOG_KINDS}
        self.by_reason: dict[str, int] = {}
        self._fh: IO[str] | None = None
        self._file_first: list[str] = []
        self._file_count = 0

    def add(self, kind: str, file: str, line: int, reason: str, raw: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        short = reason.split(":")[0]
        self.by_reason[short] = self.by_reason.get(short, 0) + 1
        self._file_count += 1
        if len(self._file_first) < 3:
            self._file_first.append(f"line {line}: {reason}")
        if self.path is not None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "w", encoding="utf-8")
            self._fh.write(json.dumps({"kind": kind, "file": file, "line": line, "reason": reason,
                                       "raw": raw[:_MAX_RAW_CHARS]}, ensure_ascii=False) + "\n")

    def start_file(self) -> None:
        self._file_count = 0
        self._file_first = []

    def finish_file(self, file: str, rows_seen: int) -> None:
        bad = self._file_count
        if rows_seen >= self.min_rows and bad / rows_seen > self.max_fraction:
            self.close()
            raise DataError(f"{bad} of {rows_seen} rows are malformed (more than {self.max_fraction:.0%}); "
                            f"is the format right? First problems: {'; '.join(self._file_first)}", path=file)

    @property
    def file_rejects(self) -> int:
        """Rows rejected since the last `start_file`."""
        return self._file_count

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------- reading

def resolve_paths(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files of a log: one file, a directory (its log files, sorted), a glob, or a list of those."""
    if isinstance(source, (str, os.PathLike)):
        items = [source]
    else:
        items = list(source)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and _format_of(f, None, strict=False)))
        elif any(ch in str(item) for ch in "*?["):
            out.extend(Path(m) for m in sorted(glob.glob(str(item))))
        elif p.is_file():
            out.append(p)
        else:
            raise DataError("log file or directory does not exist", path=str(p))
    return out


def _format_of(path: Path, fmt: str | None, strict: bool = True) -> str | None:
    if fmt is not None:
        if fmt not in LOG_FORMATS:
            raise DataError(f"unknown log format {fmt!r}; use one of {LOG_FORMATS}", path=str(path))
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    found = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    if found is None and strict:
        raise DataError(f"cannot tell the log format from the file name; pass format= one of {LOG_FORMATS}",
                        path=str(path))
    return found


def _open_text(path: Path) -> IO[str]:
    if path.suffix.lower() == ".gz":
        import gzip
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _jsonl_records(path: Path, kind: str, sink: RejectSink) -> Iterator[tuple[int, dict, str]]:
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                sink.add(kind, str(path), line_no, f"bad JSON: {exc.msg} (column {exc.colno})", line.rstrip("\r\n"))
                continue
            if not isinstance(obj, dict):
                sink.add(kind, str(path), line_no, f"bad JSON: expected an object, got {type(obj).__name__}",
                         line.rstrip("\r\n"))
                continue
            yield line_no, obj, line


def _csv_records(path: Path, kind: str, sink: RejectSink) -> Iterator[tuple[int, dict, str]]:
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.strip() for h in header]
        last = reader.line_num
        for row in reader:
            first_line, last = last + 1, reader.line_num
            raw = ",".join(row)
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                sink.add(kind, str(path), first_line,
                         f"wrong number of columns: {len(row)} instead of {len(header)}", raw)
                continue
            yield first_line, {h: (v if v != "" else None) for h, v in zip(header, row)}, raw


def _parquet_records(path: Path, kind: str, sink: RejectSink) -> Iterator[tuple[int, dict, str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path=str(path)) from None
    row_no = 0
    for batch in pf.iter_batches(batch_size=65_536):
        for rec in batch.to_pylist():
            row_no += 1
            yield row_no, rec, ""


_RECORD_READERS = {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records}


def _raw_text(rec: dict, raw: str) -> str:
    return raw.rstrip("\r\n") if raw else json.dumps(rec, default=str, ensure_ascii=False)


def _as_id(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer():
            value = int(value)
    text = str(value).strip()
    return text or None


def _as_float(value: Any) -> float | None:
    """None for absent; raises ValueError for a present non-number or a negative/NaN number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{value!r} is not a finite number")
    return x


def read_log(source: str | os.PathLike | Sequence[str | os.PathLike], kind: str, sink: RejectSink, *,
             format: str | None = None, numeric_columns: Iterable[str] = ()) -> pa.Table:
    """Read and validate every row of one log kind into an Arrow table.

    Columns: `impression_id` (string), `ts_us` (int64 µs UTC), the schema's
    string and float columns, and for impressions every other column as
    context: strings, except `numeric_columns` (float64). `_file` and `_line`
    say where each row came from. Bad rows go to `sink` and are not returned.
    """
    if kind not in SCHEMAS:
        raise DataError(f"unknown log kind {kind!r}; use one of {LOG_KINDS}")
    schema = SCHEMAS[kind]
    numeric = set(numeric_columns)
    known = set(schema.required) | set(schema.string_columns) | set(schema.float_columns)
    columns: dict[str, list[Any]] = {ID_COLUMN: [], "ts_us": [], "_file": [], "_line": []}
    for c in (*schema.required, *schema.string_columns, *schema.float_columns):
        if c not in (ID_COLUMN, TIME_COLUMN):
            columns[c] = []
    n_kept = 0
    for path in resolve_paths(source):
        fmt = _format_of(path, format)
        sink.start_file()
        parsed = invalid = 0
        for line_no, rec, raw in _RECORD_READERS[fmt](path, kind, sink):
            parsed += 1
            row, problem = _validate(rec, schema, known, numeric)
            if problem is not None:
                invalid += 1
                sink.add(kind, str(path), line_no, problem, _raw_text(rec, raw))
                continue
            for name in row:
                if name not in columns:  # a context column first seen now: pad earlier rows
                    columns[name] = [None] * n_kept
            for name, col in columns.items():
                if name == "_file":
                    col.append(str(path))
                elif name == "_line":
                    col.append(line_no)
                else:
                    col.append(row.get(name))
            n_kept += 1
        # rows rejected while parsing (bad JSON, wrong column count) never reached `parsed`
        sink.finish_file(str(path), parsed + sink.file_rejects - invalid)
    return _to_table(columns, schema, numeric)


def _validate(rec: dict, schema: LogSchema, known: set[str], numeric: set[str]) -> tuple[dict, str | None]:
    row: dict[str, Any] = {}
    for name in schema.required:
        if name == TIME_COLUMN:
            value = rec.get(TIME_COLUMN)
            if value is None or (isinstance(value, str) and not value.strip()):
                return row, f"missing field '{TIME_COLUMN}'"
            try:
                row["ts_us"] = parse_timestamp(value)
            except (ValueError, OverflowError, OSError):
                return row, f"unparsable timestamp in field '{TIME_COLUMN}': {str(value)[:40]!r}"
        else:
            value = _as_id(rec.get(name))
            if value is None:
                return row, f"missing field '{name}'"
            row[name] = value
    for name in schema.string_columns:
        row[name] = _as_id(rec.get(name))
    for name in schema.float_columns:
        try:
            x = _as_float(rec.get(name))
        except (TypeError, ValueError):
            return row, f"field '{name}' is not a number: {str(rec.get(name))[:40]!r}"
        if x is not None and x < 0:
            return row, f"field '{name}' is negative: {x}"
        row[name] = x
    if schema.keeps_context:
        for name, value in rec.items():
            if name in known or name in row:
                continue
            if name in INTERNAL_COLUMNS:
                return row, f"field '{name}' is reserved for the reader"
            if name in numeric:
                try:
                    row[name] = _as_float(value)
                except (TypeError, ValueError):
                    return row, f"numeric field '{name}' is not a number: {str(value)[:40]!r}"
            elif isinstance(value, (dict, list)):
                row[name] = json.dumps(value, sort_keys=True)
            else:
                row[name] = _as_id(value)
    return row, None


def _to_table(columns: dict[str, list[Any]], schema: LogSchema, numeric: set[str]) -> pa.Table:
    arrays: dict[str, pa.Array] = {}
    for name, values in columns.items():
        if name in ("ts_us", "_line"):
            typ: pa.DataType = pa.int64()
        elif name in schema.float_columns or name in numeric:
            typ = pa.float64()
        else:
            typ = pa.string()
        arrays[name] = pa.array(values, type=typ)
    return pa.table(arrays)
