"""The native fast path of /v1/predict against the general (msgspec) path: same bytes or same error.

Every body goes through both paths of one service with a fixed tracking-id
prefix. Where the fast path answers, the general path must answer the same
bytes; where the general path refuses the body (4xx), the fast path must not
answer (it hands such bodies over). Bodies come from hypothesis: valid and
invalid requests, str and int ids, categorical, log2bin and raw numeric fields,
unicode names and values, missing fields, top_k, several JSON spellings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ctrops.serve.app import PredictionService
from ctrops.serve.metrics import ServerMetrics
from ctrops.serve.schema import RequestError
from serve_support import injected_loader, make_config

PREFIX = "0123456789abcdef0123456789ab"
FIELDS = ("f0", "f1", "ü", "n0", "price")
SEEN = ("a", "b", "c", "x1", "12", "-3", "é", "日本", "NA")
LIMITS = {"max_candidates": 6, "max_fields": 6, "max_passthrough": 2, "max_string": 6}


def _predictor(tmp_path, indexing: str, model_type: str = "ffm"):
    """A real Predictor over categorical (one with a non-ASCII name), log2bin and raw numeric fields."""
    from ctrops.data.features import FeatureEncoder
    from ctrops.data.spec import FieldSpec
    from ctrops.predict import Predictor
    from serve_support import make_model, save

    spec = FieldSpec.from_dict({"label": "click", "categorical": ["f0", "f1", "ü"],
                                "numeric": ["n0", {"name": "price", "transform": "raw"}],
                                "missing_values": ["NA"]})
    rows = [{"f0": v, "f1": v, "ü": v, "n0": i * 7, "price": i / 3} for i, v in enumerate(SEEN * 3)]
    enc = FeatureEncoder(spec, indexing=indexing, min_count=2, hash_space=997).fit(rows)
    path = save(tmp_path / f"m-{indexing}-{model_type}.ctm", make_model(3, model_type, encoder=enc, scale=0.6))
    return Predictor.from_file(path, version=4)


def _service(tmp_path, predictor, *, log: bool = False, **limits) -> PredictionService:
    cfg = make_config(tmp_path, log=log, **(limits or LIMITS))
    loader = injected_loader(cfg, [{"name": "production", "share": 100, "model": "production"}],
                             {"production": predictor})
    service = PredictionService(cfg, loader, ServerMetrics(), None)
    service.ids.prefix = lambda now_ms=None: PREFIX
    return service


@pytest.fixture(scope="module", params=["vocab", "hash"])
def service(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"fast-{request.param}")
    return _service(tmp, _predictor(tmp, request.param))


def both(service: PredictionService, body: bytes) -> tuple[bytes | None, tuple]:
    """(fast path's answer or None, general path's (200, bytes) or (status, kind))."""
    fast = service._predict_fast(body)
    try:
        general = (200, service._predict_general(body))
    except RequestError as exc:
        general = (exc.status, exc.kind)
    return fast, general


def check(service: PredictionService, body: bytes) -> bytes | None:
    fast, general = both(service, body)
    if fast is not None:
        assert general == (200, fast), (body, fast, general)
    return fast


# ---- hypothesis bodies ----------------------------------------------------------------------------

texts = st.one_of(st.sampled_from(SEEN + ("", "zz", "ab\u007f", "😀", "a\"b", "a\\b", "a\nb", "1234567")),
                  st.text(max_size=7))
ints = st.one_of(st.integers(-300, 300), st.sampled_from([0, 10**18 - 1, 10**18, -(10**18), 2**63, 2**64]))
floats = st.one_of(st.sampled_from([0.0, -0.0, 2.0, 2.5, 1e300, 7.0, 1e-320, 3.3333333333333335]),
                   st.floats(allow_nan=False, allow_infinity=False))
numeric_strings = st.sampled_from(["12", "1.5", "-3", "1e3", "01", " 4", "+5", "1_0", "abc", "1e999", "NA", ""])
# hypothesis leans to boundaries and first branches: a rare variant is one middle number of many
rare = st.integers(0, 15).map(lambda i: i == 9)


def mostly(good, bad):
    return st.tuples(rare, good, bad).map(lambda t: t[2] if t[0] else t[1])


good_values = st.one_of(texts, ints, floats, st.none(), numeric_strings)
values = mostly(good_values, st.sampled_from([True, False, [1], {}]))
names = st.one_of(st.sampled_from(FIELDS), st.sampled_from(["zz", "id", "é", ""]), st.text(max_size=3))
fields = mostly(st.dictionaries(names, values, max_size=4), st.dictionaries(names, values, min_size=5, max_size=7))
passthrough = st.one_of(st.none(), mostly(st.dictionaries(st.text(max_size=3), st.one_of(
    texts, ints, floats, st.booleans(), st.none()), max_size=2), st.dictionaries(
    st.text(max_size=3), st.one_of(texts, st.just([1])), min_size=1, max_size=3)))
ids = mostly(st.one_of(st.sampled_from(["ad1", "ad2", "é1", "😀", "x\u007f"]), st.integers(-5, 5),
                       st.text(min_size=1, max_size=6)),
             st.one_of(texts, st.sampled_from([1.5, None, "", 10**30])))


@st.composite
def candidate(draw) -> dict:
    c = {"id": draw(ids), "fields": draw(fields)}
    if draw(st.booleans()):
        c["passthrough"] = draw(passthrough)
    if draw(rare) and draw(rare):
        del c[draw(st.sampled_from(["id", "fields"]))]
    if draw(rare) and draw(rare):
        c["extra"] = 1
    return c


@st.composite
def request_doc(draw) -> dict:
    n = draw(mostly(st.integers(1, 5), st.sampled_from([0, 7])))
    doc = {"context": draw(fields), "candidates": draw(st.lists(candidate(), min_size=n, max_size=n))}
    for key, strategy in (("request_id", st.one_of(st.none(), texts, st.integers(0, 3))),
                          ("user_id", st.one_of(st.none(), texts, ints)),
                          ("top_k", st.one_of(st.none(), st.integers(-1, 9), st.just(2.0))),
                          ("passthrough", passthrough)):
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    if draw(rare) and draw(rare):
        doc.pop(draw(st.sampled_from(["context", "candidates"])))
    return doc


@st.composite
def body(draw) -> bytes:
    doc = draw(request_doc())
    ascii_only = draw(st.booleans())
    text = json.dumps(doc, ensure_ascii=ascii_only, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
                      indent=draw(st.sampled_from([None, None, 1])))
    raw = text.encode("utf-8", "surrogatepass")
    edit = draw(st.integers(0, 24)) if draw(rare) else None
    if edit == 10:   # cut it short
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif edit == 11:  # a repeated key
        raw = raw.replace(b'"context":', b'"context":{},"context":', 1)
    elif edit == 12:  # trailing content
        raw = raw + draw(st.sampled_from([b" ", b"\n", b"x", b"{}"]))
    elif edit is not None:  # a byte that is not UTF-8, or an odd number spelling
        raw = raw.replace(b"1", draw(st.sampled_from([b"\xff", b"1.0", b"1e0", b"-0", b"01"])), 1)
    return raw


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(raw=body())
def test_fast_path_equals_general_path(service, raw):
    fast = check(service, raw)
    event("fast path answered" if fast is not None else "general path only")


@st.composite
def valid_body(draw) -> bytes:
    """Bodies the schema accepts (distinct ids, plain values): mostly answered by the fast path."""
    numbers = st.one_of(st.integers(-50, 10**6), st.floats(-1e6, 1e6, allow_nan=False), st.none(),
                        st.sampled_from(["12", "1.5", "3e2", "", "NA"]))
    any_values = st.one_of(st.sampled_from(SEEN + ("", "zz", "😀", "ab\u007f")), st.text(max_size=6), numbers)
    fields_v = st.fixed_dictionaries({}, optional={"f0": any_values, "f1": any_values, "ü": any_values,
                                                   "zz": any_values, "n0": numbers, "price": numbers})
    n = draw(st.integers(1, 6))
    id_pool = draw(st.lists(st.one_of(st.text(min_size=1, max_size=6), st.integers(-10**6, 10**6)),
                            min_size=n, max_size=n, unique_by=lambda v: (type(v), v)))
    doc = {"context": draw(fields_v),
           "candidates": [{"id": i, "fields": draw(fields_v)} for i in id_pool]}
    if draw(st.booleans()):
        doc["top_k"] = draw(st.integers(1, 8))
    if draw(st.booleans()):
        doc["user_id"] = draw(st.one_of(st.text(min_size=1, max_size=6), st.integers(0, 99)))
    return json.dumps(doc, ensure_ascii=False).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=valid_body())
def test_valid_requests_take_the_fast_path_with_the_same_answer(service, raw):
    fast, general = both(service, raw)
    assert general[0] == 200, general
    assume(b"\\" not in raw)  # escapes (of control characters) go to the general path
    assert fast is not None, f"the fast path refused a plain valid body: {raw!r}"
    assert general == (200, fast)


# ---- fixed cases --------------------------------------------------------------------------------

def test_plain_request_is_answered_by_the_fast_path(service):
    doc = {"request_id": "r1", "user_id": 7, "context": {"f0": "a", "n0": 13, "price": 2.5, "zz": "ign"},
           "candidates": [{"id": "ad1", "fields": {"f1": "b", "ü": "日本"}, "passthrough": {"bid": 1.5}},
                          {"id": 2, "fields": {"f1": "c", "f0": "x1"}},
                          {"id": "é😀\u007f", "fields": {"price": None}}],
           "top_k": 2, "passthrough": {"auction": "a-1"}}
    raw = json.dumps(doc, ensure_ascii=False).encode()
    out = check(service, raw)
    assert out is not None
    got = json.loads(out)
    assert got["request_id"] == "r1" and len(got["candidates"]) == 2
    assert [c["rank"] for c in got["candidates"]] == [1, 2]


@pytest.mark.parametrize("raw, why", [
    (b'{"context":{"f0":"a\\u0062"},"candidates":[{"id":"x","fields":{}}]}', "an escape"),
    (b'{"context":{"f0":"a","f0":"b"},"candidates":[{"id":"x","fields":{}}]}', "a repeated field"),
    (b'{"context":{},"candidates":[{"id":"x","fields":{"n0":"12x"}}]}', "a numeric field that is not a number"),
    (b'{"context":{},"candidates":[{"id":"x","fields":{}},{"id":"x","fields":{}}]}', "a repeated id"),
    (b'{"context":{},"candidates":[]}', "no candidates"),
    (b'{"context":{},"candidates":[{"id":"x","fields":{}}],"top_k":0}', "top_k 0"),
    (b'{"context":{"f0":1e999},"candidates":[{"id":"x","fields":{}}]}', "an infinite number"),
    (b'{"context":{"price":1e300},"candidates":[{"id":"x","fields":{}}]}', "a raw value beyond float32"),
])
def test_bodies_the_fast_path_hands_over(service, raw, why):
    assert service._predict_fast(raw) is None, why
    check(service, raw)


def dumps(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def test_a_raw_value_beyond_float32_is_a_422(service):
    with pytest.raises(RequestError) as err:
        service._predict_general(b'{"context":{"price":-1e39},"candidates":[{"id":"x","fields":{}}]}')
    assert err.value.status == 422 and "float32" in err.value.message


def test_ties_rank_in_input_order(service):
    doc = {"context": {"f0": "a"}, "candidates": [{"id": i, "fields": {"f1": "b"}} for i in range(5)]}
    out = check(service, dumps(doc))
    assert [c["id"] for c in json.loads(out)["candidates"]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("model_type", ["fm", "lr"])
def test_other_model_types(tmp_path, model_type):
    service = _service(tmp_path, _predictor(tmp_path, "vocab", model_type))
    doc = {"context": {"f0": "a", "n0": 40}, "candidates": [{"id": f"c{i}", "fields": {"f1": v}}
                                                            for i, v in enumerate(SEEN[3:])]}
    assert check(service, dumps(doc)) is not None


def test_handle_uses_the_fast_path_and_counts(service):
    doc = {"context": {"f0": "a"}, "candidates": [{"id": "a", "fields": {}}, {"id": "b", "fields": {"f1": "c"}}]}
    before = service.requests
    fast = service.fast
    status, out = service.handle(json.dumps(doc).encode())
    service.fast = None
    try:
        assert service.handle(json.dumps(doc).encode()) == (status, out)
    finally:
        service.fast = fast
    assert status == 200 and service.requests == before + 2


def test_a_scan_from_another_request_makes_finish_hand_over(service):
    """Two requests interleaved on one FastPath (threads): the older one falls back, nothing mixes."""
    fast = service.fast
    a = b'{"context":{"f0":"a"},"candidates":[{"id":"a","fields":{}}]}'
    b = b'{"context":{"f0":"b"},"candidates":[{"id":"b","fields":{}}]}'
    assert fast.scan(a) is not None and fast.scan(b) is not None
    predictor = service.loader.state.arms["production"].predictor
    args = (predictor.request_encoder, predictor.candidate_model, b'{"request_id":"r","candidates":[', PREFIX.encode())
    assert fast.finish(a, *args) is None
    out = fast.finish(b, *args)
    assert out is not None and b'"id":"b"' in out[0]
    assert fast.finish(b, *args) is None  # one finish per scan


def test_scores_order_for_the_log(service):
    doc = {"context": {"f0": "a"}, "candidates": [{"id": i, "fields": {"f1": v}} for i, v in enumerate(SEEN[3:])],
           "top_k": 3}
    raw = dumps(doc)
    assert service.fast.scan(raw) is not None
    predictor = service.loader.state.arms["production"].predictor
    out, scores, order = service.fast.finish(raw, predictor.request_encoder, predictor.candidate_model,
                                             b'{"request_id":"r","candidates":[', PREFIX.encode())
    expected = predictor.score(doc["context"], [c["fields"] for c in doc["candidates"]])
    assert scores.tolist() == expected.tolist()
    assert order.dtype == np.int64 and order.tolist() == np.argsort(-expected, kind="stable")[:3].tolist()


number_spellings = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps), st.integers(-10**19, 10**19).map(str),
    st.tuples(st.integers(0, 10**19), st.integers(0, 25), st.integers(-30, 30)).map(
        lambda t: f"{t[0]}.{t[1]}e{t[2]}" if t[2] % 2 else f"{t[0] / 10**t[1]:.{t[1]}f}"),
    st.tuples(st.integers(1, 10**17), st.integers(-340, 310)).map(lambda t: f"{t[0]}e{t[1]}"))


@settings(max_examples=1500, deadline=None)
@given(text=number_spellings)
def test_number_reading_equals_msgspec(text):
    """The scanner's numbers are msgspec's: same type, same double (bit for bit), or handed over."""
    import msgspec

    from ctrops.serve._fastpath import number_value

    got = number_value(text.encode())
    if got is None:
        return
    want = msgspec.json.decode(text.encode())
    assert type(got) is type(want) and repr(got) == repr(want), (text, got, want)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**17, 10**17),
                   st.tuples(st.integers(0, 10**19), st.integers(0, 25), st.integers(-30, 30)).map(
                       lambda t: f"{t[0] / 10**t[1]:.{t[1]}f}e{t[2]}" if t[1] % 3 else f"{t[0]}.{t[1]:02d}")))
def test_numbers_read_as_the_general_path_reads_them(service, x):
    """Every number spelling the scanner takes gives the double msgspec gives (categorical fields
    hash its repr, log2bin and raw fields use its value)."""
    spelled = str(x) if isinstance(x, str) else json.dumps(x)
    assume(not spelled.startswith(("-Infinity", "Infinity", "NaN", "sNaN", "-NaN", "-sNaN")))
    raw = (b'{"context":{"f0":%s,"n0":%s},"candidates":[{"id":1,"fields":{"price":%s}},'
           b'{"id":2,"fields":{"f1":%s}}]}' % ((spelled.encode(),) * 4))
    check(service, raw)


passthrough_objects = st.one_of(st.none(), st.dictionaries(
    st.text(min_size=1, max_size=4), st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=5),
                                               st.floats(-1e6, 1e6, allow_nan=False), st.none()), max_size=3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=valid_body(), cand_pt=st.lists(st.one_of(st.just("absent"), passthrough_objects), min_size=6, max_size=6),
       req_pt=st.one_of(st.just("absent"), passthrough_objects), spaced=st.booleans())
def test_the_log_body_holds_exactly_the_ids_and_passthrough_of_the_body(service, raw, cand_pt, req_pt, spaced):
    """What the fast path hands the log instead of the body decodes, with the writer's own decoder, to
    the same candidate ids and passthrough objects as the whole body (spacing and key order as sent)."""
    from ctrops.serve.logging_sink import _decode_body

    doc = json.loads(raw)
    for c, pt in zip(doc["candidates"], cand_pt):
        if pt != "absent":
            c["passthrough"] = pt
    if req_pt != "absent":
        doc["passthrough"] = req_pt
    raw = json.dumps(doc, ensure_ascii=False, indent=1 if spaced else None).encode()
    assume(service.fast.scan(raw) is not None)
    predictor = service.loader.state.arms["production"].predictor
    done = service.fast.finish(raw, predictor.request_encoder, predictor.candidate_model,
                               b'{"request_id":"r","candidates":[', PREFIX.encode(), True)
    assume(done is not None)
    log_body = done[3]
    assert len(log_body) < len(raw) or not any(c["fields"] for c in doc["candidates"])
    got, want = _decode_body(log_body), _decode_body(raw)
    assert [c.id for c in got.candidates] == [c["id"] for c in doc["candidates"]]
    assert [(c.id, c.passthrough) for c in got.candidates] == [(c.id, c.passthrough) for c in want.candidates]
    assert got.passthrough == want.passthrough == doc.get("passthrough")
    assert json.loads(log_body) == {"candidates": [{k: v for k, v in c.items() if k != "fields"}
                                                   for c in doc["candidates"]],
                                    **({"passthrough": doc["passthrough"]} if "passthrough" in doc else {})}


plain_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=6)  # JSON without escapes
column_values = {"int": st.integers(-10**17, 10**17), "float": st.floats(allow_nan=False, allow_infinity=False),
                 "str": plain_text, "bool": st.booleans()}
column_values["num"] = st.one_of(column_values["int"], column_values["float"])


@st.composite
def shaped_passthrough(draw, n: int) -> list:
    """n candidates' passthrough objects, mostly of one shape (same keys, one kind per key), sometimes
    broken in one candidate: keys in another order (still a shape), a key missing, an extra key, a
    null, a value of another kind, no object."""
    keys = draw(st.lists(plain_text.filter(bool), min_size=1, max_size=2, unique=True))
    kinds = [draw(st.sampled_from(sorted(column_values))) for _ in keys]
    objs = [{k: draw(column_values[kind]) for k, kind in zip(keys, kinds)} for _ in range(n)]
    change = draw(st.sampled_from(["none", "none", "reorder", "drop", "extra", "null", "kind", "absent", "empty"]))
    victim = objs[draw(st.integers(0, n - 1))]
    if change == "reorder":
        items = list(victim.items())[::-1]
        victim.clear()
        victim.update(items)
    elif change == "drop":
        victim.pop(keys[0])
    elif change == "extra" and len(keys) == 1:
        victim[keys[0] + "x"] = 1
    elif change == "null":
        victim[keys[0]] = None
    elif change == "kind":
        victim[keys[0]] = draw(st.one_of(*column_values.values()))
    elif change == "empty":
        victim.clear()
    if change == "absent":
        objs[objs.index(victim)] = "absent"
    return objs


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), raw=valid_body(), req_pt=st.one_of(st.just("absent"), passthrough_objects),
       every=st.sampled_from(["shaped", "none", "null", "mixed"]))
def test_the_log_columns_give_the_records_of_the_whole_body(service, data, raw, req_pt, every):
    """Where the fast path hands the log columns instead of the body's log part, the writer builds
    from them exactly the table (records, types) it builds from the whole body; it hands columns
    exactly when the passthrough objects have the shape `compact_objects` turns into columns."""
    from ctrops.serve.logging_sink import (PassthroughColumns, RawRequestLog, _decode_body, build_table,
                                           compact_objects, request_from_body, request_from_columns)

    doc = json.loads(raw)
    cands = doc["candidates"]
    pts = {"shaped": lambda: data.draw(shaped_passthrough(len(cands))), "none": lambda: ["absent"] * len(cands),
           "null": lambda: [None] * len(cands), "mixed": lambda: [None] + [{"a": 1}] * (len(cands) - 1)}[every]()
    for c, pt in zip(cands, pts):
        if pt != "absent":
            c["passthrough"] = pt
    if req_pt != "absent":
        doc["passthrough"] = req_pt
    raw = json.dumps(doc, ensure_ascii=False).encode()
    assume(service.fast.scan(raw) is not None)
    predictor = service.loader.state.arms["production"].predictor
    done = service.fast.finish(raw, predictor.request_encoder, predictor.candidate_model,
                               b'{"request_id":"r","candidates":[', PREFIX.encode(), 2)
    assume(done is not None)
    shaped = compact_objects([c.passthrough for c in _decode_body(raw).candidates])
    columns = type(done[3]) is tuple
    event(f"columns: {columns}")
    assert columns == (shaped is None or type(shaped) is PassthroughColumns), (raw, done[3])
    if not columns:
        return
    head = (1700000000000, "r", "u", "exp", "production", "m", 4, PREFIX)
    got = build_table([request_from_columns(head, done[3], done[1], done[2])])
    want = build_table([request_from_body(RawRequestLog(*head, raw, done[1], done[2]))])
    assert got.schema == want.schema and got.to_pylist() == want.to_pylist()


def _logged_both_ways(service, data, raw: bytes, every: str, head: tuple):
    """(entry from the fast path's log columns or None, entry from the whole body) of one drawn request."""
    from ctrops.serve.logging_sink import RawRequestLog, request_from_body, request_from_columns

    doc = json.loads(raw)
    cands = doc["candidates"]
    pts = {"shaped": lambda: data.draw(shaped_passthrough(len(cands))), "none": lambda: ["absent"] * len(cands),
           "mixed": lambda: [None] + [{"a": 1}] * (len(cands) - 1)}[every]()
    for c, pt in zip(cands, pts):
        if pt != "absent":
            c["passthrough"] = pt
    raw = json.dumps(doc, ensure_ascii=False).encode()
    if service.fast.scan(raw) is None:
        return None
    predictor = service.loader.state.arms["production"].predictor
    done = service.fast.finish(raw, predictor.request_encoder, predictor.candidate_model,
                               b'{"request_id":"r","candidates":[', PREFIX.encode(), 2)
    if done is None:
        return None
    columns = request_from_columns(head, done[3], done[1], done[2]) if type(done[3]) is tuple else None
    return columns, request_from_body(RawRequestLog(*head, raw, done[1], done[2]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), raws=st.lists(valid_body(), min_size=2, max_size=4),
       every=st.sampled_from(["shaped", "shaped", "none", "mixed"]))
def test_a_batch_of_log_columns_gives_the_records_of_the_whole_bodies(service, data, raws, every):
    """Over a batch of requests (ids and string columns gathered natively in rank order), and over
    a batch mixing log columns with other entries (the general builders), the writer builds
    exactly the table it builds from the whole bodies, or fails alike."""
    from ctrops.serve.logging_sink import build_table

    pairs = [_logged_both_ways(service, data, raw, every, (1700000000000 + i, f"r{i}", "u", "exp", "production",
                                                           "m", 4, PREFIX))
             for i, raw in enumerate(raws)]
    pairs = [p for p in pairs if p is not None and p[0] is not None]
    assume(len(pairs) >= 2)
    columns, bodies = [p[0] for p in pairs], [p[1] for p in pairs]
    mixed = [c if i % 2 else b for i, (c, b) in enumerate(pairs)]
    try:
        want = build_table(bodies)
    except Exception as exc:  # passthrough kinds that no common type holds: both ways refuse it
        for batch in (columns, mixed):
            with pytest.raises(type(exc)):
                build_table(batch)
        return
    for batch in (columns, mixed):
        got = build_table(batch)
        assert got.schema == want.schema and got.to_pylist() == want.to_pylist()


def test_the_native_gather_takes_items_in_rank_order_and_refuses_what_does_not_fit():
    """`gather_joined` equals splitting and indexing in Python; a wrong count or position is a
    ValueError naming the request, never a column of shifted ids."""
    import pyarrow as pa

    from ctrops.serve._logcolumns import gather_joined

    texts = [b"a\x00bb\x00", b"", "é\x00z".encode(), b"x"]
    sizes = np.array([3, 0, 2, 1], dtype=np.int64)
    orders = [np.array([2, 0, 1]), np.array([], dtype=np.int64), np.array([1]), np.array([0, 0])]
    offsets, data = gather_joined(texts, orders, sizes)
    got = pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data))
    want = [t.decode().split("\x00")[o] for t, order in zip(texts, orders) for o in order.tolist()]
    assert got.to_pylist() == want == ["", "a", "bb", "z", "x", "x"]
    for bad_texts, bad_sizes, bad_orders, message in (
            ([b"a\x00b\x00c"], [2], [np.array([0])], "request 0 .* more than"),
            ([b"a", b"a\x00b"], [1, 3], [np.array([0]), np.array([0])], "request 1 .* 2 items, 3 expected"),
            ([b"a\x00b"], [2], [np.array([2])], "returns item 2 of 2"),
            ([b"a\x00b"], [2], [np.array([-1])], "returns item -1"),
            ([b"ab"], [0], [np.array([], dtype=np.int64)], "no items but 2 bytes"),
            ([b"a"], [1, 1], [np.array([0])], "one each per request")):
        with pytest.raises(ValueError, match=message):
            gather_joined(bad_texts, bad_orders, np.array(bad_sizes, dtype=np.int64))
    with pytest.raises(TypeError, match="must be bytes"):
        gather_joined(["a"], [np.array([0])], np.array([1], dtype=np.int64))


def test_log_columns_that_do_not_fit_their_scores_are_refused():
    """A payload whose parts disagree (a writer must count it, not write wrong records) is a ValueError."""
    from ctrops.serve.logging_sink import request_from_columns

    head = (1, "r", "u", "e", "a", "m", 1, PREFIX)
    scores, order = np.array([0.5, 0.25]), np.array([0, 1])
    ok = (b"a\x00b", ("bid",), b"f", (np.array([1.0, 2.0]).tobytes(),), b'{"k":1}')
    assert request_from_columns(head, ok, scores, order).passthrough == {"k": 1}
    for bad in ((b"a", *ok[1:]), (ok[0], ("bid",), b"f", (np.array([1.0]).tobytes(),), None),
                (ok[0], ("bid", "x"), b"f", ok[3], None), (ok[0], ("bid",), b"q", ok[3], None),
                (ok[0], ("s",), b"s", (b"only-one",), None), (*ok[:4], b"[1]"), (b"\xff\x00b", *ok[1:]),
                (ok[0], ("s",), b"s", (b"a\x00\xc3",), None)):
        with pytest.raises(ValueError):
            request_from_columns(head, bad, scores, order)


def test_the_log_gets_the_same_records_from_both_paths(tmp_path):
    """The fast path logs the body, scores and order; the writer's records equal the general path's."""
    from ctrops.serve.logging_sink import LogConfig, PredictionLog

    predictor = _predictor(tmp_path, "vocab")
    doc = {"request_id": "r1", "user_id": "u", "context": {"f0": "a", "n0": 5},
           "candidates": [{"id": "ad1", "fields": {"f1": "b"}, "passthrough": {"bid": 1.25, "w": True}},
                          {"id": 7, "fields": {"f1": "c", "price": 2.5}},
                          {"id": "é", "fields": {"ü": "日本"}, "passthrough": None}],
           "top_k": 2, "passthrough": {"auction": "a-1"}}
    rows = {}
    for name in ("fast", "general"):
        service = _service(tmp_path, predictor)
        if name == "general":
            service.fast = None
        else:
            assert service._predict_fast(dumps(doc)) is not None  # this body takes the fast path
        sink = PredictionLog(LogConfig(str(tmp_path / name), "jsonl", flush_seconds=0.01)).start()
        service.use_log(sink)
        status, _ = service.handle(dumps(doc))
        assert status == 200
        sink.close()
        rows[name] = [{k: v for k, v in json.loads(line).items() if k != "ts_ms"}
                      for path in sorted((tmp_path / name).glob("predictions-*.jsonl"))
                      for line in path.read_text().splitlines()]
    assert len(rows["fast"]) == 2 and rows["fast"] == rows["general"]


def test_http_answers_through_the_fast_path(tmp_path):
    """Over the ASGI entry (real Starlette test client), the fast path answers as the general path does."""
    from starlette.testclient import TestClient

    from ctrops.serve.app import create_app

    cfg = make_config(tmp_path, log=False, **LIMITS)
    loader = injected_loader(cfg, [{"name": "production", "share": 100, "model": "production"}],
                             {"production": _predictor(tmp_path, "vocab")})
    app = create_app(cfg, loader=loader, start_background=False)
    service = app.state.service
    doc = {"request_id": "r9", "context": {"f0": "a", "n0": 3},
           "candidates": [{"id": "x", "fields": {"f1": "b"}}, {"id": 5, "fields": {"f1": "c"}}]}
    calls = []
    finish = service._predict_fast

    def spy(body):
        out = finish(body)
        calls.append(out is not None)
        return out

    service._predict_fast = spy
    with TestClient(app) as client:
        fast = client.post("/v1/predict", content=dumps(doc))
        service.fast = None
        general = client.post("/v1/predict", content=dumps(doc))
    assert calls == [True] and fast.status_code == general.status_code == 200

    def strip(r):
        out = r.json()
        return {**out, "candidates": [{k: v for k, v in c.items() if k != "tracking_id"} for c in out["candidates"]]}

    assert strip(fast) == strip(general)
