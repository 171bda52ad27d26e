"""How one logged request travels through the log ring: one msgpack payload per request.

The request thread encodes what it holds in one msgspec call (strings, the
scores and ranking as raw float64 / int64 bytes, and either the fast path's
log columns, the raw request body or the lists of ids and passthrough
objects); the writer process decodes it back into the `RequestLog` the
columnar writer takes. Log columns (COLUMNS) are the cheapest for the writer:
no Python object per candidate (see `logging_sink.request_from_columns`). Raw bodies are the
cheap case for the request thread: the arrays and the body are not encoded at
all but copied into the ring after a small msgpack head, once each; the ids
and passthrough objects are re-derived from the body by the writer.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import numpy as np

from ctrops.jsonable import to_jsonable
from ctrops.serve.logging_sink import (RawRequestLog, RequestLog, compact_ids, compact_objects, request_from_body,
                                      request_from_columns)

RAW, LISTS, LISTS_JSON, DEBUG, COLUMNS = 1, 2, 3, 4, 5

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_F64, _I64 = np.dtype(np.float64), np.dtype(np.int64)


def _contiguous(a: Any, dtype: np.dtype) -> np.ndarray:
    if type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dtype)


def encode_raw(ts_ms: int, request_id: str, unit_id: str, experiment: str, arm: str, model_name: str | None,
               model_version: int | None, tracking_prefix: str, scores: np.ndarray,
               order: np.ndarray) -> tuple[bytes, memoryview, memoryview]:
    """The parts of a request logged from its raw body (kind RAW), to be followed by the body: the
    request-level fields with the two array lengths (msgpack), then the scores' float64 bytes and the
    ranking's int64 bytes as views (copied once, into the ring)."""
    scores, order = _contiguous(scores, _F64), _contiguous(order, _I64)
    head = _encode((ts_ms, request_id, unit_id, experiment, arm, model_name, model_version, tracking_prefix,
                    len(scores), len(order)))
    return head, scores.data.cast("B"), order.data.cast("B")


def encode_columns(ts_ms: int, request_id: str, unit_id: str, experiment: str, arm: str, model_name: str | None,
                   model_version: int | None, tracking_prefix: str, columns: tuple, scores: np.ndarray,
                   order: np.ndarray) -> tuple[bytes, memoryview, memoryview]:
    """The parts of a request logged from the fast path's log columns (kind COLUMNS): the
    request-level fields, the array lengths and the columns' bytes (msgpack), then the scores' and
    the ranking's bytes as views, as for RAW."""
    scores, order = _contiguous(scores, _F64), _contiguous(order, _I64)
    head = _encode((ts_ms, request_id, unit_id, experiment, arm, model_name, model_version, tracking_prefix,
                    len(scores), len(order)) + tuple(columns))
    return head, scores.data.cast("B"), order.data.cast("B")


def encode_lists(entry: RequestLog) -> tuple[int, bytes]:
    """(kind, payload) of a request logged with its lists of ids and passthrough objects.

    msgpack holds the JSON value kinds exactly; an integer beyond 64 bits
    (JSON allows it) goes as JSON text instead (kind LISTS_JSON).
    """
    head = tuple(entry[:8])
    scores, order = _contiguous(entry.scores, _F64), _contiguous(entry.order, _I64)
    try:
        return LISTS, _encode(head + (scores.data, order.data, entry.candidate_ids, entry.candidate_passthrough,
                                      entry.passthrough))
    except (OverflowError, msgspec.EncodeError, TypeError):
        return LISTS_JSON, json.dumps(head + (scores.tolist(), order.tolist(), entry.candidate_ids,
                                              entry.candidate_passthrough, entry.passthrough),
                                      default=to_jsonable).encode()


def decode_entry(kind: int, payload: bytes, split: int | None = None) -> RequestLog:
    """The compacted `RequestLog` of a payload (see `PredictionLog.submit_compacted`); for RAW,
    `split` is where the body starts.

    ValueError when the payload or its body cannot be read.
    """
    if kind == RAW or kind == COLUMNS:  # head, scores, order[, body]
        view = memoryview(payload)
        f = _decode(view[:split])
        if len(f) != (10 if kind == RAW else 15):
            raise ValueError("a logged request whose head has the wrong number of fields")
        n_scores, n_order = f[8], f[9]
        body_at = split + 8 * (n_scores + n_order)
        if body_at > len(payload) or (kind == COLUMNS and body_at != len(payload)):
            raise ValueError("a logged request whose arrays do not fit its payload")
        scores = np.frombuffer(payload, dtype=_F64, count=n_scores, offset=split)
        order = np.frombuffer(payload, dtype=_I64, count=n_order, offset=split + 8 * n_scores)
        if kind == COLUMNS:
            return request_from_columns(tuple(f[:8]), tuple(f[10:]), scores, order)
        return request_from_body(RawRequestLog(*f[:8], view[body_at:], scores, order))
    if kind == LISTS:
        f = _decode(payload)
        scores, order = np.frombuffer(f[8], dtype=_F64), np.frombuffer(f[9], dtype=_I64)
    elif kind == LISTS_JSON:
        f = json.loads(payload)
        scores, order = np.array(f[8], dtype=_F64), np.array(f[9], dtype=_I64)
    else:
        raise ValueError(f"unknown record kind {kind}")
    if len(f) != 13 or len(f[10]) != len(scores) or len(f[11]) != len(scores):
        raise ValueError("a logged request whose lists do not match its scores")
    return RequestLog(*f[:8], compact_ids(f[10]), scores, order, compact_objects(f[11]), f[12])
