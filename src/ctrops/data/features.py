"""Raw values -> field-aware feature indices, identically in training and serving.

`FeatureEncoder` learns which values are frequent enough to get their own
feature, then maps rows (training) and request dicts (serving) to the index
layout fixed in docs/contracts.md:

    field f missing        -> 2f
    field f rare / unseen  -> 2f + 1
    vocab indexing         -> 2*n_fields + rank of (field, key) among kept keys
    hash indexing          -> 2*n_fields + key % hash_space

Kept values are found through an open-addressing table (keys uint64,
values int32, capacity a power of two >= 2 * kept, slot = key & (capacity-1),
linear probing, key 0 = empty, a real key 0 stored as 1) that the model file
stores as `vocab_keys` / `vocab_values` and the server memory-maps. In hash
mode the table holds the kept keys with their hashed index, so rare values
still go to the rare index; with `min_count <= 1` hash mode needs no table and
every value hashes (the classic hashing trick).

Every row encodes to exactly one entry per field, in field order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from ctrops.data import _parse
from ctrops.data._hashing import feature_key
from ctrops.data.matrix import FieldMatrix
from ctrops.data.readers import KeyedChunk
from ctrops.data.spec import FieldSpec
from ctrops.data.tokens import categorical_token, log2bin_token, raw_feature_key, stored_key
from ctrops.errors import ConfigError, DataError, ModelFileError

Indexing = Literal["vocab", "hash"]
HEADER_FORMAT = "ctrops-encoder/1"
TABLE_KEYS = "vocab_keys"
TABLE_VALUES = "vocab_values"
_MAX_INDEX = 2**31 - 1
_KINDS = {("categorical", None): _parse.KIND_CATEGORICAL, ("numeric", "log2bin"): _parse.KIND_LOG2BIN,
          ("numeric", "raw"): _parse.KIND_RAW}


class RequestEntries(NamedTuple):
    """Entries of one request: a shared context part and one part per candidate.

    Candidate c's row is the context entries plus cand_*[cand_indptr[c]:cand_indptr[c+1]];
    together they hold exactly one entry per field.
    """

    ctx_fields: np.ndarray     # int32
    ctx_indices: np.ndarray    # int32
    ctx_values: np.ndarray     # float32
    cand_indptr: np.ndarray    # int64 [n_candidates + 1]
    cand_fields: np.ndarray    # int32
    cand_indices: np.ndarray   # int32
    cand_values: np.ndarray    # float32

    @property
    def n_candidates(self) -> int:
        return len(self.cand_indptr) - 1


def table_capacity(n_keys: int) -> int:
    """Smallest power of two >= 2 * n_keys (at least 8): probe runs stay short."""
    need = max(8, 2 * n_keys)
    return 1 << (need - 1).bit_length()


class FeatureEncoder:
    """Fit a vocabulary (or hash layout) on keyed rows; transform rows and requests.

    indexing   "vocab": one feature per value seen >= min_count times; "hash":
               2*n_fields + key % hash_space (values seen < min_count still go
               to the rare index when min_count > 1).
    min_count  occurrences (summed row weights) a value needs in `fit`.
    seed       feature-key seed; changing it changes every key.
    Learned: table_keys_, table_values_, n_features_, n_kept_.
    """

    def __init__(self, spec: FieldSpec, indexing: Indexing = "vocab", min_count: int = 10,
                 hash_space: int = 1_000_000, seed: int = 0) -> None:
        self.spec = spec
        self.indexing = indexing
        self.min_count = min_count
        self.hash_space = hash_space
        self.seed = seed
        self._request_encoder: Any = None

    # -- hyper-parameters --------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {"spec": self.spec, "indexing": self.indexing, "min_count": self.min_count,
                "hash_space": self.hash_space, "seed": self.seed}

    def _validate(self) -> None:
        if not isinstance(self.spec, FieldSpec):
            raise ConfigError(f"spec must be a FieldSpec, got {type(self.spec).__name__}")
        if self.indexing not in ("vocab", "hash"):
            raise ConfigError(f"indexing must be 'vocab' or 'hash', got {self.indexing!r}")
        if int(self.min_count) != self.min_count or self.min_count < 0:
            raise ConfigError(f"min_count must be an integer >= 0, got {self.min_count!r}")
        if self.indexing == "hash" and not 0 < self.hash_space <= _MAX_INDEX - 2 * self.spec.n_fields:
            raise ConfigError(f"hash_space must be in [1, {_MAX_INDEX - 2 * self.spec.n_fields}], "
                              f"got {self.hash_space!r}")
        if not 0 <= int(self.seed) < 2**64:
            raise ConfigError(f"seed must be in [0, 2**64), got {self.seed!r}")

    # -- views -------------------------------------------------------------------
    @property
    def field_names(self) -> tuple[str, ...]:
        return self.spec.field_names

    @property
    def n_fields(self) -> int:
        return self.spec.n_fields

    def field_index(self, name: str) -> int:
        return self.spec.field_index(name)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "n_features_")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ConfigError("this FeatureEncoder is not fitted: call fit() or build it with from_header()")

    # -- input normalisation -------------------------------------------------------
    def keyed(self, data: Any) -> Iterable[KeyedChunk]:
        """Keyed chunks of `data`: a KeyedChunk, an iterable of them, an Arrow table/batch, or dict rows."""
        if isinstance(data, KeyedChunk):
            return [data]
        if _is_arrow(data):
            from ctrops.data.readers import RejectLog, keyed_from_valid, validate_batch

            batches = data.to_batches() if hasattr(data, "to_batches") else [data]
            rejects = RejectLog("<table>")
            out = []
            base = 0
            for b in batches:
                vb = validate_batch(b, self.spec, rejects, lambda rows, base=base: rows + base + 1, lambda r: "")
                base += b.num_rows
                out.append(keyed_from_valid(vb, self.spec, self.seed))
            if rejects.count:
                r = rejects.first[0]
                raise DataError(f"{rejects.count} invalid rows, first at row {r.line}: {r.reason}")
            return out
        if isinstance(data, Sequence) and (len(data) == 0 or isinstance(data[0], Mapping)):
            return [self.keyed_rows(data)]
        return data  # an iterable of KeyedChunk

    def keyed_rows(self, rows: Sequence[Mapping[str, Any]]) -> KeyedChunk:
        """Keys of dict rows by the reference token rules (slow; for small inputs and tests).

        A row without the label column gets label 0.
        """
        spec, seed = self.spec, self.seed
        n, nf = len(rows), spec.n_fields
        keys = np.zeros((n, nf), np.uint64)
        values = np.ones((n, nf), np.float32) if any(d.is_raw for d in spec.fields) else None
        labels = np.zeros(n, np.float32)
        weights = np.ones(n, np.float32) if spec.weight else None
        missing = set(spec.missing_values)
        for r, row in enumerate(rows):
            y = row.get(spec.label)
            if y is not None:
                labels[r] = float(y)
            if weights is not None and row.get(spec.weight) is not None:
                weights[r] = float(row[spec.weight])  # type: ignore[index]
            for f, d in enumerate(spec.fields):
                v = row.get(d.name)
                key, value = _reference_key(f, d.kind, d.transform, v, missing, seed, d.name)
                keys[r, f] = key
                if values is not None and value is not None:
                    values[r, f] = value
        return KeyedChunk(labels, keys, values, weights)

    # -- fit ---------------------------------------------------------------------
    def fit(self, data: Any) -> "FeatureEncoder":
        """Count values in `data` (see `keyed`) and build the index layout."""
        self._validate()
        counter = _parse.KeyCounter()
        for chunk in self.keyed(data):
            self._check_chunk(chunk)
            counter.add(chunk.keys, chunk.weights)
        self._fit_counts(*counter.items())
        return self

    def partial_counter(self) -> Any:
        """A fresh native counter; feed it `add(chunk.keys, chunk.weights)` then call `fit_from_counter`."""
        return _parse.KeyCounter()

    def fit_from_counter(self, counter: Any) -> "FeatureEncoder":
        self._validate()
        self._fit_counts(*counter.items())
        return self

    def _fit_counts(self, keys: np.ndarray, fields: np.ndarray, counts: np.ndarray) -> None:
        nf = self.spec.n_fields
        keep = counts >= self.min_count
        kept_keys, kept_fields = keys[keep], fields[keep]
        order = np.lexsort((kept_keys, kept_fields))
        kept_keys = np.ascontiguousarray(kept_keys[order])
        n_kept = len(kept_keys)
        if self.indexing == "vocab":
            if 2 * nf + n_kept > _MAX_INDEX:
                raise ConfigError(f"{n_kept} kept values exceed the int32 feature index; raise min_count")
            values = (2 * nf + np.arange(n_kept)).astype(np.int32)
            n_features = 2 * nf + n_kept
        else:
            values = (2 * nf + (kept_keys % np.uint64(self.hash_space))).astype(np.int32)
            n_features = 2 * nf + int(self.hash_space)
        if self.indexing == "hash" and self.min_count <= 1:
            tk, tv = np.zeros(0, np.uint64), np.zeros(0, np.int32)
        else:
            tk, tv = _parse.build_table(kept_keys, values, table_capacity(n_kept))
        self.table_keys_: np.ndarray = tk
        self.table_values_: np.ndarray = tv
        self.n_kept_ = int(n_kept)
        self.n_features_ = int(n_features)
        self._request_encoder = None

    def _check_chunk(self, chunk: KeyedChunk) -> None:
        if chunk.keys.ndim != 2 or chunk.keys.shape[1] != self.spec.n_fields:
            raise DataError(f"a chunk has key matrix of shape {chunk.keys.shape}; this spec has "
                            f"{self.spec.n_fields} fields (was it read with another spec?)")

    # -- transform -------------------------------------------------------------------
    def transform_chunk(self, chunk: KeyedChunk, n_threads: int = 1, out_indices: np.ndarray | None = None,
                        out_values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(indices int32 [n*n_fields], values float32 [n*n_fields]) of one keyed chunk, row-major.

        With `out_indices` / `out_values` (views into a larger matrix) the
        entries are written in place, which spares a concatenation.
        """
        self._check_fitted()
        self._check_chunk(chunk)
        keys = np.ascontiguousarray(chunk.keys, dtype=np.uint64)
        values = None if chunk.values is None else np.ascontiguousarray(chunk.values, dtype=np.float32)
        return _parse.encode_keys(keys, values, self.table_keys_, self.table_values_,
                                  int(self.hash_space) if self.indexing == "hash" else 0, n_threads,
                                  out_indices, out_values)

    def transform_chunks(self, chunks: list[KeyedChunk] | Iterable[KeyedChunk], n_threads: int = 1, *,
                         consume: bool = False, n_rows: int | None = None,
                         weighted: bool | None = None) -> FieldMatrix:
        """FieldMatrix of keyed chunks, encoded straight into the final arrays.

        A list with `consume=True` is emptied as it goes, so each key matrix is
        freed once encoded. Any other iterable is streamed when `n_rows` (its
        exact row count, e.g. from a counting pass) is given: then only the
        matrix is ever held, whatever the input size. `weighted` says whether
        to keep row weights when it cannot be read off a list.
        """
        self._check_fitted()
        nf = self.spec.n_fields
        if isinstance(chunks, list) and not consume:
            chunks = list(chunks)
        if n_rows is None:
            chunks = chunks if isinstance(chunks, list) else list(chunks)
            n_rows = sum(c.n_rows for c in chunks)
        if weighted is None:
            weighted = isinstance(chunks, list) and any(c.weights is not None for c in chunks)
        n = n_rows
        indices = np.empty(n * nf, np.int32)
        values = np.empty(n * nf, np.float32)
        labels = np.empty(n, np.float32)
        weights = np.ones(n, np.float32) if weighted else None
        if isinstance(chunks, list):
            chunks.reverse()

            def drain() -> Iterable[KeyedChunk]:
                while chunks:
                    yield chunks.pop()
            source: Iterable[KeyedChunk] = drain()
        else:
            source = chunks
        at = 0
        for chunk in source:
            self._check_chunk(chunk)
            m = chunk.n_rows
            if at + m > n:
                raise DataError(f"the input has more than the announced {n} rows (did it change while read?)")
            self.transform_chunk(chunk, n_threads, indices[at * nf:(at + m) * nf], values[at * nf:(at + m) * nf])
            labels[at:at + m] = chunk.labels
            if weights is not None and chunk.weights is not None:
                weights[at:at + m] = chunk.weights
            at += m
            del chunk
        if at != n:
            raise DataError(f"the input has {at} rows, not the announced {n} (did it change while read?)")
        return FieldMatrix.from_arrays(
            indptr=np.arange(0, n * nf + 1, nf, dtype=np.int64) if nf else np.zeros(n + 1, np.int64),
            fields=np.tile(np.arange(nf, dtype=np.int32), n), indices=indices, values=values, labels=labels,
            n_fields=nf, n_features=self.n_features_, weights=weights)

    def transform(self, data: Any, n_threads: int = 1) -> FieldMatrix:
        """FieldMatrix of `data` (see `keyed`): one entry per field per row."""
        self._check_fitted()
        chunks = list(self.keyed(data))
        for chunk in chunks:
            self._check_chunk(chunk)
        return self.transform_chunks(chunks, n_threads, consume=True)

    def fit_transform(self, data: Any, n_threads: int = 1) -> FieldMatrix:
        chunks = list(self.keyed(data))
        return self.fit(chunks).transform(chunks, n_threads)

    # -- request path ------------------------------------------------------------------
    def encode_request(self, context: Mapping[str, Any] | None,
                       candidates: Sequence[Mapping[str, Any]]) -> RequestEntries:
        """Entries of one context and N candidates of raw values (native).

        A field absent from a dict is missing; a field given in both the
        context and a candidate takes the candidate's value for that
        candidate. Names that are not fields (ids, the label) are ignored.
        Equal to `transform` of the joined rows {**context, **candidate}.
        """
        enc = self._request_encoder
        if enc is None:
            enc = self._build_request_encoder()
        return RequestEntries(*enc.encode(context, candidates))

    def score_request(self, context: Mapping[str, Any] | None, candidates: Sequence[Mapping[str, Any]],
                      model: Any) -> np.ndarray:
        """Click probabilities of N candidates of raw values, encoded and scored in one native call.

        `model` is a `scoring.candidate_model(params)` of this encoder's model.
        Equal to `score_candidates` of `encode_request`'s entries, without the
        arrays in between: the request path of the server.
        """
        enc = self._request_encoder
        if enc is None:
            enc = self._build_request_encoder()
        return enc.score(context, candidates, model)

    def request_encoder(self) -> Any:
        """The native `_parse.RequestEncoder` behind `encode_request` / `score_request`, built once
        (the server's native fast path hands it raw values scanned from the request body)."""
        enc = self._request_encoder
        return enc if enc is not None else self._build_request_encoder()

    def share_request_table(self, path: str | os.PathLike) -> None:
        """Build the request encoder over a slot table shared through the file at `path`
        (ctrops.data.slot_file): worker processes serving one model then hold one copy of it."""
        from ctrops.data.slot_file import shared_slot_table

        self._check_fitted()
        self._build_request_encoder(shared_slot_table(path, self.table_keys_, self.table_values_))

    def _build_request_encoder(self, table: Any = None) -> Any:
        self._check_fitted()
        kinds = np.array([_KINDS[(d.kind, d.transform)] for d in self.spec.fields], np.int32)
        raw_keys = np.array([raw_feature_key(f, self.seed) for f in range(self.spec.n_fields)], np.uint64)
        self._request_encoder = _parse.RequestEncoder(
            list(self.spec.field_names), kinds, raw_keys, self.table_keys_, self.table_values_,
            int(self.seed), int(self.hash_space) if self.indexing == "hash" else 0, self.spec.missing_values,
            table)
        return self._request_encoder

    # -- persistence -------------------------------------------------------------------
    def to_header(self) -> dict[str, Any]:
        """JSON-serialisable description; with `arrays()` it rebuilds the fitted encoder."""
        self._check_fitted()
        return {
            "format": HEADER_FORMAT,
            "spec": self.spec.to_dict(),
            "fields": [d.to_dict() for d in self.spec.fields],
            "field_names": list(self.spec.field_names),
            "label": self.spec.label,
            "weight": self.spec.weight,
            "missing_values": list(self.spec.missing_values),
            "indexing": self.indexing,
            "hash_space": int(self.hash_space),
            "seed": int(self.seed),
            "min_count": int(self.min_count),
            "n_fields": self.spec.n_fields,
            "n_features": int(self.n_features_),
            "n_kept": int(self.n_kept_),
            "table_capacity": int(len(self.table_keys_)),
            "raw_token": "",
            "zero_key_stored_as": 1,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The vocabulary table (empty dict for hash indexing without rare routing)."""
        self._check_fitted()
        if len(self.table_keys_) == 0:
            return {}
        return {TABLE_KEYS: self.table_keys_, TABLE_VALUES: self.table_values_}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "FeatureEncoder":
        """Rebuild a fitted encoder; the table arrays are used as given (memory maps stay maps)."""
        if header.get("format") != HEADER_FORMAT:
            raise ModelFileError(f"encoder header format is {header.get('format')!r}, expected {HEADER_FORMAT!r}")
        try:
            spec = FieldSpec.from_dict(header["spec"], source="encoder header 'spec'")
            enc = cls(spec, indexing=header["indexing"], min_count=int(header["min_count"]),
                      hash_space=int(header["hash_space"]), seed=int(header["seed"]))
            n_features = int(header["n_features"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"encoder header is incomplete or invalid: {exc!r}") from None
        try:
            enc._validate()
        except ConfigError as exc:
            raise ModelFileError(f"encoder header: {exc}") from None
        tk = arrays.get(TABLE_KEYS)
        tv = arrays.get(TABLE_VALUES)
        if tk is None or tv is None:
            if enc.indexing == "vocab" or enc.min_count > 1:
                raise ModelFileError(f"encoder arrays {sorted(arrays)} lack {TABLE_KEYS!r}/{TABLE_VALUES!r}")
            tk, tv = np.zeros(0, np.uint64), np.zeros(0, np.int32)
        tk, tv = np.asarray(tk), np.asarray(tv)
        if tk.dtype != np.uint64 or tv.dtype != np.int32 or tk.shape != tv.shape or tk.ndim != 1:
            raise ModelFileError(f"vocabulary table must be uint64/int32 arrays of one length, got "
                                 f"{tk.dtype}{tk.shape}/{tv.dtype}{tv.shape}")
        cap = len(tk)
        if cap & (cap - 1):
            raise ModelFileError(f"vocabulary table capacity {cap} is not a power of two")
        if not (tk.flags.c_contiguous and tv.flags.c_contiguous):
            raise ModelFileError("vocabulary table arrays must be contiguous")
        enc.table_keys_, enc.table_values_ = tk, tv
        enc.n_features_ = n_features
        enc.n_kept_ = int(header.get("n_kept", int(np.count_nonzero(tk))))
        return enc

    def save(self, directory: str | os.PathLike) -> Path:
        """Write header.json plus one .npy per table array (for files outside a model, e.g. after convert)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name, arr in self.arrays().items():
            np.save(out / f"{name}.npy", arr)
        (out / "header.json").write_text(json.dumps(self.to_header(), indent=2))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "FeatureEncoder":
        src = Path(directory)
        try:
            header = json.loads((src / "header.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{src}: cannot read encoder header.json: {exc}") from None
        arrays = {name: np.load(src / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                  for name in (TABLE_KEYS, TABLE_VALUES) if (src / f"{name}.npy").exists()}
        return cls.from_header(header, arrays)

    def __repr__(self) -> str:
        state = f", n_features_={self.n_features_}" if self.is_fitted else ""
        return (f"FeatureEncoder(n_fields={self.spec.n_fields}, indexing={self.indexing!r}, "
                f"min_count={self.min_count}, hash_space={self.hash_space}, seed={self.seed}{state})")


def _is_arrow(data: Any) -> bool:
    mod = type(data).__module__
    return mod.startswith("pyarrow") and hasattr(data, "schema") and hasattr(data, "num_rows")


def _reference_key(field: int, kind: str, transform: str | None, value: Any, missing: set[str], seed: int,
                   name: str) -> tuple[int, float | None]:
    """(stored key or 0 for missing, raw value or None) of one raw value by the tokens.py rules."""
    if value is None or (isinstance(value, float) and value != value):
        return 0, None
    if kind == "categorical":
        token = categorical_token(value)
        if token == "" or token in missing:
            return 0, None
        return stored_key(feature_key(field, token, seed)), None
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        if text == "" or text in missing:
            return 0, None
        try:
            number = float(text)
        except ValueError:
            raise DataError(f"value {value!r} is not a number", field=name) from None
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataError(f"value {value!r} is not a number", field=name) from None
    if number != number:
        return 0, None
    if not np.isfinite(number):
        raise DataError(f"value {value!r} is not a finite number", field=name)
    if transform == "raw":
        return raw_feature_key(field, seed), number
    return stored_key(feature_key(field, log2bin_token(number), seed)), None
