"""The /v1/predict request and response: hand-written validation and OpenAPI.

Validation is a few loops over plain dicts instead of a model library: it runs
on every request, must name the exact path of what is wrong (so an ad-server
team can fix its client from the message alone), and must cost microseconds.
The OpenAPI document below describes the same rules so schemathesis can test
the server against them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import Any

from ctrops.serve.tracking import MAX_CANDIDATES


class RequestError(Exception):
    """A client error: HTTP status, a machine-readable kind and a message naming the path."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 1000
    max_fields: int = 256          # per context and per candidate
    max_passthrough: int = 32      # keys per passthrough object
    max_string: int = 1024         # characters per string value or id
    max_body_bytes: int = 2_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.max_candidates < MAX_CANDIDATES:
            raise ValueError(f"max_candidates must be in [1, {MAX_CANDIDATES - 1}]")


@dataclass
class PredictRequest:
    context: dict[str, Any]
    candidate_ids: list[Any]
    candidate_fields: list[dict[str, Any]]
    candidate_passthrough: list[dict[str, Any] | None]
    request_id: str | None
    user_id: str | None
    top_k: int | None
    passthrough: dict[str, Any] | None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


try:  # msgspec parses request bodies about twice as fast as the json module; optional
    import msgspec as _msgspec

    _decode = _msgspec.json.Decoder().decode
    _DECODE_ERRORS: tuple = (_msgspec.DecodeError, _msgspec.ValidationError, ValueError, RecursionError)
except ImportError:  # pragma: no cover - depends on the environment
    _msgspec = None

    def _decode(body: bytes) -> Any:
        return json.loads(body, parse_constant=_reject_constant)

    _DECODE_ERRORS = (ValueError, RecursionError)


def parse_json(body: bytes) -> Any:
    """Parsed body; non-finite numbers (NaN, Infinity, 1e999) are refused like any invalid JSON."""
    if not body:
        raise RequestError(400, "malformed_json", "the request body is empty; send a JSON object")
    try:
        return _decode(body)
    except _DECODE_ERRORS as exc:
        raise RequestError(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None


_TOP = frozenset(("request_id", "user_id", "context", "candidates", "top_k", "passthrough"))
_CAND = frozenset(("id", "fields", "passthrough"))


def _type_name(v: Any) -> str:
    return "null" if v is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "array", dict: "object"}.get(type(v), type(v).__name__)


_SCALARS = frozenset((str, int, float, type(None)))


def _check_fields(obj: Any, path: str, limits: Limits) -> dict[str, Any]:
    if type(obj) is not dict:
        raise RequestError(422, "wrong_type", f"{path} must be an object of field name -> value, "
                                              f"got {_type_name(obj)}")
    if len(obj) > limits.max_fields:
        raise RequestError(422, "too_many_fields", f"{path} has {len(obj)} fields; the limit is "
                                                   f"{limits.max_fields}")
    # fast path, all C-level: every value a string within the length limit
    values = obj.values()
    kinds = set(map(type, values))
    if kinds == _STR_ONLY:
        if max(map(len, values)) <= limits.max_string:
            return obj
    elif not kinds or kinds <= _SCALARS and float not in kinds and str not in kinds:
        return obj
    return _check_fields_slow(obj, path, limits)


_STR_ONLY = {str}


def _check_fields_slow(obj: dict[str, Any], path: str, limits: Limits) -> dict[str, Any]:
    """Value by value, to name the first bad one (also the path for floats and long strings)."""
    max_string = limits.max_string
    for name, value in obj.items():
        t = type(value)
        if t is str:
            if len(value) > max_string:
                raise RequestError(422, "value_too_long", f"{path}.{name} is longer than "
                                                          f"{max_string} characters")
        elif t is int or value is None:
            continue
        elif t is float:
            if not math.isfinite(value):
                raise RequestError(422, "wrong_type", f"{path}.{name} must be a finite number")
        else:
            raise RequestError(422, "wrong_type", f"{path}.{name} must be a string, number or null, "
                                                  f"got {_type_name(value)}")
    return obj


def _check_passthrough(obj: Any, path: str, limits: Limits) -> dict[str, Any] | None:
    if obj is None:
        return None
    if type(obj) is not dict:
        raise RequestError(422, "wrong_type", f"{path} must be an object, got {_type_name(obj)}")
    if len(obj) > limits.max_passthrough:
        raise RequestError(422, "too_many_fields", f"{path} has {len(obj)} keys; the limit is "
                                                   f"{limits.max_passthrough}")
    for name, value in obj.items():
        t = type(value)
        if t is str:
            if len(value) > limits.max_string:
                raise RequestError(422, "value_too_long", f"{path}.{name} is longer than "
                                                          f"{limits.max_string} characters")
        elif not (value is None or t is int or t is bool or (t is float and math.isfinite(value))):
            raise RequestError(422, "wrong_type", f"{path}.{name} must be a string, number, boolean or "
                                                  f"null, got {_type_name(value)}")
    return obj


def _check_id(value: Any, path: str, limits: Limits, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise RequestError(422, "missing_field", f"{path} is required")
        return None
    t = type(value)
    if t is str:
        if not value or len(value) > limits.max_string:
            raise RequestError(422, "wrong_type", f"{path} must be a string of 1..{limits.max_string} "
                                                  f"characters")
        return value
    if t is int:
        return str(value)
    raise RequestError(422, "wrong_type", f"{path} must be a string or integer, got {_type_name(value)}")


def validate_predict(doc: Any, limits: Limits) -> PredictRequest:
    """Check a parsed body against the schema; raise RequestError naming the first problem.

    A well-formed request is checked in bulk with C-level iteration (map, set,
    chain) over all candidates at once; only when a bulk check fails does the
    per-candidate walk run, to name the exact path of the first problem.
    """
    if type(doc) is not dict:
        raise RequestError(422, "wrong_type", f"the body must be a JSON object, got {_type_name(doc)}")
    if not doc.keys() <= _TOP:
        bad = sorted(k for k in doc if k not in _TOP)
        raise RequestError(422, "unknown_field", f"unknown top-level field(s) {bad}; allowed: {sorted(_TOP)}")
    if "context" not in doc:
        raise RequestError(422, "missing_field", "'context' is required (an object of field -> value)")
    if "candidates" not in doc:
        raise RequestError(422, "missing_field", "'candidates' is required (a list of 1.."
                                                 f"{limits.max_candidates} objects)")
    context = _check_fields(doc["context"], "context", limits)
    cands = doc["candidates"]
    if type(cands) is not list:
        raise RequestError(422, "wrong_type", f"candidates must be a list, got {_type_name(cands)}")
    n = len(cands)
    if n == 0:
        raise RequestError(422, "no_candidates", "candidates is empty; send 1.."
                                                 f"{limits.max_candidates}")
    if n > limits.max_candidates:
        raise RequestError(422, "too_many_candidates", f"{n} candidates; the limit is "
                                                       f"{limits.max_candidates}")
    checked = _candidates_fast(cands, limits)
    if checked is None:
        checked = _candidates_slow(cands, limits)
    ids, fields, passthrough = checked
    top_k = doc.get("top_k")
    if top_k is not None and (type(top_k) is not int or top_k < 1):
        raise RequestError(422, "wrong_type", f"top_k must be a positive integer, got {top_k!r}")
    return PredictRequest(
        context=context, candidate_ids=ids, candidate_fields=fields, candidate_passthrough=passthrough,
        request_id=_check_id(doc.get("request_id"), "request_id", limits, required=False),
        user_id=_check_id(doc.get("user_id"), "user_id", limits, required=False),
        top_k=top_k, passthrough=_check_passthrough(doc.get("passthrough"), "passthrough", limits),
    )


_DICT_ONLY = {dict}
_ID_TYPES = frozenset((str, int))
_PT_SCALARS = frozenset((str, int, float, bool, type(None)))
_PT_CONTAINERS = frozenset((dict, type(None)))
_get_id, _get_fields = itemgetter("id"), itemgetter("fields")


def _values_ok(values: list, limits: Limits, allowed: frozenset) -> bool:
    kinds = set(map(type, values))
    if not kinds <= allowed:
        return False
    if kinds == _STR_ONLY:
        return not values or max(map(len, values)) <= limits.max_string
    if str in kinds and max(len(v) for v in values if type(v) is str) > limits.max_string:
        return False
    if float in kinds and not all(map(math.isfinite, [v for v in values if type(v) is float])):
        return False
    return True


def _candidates_fast(cands: list, limits: Limits) -> tuple[list, list, list] | None:
    """(ids, fields, passthrough) when every candidate is valid, else None (then the slow walk reports)."""
    if set(map(type, cands)) != _DICT_ONLY or not all(map(_CAND.issuperset, cands)):
        return None
    try:
        ids = list(map(_get_id, cands))
        fields = list(map(_get_fields, cands))
    except KeyError:
        return None
    id_kinds = set(map(type, ids))
    if not id_kinds <= _ID_TYPES or len(set(ids)) != len(ids):
        return None
    if str in id_kinds:
        lengths = [len(i) for i in ids if type(i) is str]
        if min(lengths) == 0 or max(lengths) > limits.max_string:
            return None
    if set(map(type, fields)) != _DICT_ONLY or max(map(len, fields)) > limits.max_fields:
        return None
    if not _values_ok(list(chain.from_iterable(map(dict.values, fields))), limits, _SCALARS):
        return None
    passthrough = list(map(dict.get, cands, repeat("passthrough", len(cands))))
    present = [p for p in passthrough if p is not None]
    if present:
        if set(map(type, present)) != _DICT_ONLY or max(map(len, present)) > limits.max_passthrough:
            return None
        if not _values_ok(list(chain.from_iterable(map(dict.values, present))), limits, _PT_SCALARS):
            return None
    return ids, fields, passthrough


def _candidates_slow(cands: list, limits: Limits) -> tuple[list, list, list]:
    n = len(cands)
    ids: list[Any] = [None] * n
    fields: list[dict[str, Any]] = [None] * n  # type: ignore[list-item]
    passthrough: list[dict[str, Any] | None] = [None] * n
    seen: set[Any] = set()
    for i, c in enumerate(cands):
        if type(c) is not dict:
            raise RequestError(422, "wrong_type", f"candidates[{i}] must be an object, got {_type_name(c)}")
        if not c.keys() <= _CAND:
            bad = sorted(k for k in c if k not in _CAND)
            raise RequestError(422, "unknown_field", f"candidates[{i}] has unknown key(s) {bad}; allowed: "
                                                     f"{sorted(_CAND)}")
        cid = c.get("id")
        t = type(cid)
        if t is str:
            if not cid or len(cid) > limits.max_string:
                raise RequestError(422, "wrong_type", f"candidates[{i}].id must be a string of "
                                                      f"1..{limits.max_string} characters")
        elif t is not int:
            if cid is None:
                raise RequestError(422, "missing_field", f"candidates[{i}].id is required")
            raise RequestError(422, "wrong_type", f"candidates[{i}].id must be a string or integer, "
                                                  f"got {_type_name(cid)}")
        if cid in seen:
            raise RequestError(422, "duplicate_id", f"candidates[{i}].id {cid!r} appears twice")
        seen.add(cid)
        ids[i] = cid
        if "fields" not in c:
            raise RequestError(422, "missing_field", f"candidates[{i}].fields is required")
        fields[i] = _check_fields_slow(_check_fields(c["fields"], f"candidates[{i}].fields", limits),
                                       f"candidates[{i}].fields", limits)
        p = c.get("passthrough")
        if p is not None:
            passthrough[i] = _check_passthrough(p, f"candidates[{i}].passthrough", limits)
    return ids, fields, passthrough


def request_parser(limits: Limits):
    """body bytes -> PredictRequest, raising RequestError; the fastest path this environment allows.

    With msgspec installed, a valid body is decoded and checked against typed
    structures in one C pass (the same rules as `validate_predict`, generated
    from the same limits). Any body msgspec refuses goes through the plain
    parse and `validate_predict`, whose hand-written message names the path.
    """
    if _msgspec is None:
        return lambda body: validate_predict(parse_json(body), limits)
    typed = _typed_decoder(limits)

    def parse(body: bytes) -> PredictRequest:
        try:
            doc = typed(body)
        except (_msgspec.DecodeError, _msgspec.ValidationError, RecursionError, UnicodeDecodeError):
            # (msgspec raises UnicodeDecodeError for bytes that are not UTF-8: a 400, not a 500)
            return validate_predict(parse_json(body), limits)  # raises with a precise message
        cands = doc.candidates
        ids = list(map(_attr_id, cands))
        if len(set(ids)) != len(ids):
            return validate_predict(parse_json(body), limits)
        user_id = doc.user_id
        return PredictRequest(
            context=doc.context, candidate_ids=ids, candidate_fields=list(map(_attr_fields, cands)),
            candidate_passthrough=list(map(_attr_passthrough, cands)), request_id=doc.request_id,
            user_id=str(user_id) if type(user_id) is int else user_id, top_k=doc.top_k,
            passthrough=doc.passthrough)

    return parse


_attr_id, _attr_fields, _attr_passthrough = attrgetter("id"), attrgetter("fields"), attrgetter("passthrough")


def _typed_decoder(limits: Limits):
    from typing import Annotated, Optional, Union

    from msgspec import Meta, defstruct

    text = Annotated[str, Meta(max_length=limits.max_string)]
    ident = Union[Annotated[str, Meta(min_length=1, max_length=limits.max_string)], int]
    fields_t = Annotated[dict[str, Union[text, int, float, None]], Meta(max_length=limits.max_fields)]
    passthrough_t = Optional[Annotated[dict[str, Union[text, int, float, bool, None]],
                                       Meta(max_length=limits.max_passthrough)]]
    # defstruct: the types are built from `limits` at run time (class annotations would be strings here)
    Candidate = defstruct("Candidate", [("id", ident), ("fields", fields_t), ("passthrough", passthrough_t, None)],
                          forbid_unknown_fields=True)
    Request = defstruct("Request", [
        ("context", fields_t),
        ("candidates", Annotated[list[Candidate], Meta(min_length=1, max_length=limits.max_candidates)]),
        ("request_id", Optional[Annotated[str, Meta(min_length=1, max_length=limits.max_string)]], None),
        ("user_id", Optional[ident], None),
        ("top_k", Optional[Annotated[int, Meta(ge=1)]], None),
        ("passthrough", passthrough_t, None)], forbid_unknown_fields=True)
    return _msgspec.json.Decoder(Request).decode


def openapi_document(limits: Limits, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 description of the public endpoints (kept next to the validator it mirrors)."""
    scalar = {"type": ["string", "number", "null"], "maxLength": limits.max_string}
    fields = {"type": "object", "additionalProperties": scalar, "maxProperties": limits.max_fields}
    passthrough = {"type": "object", "maxProperties": limits.max_passthrough,
                   "additionalProperties": {"type": ["string", "number", "boolean", "null"],
                                            "maxLength": limits.max_string}}
    ident = {"oneOf": [{"type": "string", "minLength": 1, "maxLength": limits.max_string},
                       {"type": "integer"}]}
    error = {"$ref": "#/components/schemas/Error"}

    def err(desc: str) -> dict[str, Any]:
        return {"description": desc, "content": {"application/json": {"schema": error}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "ctrops prediction server", "version": version,
                 "description": "Scores candidate ads for one context with the model of the caller's "
                                "experiment arm. Every returned candidate carries a tracking_id that the "
                                "prediction log records; join clicks and conversions on it."},
        "paths": {
            "/v1/predict": {"post": {
                "operationId": "predict",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": {
                    "200": {"description": "Candidates ranked by predicted probability",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
                    "400": err("Body is not JSON"),
                    "413": err("Body larger than the configured limit"),
                    "422": err("Body does not follow the schema; the message names the path"),
                    "503": err("No model is loaded for the caller's arm"),
                }}},
            "/healthz": {"get": {"operationId": "healthz", "responses": {
                "200": {"description": "The process is alive",
                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": {"description": "Every arm has a model",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": {"description": "Not ready; the body says why",
                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/metrics": {"get": {"operationId": "metrics", "responses": {
                "200": {"description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {
            "PredictRequest": {
                "type": "object", "additionalProperties": False, "required": ["context", "candidates"],
                "properties": {
                    "request_id": {"type": "string", "minLength": 1, "maxLength": limits.max_string},
                    "user_id": ident,
                    "context": fields,
                    "candidates": {"type": "array", "minItems": 1, "maxItems": limits.max_candidates,
                                   "items": {"$ref": "#/components/schemas/Candidate"}},
                    "top_k": {"type": "integer", "minimum": 1},
                    "passthrough": passthrough,
                }},
            "Candidate": {
                "type": "object", "additionalProperties": False, "required": ["id", "fields"],
                "properties": {"id": ident, "fields": fields, "passthrough": passthrough}},
            "PredictResponse": {
                "type": "object", "required": ["request_id", "experiment", "arm", "model_version",
                                               "candidates"],
                "properties": {
                    "request_id": {"type": "string"}, "experiment": {"type": "string"},
                    "arm": {"type": "string"}, "model_version": {"type": ["integer", "null"]},
                    "candidates": {"type": "array", "items": {
                        "type": "object", "required": ["id", "score", "rank", "tracking_id"],
                        "properties": {"id": {"type": ["string", "integer"]},
                                       "score": {"type": "number", "minimum": 0, "maximum": 1},
                                       "rank": {"type": "integer", "minimum": 1},
                                       "tracking_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}}},
                }},
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
        }},
    }
