"""One call from a log file to a FieldMatrix, with a binary cache so re-runs skip parsing.

Tuning and retraining read the same file many times; parsing a large text log
costs far more than memory-mapping the encoded arrays, so the first
`load_dataset` writes them (FieldMatrix.save) under `cache_dir`, keyed by what
determines the result: the input's path, size and modification time, the
format, the spec, the encoder's settings and, when the caller passes an
already fitted encoder, its vocabulary. A fit done during the load is cached
too, so a re-run restores the fitted encoder without reading the file.

Entries are written to a temporary folder and renamed into place, so a crash
or a concurrent run never leaves a half-written entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from ctrops.data.features import FeatureEncoder
from ctrops.data.matrix import FieldMatrix
from ctrops.data.readers import KeyedChunk, Progress, check_format, iter_keyed_chunks, read_libffm
from ctrops.data.rejects import DEFAULT_MAX_REJECT_FRACTION, RejectedRow, RejectLog
from ctrops.data.spec import FieldSpec
from ctrops.errors import ConfigError

log = logging.getLogger(__name__)
CACHE_LAYOUT_VERSION = 1
TWO_PASS_BYTES = 1 << 30


@dataclass
class ReadReport:
    """What a load did: rows kept and rejected, where the rejects went, time, cache use."""

    path: str
    format: str
    rows_read: int
    rows_rejected: int
    reject_path: str | None
    seconds: float
    cache_hit: bool = False
    cache_path: str | None = None
    encoder: FeatureEncoder | None = None
    first_rejects: list[RejectedRow] = field(default_factory=list)
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "rows_read": self.rows_read,
                "rows_rejected": self.rows_rejected, "reject_path": self.reject_path,
                "seconds": round(self.seconds, 4), "cache_hit": self.cache_hit, "cache_path": self.cache_path,
                "message": self.message}


def default_reject_path(path: str | os.PathLike) -> Path:
    """`<input>.rejects.jsonl` beside the input when its folder is writable, else in the temp folder."""
    p = Path(path)
    if "://" not in str(path) and os.access(p.parent if str(p.parent) else ".", os.W_OK):
        return p.with_name(p.name + ".rejects.jsonl")
    return Path(tempfile.gettempdir()) / f"{p.name}.rejects.jsonl"


def identity_size(path: str | os.PathLike) -> int:
    """Size of the input on disk (0 when unknown, e.g. a remote URL)."""
    try:
        return 0 if "://" in str(path) else os.path.getsize(path)
    except OSError:
        return 0


def _file_identity(path: str | os.PathLike) -> dict[str, Any] | None:
    if "://" in str(path):
        return None
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cache_key(identity: dict[str, Any], fmt: str, encoder: FeatureEncoder | None) -> str:
    desc: dict[str, Any] = {"layout": CACHE_LAYOUT_VERSION, "input": identity, "format": fmt}
    if encoder is not None:
        desc["spec"] = encoder.spec.to_dict()
        desc["encoder"] = {k: v for k, v in encoder.get_params().items() if k != "spec"}
        if encoder.is_fitted:
            h = hashlib.sha256(json.dumps(encoder.to_header(), sort_keys=True).encode())
            for name, arr in sorted(encoder.arrays().items()):
                h.update(name.encode())
                h.update(np.ascontiguousarray(arr).tobytes())
            desc["fitted"] = h.hexdigest()
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]


def load_dataset(path: str | os.PathLike, format: str, spec: FieldSpec | None = None,
                 encoder: FeatureEncoder | None = None, cache_dir: str | os.PathLike | None = None,
                 rejects: str | os.PathLike | Literal[False] | None = None, progress: Progress | None = None, *,
                 max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
                 n_threads: int | None = None, n_fields: int | None = None,
                 n_features: int | None = None, two_pass: bool | None = None) -> tuple[FieldMatrix, ReadReport]:
    """Read, encode and (optionally) cache a log file.

    format   "criteo", "csv", "parquet" (encoded with `encoder`) or "libffm"
             (already indexed: loaded as is, n_features = max index + 1).
    encoder  a fitted encoder is used as is; an unfitted one is fitted on this
             file (in place); None fits a default vocab encoder on `spec`
             (the built-in Criteo spec for criteo files), returned in the report.
    rejects  reject file path; None = next to the input (see
             `default_reject_path`), or in the cache folder when caching;
             False = count only, write no file.
    n_threads  native threads for parsing and encoding (default: the CPU count, at most 4).
    n_fields, n_features  LIBFFM only: the model's sizes, so a validation file
             lines up with its training file (an entry beyond them is a DataError).
    two_pass read the file twice (count, then encode into the final arrays) so
             memory holds only the matrix; default: for inputs over 1 GiB.
    """
    t0 = time.perf_counter()
    if n_threads is None:
        n_threads = min(4, os.cpu_count() or 1)
    check_format(format)
    path_s = str(path)
    if format != "libffm":
        if encoder is not None:
            if spec is not None and spec != encoder.spec:
                raise ConfigError("load_dataset got both a spec and an encoder with a different spec; pass one")
            spec = encoder.spec
        elif spec is None:
            if format != "criteo":
                raise ConfigError(f"reading {format} needs a field spec (spec=FieldSpec.from_yaml(...))")
            spec = FieldSpec.criteo()
        if encoder is None:
            encoder = FeatureEncoder(spec)
    identity = _file_identity(path) if cache_dir is not None else None
    if identity is not None and format == "libffm":
        identity = {**identity, "n_fields": n_fields, "n_features": n_features}
    entry: Path | None = None
    if identity is not None and cache_dir is not None:
        entry = Path(cache_dir) / _cache_key(identity, format, encoder)
        hit = _load_entry(entry, encoder)
        if hit is not None:
            X, info = hit
            report = ReadReport(path_s, format, int(info["rows_read"]), int(info["rows_rejected"]),
                                info.get("reject_path"), time.perf_counter() - t0, cache_hit=True,
                                cache_path=str(entry), encoder=encoder, message=info.get("message"))
            return X, report

    if rejects is False:
        reject_path = None
    elif rejects is not None:
        reject_path = Path(rejects)
    elif entry is not None:
        reject_path = entry.with_name(entry.name + ".rejects.jsonl")
    else:
        reject_path = default_reject_path(path)
    rlog = RejectLog(path_s, reject_path, max_fraction=max_reject_fraction)
    fitted_here = False
    try:
        if format == "libffm":
            X = read_libffm(path, rejects=rlog, progress=progress, n_fields=n_fields, n_features=n_features)
        else:
            assert encoder is not None and spec is not None

            def read(log: RejectLog, report_progress: bool = True) -> Iterator[KeyedChunk]:
                return iter_keyed_chunks(path, format, spec, encoder.seed, rejects=log,
                                         progress=progress if report_progress else None, n_threads=n_threads)

            if two_pass is None:
                two_pass = identity_size(path) > TWO_PASS_BYTES
            counter = None if encoder.is_fitted else encoder.partial_counter()
            if two_pass:
                # pass 1 counts rows (and values); pass 2 parses again straight into the matrix,
                # so memory holds the matrix only, never every row's keys
                n_rows = 0
                for chunk in read(rlog):
                    if counter is not None:
                        counter.add(chunk.keys, chunk.weights)
                    n_rows += chunk.n_rows
                if counter is not None:
                    encoder.fit_from_counter(counter)
                    fitted_here = True
                quiet = RejectLog(path_s, None, max_fraction=1.0)   # rejects were recorded in pass 1
                X = encoder.transform_chunks(read(quiet, report_progress=False), n_threads, n_rows=n_rows,
                                             weighted=spec.weight is not None)
            else:
                chunks: list[KeyedChunk] = []
                for chunk in read(rlog):
                    if counter is not None:
                        counter.add(chunk.keys, chunk.weights)
                    chunks.append(chunk)
                if counter is not None:
                    encoder.fit_from_counter(counter)
                    fitted_here = True
                X = encoder.transform_chunks(chunks, n_threads, consume=True)
    finally:
        rlog.close()
    message = None
    if X.n_rows == 0 and rlog.count == 0:
        message = f"{path_s}: no rows (empty file or header only)"
    written = rlog.written_path
    report = ReadReport(path_s, format, X.n_rows, rlog.count, str(written) if written else None,
                        time.perf_counter() - t0, cache_path=str(entry) if entry else None,
                        encoder=encoder, first_rejects=list(rlog.first), message=message)
    if rlog.count:
        log.warning("%s: skipped %d malformed row(s); see %s", path_s, rlog.count, written or "the report")
    if entry is not None:
        _save_entry(entry, X, encoder if fitted_here else None, report)
    return X, report


def _load_entry(entry: Path, encoder: FeatureEncoder | None) -> tuple[FieldMatrix, dict[str, Any]] | None:
    info_path = entry / "entry.json"
    if not info_path.exists():
        return None
    try:
        info = json.loads(info_path.read_text())
        X = FieldMatrix.load(entry / "matrix", mmap=True)
        if encoder is not None and not encoder.is_fitted:
            if not (entry / "encoder").exists():
                return None
            fitted = FeatureEncoder.load(entry / "encoder", mmap=True)
            encoder.table_keys_, encoder.table_values_ = fitted.table_keys_, fitted.table_values_
            encoder.n_features_, encoder.n_kept_ = fitted.n_features_, fitted.n_kept_
            encoder._request_encoder = None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable cache entry %s: %s", entry, exc)
        return None
    return X, info


def _save_entry(entry: Path, X: FieldMatrix, fitted: FeatureEncoder | None, report: ReadReport) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        X.save(tmp / "matrix")
        if fitted is not None:
            fitted.save(tmp / "encoder")
        info = {"rows_read": report.rows_read, "rows_rejected": report.rows_rejected,
                "reject_path": report.reject_path, "message": report.message, "source": report.path}
        (tmp / "entry.json").write_text(json.dumps(info, indent=2))
        try:
            os.rename(tmp, entry)
        except OSError:
            # another run finished the same entry first; theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
