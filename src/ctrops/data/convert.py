"""The engine of `ctrops convert`: move a log between Criteo TSV, CSV, Parquet and LIBFFM text.

LIBFFM output is encoded (`label field:index:value`), so the encoder that
produced the indices is written beside it (`<out>.encoder/`): without it the
file cannot be lined up with the values a server sees. Parquet output keeps
raw values (label, weight, typed feature columns, ids), validated by the same
rules as training reads. LIBFFM input cannot go back to raw formats: its
entries are feature numbers, the values they stood for are gone.
"""

from __future__ import annotations

import gzip
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from ctrops.data import _parse
from ctrops.data.dataset import load_dataset
from ctrops.data.features import FeatureEncoder, Indexing
from ctrops.data.readers import FORMATS, Progress, check_format, iter_valid_batches
from ctrops.data.rejects import RejectLog
from ctrops.data.spec import FieldSpec
from ctrops.errors import ConfigError

SUPPORTED = {("criteo", "libffm"), ("csv", "libffm"), ("parquet", "libffm"),
             ("criteo", "parquet"), ("csv", "parquet")}
_ROWS_PER_WRITE = 1 << 16


@dataclass
class ConvertReport:
    input: str
    output: str
    from_format: str
    to_format: str
    rows_written: int
    rows_rejected: int
    reject_path: str | None
    seconds: float
    encoder_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def convert(input: str | os.PathLike, from_format: str, to_format: str, out: str | os.PathLike, *,
            spec: FieldSpec | None = None, encoder: FeatureEncoder | None = None, indexing: Indexing = "vocab",
            min_count: int = 10, hash_space: int = 1_000_000, seed: int = 0,
            rejects: str | os.PathLike | Literal[False] | None = None,
            encoder_out: str | os.PathLike | Literal[False] | None = None,
            progress: Progress | None = None) -> ConvertReport:
    """Convert `input` (from_format) to `out` (to_format); `out` ending in .gz is gzip-compressed text.

    For LIBFFM output a fitted `encoder` is used as is; otherwise one is
    fitted on the input with indexing/min_count/hash_space/seed and saved to
    `encoder_out` (default `<out>.encoder`). Malformed input rows go to
    `rejects` (default `<out>.rejects.jsonl`).
    """
    t0 = time.perf_counter()
    check_format(from_format)
    check_format(to_format)
    if from_format == "libffm":
        raise ConfigError("cannot convert from libffm: its entries are already feature numbers and the raw "
                          "values they stood for are gone; convert the original criteo/csv/parquet log instead")
    if (from_format, to_format) not in SUPPORTED:
        pairs = ", ".join(f"{a}->{b}" for a, b in sorted(SUPPORTED))
        raise ConfigError(f"conversion {from_format}->{to_format} is not supported (supported: {pairs})")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    reject_path = None if rejects is False else Path(rejects) if rejects else out_path.with_name(
        out_path.name + ".rejects.jsonl")
    if encoder is not None:
        spec = encoder.spec
    elif spec is None:
        if from_format != "criteo":
            raise ConfigError(f"converting {from_format} needs a field spec (--spec spec.yaml)")
        spec = FieldSpec.criteo()

    if to_format == "libffm":
        enc = encoder or FeatureEncoder(spec, indexing=indexing, min_count=min_count, hash_space=hash_space,
                                        seed=seed)
        X, rep = load_dataset(input, from_format, encoder=enc, rejects=reject_path if reject_path else False,
                              progress=progress)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        with _open_text_out(tmp) as fh:
            for start in range(0, X.n_rows, _ROWS_PER_WRITE):
                part = X.take(slice(start, min(X.n_rows, start + _ROWS_PER_WRITE)))
                fh.write(_parse.format_libffm(part.indptr, part.fields, part.indices, part.values, part.labels))
        os.replace(tmp, out_path)
        enc_path = None
        if encoder_out is not False:
            enc_path = str(enc.save(Path(encoder_out) if encoder_out else out_path.with_name(out_path.name + ".encoder")))
        return ConvertReport(str(input), str(out_path), from_format, to_format, X.n_rows, rep.rows_rejected,
                             rep.reject_path, time.perf_counter() - t0, enc_path)

    # -> parquet: validated raw columns
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rlog = RejectLog(str(input), reject_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = None
    rows = 0
    schema = _parquet_schema(spec)
    try:
        for vb in iter_valid_batches(input, from_format, spec, rejects=rlog, progress=progress):
            cols: dict[str, Any] = {spec.label: pa.array(vb.labels.astype(np.int8))}
            if spec.weight:
                cols[spec.weight] = pa.array(vb.weights)
            for d in spec.fields:
                if d.kind == "numeric":
                    vals, present = vb.numbers[d.name]
                    cols[d.name] = pa.array(vals, mask=~present, type=pa.float64())
                else:
                    arr, present = vb.strings[d.name]
                    cols[d.name] = pc.if_else(pa.array(present), arr,
                                              pa.scalar(None, arr.type)).cast(pa.string())
            for name, arr in vb.extra.items():
                cols[name] = arr.cast(pa.string())
            table = pa.table({f.name: cols[f.name] for f in schema}, schema=schema)
            if writer is None:
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:
            writer = pq.ParquetWriter(tmp, schema)
        writer.close()
        writer = None
        os.replace(tmp, out_path)
    finally:
        if writer is not None:
            writer.close()
        rlog.close()
        if tmp.exists():
            tmp.unlink()
    written = rlog.written_path
    return ConvertReport(str(input), str(out_path), from_format, to_format, rows, rlog.count,
                         str(written) if written else None, time.perf_counter() - t0)


def _parquet_schema(spec: FieldSpec) -> Any:
    import pyarrow as pa

    fields = [pa.field(spec.label, pa.int8(), nullable=False)]
    if spec.weight:
        fields.append(pa.field(spec.weight, pa.float32()))
    for d in spec.fields:
        fields.append(pa.field(d.name, pa.float64() if d.kind == "numeric" else pa.string()))
    for name in (*spec.id_columns, *spec.passthrough):
        fields.append(pa.field(name, pa.string()))
    return pa.schema(fields)


def _open_text_out(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz.tmp") or path.suffix == ".gz":
        return gzip.open(path, "wb", compresslevel=5)
    return open(path, "wb")


__all__ = ["convert", "ConvertReport", "SUPPORTED", "FORMATS"]
