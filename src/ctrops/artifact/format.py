"""The `.ctm` model file: one self-describing, memory-mappable weight file.

Layout (all integers little-endian; full specification in docs/model-format.md):

    offset 0   preamble, 64 bytes
               magic            8 bytes  b"\\x89CTM\\r\\n\\x1a\\n"
               format_version   uint32   FORMAT_VERSION
               flags            uint32   0 (reserved)
               header_length    uint64   bytes of the JSON header
               header_sha256    32 bytes sha256 of the JSON header bytes
               reserved         8 bytes  zero
    offset 64  JSON header (UTF-8), then zero padding to a multiple of 64
    sections   raw little-endian arrays, each starting at a multiple of 64

Why this shape: the delivery server maps the file and uses the weight arrays in
place (no parse, no copy, no GC pressure from millions of objects), a reader in
any language needs only a JSON parser and sha256, and the header is
self-checking so `inspect_model` can trust it without touching the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ctrops.artifact.atomic import atomic_local_file
from ctrops.jsonable import to_jsonable
from ctrops.errors import ModelFileError
from ctrops.models.params import MODEL_TYPES, ModelParams

MAGIC = b"\x89CTM\r\n\x1a\n"
FORMAT_VERSION = 1
FORMAT_NAME = "ctrops-model"
PREAMBLE = struct.Struct("<8sIIQ32s8s")
PREAMBLE_SIZE = 64
ALIGNMENT = 64
ENCODER_PREFIX = "encoder."
WEIGHT_DTYPES = {"float32": "<f4", "float16": "<f2"}
# typestrings a section may carry; readers in other languages map exactly these
SECTION_DTYPES = frozenset({"<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8",
                            "|u1", "<u2", "<u4", "<u8", "|b1"})
_HASH_CHUNK = 1 << 24
assert PREAMBLE.size == PREAMBLE_SIZE


@dataclass
class ModelParts:
    """Everything a model file holds, in memory: what `save_model` takes and pruning returns."""

    params: ModelParams
    encoder_header: dict
    encoder_arrays: dict[str, np.ndarray]
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SectionInfo:
    """Where one array lives in the file."""

    name: str
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    sha256: str


@dataclass(frozen=True)
class ModelFileInfo:
    """What `save_model` wrote."""

    path: Path
    nbytes: int
    checksum: str  # sha256 of the JSON header, which commits to every section's sha256
    weight_dtype: str
    sections: tuple[SectionInfo, ...]


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _le(arr: np.ndarray, dtype: str | None = None) -> np.ndarray:
    """C-contiguous little-endian view (copy only when needed)."""
    target = np.dtype(dtype) if dtype else arr.dtype.newbyteorder("<")
    return np.ascontiguousarray(arr, dtype=target)


def _typestr(arr: np.ndarray) -> str:
    return arr.dtype.str


def _sha256(buf: memoryview) -> str:
    h = hashlib.sha256()
    for start in range(0, len(buf), _HASH_CHUNK):
        h.update(buf[start:start + _HASH_CHUNK])
    return h.hexdigest()


def _first_nonfinite(arr: np.ndarray) -> int | None:
    """Index of the first NaN/inf value, or None; a fast sum screens the common all-finite case."""
    flat = arr.reshape(-1)
    if flat.size == 0 or not np.issubdtype(flat.dtype, np.floating):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(flat, dtype=np.float32 if flat.dtype.itemsize <= 4 else np.float64)):
            return None
    step = 1 << 22
    for start in range(0, flat.size, step):
        bad = np.flatnonzero(~np.isfinite(flat[start:start + step]))
        if bad.size:
            return start + int(bad[0])
    return None  # the sum overflowed but every value is finite




def _field_names(params: ModelParams, encoder_header: Mapping[str, Any], metadata: Mapping[str, Any]) -> list[str]:
    """Field names in field-number order, from the encoder header when it has them."""
    spec = encoder_header.get("spec")
    for source in (encoder_header, spec if isinstance(spec, Mapping) else {}, metadata):
        names = source.get("field_names")
        if names is None and isinstance(source.get("fields"), list):
            names = [f.get("name") if isinstance(f, Mapping) else f for f in source["fields"]]
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != params.n_fields:
                raise ModelFileError(f"{len(names)} field names for a model of {params.n_fields} fields")
            return names
    return [f"f{i}" for i in range(params.n_fields)]


def _weight_arrays(params: ModelParams, weight_dtype: str) -> dict[str, np.ndarray]:
    """bias, linear and latent as the little-endian arrays the file stores; refuses NaN/inf."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ModelFileError(f"dtype must be one of {sorted(WEIGHT_DTYPES)}, got {weight_dtype!r}")
    if not math.isfinite(float(params.bias)):
        raise ModelFileError(f"refusing to save a model whose bias is {params.bias}")
    out = {"bias": np.array([float(params.bias)], dtype="<f8")}
    for name in ("linear", "latent"):
        arr = getattr(params, name)
        if arr is None:
            continue
        bad = _first_nonfinite(np.asarray(arr))
        if bad is not None:
            raise ModelFileError(f"refusing to save a model whose {name} weights hold a non-finite value "
                                 f"at flat index {bad}")
        with np.errstate(over="ignore"):  # float16 overflow is reported below, with the value
            stored = _le(np.asarray(arr), WEIGHT_DTYPES[weight_dtype])
        if weight_dtype == "float16":
            bad = _first_nonfinite(stored)
            if bad is not None:
                raise ModelFileError(f"{name} weight {np.asarray(arr).reshape(-1)[bad]} at flat index {bad} "
                                     f"overflows float16 (max 65504); save with dtype='float32'")
        out[name] = stored
    return out


def _plan(header: dict, arrays: dict[str, np.ndarray], *, hash_sections: bool = True
          ) -> tuple[bytes, list[SectionInfo], int]:
    """Serialise the header with final section offsets (offsets depend on the header's own length).

    With hash_sections=False the checksums are placeholders of the same length: the
    layout (and so the file size) is exact without reading the arrays.
    """
    digests = {name: _sha256(memoryview(arr).cast("B")) if hash_sections else "0" * 64
               for name, arr in arrays.items()}
    data_start = _align(PREAMBLE_SIZE + 1024)
    while True:
        sections, pos = [], data_start
        for name, arr in arrays.items():
            sections.append(SectionInfo(name, pos, int(arr.nbytes), _typestr(arr), tuple(int(s) for s in arr.shape),
                                        digests[name]))
            pos = _align(pos + arr.nbytes)
        file_size = sections[-1].offset + sections[-1].nbytes if sections else data_start
        header["sections"] = [{"name": s.name, "offset": s.offset, "nbytes": s.nbytes, "dtype": s.dtype,
                               "shape": list(s.shape), "sha256": s.sha256} for s in sections]
        header["file_size"] = file_size
        blob = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False,
                          default=to_jsonable).encode("utf-8")
        needed = _align(PREAMBLE_SIZE + len(blob))
        if needed == data_start:
            return blob, sections, file_size
        data_start = needed


def save_model(path: str | os.PathLike, params: ModelParams, encoder_header: Mapping[str, Any],
               encoder_arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None, *,
               max_bytes: int | None = None, dtype: str = "float32") -> ModelFileInfo:
    """Write a `.ctm` file atomically (temp file in the same folder, fsync, rename).

    The size guard runs on the planned layout, before any byte is written, so an
    oversized model never reaches the disk or the delivery fleet.
    """
    path = Path(path)
    header, arrays = _layout_inputs(params, encoder_header, encoder_arrays, metadata, dtype)
    try:
        blob, sections, file_size = _plan(header, arrays)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: header is not JSON serialisable: {exc}") from exc
    if max_bytes is not None and file_size > max_bytes:
        raise ModelFileError(f"{path}: model file would be {file_size} bytes, over the limit of {max_bytes} bytes "
                             f"(prune it, store dtype='float16' or raise max_bytes)")
    with atomic_local_file(path) as fh:
        fh.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(blob), hashlib.sha256(blob).digest(), b"\0" * 8))
        fh.write(blob)
        for sec in sections:
            fh.write(b"\0" * (sec.offset - fh.tell()))
            fh.write(memoryview(arrays[sec.name]).cast("B"))
    return ModelFileInfo(path=path, nbytes=file_size, checksum=hashlib.sha256(blob).hexdigest(),
                         weight_dtype=dtype, sections=tuple(sections))


def file_size_of(parts: "ModelParts", dtype: str = "float32") -> int:
    """Exact size in bytes `save_parts` would write, without hashing or writing anything."""
    header, arrays = _layout_inputs(parts.params, parts.encoder_header, parts.encoder_arrays, parts.metadata, dtype)
    return _plan(header, arrays, hash_sections=False)[2]


def _layout_inputs(params: ModelParams, encoder_header: Mapping[str, Any], encoder_arrays: Mapping[str, np.ndarray],
                   metadata: Mapping[str, Any] | None, dtype: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The header dict (without sections) and the arrays exactly as stored."""
    metadata = dict(metadata or {})
    arrays = _weight_arrays(params, dtype)
    for name, arr in encoder_arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "O":
            raise ModelFileError(f"encoder array {name!r} holds Python objects; only numeric arrays are stored")
        stored = _le(arr)
        if stored.dtype.str not in SECTION_DTYPES:
            raise ModelFileError(f"encoder array {name!r} has dtype {arr.dtype}, not one of {sorted(SECTION_DTYPES)}")
        arrays[ENCODER_PREFIX + name] = stored
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_type": params.model_type,
        "n_features": int(params.n_features),
        "n_fields": int(params.n_fields),
        "k": int(params.k),
        "normalize": bool(params.normalize),
        "has_linear": params.linear is not None,
        "weight_dtype": dtype,
        "field_names": _field_names(params, encoder_header, metadata),
        "encoder": dict(encoder_header),
        "params_extra": dict(params.extra),
        "metadata": metadata,
    }
    return header, arrays


def save_parts(path: str | os.PathLike, parts: ModelParts, *, max_bytes: int | None = None,
               dtype: str = "float32") -> ModelFileInfo:
    """`save_model` for a `ModelParts` (what pruning returns)."""
    return save_model(path, parts.params, parts.encoder_header, parts.encoder_arrays, parts.metadata,
                      max_bytes=max_bytes, dtype=dtype)


# ---------------------------------------------------------------- reading


def _read_header(path: Path, head: bytes, file_size: int) -> tuple[dict, bytes, int]:
    """Parse and check preamble + header; returns (header, header bytes, version)."""
    if file_size < PREAMBLE_SIZE or len(head) < PREAMBLE_SIZE:
        raise ModelFileError(f"{path}: {file_size} bytes is too short to be a ctrops model file "
                             f"(the preamble alone is {PREAMBLE_SIZE})")
    magic, version, _flags, header_len, header_sha, _ = PREAMBLE.unpack_from(head)
    if magic != MAGIC:
        raise ModelFileError(f"{path}: not a ctrops model file (magic bytes {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model file format version {version} is not supported "
                             f"(this reader knows version {FORMAT_VERSION})")
    if PREAMBLE_SIZE + header_len > file_size:
        raise ModelFileError(f"{path}: truncated: the header claims {header_len} bytes but the file has "
                             f"{file_size} bytes in all")
    blob = bytes(head[PREAMBLE_SIZE:PREAMBLE_SIZE + header_len])
    if len(blob) != header_len:
        raise ModelFileError(f"{path}: truncated header ({len(blob)} of {header_len} bytes)")
    if hashlib.sha256(blob).digest() != header_sha:
        raise ModelFileError(f"{path}: header checksum mismatch (the header bytes are corrupt)")
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: header is not valid UTF-8 JSON: {exc}") from exc
    _check_header(path, header, file_size)
    return header, blob, version


_REQUIRED = {"format": str, "format_version": int, "model_type": str, "n_features": int, "n_fields": int,
             "k": int, "normalize": bool, "has_linear": bool, "weight_dtype": str, "field_names": list,
             "encoder": dict, "metadata": dict, "sections": list, "file_size": int}


def _check_header(path: Path, header: Any, file_size: int) -> None:
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
    for key, kind in _REQUIRED.items():
        if key not in header:
            raise ModelFileError(f"{path}: header has no {key!r}")
        if not isinstance(header[key], kind) or (kind is int and isinstance(header[key], bool)):
            raise ModelFileError(f"{path}: header {key!r} is {header[key]!r}, expected a {kind.__name__}")
    if header["format"] != FORMAT_NAME or header["format_version"] != FORMAT_VERSION:
        raise ModelFileError(f"{path}: header format {header['format']!r} v{header['format_version']} "
                             f"is not {FORMAT_NAME!r} v{FORMAT_VERSION}")
    if header["model_type"] not in MODEL_TYPES:
        raise ModelFileError(f"{path}: unknown model_type {header['model_type']!r}")
    if header["weight_dtype"] not in WEIGHT_DTYPES:
        raise ModelFileError(f"{path}: unknown weight_dtype {header['weight_dtype']!r}")
    for key in ("n_features", "n_fields", "k"):
        if header[key] < 0:
            raise ModelFileError(f"{path}: header {key!r} is {header[key]}, expected >= 0")
    if len(header["field_names"]) != header["n_fields"] or not all(isinstance(n, str) for n in header["field_names"]):
        raise ModelFileError(f"{path}: header 'field_names' must be {header['n_fields']} strings")
    if header["file_size"] != file_size:
        kind = "truncated" if file_size < header["file_size"] else "has trailing bytes"
        raise ModelFileError(f"{path}: {kind}: the header says {header['file_size']} bytes, "
                             f"the file has {file_size}")
    seen = set()
    for i, sec in enumerate(header["sections"]):
        where = f"{path}: section #{i}"
        if not isinstance(sec, dict) or not {"name", "offset", "nbytes", "dtype", "shape", "sha256"} <= sec.keys():
            raise ModelFileError(f"{where} lacks name/offset/nbytes/dtype/shape/sha256")
        name = sec["name"]
        if name in seen:
            raise ModelFileError(f"{where} repeats the name {name!r}")
        seen.add(name)
        if sec["dtype"] not in SECTION_DTYPES:
            raise ModelFileError(f"{where} ({name}) has unsupported dtype {sec['dtype']!r}")
        shape = sec["shape"]
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ModelFileError(f"{where} ({name}) has an invalid shape {shape!r}")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(sec["dtype"]).itemsize
        off, n = sec["offset"], sec["nbytes"]
        if not isinstance(off, int) or not isinstance(n, int) or n != expected:
            raise ModelFileError(f"{where} ({name}) holds {n} bytes, its shape {shape} of {sec['dtype']} "
                                 f"needs {expected}")
        if off % ALIGNMENT or off < PREAMBLE_SIZE:
            raise ModelFileError(f"{where} ({name}) offset {off} is not a multiple of {ALIGNMENT} past the preamble")
        if off + n > file_size:
            raise ModelFileError(f"{path}: truncated: section {name!r} ends at byte {off + n}, "
                                 f"the file has {file_size} bytes")


def _expected_shapes(header: dict) -> dict[str, tuple[int, ...] | None]:
    n, f, k = header["n_features"], header["n_fields"], header["k"]
    latent = {"ffm": (n, f, k), "fm": (n, k), "lr": None}[header["model_type"]]
    return {"bias": (1,), "linear": (n,) if header["has_linear"] else None, "latent": latent}


class ModelFile:
    """An open `.ctm` file whose arrays are views of one read-only memory map.

    The arrays keep the map alive on their own (NumPy holds the buffer), so a
    caller may keep `params` after dropping the ModelFile; `close()` releases the
    map at once when nothing else still uses it.
    """

    def __init__(self, path: Path, header: dict, header_bytes: bytes, arrays: dict[str, np.ndarray],
                 buffer: mmap.mmap | bytes | None, nbytes: int) -> None:
        self.path = path
        self.header = header
        self.checksum = hashlib.sha256(header_bytes).hexdigest()
        self.nbytes = nbytes
        self.metadata: dict = header["metadata"]
        self.encoder_header: dict = header["encoder"]
        self.encoder_arrays: dict[str, np.ndarray] = {
            name[len(ENCODER_PREFIX):]: arr for name, arr in arrays.items() if name.startswith(ENCODER_PREFIX)}
        self._buffer = buffer
        try:
            self.params = ModelParams(
                model_type=header["model_type"], n_features=header["n_features"], n_fields=header["n_fields"],
                k=header["k"], bias=float(arrays["bias"][0]), linear=arrays.get("linear"),
                latent=arrays.get("latent"), normalize=header["normalize"],
                extra=dict(header.get("params_extra") or {}))
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: header does not describe a valid model: {exc}") from None

    @property
    def field_names(self) -> list[str]:
        return list(self.header["field_names"])

    @property
    def weight_dtype(self) -> str:
        return str(self.header["weight_dtype"])

    def to_parts(self) -> ModelParts:
        return ModelParts(self.params, dict(self.encoder_header), dict(self.encoder_arrays), dict(self.metadata))

    def close(self) -> None:
        """Drop this object's arrays and unmap the file if no array is still in use elsewhere.

        Arrays handed out earlier (e.g. a predictor's params) stay valid: the map
        then closes when the last of them is garbage-collected, never under them.
        """
        buf, self._buffer = self._buffer, None
        self.encoder_arrays = {}
        self.params = None  # type: ignore[assignment]
        if isinstance(buf, mmap.mmap):
            try:
                buf.close()
            except BufferError:
                pass  # arrays handed out earlier still use the map; it closes when they go

    def __enter__(self) -> "ModelFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        p = self.params
        return (f"ModelFile({str(self.path)!r}, {p.model_type}, n_features={p.n_features}, "
                f"n_fields={p.n_fields}, k={p.k}, {self.weight_dtype}, {self.nbytes} bytes)")


def _file_size(path: Path, max_bytes: int | None) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file does not exist") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file: {exc}") from exc
    if not path.is_file():
        raise ModelFileError(f"{path}: is not a regular file")
    if max_bytes is not None and size > max_bytes:
        raise ModelFileError(f"{path}: model file is {size} bytes, over the limit of {max_bytes} bytes")
    return size


def load_model(path: str | os.PathLike, *, mmap: bool = True, verify: bool = True,
               max_bytes: int | None = None) -> ModelFile:
    """Open and validate a model file; arrays are zero-copy views of a memory map when `mmap`.

    Always checked: size limit, magic, version, header checksum and JSON, section
    bounds against the file size, shapes against the model type. With `verify`
    (default) also every section's sha256 and that all weights are finite; this
    reads the whole file once, so a server that trusts a file it verified on
    download may pass verify=False to load in milliseconds.

    float16 files are widened to float32 on load (a copy: such files trade load
    time and zero-copy for half the size on disk and on the wire).
    """
    import mmap as _mmap

    path = Path(path)
    size = _file_size(path, max_bytes)
    if size == 0:
        raise ModelFileError(f"{path}: file is empty")
    try:
        with open(path, "rb") as fh:
            buf: _mmap.mmap | bytes = (_mmap.mmap(fh.fileno(), 0, access=_mmap.ACCESS_READ) if mmap
                                       else fh.read())
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file: {exc}") from exc
    try:
        return _open(path, buf, size, verify)
    except BaseException:
        if isinstance(buf, _mmap.mmap):
            try:
                buf.close()
            except BufferError:
                pass
        raise


def _open(path: Path, buf: mmap.mmap | bytes, size: int, verify: bool) -> ModelFile:
    view = memoryview(buf)
    try:
        header_len = PREAMBLE.unpack_from(view)[3] if size >= PREAMBLE_SIZE else 0
        header, blob, _ = _read_header(path, bytes(view[:PREAMBLE_SIZE + min(header_len, size)]), size)
        expected = _expected_shapes(header)
        sections = {s["name"]: s for s in header["sections"]}
        for name, shape in expected.items():
            if shape is None:
                if name in sections:
                    raise ModelFileError(f"{path}: a {header['model_type']} model with has_linear="
                                         f"{header['has_linear']} must not have a {name!r} section")
                continue
            if name not in sections:
                raise ModelFileError(f"{path}: section {name!r} is missing")
            if tuple(sections[name]["shape"]) != shape:
                raise ModelFileError(f"{path}: section {name!r} has shape {sections[name]['shape']}, "
                                     f"expected {list(shape)}")
            want = "<f8" if name == "bias" else WEIGHT_DTYPES[header["weight_dtype"]]
            if sections[name]["dtype"] != want:
                raise ModelFileError(f"{path}: section {name!r} is {sections[name]['dtype']}, expected {want}")
        if verify:
            for name, sec in sections.items():
                got = _sha256(view[sec["offset"]:sec["offset"] + sec["nbytes"]])
                if got != sec["sha256"]:
                    raise ModelFileError(f"{path}: checksum mismatch in section {name!r} "
                                         f"(bytes {sec['offset']}..{sec['offset'] + sec['nbytes']} are corrupt)")
    finally:
        view.release()
    arrays: dict[str, np.ndarray] = {}
    for name, sec in sections.items():
        count = int(np.prod(sec["shape"], dtype=np.int64))
        arr = np.frombuffer(buf, dtype=np.dtype(sec["dtype"]), count=count, offset=sec["offset"])
        arr = arr.reshape(sec["shape"])
        if name in ("linear", "latent") and verify:
            bad = _first_nonfinite(arr)
            if bad is not None:
                raise ModelFileError(f"{path}: section {name!r} holds a non-finite weight "
                                     f"({arr.reshape(-1)[bad]}) at flat index {bad}")
        if name in ("linear", "latent") and arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        arrays[name] = arr
    if not math.isfinite(float(arrays["bias"][0])):
        raise ModelFileError(f"{path}: bias is {float(arrays['bias'][0])}")
    return ModelFile(path, header, blob, arrays, buf, size)


def inspect_model(path: str | os.PathLike) -> dict[str, Any]:
    """Header summary without reading the arrays (for `ctrops inspect` and manifests)."""
    path = Path(path)
    size = _file_size(path, None)
    try:
        with open(path, "rb") as fh:
            head = fh.read(PREAMBLE_SIZE)
            if len(head) == PREAMBLE_SIZE and head[:8] == MAGIC:
                head += fh.read(min(PREAMBLE.unpack_from(head)[3], size))
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file: {exc}") from exc
    header, blob, version = _read_header(path, head, size)
    return {
        "path": str(path),
        "format_version": version,
        "file_size": size,
        "checksum": hashlib.sha256(blob).hexdigest(),
        "model_type": header["model_type"],
        "n_features": header["n_features"],
        "n_fields": header["n_fields"],
        "k": header["k"],
        "normalize": header["normalize"],
        "has_linear": header["has_linear"],
        "weight_dtype": header["weight_dtype"],
        "field_names": header["field_names"],
        "indexing": header["encoder"].get("indexing"),
        "encoder": header["encoder"],
        "metadata": header["metadata"],
        "sections": [{k: s[k] for k in ("name", "dtype", "shape", "nbytes", "offset")} for s in header["sections"]],
    }
