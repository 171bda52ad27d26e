"""The ASGI prediction app: /v1/predict, health, readiness, metrics, admin reload.

Starlette supplies routing and lifespan only; the predict handler parses JSON
with the standard library, validates by hand (schema.py), scores on the event
loop thread (100 candidates take well under a millisecond, less than a thread
hop would cost) and hands logging to a background writer. Nothing on this path
allocates per candidate beyond the response itself.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import time
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ctrops.errors import CtropsError, DataError
from ctrops.serve.config import ServingConfig
from ctrops.serve.loader import ModelStore, ServingLoader
from ctrops.serve.logging_sink import PredictionLog, RequestLog
from ctrops.serve.metrics import ServerMetrics
from ctrops.serve.schema import RequestError, openapi_document, request_parser
from ctrops.serve.tracking import SUFFIXES, TrackingIds

log = logging.getLogger("ctrops.serve.app")
_JSON = "application/json"
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_encode_str = json.encoder.encode_basestring_ascii


def _error(status: int, kind: str, message: str) -> Response:
    return Response(_dumps({"error": kind, "message": message}).encode(), status_code=status, media_type=_JSON)


_ID_STR = {str}
_ID_INT = {int}


def render_response(request_id: str, experiment: str, arm: str, version: int | None, prefix: str,
                    ids: list, scores: np.ndarray, order: list[int]) -> bytes:
    """The response JSON, built with C-level map/format over the ranked candidates.

    Equivalent to json.dumps of the documented object, except that scores are
    written with 9 decimals (fixed point: float repr costs ~1 µs a number on
    small CPUs, integer formatting a tenth of that); ids are JSON-escaped by the
    json module's own string encoder.
    """
    kinds = set(map(type, ids))
    if kinds == _ID_STR:
        ids_json = list(map(_encode_str, ids))
    elif kinds == _ID_INT:
        ids_json = ids
    else:
        ids_json = [_encode_str(i) if type(i) is str else str(i) for i in ids]
    row = '{"id":%s,"score":%s.%09d,"rank":%d,"tracking_id":"' + prefix + '%s"}'
    nano = np.rint(np.asarray(scores, dtype=np.float64) * 1e9).astype(np.int64)
    whole, frac = np.divmod(nano, 1_000_000_000)
    whole, frac = whole.tolist(), frac.tolist()
    get_id = ids_json.__getitem__
    rows = ",".join(map(row.__mod__, zip(map(get_id, order), map(whole.__getitem__, order),
                                         map(frac.__getitem__, order), range(1, len(order) + 1),
                                         map(SUFFIXES.__getitem__, order))))
    head = _dumps({"request_id": request_id, "experiment": experiment, "arm": arm, "model_version": version})
    return f'{head[:-1]},"candidates":[{rows}]}}'.encode()


def build_loader(config: ServingConfig, metrics: ServerMetrics | None = None) -> ServingLoader:
    m = config.model
    store = ModelStore(m.storage, m.name, cache_dir=m.cache_dir, max_bytes=m.max_bytes,
                       canary_tolerance=m.canary_tolerance, require_canary=m.require_canary)
    return ServingLoader(store, config.load_experiment, metrics=metrics, poll_seconds=m.poll_seconds)


class PredictionService:
    """The request logic, separate from HTTP so tests and in-process users can call `handle` directly."""

    def __init__(self, config: ServingConfig, loader: ServingLoader, metrics: ServerMetrics,
                 prediction_log: PredictionLog | None) -> None:
        self.config = config
        self.loader = loader
        self.metrics = metrics
        self.log = prediction_log
        self.limits = config.limits
        self.parse = request_parser(config.limits)
        self.ids = TrackingIds()
        self.rng = np.random.default_rng()
        self.debug_every = config.log.debug_every if config.log is not None else 0
        self.requests = 0
        self._arm_counters: dict[str, Any] = {}

    def handle(self, body: bytes) -> tuple[int, bytes]:
        """Score one request body; returns (HTTP status, JSON bytes)."""
        t0 = time.perf_counter()
        try:
            status, out = 200, self._predict(body)
        except RequestError as exc:
            self.metrics.errors.labels(exc.kind if exc.status != 422 else "invalid_request").inc()
            status, out = exc.status, _dumps({"error": exc.kind, "message": exc.message}).encode()
        except Exception as exc:  # never leak a traceback to the ad server; log it here
            log.exception("predict failed")
            self.metrics.errors.labels("internal").inc()
            status = 500
            out = _dumps({"error": "internal", "message": f"{type(exc).__name__}: {exc}"}).encode()
        self.metrics.latency.observe(time.perf_counter() - t0)
        return status, out

    def _predict(self, body: bytes) -> bytes:
        if len(body) > self.limits.max_body_bytes:
            raise RequestError(413, "body_too_large", f"the body is {len(body)} bytes; the limit is "
                                                      f"{self.limits.max_body_bytes}")
        req = self.parse(body)
        state = self.loader.state
        if state is None:
            raise RequestError(503, "not_ready", self.loader.startup_error or "no model loaded yet")
        now_ms = int(time.time() * 1000)
        prefix = self.ids.prefix(now_ms)
        request_id = req.request_id or prefix
        unit_id = req.user_id or request_id
        arm = state.assigner.assign(unit_id)
        n = len(req.candidate_ids)
        if arm.random:
            predictor = None
            scores = self.rng.random(n)
            version = None
        else:
            predictor = state.arms[arm.name].predictor
            if predictor is None:
                raise RequestError(503, "not_ready", f"arm {arm.name!r} has no model loaded")
            try:
                scores = predictor.score(req.context, req.candidate_fields)
            except (DataError, CtropsError, TypeError, ValueError) as exc:
                raise RequestError(422, "invalid_request", f"cannot encode the request: {exc}") from None
            version = predictor.model_version
        order = np.argsort(-scores, kind="stable")
        if req.top_k is not None and req.top_k < n:
            order = order[:req.top_k]
        ids = req.candidate_ids
        body_out = render_response(request_id, state.experiment.name, arm.name, version, prefix, ids,
                                   scores, order.tolist())
        counter = self._arm_counters.get(arm.name)
        if counter is None:
            counter = self._arm_counters[arm.name] = self.metrics.predictions.labels(arm.name)
        counter.inc()
        self.metrics.candidates.inc(n)
        self.requests += 1
        if self.log is not None:
            self.log.submit(RequestLog(
                now_ms, request_id, unit_id, state.experiment.name, arm.name,
                self.loader.store.model_name, version, prefix, ids, scores, order,
                req.candidate_passthrough, req.passthrough))
            if self.debug_every and predictor is not None and self.requests % self.debug_every == 0:
                self._debug(predictor, req, prefix, request_id, arm.name, int(order[0]), now_ms)
        return body_out

    def _debug(self, predictor: Any, req: Any, prefix: str, request_id: str, arm: str, pos: int,
               now_ms: int) -> None:
        """Queue a debug record; the log writer thread builds it (explaining costs milliseconds)."""
        context, candidate = req.context, req.candidate_fields[pos]
        candidate_id = req.candidate_ids[pos]

        def build() -> dict:
            return {"schema": 1, "kind": "debug", "ts_ms": now_ms, "request_id": request_id, "arm": arm,
                    "tracking_id": f"{prefix}{pos:04x}", "candidate_id": candidate_id,
                    "context": context, "candidate": candidate, "explain": predictor.explain(context, candidate)}

        self.log.submit_debug(build)


def create_app(config: ServingConfig, *, loader: ServingLoader | None = None,
               prediction_log: PredictionLog | None = None, metrics: ServerMetrics | None = None,
               start_background: bool = True) -> "PredictFastPath":
    """Build the app; `loader` / `prediction_log` may be injected (tests, embedding)."""
    metrics = metrics or ServerMetrics()
    loader = loader or build_loader(config, metrics)
    if loader.metrics is None:
        loader.metrics = metrics
    if prediction_log is None and config.log is not None:
        prediction_log = PredictionLog(config.log, metrics)
    service = PredictionService(config, loader, metrics, prediction_log)
    token = config.server.resolved_admin_token()
    from ctrops import __version__ as ctrops_version
    openapi = _dumps(openapi_document(config.limits, str(ctrops_version))).encode()
    max_body = config.limits.max_body_bytes

    async def predict(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            metrics.errors.labels("body_too_large").inc()
            return _error(413, "body_too_large", f"the body is {length} bytes; the limit is {max_body}")
        body = await request.body()
        status, out = service.handle(body)
        return Response(out, status_code=status, media_type=_JSON)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"alive"}', media_type=_JSON)

    async def readyz(request: Request) -> Response:
        state = loader.state
        if state is None:
            return JSONResponse({"ready": False, "message": loader.startup_error or "no model loaded yet"},
                                status_code=503)
        body = {"ready": state.ready, "experiment": state.experiment.name, "model_name": loader.store.model_name,
                "arms": {n: {"share": am.arm.share, "model": am.arm.model, "random": am.arm.random,
                             "requested_version": am.requested_version,
                             "serving_version": am.predictor.model_version if am.predictor is not None else None,
                             "problem": am.problem} for n, am in state.arms.items()}}
        if not state.ready:
            body["message"] = "; ".join(state.problems)
        return JSONResponse(body, status_code=200 if state.ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        if prediction_log is not None:
            metrics.log_queue_depth.set(prediction_log.depth)
        return Response(metrics.render(), media_type=metrics.content_type)

    async def openapi_endpoint(request: Request) -> Response:
        return Response(openapi, media_type=_JSON)

    async def admin_reload(request: Request) -> Response:
        if not token:
            metrics.errors.labels("unauthorized").inc()
            return _error(403, "admin_disabled", f"admin endpoints are disabled: set server.admin_token or "
                                                 f"${config.server.admin_token_env}")
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            metrics.errors.labels("unauthorized").inc()
            return Response(_dumps({"error": "unauthorized", "message": "send 'Authorization: Bearer <token>'"})
                            .encode(), status_code=401, media_type=_JSON,
                            headers={"WWW-Authenticate": "Bearer"})
        import anyio
        result = await anyio.to_thread.run_sync(loader.reload)
        return JSONResponse(result.to_dict(), status_code=409 if result.outcome == "failure" else 200)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        service.ids.reseed()  # distinct per worker process (lifespan runs after fork)
        if start_background:
            # The log writer and the watcher are CPU-bound Python threads. With the default 5 ms GIL
            # switch interval, every socket call of the event loop can wait up to 5 ms to get the
            # GIL back from them (the "convoy effect"); 0.5 ms bounds that wait.
            sys.setswitchinterval(min(sys.getswitchinterval(), config.server.gil_switch_interval))
            import anyio
            if loader.state is None:
                await anyio.to_thread.run_sync(loader.reload)
            if prediction_log is not None:
                prediction_log.start()
            loader.start_watcher()
        try:
            yield
        finally:
            if start_background:
                loader.stop_watcher()
                if prediction_log is not None:
                    prediction_log.close(timeout=config.server.shutdown_timeout)

    routes = [
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        Route("/admin/reload", admin_reload, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    app.state.loader = loader
    app.state.prediction_log = prediction_log
    app.state.metrics = metrics
    return PredictFastPath(app, service, max_body)


class PredictFastPath:
    """ASGI entry: POST /v1/predict goes straight to the service; everything else to Starlette.

    The predict route is the only hot one; skipping routing, Request and
    Response objects there saves tens of microseconds per call, and the
    Starlette route stays registered (405 on other methods, same handler).
    """

    def __init__(self, app: Starlette, service: PredictionService, max_body: int) -> None:
        self.app = app
        self.state = app.state
        self.service = service
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/predict" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_body:
                    self.service.metrics.errors.labels("body_too_large").inc()
                    await _send(send, 413, _dumps({"error": "body_too_large", "message":
                                                   f"the body exceeds the limit of {self.max_body} bytes"}).encode())
                    return
            if not message.get("more_body", False):
                break
        status, out = self.service.handle(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        await _send(send, status, out)


_JSON_HEADER = (b"content-type", b"application/json")


async def _send(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON_HEADER, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
