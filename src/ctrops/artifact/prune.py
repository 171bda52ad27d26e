"""Shrink a vocabulary-indexed model: drop near-zero features and retired values.

The delivery server holds every weight in memory, so a file that only grows
(new creatives every day, old ones never removed) eventually stalls it. Pruning
removes rows of the weight arrays and their keys from the vocabulary table, then
renumbers the remaining features densely. A dropped value is simply absent from
the table afterwards, so the encoder sends it to its field's rare index
(2*field + 1) -- exactly what happens to any value the model never saw.

Whenever a model carries a table, the table alone decides every index, so the
same procedure works for hash-indexed encoders that route kept keys through a
table (rows shared by several keys survive while one of them is kept). Pure
hash indexing (no table) is refused: its index `2*n_fields + key % hash_space`
is computed by every reader, so a row cannot be removed without changing the
index of every slot after it, and one slot mixes many raw values (dropping a
creative would drop unrelated values sharing its slot). Shrink those by
re-fitting with `indexing="vocab"` or by saving with dtype="float16".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ctrops.artifact import vocab
from ctrops.artifact.format import ModelFile, ModelParts, _field_names, file_size_of, load_model
from ctrops.data.hashing import feature_key
from ctrops.data.matrix import FieldMatrix
from ctrops.data.tokens import categorical_token, log2bin_token
from ctrops.errors import ConfigError, ModelFileError
from ctrops.models.params import ModelParams

# names the encoder uses for its open-addressing table (see docs/model-format.md)
VOCAB_KEYS = "vocab_keys"
VOCAB_VALUES = "vocab_values"
_ROW_CHUNK = 1 << 16


@dataclass
class PruneReport:
    """What pruning removed and what it cost."""

    features_before: int
    features_after: int
    dropped_by_threshold: int
    dropped_by_value: int
    dropped_unreachable: int  # rows no key of the table pointed at (e.g. hash slots no kept value used)
    values_not_in_vocab: dict[str, list[str]]
    bytes_before: int
    bytes_after: int
    valid_log_loss_before: float | None = None
    valid_log_loss_after: float | None = None
    index_map: np.ndarray | None = field(default=None, repr=False)  # old index -> new index, -1 = dropped

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def features_dropped(self) -> int:
        return self.features_before - self.features_after

    def to_dict(self) -> dict[str, Any]:
        return {"features_before": self.features_before, "features_after": self.features_after,
                "features_dropped": self.features_dropped, "dropped_by_threshold": self.dropped_by_threshold,
                "dropped_by_value": self.dropped_by_value,
                "dropped_unreachable": self.dropped_unreachable, "values_not_in_vocab": self.values_not_in_vocab,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "bytes_saved": self.bytes_saved, "valid_log_loss_before": self.valid_log_loss_before,
                "valid_log_loss_after": self.valid_log_loss_after}


def find_vocab_table(encoder_arrays: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """Names of the (keys uint64, values int32) table arrays of a vocab-indexed encoder."""
    if VOCAB_KEYS in encoder_arrays and VOCAB_VALUES in encoder_arrays:
        return VOCAB_KEYS, VOCAB_VALUES
    keys = [n for n, a in encoder_arrays.items() if a.dtype == np.uint64 and a.ndim == 1]
    values = [n for n, a in encoder_arrays.items() if a.dtype == np.int32 and a.ndim == 1]
    pairs = [(k, v) for k in keys for v in values if encoder_arrays[k].shape == encoder_arrays[v].shape]
    if len(pairs) != 1:
        raise ModelFileError(f"cannot find the vocabulary table among encoder arrays {sorted(encoder_arrays)} "
                             f"(expected {VOCAB_KEYS!r} uint64 and {VOCAB_VALUES!r} int32 of one length)")
    return pairs[0]


def _token(header: Mapping[str, Any], field_no: int, name: str, value: Any) -> str:
    """The encoder's token for a raw value of field `field_no` (rules of ctrops.data.tokens)."""
    fields = header.get("fields")
    kind, transform = "categorical", None
    if isinstance(fields, list) and field_no < len(fields) and isinstance(fields[field_no], Mapping):
        kind, transform = fields[field_no].get("kind", "categorical"), fields[field_no].get("transform")
    if kind == "categorical":
        return categorical_token(value)
    if transform == "raw":
        raise ConfigError(f"drop_values: field {name!r} is a raw numeric field with a single feature; "
                          f"its values cannot be dropped one by one")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"drop_values: {value!r} is not a number, but field {name!r} is numeric") from None
    if not np.isfinite(number):
        raise ConfigError(f"drop_values: {value!r} of numeric field {name!r} is not finite")
    return log2bin_token(number)


def _table_or_refuse(parts: ModelParts) -> tuple[str, str]:
    """The table to prune through; models without one (pure hash indexing) are refused."""
    indexing = parts.encoder_header.get("indexing", "vocab")
    try:
        names: tuple[str, str] | None = find_vocab_table(parts.encoder_arrays)
    except ModelFileError:
        if indexing == "vocab":
            raise
        names = None
    if names is None or parts.encoder_arrays[names[0]].size == 0:
        raise ConfigError(f"cannot prune a {indexing!r}-indexed model without a vocabulary table: its feature "
                          f"index is 2*n_fields + key % hash_space, computed by every reader, so rows cannot be "
                          f"removed without renumbering every hash slot, and one slot mixes many values; re-fit "
                          f"with indexing='vocab' or save with dtype='float16' to shrink it")
    return names


def _as_parts(model: ModelFile | ModelParts | str | Path) -> tuple[ModelParts, int | None, str]:
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if isinstance(model, ModelFile):
        return model.to_parts(), model.nbytes, model.weight_dtype
    if isinstance(model, ModelParts):
        return model, None, "float32"
    raise TypeError(f"prune_model takes a ModelFile, ModelParts or path, got {type(model).__name__}")


def _small_rows(params: ModelParams, threshold: float) -> np.ndarray:
    """Rows whose linear weight and every latent value are strictly below `threshold` in magnitude."""
    small = np.ones(params.n_features, dtype=bool)
    if params.linear is not None:
        small &= np.abs(params.linear) < threshold
    if params.latent is not None:
        flat = params.latent.reshape(params.n_features, -1)
        for lo in range(0, params.n_features, _ROW_CHUNK):
            hi = min(lo + _ROW_CHUNK, params.n_features)
            small[lo:hi] &= (np.abs(flat[lo:hi]) < threshold).all(axis=1)
    return small


def _log_loss(y: np.ndarray, logit: np.ndarray, weights: np.ndarray | None) -> float:
    from ctrops.models.metrics import log_loss_from_logits

    return log_loss_from_logits(y, logit, weights)


def _logits(params: ModelParams, X: FieldMatrix) -> np.ndarray:
    try:
        from ctrops.models.scoring import predict_logits  # the native path, once it exists
    except ImportError:
        from ctrops.models.reference import logits
        return logits(params, X)
    return np.asarray(predict_logits(params, X))


def remap_matrix(X: FieldMatrix, index_map: np.ndarray, n_features: int) -> FieldMatrix:
    """Re-index an encoded matrix for a pruned model: dropped features go to their field's rare index."""
    new = index_map[X.indices]
    dropped = new < 0
    new = np.where(dropped, 2 * X.fields.astype(np.int64) + 1, new)
    return FieldMatrix.from_arrays(X.indptr, X.fields, new, X.values, X.labels, X.n_fields, n_features, X.weights)


def prune_model(model: ModelFile | ModelParts | str | Path, *, threshold: float = 0.0,
                drop_values: Mapping[str, Sequence[Any]] | None = None,
                valid: FieldMatrix | None = None) -> tuple[ModelParts, PruneReport]:
    """Drop features of small weight (|w| < threshold for linear and every latent value)
    and the features of retired raw values (field name -> values, e.g. creatives no
    longer served), compact the arrays and rebuild the vocabulary table.

    `threshold=0.0` drops nothing by magnitude. Reserved indices (missing/rare of
    each field) are always kept. Values are matched through the encoder's token
    rules (`ctrops.data.tokens`: 7, 7.0 and "7" are one categorical value; a
    log2bin numeric value drops its whole bin) and `feature_key(field, token, seed)`. A row survives while any kept
    key of the table points at it (hash-indexed tables share rows between keys);
    rows no key points at are dropped too. With `valid` (encoded for the input
    model), the report carries its log loss before and after pruning. Bytes are
    reported for the input's storage dtype.
    """
    parts, nbytes_before, dtype = _as_parts(model)
    params, header = parts.params, parts.encoder_header
    if threshold < 0 or not np.isfinite(threshold):
        raise ConfigError(f"prune threshold must be a finite number >= 0, got {threshold}")
    keys_name, values_name = _table_or_refuse(parts)
    n, reserved = params.n_features, 2 * params.n_fields
    entry_keys, entry_rows = vocab.table_entries(np.asarray(parts.encoder_arrays[keys_name]),
                                                 np.asarray(parts.encoder_arrays[values_name]))
    entry_rows = entry_rows.astype(np.int64)
    if entry_rows.size and (entry_rows.min() < reserved or entry_rows.max() >= n):
        raise ModelFileError(f"vocabulary table values span {entry_rows.min()}..{entry_rows.max()}, outside the "
                             f"learned feature rows {reserved}..{n - 1}")
    referenced = np.zeros(n, dtype=bool)
    referenced[entry_rows] = True

    small = _small_rows(params, threshold) if threshold > 0 else np.zeros(n, dtype=bool)
    small[:reserved] = False
    small &= referenced
    keep_entry = ~small[entry_rows]

    missing: dict[str, list[str]] = {}
    if drop_values:
        names = _field_names(params, header, parts.metadata)
        seed = int(header.get("seed", 0))
        for name, values in drop_values.items():
            if name not in names:
                raise ConfigError(f"drop_values names field {name!r}, which is not a field of this model "
                                  f"(fields: {', '.join(names)})")
            field_no = names.index(name)
            tokens = [_token(header, field_no, name, v) for v in values]
            keys = vocab.stored_key(np.array([feature_key(field_no, t, seed) for t in tokens], dtype=np.uint64))
            present = np.isin(keys, entry_keys)
            if not present.all():
                missing[name] = [t for t, hit in zip(tokens, present) if not hit]
            keep_entry &= ~np.isin(entry_keys, keys)

    keep = np.zeros(n, dtype=bool)
    keep[:reserved] = True
    keep[entry_rows[keep_entry]] = True
    by_threshold = int(small.sum())
    by_value = int((referenced & ~small & ~keep).sum())
    unreachable = int((~referenced[reserved:]).sum())
    index_map = np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int64)
    n_after = int(keep.sum())
    new_params = ModelParams(
        model_type=params.model_type, n_features=n_after, n_fields=params.n_fields, k=params.k,
        bias=params.bias, normalize=params.normalize, extra=dict(params.extra),
        linear=None if params.linear is None else np.ascontiguousarray(params.linear[keep], dtype=np.float32),
        latent=None if params.latent is None else np.ascontiguousarray(params.latent[keep], dtype=np.float32))

    arrays = dict(parts.encoder_arrays)
    arrays[keys_name], arrays[values_name] = vocab.build_table(entry_keys[keep_entry],
                                                              index_map[entry_rows[keep_entry]])
    new_header = dict(header)
    if "n_features" in new_header:
        new_header["n_features"] = n_after
    if "n_kept" in new_header:
        new_header["n_kept"] = int(keep_entry.sum())
    if "table_capacity" in new_header:
        new_header["table_capacity"] = int(arrays[keys_name].size)
    metadata = dict(parts.metadata)
    metadata["pruning"] = {"threshold": threshold, "dropped_by_threshold": by_threshold,
                           "dropped_by_value": by_value, "dropped_unreachable": unreachable,
                           "features_before": n, "features_after": n_after}
    pruned = ModelParts(new_params, new_header, arrays, metadata)

    report = PruneReport(
        features_before=n, features_after=n_after, dropped_by_threshold=by_threshold, dropped_by_value=by_value,
        dropped_unreachable=unreachable, values_not_in_vocab=missing,
        bytes_before=nbytes_before if nbytes_before is not None else file_size_of(parts, dtype),
        bytes_after=file_size_of(pruned, dtype), index_map=index_map)
    if valid is not None:
        if valid.n_fields != params.n_fields or int(valid.indices.max(initial=0)) >= n:
            raise ConfigError(f"valid matrix ({valid.n_fields} fields, max index {int(valid.indices.max(initial=0))}) "
                              f"was not encoded for this model ({params.n_fields} fields, {n} features)")
        report.valid_log_loss_before = _log_loss(valid.labels, _logits(params, valid), valid.weights)
        after = remap_matrix(valid, index_map, n_after)
        report.valid_log_loss_after = _log_loss(after.labels, _logits(new_params, after), after.weights)
    return pruned, report
