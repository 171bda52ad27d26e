"""Read ad logs in chunks: Criteo TSV, LIBFFM text, CSV with a header, Parquet.

Every reader of raw logs yields `KeyedChunk`s: labels, optional weights and
the key matrix `keys[row, field]` (0 = missing, else the feature key of the
row's token; see tokens.py), plus values for `raw` numeric fields. Hashing at
read time keeps chunks small (8 bytes a cell, whatever the token length) and
is all `FeatureEncoder` needs to count and index values.

Readers are memory-bounded (one chunk of text or one Arrow batch at a time),
open gzip by magic bytes (so `.gz` or not does not matter), accept CRLF, and
skip malformed rows into a `RejectLog` instead of failing the run (which fails
only when most rows are bad; see rejects.py). An empty file or a header
without rows yields nothing and logs a warning naming the file.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from ctrops.data import _parse
from ctrops.data.matrix import FieldMatrix
from ctrops.data.rejects import RejectLog
from ctrops.data.spec import CRITEO_COLUMNS, FieldSpec
from ctrops.data.tokens import categorical_token, raw_feature_key
from ctrops.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("criteo", "libffm", "csv", "parquet")
DEFAULT_CHUNK_BYTES = 8 << 20
DEFAULT_BATCH_ROWS = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"

Progress = Callable[[int, int | None, int], None]
"""progress(bytes_done, bytes_total, rows_read); bytes are of the file on disk."""


@dataclass
class KeyedChunk:
    """Rows of one chunk as feature keys (see module docstring).

    labels  float32 [n]
    keys    uint64  [n, n_fields], 0 = missing
    values  float32 [n, n_fields] or None (all 1.0: no raw numeric field)
    weights float32 [n] or None
    """

    labels: np.ndarray
    keys: np.ndarray
    values: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def empty(cls, n_fields: int) -> "KeyedChunk":
        return cls(np.zeros(0, np.float32), np.zeros((0, n_fields), np.uint64))

    @classmethod
    def concat(cls, chunks: list["KeyedChunk"], n_fields: int) -> "KeyedChunk":
        if not chunks:
            return cls.empty(n_fields)
        if len(chunks) == 1:
            return chunks[0]
        any_values = any(c.values is not None for c in chunks)
        any_weights = any(c.weights is not None for c in chunks)
        return cls(
            labels=np.concatenate([c.labels for c in chunks]),
            keys=np.concatenate([c.keys for c in chunks]),
            values=np.concatenate([c.values if c.values is not None else np.ones(c.keys.shape, np.float32)
                                   for c in chunks]) if any_values else None,
            weights=np.concatenate([c.weights if c.weights is not None else np.ones(c.n_rows, np.float32)
                                    for c in chunks]) if any_weights else None,
        )


# ---------------------------------------------------------------------------
# opening files
# ---------------------------------------------------------------------------

class _Source:
    """A binary stream over a local or fsspec file, gunzipped when it starts with the gzip magic."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        if "://" in self.path:
            import fsspec

            self._raw: IO[bytes] = fsspec.open(self.path, "rb").open()
            try:
                self.size: int | None = int(self._raw.size)  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                self.size = None
        else:
            try:
                self._raw = open(self.path, "rb")
            except OSError as exc:
                raise DataError(f"cannot open input: {exc.strerror}", path=self.path) from None
            self.size = os.fstat(self._raw.fileno()).st_size
        head = self._raw.read(2)
        self._raw.seek(0)
        self.gzipped = head == GZIP_MAGIC
        self.stream: IO[bytes] = gzip.GzipFile(fileobj=self._raw, mode="rb") if self.gzipped else self._raw

    def position(self) -> int:
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self.stream is not self._raw:
            self.stream.close()
        self._raw.close()

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """A readable binary stream of `path`, decompressed if it is gzip (by magic bytes)."""
    return _Source(path).stream


def _line_blocks(src: _Source, chunk_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines (the last may lack its newline)."""
    tail = b""
    while True:
        try:
            block = src.stream.read(chunk_bytes)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"cannot read input (corrupt or truncated compressed file?): {exc}",
                            path=src.path) from None
        if not block:
            if tail:
                yield tail
            return
        buf = tail + block if tail else block
        cut = buf.rfind(b"\n")
        if cut < 0:
            tail = buf
            continue
        if cut == len(buf) - 1:
            tail = b""
            yield buf
        else:
            tail = buf[cut + 1:]
            yield buf[:cut + 1]


def _warn_empty(path: str, what: str) -> None:
    log.warning("%s: %s; nothing to read", path, what)


# ---------------------------------------------------------------------------
# Criteo TSV (native)
# ---------------------------------------------------------------------------

_ROLE_BY_KIND = {("categorical", None): _parse.ROLE_CATEGORICAL, ("numeric", "log2bin"): _parse.ROLE_LOG2BIN,
                 ("numeric", "raw"): _parse.ROLE_RAW}


def _column_plan(columns: tuple[str, ...], spec: FieldSpec, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Role and field number of each positional column; refuses specs naming absent columns."""
    missing = [c for c in (spec.label, *([spec.weight] if spec.weight else []), *spec.field_names)
               if c not in columns]
    if missing:
        raise ConfigError(f"spec names column(s) {missing} that a {fmt} file does not have "
                          f"(its columns are {', '.join(columns)})")
    roles = np.zeros(len(columns), np.int32)
    field_of = np.zeros(len(columns), np.int32)
    for c, name in enumerate(columns):
        if name == spec.label:
            roles[c] = _parse.ROLE_LABEL
        elif name == spec.weight:
            roles[c] = _parse.ROLE_WEIGHT
        elif name in spec._positions:
            f = spec.field_index(name)
            d = spec.fields[f]
            roles[c] = _ROLE_BY_KIND[(d.kind, d.transform)]
            field_of[c] = f
    return roles, field_of


def _missing_tokens(spec: FieldSpec) -> tuple[np.ndarray, np.ndarray]:
    encoded = [m.encode("utf-8") for m in spec.missing_values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encoded]) if encoded else []
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets


def _reject_reason(code: int, detail: int, columns: tuple[str, ...]) -> str:
    if code == _parse.REJECT_COLUMNS:
        return f"expected {len(columns)} columns, found {detail}"
    if code == _parse.REJECT_LABEL:
        if not columns:
            return "bad label (expected 0 or 1, or -1/+1)"
        return f"bad label in column {columns[detail]!r} (expected 0 or 1)"
    if code == _parse.REJECT_NUMBER:
        return f"non-numeric value in field {columns[detail]!r}"
    if code == _parse.REJECT_WEIGHT:
        return f"bad weight in column {columns[detail]!r} (expected a number >= 0)"
    if code == _parse.REJECT_ENTRY:
        return f"bad field:index:value entry #{detail}"
    return f"malformed row (code {code})"


def _record_rejects(rejects: RejectLog, rej: np.ndarray, buf: bytes, columns: tuple[str, ...]) -> None:
    for line, code, detail, start, end in rej.tolist():
        rejects.add(int(line), _reject_reason(int(code), int(detail), columns), buf[start:end])


def iter_criteo(path: str | os.PathLike, spec: FieldSpec | None = None, seed: int = 0, *,
                rejects: RejectLog | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                progress: Progress | None = None, n_threads: int = 1) -> Iterator[KeyedChunk]:
    """Criteo TSV (label, I1..I13, C1..C26; empty = missing) as keyed chunks.

    `spec` names which of those columns are label/weight/fields (default: the
    built-in Criteo spec); columns it does not name are skipped. Each chunk is
    parsed by `n_threads` native threads.
    """
    spec = spec or FieldSpec.criteo()
    rejects = rejects if rejects is not None else RejectLog(str(path))
    roles, field_of = _column_plan(CRITEO_COLUMNS, spec, "criteo")
    raw_keys = np.array([raw_feature_key(f, seed) for f in range(spec.n_fields)], np.uint64)
    mdata, moff = _missing_tokens(spec)
    want_values = any(d.is_raw for d in spec.fields)
    rows = 0
    line = 1
    with _Source(path) as src:
        for buf in _line_blocks(src, chunk_bytes):
            labels, weights, keys, values, rej, n_lines = _parse.parse_delimited(
                buf, roles, field_of, spec.n_fields, seed, raw_keys, mdata, moff, line, 9, want_values, n_threads)
            line += n_lines
            if len(rej):
                _record_rejects(rejects, rej, buf, CRITEO_COLUMNS)
            rows += len(labels)
            rejects.check(rows + rejects.count)
            if progress is not None:
                progress(src.position(), src.size, rows)
            if len(labels):
                yield KeyedChunk(labels, keys, values, weights if spec.weight else None)
    rejects.check(rows + rejects.count, final=True)
    if rows + rejects.count == 0:
        _warn_empty(str(path), "file is empty")


# ---------------------------------------------------------------------------
# LIBFFM text (native), straight to a FieldMatrix
# ---------------------------------------------------------------------------

def read_libffm(path: str | os.PathLike, *, rejects: RejectLog | None = None,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: Progress | None = None,
                n_fields: int | None = None, n_features: int | None = None) -> FieldMatrix:
    """LIBFFM text (`label field:index:value ...`) as a FieldMatrix.

    The entries are already indexed, so they load as they are: n_fields and
    n_features default to the largest field / index + 1 (pass the model's to
    make a validation file line up with a training file).
    """
    rejects = rejects if rejects is not None else RejectLog(str(path))
    parts: list[tuple[np.ndarray, ...]] = []
    rows = 0
    line = 1
    with _Source(path) as src:
        for buf in _line_blocks(src, chunk_bytes):
            labels, indptr, fields, indices, values, rej, n_lines = _parse.parse_libffm(buf, line)
            line += n_lines
            if len(rej):
                _record_rejects(rejects, rej, buf, ())
            rows += len(labels)
            rejects.check(rows + rejects.count)
            if progress is not None:
                progress(src.position(), src.size, rows)
            if len(labels):
                parts.append((labels, indptr, fields, indices, values))
    rejects.check(rows + rejects.count, final=True)
    if rows + rejects.count == 0:
        _warn_empty(str(path), "file is empty")
    labels = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.float32)
    fields = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int32)
    indices = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int32)
    values = np.concatenate([p[4] for p in parts]) if parts else np.zeros(0, np.float32)
    indptr = np.zeros(len(labels) + 1, np.int64)
    at = 0
    for p in parts:
        lengths = np.diff(p[1])
        indptr[at + 1:at + 1 + len(lengths)] = lengths
        at += len(lengths)
    np.cumsum(indptr, out=indptr)
    seen_fields = int(fields.max()) + 1 if len(fields) else 0
    seen_features = int(indices.max()) + 1 if len(indices) else 0
    if n_fields is not None and seen_fields > n_fields:
        raise DataError(f"field number {seen_fields - 1} is out of range for {n_fields} fields", path=str(path))
    if n_features is not None and seen_features > n_features:
        raise DataError(f"feature index {seen_features - 1} is out of range for {n_features} features",
                        path=str(path))
    return FieldMatrix.from_arrays(indptr, fields, indices, values, labels,
                                   n_fields=n_fields if n_fields is not None else seen_fields,
                                   n_features=n_features if n_features is not None else seen_features)


# ---------------------------------------------------------------------------
# CSV and Parquet (Arrow), validated column by column
# ---------------------------------------------------------------------------

@dataclass
class ValidBatch:
    """One Arrow batch checked against a spec: the good rows' label, weight and typed columns."""

    n_rows: int
    labels: np.ndarray                       # float32 [n_good]
    weights: np.ndarray | None               # float32 [n_good]
    numbers: dict[str, tuple[np.ndarray, np.ndarray]]   # numeric field -> (float64, present)
    strings: dict[str, tuple[Any, np.ndarray]]          # categorical field -> (arrow large_string, present)
    extra: dict[str, Any]                    # id / passthrough columns (arrow arrays)


def _as_float(col: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, present, bad) of an Arrow column; bad = present but not a finite number."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    n = len(col)
    present = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
        vals = np.asarray(pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False),
                          dtype=np.float64)
    else:
        text = pc.cast(col, pa.string()) if not pa.types.is_string(col.type) else col
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)  # "" is missing
        present = np.asarray(text.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        try:
            vals = np.asarray(pc.cast(text, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False),
                              dtype=np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            vals = np.full(n, np.nan)
            for i, s in enumerate(text.to_pylist()):
                if s is None:
                    continue
                try:
                    vals[i] = float(s)
                except ValueError:
                    vals[i] = np.inf  # marked bad below
    nan = np.isnan(vals)
    present &= ~nan  # NaN counts as missing
    bad = present & ~np.isfinite(vals)
    return vals, present & ~bad, bad


def _as_strings(col: Any, missing: tuple[str, ...]) -> tuple[Any, np.ndarray]:
    """(large_string Arrow array, present) of a categorical column, with the token rules of tokens.py."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_integer(col.type):
        text = pc.cast(col, pa.large_string())
    else:
        text = pa.array([None if v is None or (isinstance(v, float) and v != v) else categorical_token(v)
                         for v in col.to_pylist()], type=pa.large_string())
    present = text.is_valid()
    present = pc.and_(present, pc.greater(pc.binary_length(text), 0))
    if missing:
        present = pc.and_(present, pc.invert(pc.is_in(text, value_set=pa.array(list(missing), pa.large_string()))))
    return text, np.asarray(present.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def validate_batch(batch: Any, spec: FieldSpec, rejects: RejectLog, line_of: Callable[[np.ndarray], np.ndarray],
                   raw_line: Callable[[int], str]) -> ValidBatch:
    """Check one Arrow batch; rejected rows go to `rejects`, the good rows are returned typed."""
    n = batch.num_rows
    bad = np.zeros(n, dtype=bool)
    reason: dict[int, str] = {}

    def mark(rows: np.ndarray, why: str) -> None:
        for r in np.flatnonzero(rows & ~bad).tolist():
            reason.setdefault(r, why)
        bad[rows] = True

    label, present, nonnum = _as_float(batch.column(spec.label), spec.label)
    mark(~present | nonnum | ~((label == 0) | (label == 1)), f"bad label in column {spec.label!r} (expected 0 or 1)")
    weights = None
    if spec.weight:
        w, wp, wbad = _as_float(batch.column(spec.weight), spec.weight)
        mark(~wp | wbad | (np.where(wp, w, 0) < 0), f"bad weight in column {spec.weight!r} (expected a number >= 0)")
        weights = w
    numbers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    strings: dict[str, tuple[Any, np.ndarray]] = {}
    for d in spec.fields:
        col = batch.column(d.name)
        if d.kind == "numeric":
            if spec.missing_values:
                import pyarrow as pa
                import pyarrow.compute as pc

                if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                    col = pc.if_else(pc.is_in(col, value_set=pa.array(list(spec.missing_values), col.type)),
                                     pa.scalar(None, col.type), col)
            vals, present, nonnum = _as_float(col, d.name)
            mark(nonnum, f"non-numeric value in field {d.name!r}")
            numbers[d.name] = (vals, present)
        else:
            strings[d.name] = _as_strings(col, spec.missing_values)
    if bad.any():
        rows = np.flatnonzero(bad)
        lines = line_of(rows)
        for r, line in zip(rows.tolist(), lines.tolist()):
            rejects.add(int(line), reason[r], raw_line(r))
    good = ~bad
    extra_names = [c for c in (*spec.id_columns, *spec.passthrough) if c in batch.schema.names]
    if not bad.any():  # the common case: nothing to filter, no copies
        return ValidBatch(n_rows=n, labels=label.astype(np.float32),
                          weights=None if weights is None else weights.astype(np.float32),
                          numbers=numbers, strings=strings, extra={c: batch.column(c) for c in extra_names})
    import pyarrow as pa

    take = pa.array(np.flatnonzero(good), type=pa.int64())
    return ValidBatch(
        n_rows=int(good.sum()),
        labels=label[good].astype(np.float32),
        weights=None if weights is None else weights[good].astype(np.float32),
        numbers={k: (v[good], p[good]) for k, (v, p) in numbers.items()},
        strings={k: (a.take(take), p[good]) for k, (a, p) in strings.items()},
        extra={c: batch.column(c).take(take) for c in extra_names},
    )


def keyed_from_valid(vb: ValidBatch, spec: FieldSpec, seed: int) -> KeyedChunk:
    """Keys (and raw values) of a validated batch, hashed natively from Arrow buffers."""
    n, nf = vb.n_rows, spec.n_fields
    keys = np.zeros((n, nf), np.uint64)
    values = np.ones((n, nf), np.float32) if any(d.is_raw for d in spec.fields) else None
    for f, d in enumerate(spec.fields):
        if d.kind == "categorical":
            arr, present = vb.strings[d.name]
            arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
            bufs = arr.buffers()
            offsets = np.frombuffer(bufs[1], np.int64)[arr.offset:arr.offset + n + 1]
            data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
            _parse.string_column_keys(keys, f, f, np.ascontiguousarray(offsets), data,
                                      present.astype(np.uint8), seed)
        else:
            vals, present = vb.numbers[d.name]
            if d.transform == "log2bin":
                _parse.number_column_keys(keys, f, f, np.ascontiguousarray(vals), present.astype(np.uint8), seed)
            else:
                keys[present, f] = np.uint64(raw_feature_key(f, seed))
                assert values is not None
                values[present, f] = vals[present]
    return KeyedChunk(vb.labels, keys, values, vb.weights)


def _csv_header(src: _Source, delimiter: str) -> list[str] | None:
    first = src.stream.readline()
    if not first.strip():
        return None
    text = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    return next(csv.reader([text], delimiter=delimiter))


def _open_csv(stream: IO[bytes], header: list[str], chunk_bytes: int, delimiter: str,
              on_invalid: Callable[[Any], str], wanted: list[str]) -> Any:
    """Arrow's streaming CSV reader with every wanted column as text (typed later, row by row)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # column names are given explicitly, so the reader starts right after the header line
    return pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=header, block_size=chunk_bytes, use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid,
                                         quote_char='"' if delimiter != "\t" else False),
        convert_options=pacsv.ConvertOptions(
            include_columns=wanted, column_types={c: pa.string() for c in wanted},
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True))


def iter_csv_batches(path: str | os.PathLike, spec: FieldSpec, *, rejects: RejectLog | None = None,
                     delimiter: str = ",", columns: tuple[str, ...] | None = None,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: Progress | None = None
                     ) -> Iterator[ValidBatch]:
    """Validated batches of a delimited file with a header (or `columns` naming a header-less one)."""
    import pyarrow as pa

    rejects = rejects if rejects is not None else RejectLog(str(path))
    with _Source(path) as src:
        header = list(columns) if columns is not None else _csv_header(src, delimiter)
        if header is None:
            _warn_empty(str(path), "file is empty")
            return
        wanted = list(dict.fromkeys(spec.columns))
        absent = [c for c in wanted if c not in header]
        if absent:
            raise ConfigError(f"{path}: spec column(s) {absent} are not in the file's header "
                              f"({', '.join(header)})")
        invalid_lines: list[int] = []
        header_lines = 0 if columns is not None else 1

        def on_invalid(row: Any) -> str:
            line = (row.number or 0) + header_lines
            invalid_lines.append(line)
            rejects.add(line, f"expected {row.expected_columns} columns, found {row.actual_columns}", row.text)
            return "skip"

        try:
            reader = _open_csv(src.stream, header, chunk_bytes, delimiter, on_invalid, wanted)
        except pa.ArrowInvalid as exc:
            if "Empty CSV" in str(exc):
                _warn_empty(str(path), "file has a header but no rows")
                return
            raise DataError(f"cannot parse as {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}",
                            path=str(path)) from None
        good_before = 0
        rows_total = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise DataError(f"cannot parse as {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}",
                                path=str(path)) from None
            n = batch.num_rows
            bad_sorted = np.array(sorted(invalid_lines), dtype=np.int64)

            def line_of(rows: np.ndarray, base: int = rows_total, bad_sorted: np.ndarray = bad_sorted) -> np.ndarray:
                # physical line = header + ordinal among data rows + invalid lines skipped before it
                out = np.empty(len(rows), np.int64)
                for i, r in enumerate(rows.tolist()):
                    line = header_lines + base + r + 1
                    k = 0
                    while True:
                        k2 = int(np.searchsorted(bad_sorted, line + k, side="right"))
                        if k2 == k:
                            break
                        k = k2
                    out[i] = line + k
                return out

            def raw_line(r: int, batch: Any = batch) -> str:
                return delimiter.join("" if v is None else str(v)
                                      for v in (batch.column(c)[r].as_py() for c in batch.schema.names))

            vb = validate_batch(batch, spec, rejects, line_of, raw_line)
            rows_total += n
            good_before += vb.n_rows
            rejects.check(good_before + rejects.count)
            if progress is not None:
                progress(src.position(), src.size, good_before)
            if vb.n_rows:
                yield vb
        rejects.check(good_before + rejects.count, final=True)
        if good_before + rejects.count == 0:
            _warn_empty(str(path), "file has a header but no rows")


def iter_parquet_batches(path: str | os.PathLike, spec: FieldSpec, *, rejects: RejectLog | None = None,
                         batch_rows: int = DEFAULT_BATCH_ROWS, progress: Progress | None = None
                         ) -> Iterator[ValidBatch]:
    """Validated batches of a Parquet file, reading only the spec's columns (line = 1-based row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rejects = rejects if rejects is not None else RejectLog(str(path))
    if "://" not in str(path) and os.path.getsize(path) == 0:
        _warn_empty(str(path), "file is empty")
        return
    try:
        pf = pq.ParquetFile(str(path)) if "://" not in str(path) else pq.ParquetFile(open_binary(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path=str(path)) from None
    names = pf.schema_arrow.names
    wanted = list(dict.fromkeys(spec.columns))
    absent = [c for c in wanted if c not in names]
    if absent:
        raise ConfigError(f"{path}: spec column(s) {absent} are not in the Parquet schema ({', '.join(names)})")
    base = 0
    good = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
        vb = validate_batch(batch, spec, rejects, lambda rows, b=base: rows + b + 1,
                            lambda r, b=batch: str({c: b.column(c)[r].as_py() for c in b.schema.names}))
        base += batch.num_rows
        good += vb.n_rows
        rejects.check(good + rejects.count)
        if progress is not None:
            total_rows = max(1, pf.metadata.num_rows)
            size = None if "://" in str(path) else os.path.getsize(path)
            progress(int((size or total_rows) * base / total_rows), size, good)
        if vb.n_rows:
            yield vb
    rejects.check(good + rejects.count, final=True)
    if base == 0:
        _warn_empty(str(path), "file has no rows")


def iter_valid_batches(path: str | os.PathLike, fmt: str, spec: FieldSpec, *, rejects: RejectLog | None = None,
                       progress: Progress | None = None) -> Iterator[ValidBatch]:
    """Validated raw columns of a criteo/csv/parquet file (for writing other formats)."""
    if fmt == "criteo":
        return iter_csv_batches(path, spec, rejects=rejects, delimiter="\t", columns=CRITEO_COLUMNS,
                                progress=progress)
    if fmt == "csv":
        return iter_csv_batches(path, spec, rejects=rejects, progress=progress)
    if fmt == "parquet":
        return iter_parquet_batches(path, spec, rejects=rejects, progress=progress)
    raise ConfigError(f"format {fmt!r} has no raw columns to read (use one of criteo, csv, parquet)")


def iter_keyed_chunks(path: str | os.PathLike, fmt: str, spec: FieldSpec, seed: int = 0, *,
                      rejects: RejectLog | None = None, progress: Progress | None = None,
                      n_threads: int = 1) -> Iterator[KeyedChunk]:
    """Keyed chunks of a criteo/csv/parquet file under `spec` (LIBFFM is already indexed: `read_libffm`)."""
    check_format(fmt)
    if fmt == "criteo":
        yield from iter_criteo(path, spec, seed, rejects=rejects, progress=progress, n_threads=n_threads)
        return
    if fmt == "libffm":
        raise ConfigError("LIBFFM text is already indexed; read it with read_libffm (or load_dataset)")
    for vb in iter_valid_batches(path, fmt, spec, rejects=rejects, progress=progress):
        yield keyed_from_valid(vb, spec, seed)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def __getattr__(name: str) -> Any:
    # load_dataset lives in dataset.py (it needs the encoder); reachable here for convenience
    if name in ("load_dataset", "ReadReport"):
        from ctrops.data import dataset

        return getattr(dataset, name)
    raise AttributeError(name)
