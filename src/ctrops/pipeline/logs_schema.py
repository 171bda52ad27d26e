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
from collections.abc import Callable, Iterable, Sequence
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


@dataclass
class _Parsed:
    """One file after structural parsing: raw columns (text), and where each row came from."""

    columns: dict[str, pa.Array]
    lines: list[int]
    raw: Callable[[int], str]  # raw text of parsed row i, for the reject file
    rows_total: int  # rows in the file, including rows rejected while parsing


def _text(value: Any) -> str | None:
    """Text of one JSON value the way an id or category should read ('7', not '7.0')."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _text_array(values: list) -> pa.Array:
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:  # all numbers (prices, epoch times): let Arrow format them
        inferred = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        inferred = None
    if inferred is not None and (pa.types.is_integer(inferred.type) or pa.types.is_boolean(inferred.type)):
        return inferred.cast(pa.string())
    return pa.array([_text(v) for v in values], type=pa.string())


def _arrow_to_text(col: pa.Array) -> pa.Array:
    """A column parsed by Arrow as text, the way `_text` would write each value."""
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) \
            or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t):
        return pc.cast(col, pa.string())
    return _text_array(col.to_pylist())


_JSON_BLOCK_LINES = 256


def _arrow_block(block: list[bytes]) -> pa.Table | None:
    """Arrow's parse of these lines, or None when any line is bad (or rows do not match lines).

    A one-element block may hold a whole file; the caller then checks the row count itself.
    """
    import pyarrow.json as pj

    try:
        table = pj.read_json(io.BytesIO(b"\n".join(block)), read_options=pj.ReadOptions(use_threads=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if len(block) == 1 or table.num_rows == len(block) else None


def _parse_jsonl(path: Path, kind: str, sink: RejectSink) -> _Parsed:
    """Arrow's JSON reader on the whole file, or block by block when a line is bad.

    Arrow stops at the first bad line without saying which rows it would have
    kept, so a failing block of lines is parsed again line by line in Python,
    which names each bad line; clean blocks stay in Arrow. A dirty file thus
    costs little more than a clean one.
    """
    if path.suffix.lower() == ".gz":
        import gzip
        data = gzip.open(path, "rb").read()
    else:
        data = path.read_bytes()
    physical: list[bytes] = []
    parts: list[tuple[dict[str, pa.Array], list[int]]] = []
    # the usual case, a clean file without blank lines: one Arrow call, row i is line i + 1
    n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    whole = None
    if data.strip() and b"\n\n" not in data and b"\n\r\n" not in data and not data.startswith((b"\n", b"\r")):
        whole = _arrow_block([data])
        if whole is not None and whole.num_rows != n_lines:
            whole = None
    if whole is not None:
        total = n_lines
        parts.append(({n: _arrow_to_text(whole.column(n).combine_chunks()) for n in whole.column_names},
                      list(range(1, n_lines + 1))))
    else:
        physical = data.split(b"\n")
        numbered = [(i + 1, line) for i, line in enumerate(physical) if line.strip()]
        total = len(numbered)
        for start in range(0, total, _JSON_BLOCK_LINES):
            chunk = numbered[start:start + _JSON_BLOCK_LINES]
            table = _arrow_block([line for _, line in chunk])
            if table is not None:
                parts.append(({n: _arrow_to_text(table.column(n).combine_chunks()) for n in table.column_names},
                              [i for i, _ in chunk]))
            else:
                parts.append(_parse_json_lines(chunk, path, kind, sink))
    names: dict[str, None] = {}
    for cols, _ in parts:
        names.update(dict.fromkeys(cols))
    columns = {name: pa.concat_arrays([cols[name] if name in cols else pa.nulls(len(lines), pa.string())
                                       for cols, lines in parts]) if parts else pa.array([], pa.string())
               for name in names}
    lines = [line for _, ls in parts for line in ls]

    def raw(i: int) -> str:
        if not physical:
            physical.extend(data.split(b"\n"))
        return physical[lines[i] - 1].decode("utf-8", errors="replace").rstrip("\r")

    return _Parsed(columns, lines, raw, total)


def _parse_json_lines(chunk: list[tuple[int, bytes]], path: Path, kind: str,
                      sink: RejectSink) -> tuple[dict[str, pa.Array], list[int]]:
    records: list[dict] = []
    lines: list[int] = []
    loads = json.loads
    for line_no, raw in chunk:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        try:
            obj = loads(line)
        except json.JSONDecodeError as exc:
            sink.add(kind, str(path), line_no, f"bad JSON: {exc.msg} (column {exc.colno})", line)
            continue
        if not isinstance(obj, dict):
            sink.add(kind, str(path), line_no, f"bad JSON: expected an object, got {type(obj).__name__}", line)
            continue
        records.append(obj)
        lines.append(line_no)
    names: dict[str, None] = {}
    for rec in records:
        names.update(dict.fromkeys(rec))
    return {name: _text_array([rec.get(name) for rec in records]) for name in names}, lines


def _parse_csv(path: Path, kind: str, sink: RejectSink) -> _Parsed:
    rows: list[list[str]] = []
    lines: list[int] = []
    total = 0
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            return _Parsed({}, [], lambda i: "", 0)
        width = len(header)
        last = reader.line_num
        for row in reader:
            first_line, last = last + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            total += 1
            if len(row) != width:
                sink.add(kind, str(path), first_line, f"wrong number of columns: {len(row)} instead of {width}",
                         ",".join(row))
                continue
            rows.append(row)
            lines.append(first_line)
    columns_t = list(zip(*rows)) if rows else [() for _ in header]
    columns = {name: pa.array(list(col), type=pa.string()) for name, col in zip(header, columns_t)}
    return _Parsed(columns, lines, lambda i: ",".join(rows[i]), total)


def _parse_parquet(path: Path) -> _Parsed:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path=str(path)) from None
    columns: dict[str, pa.Array] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        t = col.type
        if pa.types.is_timestamp(t):
            # epoch microseconds as digits: the timestamp rule reads >= 1e14 as microseconds
            col = pc.cast(pc.cast(col, pa.timestamp("us", tz=t.tz)), pa.int64())
            t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            columns[name] = pc.cast(col, pa.string())
        elif pa.types.is_integer(t) or pa.types.is_null(t):
            columns[name] = pc.cast(col, pa.string())
        else:
            columns[name] = _text_array(col.to_pylist())
    return _Parsed(columns, list(range(1, table.num_rows + 1)),
                   lambda i: json.dumps(table.slice(i, 1).to_pylist()[0], default=str, ensure_ascii=False),
                   table.num_rows)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _validation_sql(schema: LogSchema, present: Sequence[str], numeric: set[str]) -> tuple[str, list[str]]:
    """SELECT turning the raw text columns of `raw` into typed ones plus a `_reason` (NULL = valid row).

    Reasons are checked in a fixed order (required fields, then numbers), so a
    row reports its first problem, as a person reading the line would.
    """
    have = set(present)

    def raw(name: str) -> str:
        return f"NULLIF(trim({_q(name)}), '')" if name in have else "NULL::VARCHAR"

    typed: list[tuple[str, str]] = []  # (output name, expression over the `s` subquery)
    checks: list[str] = []  # CASE branches
    inner: list[str] = ["_row", "_line"]
    for name in schema.required:
        inner.append(f"{raw(name)} AS {_q('r:' + name)}")
        if name == TIME_COLUMN:
            r = _q("r:" + TIME_COLUMN)
            inner.append(f"TRY_CAST({r} AS DOUBLE) AS {_q('n:ts')}")
            inner.append(f"TRY_CAST({r} AS TIMESTAMPTZ) AS {_q('t:ts')}")
            checks.append(f"WHEN {r} IS NULL THEN {_lit(f'missing field {TIME_COLUMN!r}')}")
            checks.append(f"WHEN ts_us IS NULL THEN {_lit(f'unparsable timestamp in field {TIME_COLUMN!r}: ')}"
                          f" || '''' || left({r}, 40) || ''''")
        else:
            checks.append(f"WHEN {_q('r:' + name)} IS NULL THEN {_lit(f'missing field {name!r}')}")
            typed.append((name, _q("r:" + name)))
    for name in schema.float_columns:
        inner.append(f"{raw(name)} AS {_q('r:' + name)}")
        inner.append(f"TRY_CAST({raw(name)} AS DOUBLE) AS {_q('n:' + name)}")
        r, n = _q("r:" + name), _q("n:" + name)
        checks.append(f"WHEN {r} IS NOT NULL AND ({n} IS NULL OR NOT isfinite({n})) THEN "
                      f"{_lit(f'field {name!r} is not a number: ')} || '''' || left({r}, 40) || ''''")
        checks.append(f"WHEN {n} < 0 THEN {_lit(f'field {name!r} is negative: ')} || {n}::VARCHAR")
        typed.append((name, n))
    for name in schema.string_columns:
        inner.append(f"{raw(name)} AS {_q('r:' + name)}")
        typed.append((name, _q("r:" + name)))
    known = set(schema.required) | set(schema.string_columns) | set(schema.float_columns)
    context = [c for c in present if c not in known] if schema.keeps_context else []
    for name in context:
        inner.append(f"{raw(name)} AS {_q('r:' + name)}")
        r = _q("r:" + name)
        if name in INTERNAL_COLUMNS:
            checks.append(f"WHEN {r} IS NOT NULL THEN {_lit(f'field {name!r} is reserved for the reader')}")
            continue
        if name in numeric:
            n = _q("n:" + name)
            inner.append(f"TRY_CAST({r} AS DOUBLE) AS {n}")
            checks.append(f"WHEN {r} IS NOT NULL AND ({n} IS NULL OR NOT isfinite({n})) THEN "
                          f"{_lit(f'numeric field {name!r} is not a number: ')} || '''' || left({r}, 40) || ''''")
            typed.append((name, n))
        else:
            typed.append((name, r))
    for name in numeric:
        if schema.keeps_context and name not in have and name not in known:
            typed.append((name, "NULL::DOUBLE"))
    n_ts, t_ts, r_ts = _q("n:ts"), _q("t:ts"), _q("r:ts")
    ts_expr = (f"CASE WHEN {n_ts} IS NOT NULL THEN (CASE WHEN NOT isfinite({n_ts}) OR {n_ts} < 0 THEN NULL "
               f"WHEN {n_ts} < 1e11 THEN round({n_ts} * 1e6) WHEN {n_ts} < 1e14 THEN round({n_ts} * 1e3) "
               f"ELSE {n_ts} END)::BIGINT "
               f"WHEN regexp_matches({r_ts}, '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}') AND isfinite({t_ts}) "
               f"THEN epoch_us({t_ts}) END")
    middle = f"SELECT *, {ts_expr} AS ts_us FROM (SELECT {', '.join(inner)} FROM raw) s"
    reason = "CASE " + " ".join(checks) + " END" if checks else "NULL::VARCHAR"
    outer = (f"SELECT _row, _line, {reason} AS _reason, {_q('r:' + ID_COLUMN)} AS {ID_COLUMN}, ts_us, "
             + ", ".join(f"{expr} AS {_q(name)}" for name, expr in typed if name != ID_COLUMN)
             + f" FROM ({middle}) m")
    return outer, [name for name, _ in typed if name != ID_COLUMN]


def read_log(source: str | os.PathLike | Sequence[str | os.PathLike], kind: str, sink: RejectSink, *,
             format: str | None = None, numeric_columns: Iterable[str] = ()) -> pa.Table:
    """Read and validate every row of one log kind into an Arrow table.

    Columns: `impression_id` (string), `ts_us` (int64 µs UTC), the schema's
    string and float columns, and for impressions every other column as
    context: strings, except `numeric_columns` (float64). `_file` and `_line`
    say where each row came from. Bad rows go to `sink` and are not returned.

    Python only splits lines and parses JSON/CSV syntax; typing and checks run
    vectorised in DuckDB (TRY_CAST), so a malformed value yields a reason, not
    a lost row. Timestamps follow `parse_timestamp`'s rules.
    """
    import duckdb

    if kind not in SCHEMAS:
        raise DataError(f"unknown log kind {kind!r}; use one of {LOG_KINDS}")
    schema = SCHEMAS[kind]
    numeric = set(numeric_columns)
    tables: list[pa.Table] = []
    con = duckdb.connect(config={"threads": 1})
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        for path in resolve_paths(source):
            fmt = _format_of(path, format)
            sink.start_file()
            if fmt == "jsonl":
                parsed = _parse_jsonl(path, kind, sink)
            elif fmt == "csv":
                parsed = _parse_csv(path, kind, sink)
            else:
                parsed = _parse_parquet(path)
            n = len(parsed.lines)
            raw_table = pa.table({**parsed.columns, "_row": pa.array(range(n), pa.int64()),
                                  "_line": pa.array(parsed.lines, pa.int64())})
            con.register("raw", raw_table)
            sql, _ = _validation_sql(schema, list(parsed.columns), numeric)
            checked = con.sql(sql).to_arrow_table()
            con.unregister("raw")
            reasons = checked.column("_reason")
            if reasons.null_count < checked.num_rows:
                bad_rows = checked.column("_row").to_pylist()
                bad_lines = checked.column("_line").to_pylist()
                for row, line, why in zip(bad_rows, bad_lines, reasons.to_pylist()):
                    if why is not None:
                        sink.add(kind, str(path), line, why, parsed.raw(row))
                import pyarrow.compute as pc
                checked = checked.filter(pc.is_null(reasons))
            sink.finish_file(str(path), parsed.rows_total)
            good = checked.drop_columns(["_row", "_reason"])
            good = good.append_column("_file", pa.array([str(path)] * good.num_rows, pa.string()))
            tables.append(good)
    finally:
        con.close()
    if not tables:
        return _empty_table(schema, numeric)
    return _unify(tables, schema, numeric)


def _empty_table(schema: LogSchema, numeric: set[str]) -> pa.Table:
    cols: dict[str, pa.Array] = {ID_COLUMN: pa.array([], pa.string()), "ts_us": pa.array([], pa.int64()),
                                 "_line": pa.array([], pa.int64()), "_file": pa.array([], pa.string())}
    for name in schema.float_columns:
        cols[name] = pa.array([], pa.float64())
    for name in schema.string_columns + tuple(c for c in schema.required if c not in (ID_COLUMN, TIME_COLUMN)):
        cols[name] = pa.array([], pa.string())
    return pa.table(cols)


def _unify(tables: list[pa.Table], schema: LogSchema, numeric: set[str]) -> pa.Table:
    """Concatenate per-file tables whose context columns may differ (absent columns become null)."""
    fields: dict[str, pa.DataType] = {}
    for t in tables:
        for f in t.schema:
            if f.name not in fields:
                fields[f.name] = f.type
    target = pa.schema([(name, pa.float64() if name in schema.float_columns or name in numeric
                         else typ) for name, typ in fields.items()])
    aligned = []
    for t in tables:
        cols = []
        for f in target:
            if f.name in t.column_names:
                cols.append(t.column(f.name).cast(f.type))
            else:
                cols.append(pa.nulls(t.num_rows, f.type))
        aligned.append(pa.Table.from_arrays(cols, schema=target))
    return pa.concat_tables(aligned)
