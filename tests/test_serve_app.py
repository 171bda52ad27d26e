"""The HTTP layer: predict responses, 4xx on bad requests, readiness, metrics, admin auth, OpenAPI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from ctrops.serve.app import create_app
from serve_support import HashScorer, injected_loader, make_config, request_body

ONE_ARM = [{"name": "production", "share": 100, "model": "production"}]
SPLIT = [{"name": "production", "share": 50, "model": "production"},
         {"name": "random", "share": 50, "random": True}]


@pytest.fixture
def client(tmp_path):
    cfg = make_config(tmp_path, max_candidates=50, max_fields=8)
    loader = injected_loader(cfg, ONE_ARM, {"production": HashScorer(7)})
    with TestClient(create_app(cfg, loader=loader)) as c:
        yield c


def test_predict_ranks_and_tracks(client):
    r = client.post("/v1/predict", json=request_body(5, request_id="req-1"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["request_id"] == "req-1" and out["arm"] == "production" and out["model_version"] == 7
    cands = out["candidates"]
    assert [c["rank"] for c in cands] == [1, 2, 3, 4, 5]
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    expected = HashScorer(7).score(request_body()["context"], [c["fields"] for c in request_body(5)["candidates"]])
    by_id = {c["id"]: c["score"] for c in cands}
    assert [by_id[f"ad{i}"] for i in range(5)] == pytest.approx(expected.tolist(), abs=1e-9)
    ids = [c["tracking_id"] for c in cands]
    assert len(set(ids)) == 5 and all(len(t) == 32 for t in ids)
    again = client.post("/v1/predict", json=request_body(5)).json()
    assert not set(ids) & {c["tracking_id"] for c in again["candidates"]}


def test_top_k_and_integer_ids(client):
    body = request_body(6)
    for i, c in enumerate(body["candidates"]):
        c["id"] = 100 + i
    r = client.post("/v1/predict", json={**body, "top_k": 2})
    assert r.status_code == 200
    assert len(r.json()["candidates"]) == 2 and all(isinstance(c["id"], int) for c in r.json()["candidates"])


@pytest.mark.parametrize("payload, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b'{"context": {"a": NaN}, "candidates": [{"id": "x", "fields": {}}]}', 400, "not valid JSON"),
    (b"[]", 422, "must be a JSON object"),
    (b'{"candidates": [{"id": "x", "fields": {}}]}', 422, "'context' is required"),
    (b'{"context": {}}', 422, "'candidates' is required"),
    (b'{"context": {}, "candidates": []}', 422, "candidates is empty"),
    (b'{"context": [], "candidates": [{"id": "x", "fields": {}}]}', 422, "context must be an object"),
    (b'{"context": {"a": [1]}, "candidates": [{"id": "x", "fields": {}}]}', 422, "context.a must be"),
    (b'{"context": {}, "candidates": [{"fields": {}}]}', 422, "candidates[0].id is required"),
    (b'{"context": {}, "candidates": [{"id": "x"}]}', 422, "candidates[0].fields is required"),
    (b'{"context": {}, "candidates": [{"id": true, "fields": {}}]}', 422, "candidates[0].id must be"),
    (b'{"context": {}, "candidates": [{"id": "x", "fields": {"b": {"c": 1}}}]}', 422,
     "candidates[0].fields.b must be"),
    (b'{"context": {}, "candidates": [{"id": "x", "fields": {}}, {"id": "x", "fields": {}}]}', 422,
     "appears twice"),
    (b'{"context": {}, "candidates": [{"id": "x", "fields": {}}], "extra": 1}', 422, "unknown top-level"),
    (b'{"context": {}, "candidates": [{"id": "x", "fields": {}}], "top_k": 0}', 422, "top_k"),
])
def test_bad_requests_get_4xx_with_message(client, payload, status, words):
    r = client.post("/v1/predict", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["message"]


def test_limits(client):
    body = request_body(51)
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 422 and "51 candidates; the limit is 50" in r.json()["message"]
    body = request_body(2)
    body["context"] = {f"f{i}": i for i in range(9)}
    r = client.post("/v1/predict", json=body)
    assert r.status_code == 422 and "context has 9 fields; the limit is 8" in r.json()["message"]
    r = client.post("/v1/predict", content=b" " * 3_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_health_ready_openapi(client):
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["arms"]["production"]["serving_version"] == 7
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v1/predict" in spec["paths"]
    assert client.get("/v1/predict").status_code == 405


def test_not_ready_without_model(tmp_path):
    cfg = make_config(tmp_path, log=False)
    loader = injected_loader(cfg, ONE_ARM, {})
    with TestClient(create_app(cfg, loader=loader)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "arm 'production' has no model" in r.json()["message"]
        assert c.post("/v1/predict", json=request_body(2)).status_code == 503


def test_admin_reload_auth(tmp_path):
    cfg = make_config(tmp_path, token="s3cret", log=False)
    loader = injected_loader(cfg, ONE_ARM, {"production": HashScorer(1)})
    with TestClient(create_app(cfg, loader=loader)) as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Basic s3cret"}).status_code == 401
        r = c.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
        # authorised: the reload runs (and fails here: the storage holds no manifest), old model keeps serving
        assert r.status_code == 409 and r.json()["outcome"] == "failure"
        assert c.post("/v1/predict", json=request_body(2)).json()["model_version"] == 1
    cfg = make_config(tmp_path, token=None, log=False)
    with TestClient(create_app(cfg, loader=injected_loader(cfg, ONE_ARM, {"production": HashScorer(1)}))) as c:
        r = c.post("/admin/reload", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403 and "disabled" in r.json()["message"]


def test_admin_token_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CTROPS_TEST_UNSET_TOKEN", "from-env")
    cfg = make_config(tmp_path, token="from-file", log=False)
    with TestClient(create_app(cfg, loader=injected_loader(cfg, ONE_ARM, {"production": HashScorer(1)}))) as c:
        assert c.post("/admin/reload", headers={"Authorization": "Bearer from-file"}).status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer from-env"}).status_code == 409


def test_random_arm_and_metrics(tmp_path):
    cfg = make_config(tmp_path, log=False)
    loader = injected_loader(cfg, SPLIT, {"production": HashScorer(3)})
    with TestClient(create_app(cfg, loader=loader)) as c:
        arms = {}
        for i in range(200):
            out = c.post("/v1/predict", json=request_body(4, user=f"user{i}")).json()
            arms.setdefault(out["arm"], []).append(out)
            again = c.post("/v1/predict", json=request_body(4, user=f"user{i}")).json()
            assert again["arm"] == out["arm"]  # a user stays in one arm
        assert set(arms) == {"production", "random"}
        assert all(o["model_version"] is None for o in arms["random"])
        assert all(0 <= c_["score"] <= 1 for o in arms["random"] for c_ in o["candidates"])
        # the control group ranks at random: its first candidate varies
        assert len({o["candidates"][0]["id"] for o in arms["random"]}) > 1
        c.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
        text = c.get("/metrics").text
        assert f'ctrops_predictions_total{{arm="random"}} {2.0 * len(arms["random"])}' in text
        assert 'ctrops_request_errors_total{kind="malformed_json"} 1.0' in text
        assert "ctrops_predict_latency_seconds_bucket" in text


def test_schemathesis_finds_no_server_errors(tmp_path):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    cfg = make_config(tmp_path, max_candidates=50, max_fields=8)
    app = create_app(cfg, loader=injected_loader(cfg, SPLIT, {"production": HashScorer(7)}))
    failures, seen = [], set()
    with TestClient(app):  # runs the lifespan (log writer) around the generated calls
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(operation.as_strategy())
            def check(case):
                r = case.call()
                seen.add((case.path, r.status_code))
                if r.status_code >= 500:
                    failures.append((case.method, case.path, case.body, r.status_code, r.text[:300]))

            check()
    assert not failures, failures[:3]
    assert ("/v1/predict", 200) in seen and ("/v1/predict", 422) in seen  # the generator reached both


def test_render_response_is_the_documented_json():
    from ctrops.serve.app import render_response

    ids = ['a"b', "caf\u00e9", 3, "x\\y"]
    scores = np.array([0.25, 0.123456789012, 1e-20, 1.0])
    out = json.loads(render_response("r%1", "e", "arm", None, "p" * 28, ids, scores, [3, 1, 0, 2]))
    assert out == {"request_id": "r%1", "experiment": "e", "arm": "arm", "model_version": None, "candidates": [
        {"id": "x\\y", "score": 1.0, "rank": 1, "tracking_id": "p" * 28 + "0003"},
        {"id": "caf\u00e9", "score": 0.123456789, "rank": 2, "tracking_id": "p" * 28 + "0001"},
        {"id": 'a"b', "score": 0.25, "rank": 3, "tracking_id": "p" * 28 + "0000"},
        {"id": 3, "score": 0.0, "rank": 4, "tracking_id": "p" * 28 + "0002"}]}


@pytest.mark.parametrize("body", [
    request_body(3),
    {"context": {"a": 1, "b": 2.5, "c": None}, "candidates": [{"id": 7, "fields": {"x": "y"}},
                                                              {"id": "8", "fields": {}}], "user_id": 42,
     "top_k": 1, "passthrough": {"flag": True, "price": 0.5}},
])
def test_fast_parser_equals_hand_validation(body):
    from ctrops.serve.schema import Limits, parse_json, request_parser, validate_predict

    raw = json.dumps(body).encode()
    assert request_parser(Limits())(raw) == validate_predict(parse_json(raw), Limits())


@pytest.mark.parametrize("body", [
    b'{"context": {}, "candidates": [{"id": 1, "fields": {}}, {"id": 1, "fields": {}}]}',
    b'{"context": {"a": true}, "candidates": [{"id": 1, "fields": {}}]}',
    b'{"context": {}, "candidates": [{"id": 1.5, "fields": {}}]}',
    b'{"context": {}, "candidates": [{"id": "", "fields": {}}]}',
    b'{"context": {}, "candidates": [{"id": "a", "fields": {}, "passthrough": {"p": [1]}}]}',
    b'{"context": {}, "candidates": [{"id": "a", "fields": {}}], "top_k": -1}',
])
def test_fast_parser_rejects_like_hand_validation(body):
    from ctrops.serve.schema import Limits, RequestError, parse_json, request_parser, validate_predict

    with pytest.raises(RequestError) as fast:
        request_parser(Limits())(body)
    with pytest.raises(RequestError) as hand:
        validate_predict(parse_json(body), Limits())
    assert (fast.value.status, fast.value.message) == (hand.value.status, hand.value.message)


class _RsgiHeaders(dict):
    """granian's RSGI headers: a lowercase-keyed mapping with get/items."""


class _RsgiScope:
    proto, http_version, scheme, query_string = "http", "1.1", "http", ""
    server, client = "127.0.0.1:8000", "127.0.0.1:50000"

    def __init__(self, method: str, path: str, headers: dict) -> None:
        self.method, self.path, self.headers = method, path, _RsgiHeaders(headers)


class _RsgiProto:
    """Stands in for granian's HTTP protocol object: the body (whole or in chunks) and one answer."""

    def __init__(self, body: bytes = b"", chunks: list[bytes] | None = None) -> None:
        self.body, self.chunks, self.answer = body, chunks, None

    async def __call__(self) -> bytes:
        return self.body

    def __aiter__(self):
        async def gen():
            for c in self.chunks or [self.body]:
                yield c
        return gen()

    def response_bytes(self, status: int, headers: list, body: bytes) -> None:
        assert self.answer is None, "answered twice"
        self.answer = (status, dict(headers), body)


def _rsgi(app, method: str, path: str, body: bytes = b"", headers: dict | None = None,
          chunks: list[bytes] | None = None) -> tuple[int, dict, bytes]:
    import asyncio

    if headers is None:
        headers = {} if chunks is not None else {"content-length": str(len(body))}
    proto = _RsgiProto(body, chunks)
    asyncio.run(app.__rsgi__(_RsgiScope(method, path, headers), proto))
    assert proto.answer is not None, "no answer"
    return proto.answer


def test_rsgi_entry_answers_like_asgi(tmp_path):
    """granian's native interface: same predict answers, limits, errors and cold routes as ASGI."""
    cfg = make_config(tmp_path, max_candidates=50, log=False)
    app = create_app(cfg, loader=injected_loader(cfg, ONE_ARM, {"production": HashScorer(7)}))
    app.__rsgi_init__(None)
    try:
        body = json.dumps(request_body(5, request_id="r-1")).encode()
        status, headers, out = _rsgi(app, "POST", "/v1/predict", body)
        assert status == 200 and headers["content-type"] == "application/json"
        with TestClient(app) as c:
            asgi = c.post("/v1/predict", content=body).json()
        rsgi = json.loads(out)
        assert [(x["id"], x["score"], x["rank"]) for x in rsgi["candidates"]] == \
            [(x["id"], x["score"], x["rank"]) for x in asgi["candidates"]]
        assert rsgi["request_id"] == "r-1" and rsgi["model_version"] == 7
        # chunked upload (no content-length): read piece by piece, same answer
        status, _, out2 = _rsgi(app, "POST", "/v1/predict", chunks=[body[:100], body[100:]])
        assert status == 200 and [x["id"] for x in json.loads(out2)["candidates"]] == \
            [x["id"] for x in rsgi["candidates"]]
        status, _, out = _rsgi(app, "POST", "/v1/predict", b"{")
        assert status == 400 and json.loads(out)["error"] == "malformed_json"
        status, _, out = _rsgi(app, "POST", "/v1/predict", headers={"content-length": "3000000"})
        assert status == 413 and "limit" in json.loads(out)["message"]
        status, _, out = _rsgi(app, "POST", "/v1/predict", chunks=[b" " * 1_000_000] * 3)
        assert status == 413
        status, _, out = _rsgi(app, "POST", "/v1/predict", headers={"content-length": "abc"})
        assert status == 413
        # cold routes go through Starlette: same status codes and bodies as over ASGI
        status, headers, out = _rsgi(app, "GET", "/healthz")
        assert status == 200 and json.loads(out) == {"status": "alive"}
        status, _, out = _rsgi(app, "GET", "/readyz")
        assert status == 200 and json.loads(out)["arms"]["production"]["serving_version"] == 7
        assert _rsgi(app, "GET", "/v1/predict")[0] == 405
        assert _rsgi(app, "GET", "/nowhere")[0] == 404
        status, headers, out = _rsgi(app, "GET", "/metrics")
        assert status == 200 and b'ctrops_predictions_total{arm="production"} 3.0' in out
        assert "content-length" not in headers  # granian sets it from the body
        status, _, out = _rsgi(app, "POST", "/admin/reload", headers={"authorization": "Bearer wrong",
                                                                         "content-length": "0"})
        assert status == 401
    finally:
        app.__rsgi_del__(None)


def _wsgi(entry, method: str, path: str, body: bytes = b"", headers: dict | None = None,
          length: str | None = None) -> tuple[int, dict, bytes]:
    import io

    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)) if length is None else length}
    for k, v in (headers or {}).items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    started: list = []
    out = b"".join(entry(environ, lambda status, hdrs, exc_info=None: started.append((status, hdrs))))
    status, hdrs = started[0]
    hdrs = dict(hdrs)
    assert int(hdrs["content-length"]) == len(out)
    return int(status.split()[0]), hdrs, out


def test_wsgi_entry_answers_like_asgi(tmp_path):
    """granian's WSGI interface: same predict answers, limits, errors and cold routes as ASGI, and
    the worker's start and stop run once each."""
    from ctrops.serve.app import PredictWSGI

    cfg = make_config(tmp_path, max_candidates=50, log=False)
    app = create_app(cfg, loader=injected_loader(cfg, ONE_ARM, {"production": HashScorer(7)}))
    calls = []
    start, stop = app._startup, app._shutdown
    app._startup, app._shutdown = lambda: (calls.append("start"), start()), lambda: (calls.append("stop"), stop())
    entry = PredictWSGI(app)
    try:
        assert calls == ["start"]
        body = json.dumps(request_body(5, request_id="r-1")).encode()
        status, headers, out = _wsgi(entry, "POST", "/v1/predict", body)
        assert status == 200 and headers["content-type"] == "application/json"
        with TestClient(app) as c:
            asgi = c.post("/v1/predict", content=body).json()
        got = json.loads(out)
        assert [(x["id"], x["score"], x["rank"]) for x in got["candidates"]] == \
            [(x["id"], x["score"], x["rank"]) for x in asgi["candidates"]]
        assert got["request_id"] == "r-1" and got["model_version"] == 7
        # no content-length (chunked): read up to one byte past the limit
        status, _, out2 = _wsgi(entry, "POST", "/v1/predict", body, length="")
        assert status == 200 and [x["id"] for x in json.loads(out2)["candidates"]] == \
            [x["id"] for x in got["candidates"]]
        status, _, out = _wsgi(entry, "POST", "/v1/predict", b"{")
        assert status == 400 and json.loads(out)["error"] == "malformed_json"
        status, _, out = _wsgi(entry, "POST", "/v1/predict", length="3000000")
        assert status == 413 and "limit" in json.loads(out)["message"]
        assert _wsgi(entry, "POST", "/v1/predict", b" " * 3_000_000, length="")[0] == 413
        assert _wsgi(entry, "POST", "/v1/predict", length="abc")[0] == 413
        status, _, out = _wsgi(entry, "GET", "/healthz")
        assert status == 200 and json.loads(out) == {"status": "alive"}
        status, _, out = _wsgi(entry, "GET", "/readyz")
        assert status == 200 and json.loads(out)["arms"]["production"]["serving_version"] == 7
        assert _wsgi(entry, "GET", "/v1/predict")[0] == 405
        assert _wsgi(entry, "GET", "/nowhere")[0] == 404
        status, headers, out = _wsgi(entry, "GET", "/metrics")
        assert status == 200 and b'ctrops_predictions_total{arm="production"} 3.0' in out
        status, headers, _ = _wsgi(entry, "POST", "/admin/reload", headers={"authorization": "Bearer wrong"},
                                   length="0")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
    finally:
        entry.stop()
        entry.stop()
    assert calls == ["start", "stop"]
