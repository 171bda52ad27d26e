"""The prediction app: /v1/predict, health, readiness, metrics, admin reload; RSGI and ASGI.

`PredictFastPath` is the entry for both interfaces (granian's native RSGI, or
ASGI for uvicorn and tests): /v1/predict goes straight to `PredictionService`,
every other route to a Starlette app (routing and lifespan only). The service
decodes and checks the body in one msgspec pass (schema.py; hand validation
names the path of a bad one), scores on the event loop thread (100 candidates
take well under a millisecond, less than a thread hop would cost), renders
the answer with one join and hands logging to a background writer.
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from itertools import repeat
from typing import Any, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ctrops.errors import CtropsError, DataError
from ctrops.serve import gil
from ctrops.serve.config import ServingConfig
from ctrops.serve.loader import ModelStore, ServingLoader
from ctrops.serve.logging_sink import PredictionLog, RequestLog
from ctrops.serve.metrics import RequestTally, ServerMetrics
from ctrops.serve.schema import RequestError, openapi_document, request_parser
from ctrops.serve.tracking import MAX_CANDIDATES, TrackingIds

try:  # the native fast path of /v1/predict; without it every request takes the general path
    from ctrops.serve._fastpath import FastPath
except ImportError:  # pragma: no cover - a build without the extension
    FastPath = None

log = logging.getLogger("ctrops.serve.app")
_JSON = "application/json"
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_encode_str = json.encoder.encode_basestring_ascii


def _error(status: int, kind: str, message: str) -> Response:
    return Response(_dumps({"error": kind, "message": message}).encode(), status_code=status, media_type=_JSON)


_ID_STR = {str}
_ID_INT = {int}
_ONE = 1_000_000_000  # a score in nano-units
# The response is one "".join over six pieces per ranked candidate; four come from tables
# built once or per request, so the only per-candidate work left is two C-level string
# conversions (id escape, score digits) and no Python-level loop at all.
_SCORE_HEAD = ',"score":0.'
_RANK_TAIL = tuple(f',"rank":{r},"tracking_id":"' for r in range(MAX_CANDIDATES + 1))
_NEXT_ROW = ',{"id":'
_SUFFIX_TAIL = tuple(f'{j:04x}"}}{_NEXT_ROW}' for j in range(MAX_CANDIDATES))


def render_response(request_id: str, experiment: str, arm: str, version: int | None, prefix: str,
                    ids: list, scores: np.ndarray, order: list[int]) -> bytes:
    """The response JSON, built by one join over the ranked candidates.

    Equivalent to json.dumps of the documented object, except that scores are
    written with 9 decimals (fixed point: float formatting costs ~0.3 µs a
    number on small CPUs, an integer's str() a sixth of that); ids are
    JSON-escaped by the json module's own string encoder.
    """
    n = len(order)
    if n == 0:
        rows = ""
    else:
        nano = np.rint(np.asarray(scores, dtype=np.float64)[order] * 1e9).astype(np.int64)
        ranked_ids = list(map(ids.__getitem__, order))
        kinds = set(map(type, ranked_ids))
        if kinds == _ID_STR:
            ids_json = list(map(_encode_str, ranked_ids))
        elif kinds == _ID_INT:
            ids_json = list(map(str, ranked_ids))
        else:
            ids_json = [_encode_str(i) if type(i) is str else str(i) for i in ranked_ids]
        pieces = [None, _SCORE_HEAD, None, None, prefix, None] * n
        pieces[0::6] = ids_json
        if 0 <= nano.min() and nano.max() < _ONE:  # every score prints as 0.ddddddddd
            pieces[2::6] = map(str.zfill, map(str, nano.tolist()), repeat(9, n))
        else:  # a score that rounds to 1 (or a scorer outside [0, 1]): rare, format each
            pieces[1::6] = [',"score":'] * n
            pieces[2::6] = [f"{v:.9f}" for v in (nano / 1e9).tolist()]
        pieces[3::6] = _RANK_TAIL[1:n + 1]
        pieces[5::6] = map(_SUFFIX_TAIL.__getitem__, order)
        rows = "".join(pieces)[:-len(_NEXT_ROW)]
    head = f'{{"request_id":{_encode_str(request_id)}{_head_tail(experiment, arm, version)}'
    return f'{head}{{"id":{rows}]}}'.encode() if n else f"{head}]}}".encode()


def _head_tail(experiment: str, arm: str, version: int | None) -> str:
    """The response's head after the request id, up to the candidates' opening bracket."""
    return (f',"experiment":{_encode_str(experiment)},"arm":{_encode_str(arm)},'
            f'"model_version":{"null" if version is None else int(version)},"candidates":[')


def build_loader(config: ServingConfig, metrics: ServerMetrics | None = None) -> ServingLoader:
    m = config.model
    store = ModelStore(m.storage, m.name, cache_dir=m.cache_dir, max_bytes=m.max_bytes,
                       canary_tolerance=m.canary_tolerance, require_canary=m.require_canary,
                       lock_memory=m.lock_memory, cache_keep=m.cache_keep)
    return ServingLoader(store, config.load_experiment, metrics=metrics, poll_seconds=m.poll_seconds)


class PredictionService:
    """The request logic, separate from HTTP so tests and in-process users can call `handle` directly."""

    def __init__(self, config: ServingConfig, loader: ServingLoader, metrics: ServerMetrics,
                 prediction_log: PredictionLog | None) -> None:
        self.config = config
        self.loader = loader
        self.metrics = metrics
        self.limits = config.limits
        self.parse = request_parser(config.limits)
        self.ids = TrackingIds()
        self.rng = np.random.default_rng()
        self.debug_every = config.log.debug_every if config.log is not None else 0
        self.requests = 0
        self.tally = RequestTally(metrics)  # per-request metrics, added to Prometheus in batches
        # The native fast path (None: every request takes the general path). It logs through
        # submit_columns / submit_request (never Python lists of ids), so a log without
        # submit_request keeps requests on the general path.
        # CTROPS_FAST_PATH=0 turns it off (benchmarks compare the two paths in one run).
        self.use_log(prediction_log)
        usable = (FastPath is not None and os.environ.get("CTROPS_FAST_PATH", "1") != "0"
                  and (prediction_log is None or self._submit_request is not None))
        self.fast = FastPath.from_limits(config.limits) if usable else None
        self._head_tails: dict[tuple, bytes] = {}

    def use_log(self, prediction_log: Any) -> None:
        """Log through `prediction_log` (None: no log). The fast path hands a log with
        `submit_columns` the body's log columns (no Python object per candidate in the writer),
        and the log part of the body (`submit_request`) when the passthrough has no column shape."""
        self.log = prediction_log
        self._submit_request = getattr(prediction_log, "submit_request", None)
        self._submit_columns = getattr(prediction_log, "submit_columns", None)
        self._log_mode = 0 if prediction_log is None else 2 if self._submit_columns is not None else 1

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
        self.tally.latency(time.perf_counter() - t0)
        return status, out

    def _predict(self, body: bytes) -> bytes:
        if len(body) > self.limits.max_body_bytes:
            raise RequestError(413, "body_too_large", f"the body is {len(body)} bytes; the limit is "
                                                      f"{self.limits.max_body_bytes}")
        if self.fast is not None and not (self.debug_every and (self.requests + 1) % self.debug_every == 0):
            out = self._predict_fast(body)
            if out is not None:
                return out
        return self._predict_general(body)

    def _predict_fast(self, body: bytes) -> bytes | None:
        """The answer through the native fast path, or None: then the general path answers (same bytes).

        None whenever the fast path would not give exactly the general path's answer: a body it does
        not scan (escapes, odd numbers, an error to report...), no state, the random arm, an arm
        without a native model (e.g. an injected scorer), a value the encoder wants to see in Python.
        """
        fast = self.fast
        scanned = fast.scan(body)
        if scanned is None:
            return None
        state = self.loader.state
        if state is None:
            return None
        request_id, user_id = scanned
        now_ms = int(time.time() * 1000)
        prefix = self.ids.prefix(now_ms)
        request_id = request_id or prefix
        unit_id = user_id or request_id
        arm = state.assigner.assign(unit_id)
        if arm.random:
            return None
        predictor = state.arms[arm.name].predictor
        encoder = getattr(predictor, "request_encoder", None)
        if encoder is None:
            return None
        version = predictor.model_version
        experiment = state.experiment.name
        key = (experiment, arm.name, version)
        tail = self._head_tails.get(key)
        if tail is None:
            if len(self._head_tails) > 64:
                self._head_tails.clear()
            tail = self._head_tails[key] = _head_tail(experiment, arm.name, version).encode()
        head = b'{"request_id":' + _encode_str(request_id).encode() + tail
        done = fast.finish(body, encoder, predictor.candidate_model, head, prefix.encode(), self._log_mode)
        if done is None:
            return None
        out, scores, order = done[0], done[1], done[2]
        self._count(arm.name, len(scores))
        if self._log_mode:
            # the ids and passthrough of the body, not its fields: as columns, or as JSON text
            submit = self._submit_columns if type(done[3]) is tuple else self._submit_request
            submit(now_ms, request_id, unit_id, experiment, arm.name, self.loader.store.model_name, version,
                   prefix, done[3], scores, order)
        return out

    def _count(self, arm: str, n: int) -> None:
        self.tally.prediction(arm, n)
        self.requests += 1

    def _predict_general(self, body: bytes) -> bytes:
        """Decode (msgspec, or the hand validator naming the path of a problem), score, render."""
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
        self._count(arm.name, n)
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
        service.tally.flush()  # this worker's latest requests; other workers' reach the files within 0.1 s
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

    def startup(load: bool = True) -> None:
        """Per-worker start: runs after fork (ASGI lifespan or RSGI init), before the first request."""
        service.ids.reseed()  # distinct per worker process
        if start_background:
            # A log writer thread is CPU-bound Python: with the default 5 ms GIL switch interval, every
            # socket call of the event loop could wait up to 5 ms to get the GIL back from it (the
            # "convoy effect"), so 0.5 ms bounds that wait; model loads shorten it while they run.
            interval = config.server.gil_switch_interval
            if interval is None:
                in_worker = isinstance(prediction_log, PredictionLog)
                interval = gil.RESPONSIVE if in_worker else sys.getswitchinterval()
            gil.set_base(interval)
            if config.server.sched_slice_us:
                from ctrops.serve.sched import shorten_slices
                shorten_slices(config.server.sched_slice_us)  # the runtime's threads are up; later ones inherit
            if load and loader.state is None:
                loader.reload()
            if prediction_log is not None:
                prediction_log.start()
            service.tally.start()
            loader.start_watcher()
            # Everything alive now (modules, the model's tables, the app) lives until exit: moving it
            # out of the collector's generations keeps a full collection, which the log writer's
            # batches can trigger, from scanning it all (15+ ms here, a whole p99 budget).
            gc.freeze()

    def shutdown() -> None:
        """Per-worker stop (SIGTERM through the runtime's graceful shutdown): drain the log."""
        if start_background:
            loader.stop_watcher()
            service.tally.close()
            if prediction_log is not None:
                prediction_log.close(timeout=config.server.shutdown_timeout)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if start_background and loader.state is None:
            import anyio
            await anyio.to_thread.run_sync(loader.reload)  # in a thread: the loop stays responsive
        startup(load=False)
        try:
            yield
        finally:
            shutdown()

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
    return PredictFastPath(app, service, max_body, startup, shutdown)


class PredictFastPath:
    """The server entry for both interfaces: ASGI (uvicorn, tests) and RSGI (granian's native one).

    POST /v1/predict goes straight to the service; everything else to Starlette.
    The predict route is the only hot one: skipping routing, Request and
    Response objects there saves tens of microseconds per call, and the
    Starlette route stays registered (405 on other methods, same handler).
    Under RSGI the body arrives as one bytes object and the answer leaves with
    one call, with no ASGI message dicts: about 40 µs less CPU per request on
    the benchmark machine. The other RSGI routes go through a small ASGI bridge
    to the same Starlette app, so both interfaces answer them identically.
    """

    def __init__(self, app: Starlette, service: PredictionService, max_body: int,
                 startup: Callable[[], None] | None = None, shutdown: Callable[[], None] | None = None) -> None:
        self.app = app
        self.state = app.state
        self.service = service
        self.max_body = max_body
        self._startup = startup
        self._shutdown = shutdown

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
                    await _send(send, 413, self._too_large())
                    return
            if not message.get("more_body", False):
                break
        status, out = self.service.handle(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        await _send(send, status, out)

    def _too_large(self) -> bytes:
        self.service.metrics.errors.labels("body_too_large").inc()
        return _dumps({"error": "body_too_large", "message":
                       f"the body exceeds the limit of {self.max_body} bytes"}).encode()

    # ---- RSGI (granian) -------------------------------------------------------------------------
    def __rsgi_init__(self, loop: Any) -> None:
        if self._startup is not None:
            self._startup()

    def __rsgi_del__(self, loop: Any) -> None:
        if self._shutdown is not None:
            self._shutdown()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return  # no websockets here; granian closes the connection
        if scope.path != "/v1/predict" or scope.method != "POST":
            await self._rsgi_to_asgi(scope, proto)
            return
        length = scope.headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body:
                proto.response_bytes(413, _RSGI_JSON, self._too_large())
                return
            body = await proto()
        else:  # chunked: read piece by piece so an endless body cannot exhaust memory
            chunks, size = [], 0
            async for chunk in proto:
                chunks.append(chunk)
                size += len(chunk)
                if size > self.max_body:
                    proto.response_bytes(413, _RSGI_JSON, self._too_large())
                    return
            body = b"".join(chunks)
        status, out = self.service.handle(body)
        proto.response_bytes(status, _RSGI_JSON, out)

    async def _rsgi_to_asgi(self, scope: Any, proto: Any) -> None:
        """Serve a cold route (health, metrics, admin, OpenAPI, 404/405) through the Starlette app."""
        body = await proto()
        host, _, port = (scope.server or ":0").rpartition(":")
        chost, _, cport = (scope.client or ":0").rpartition(":")
        asgi_scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": scope.http_version, "method": scope.method, "scheme": scope.scheme,
            "path": scope.path, "raw_path": scope.path.encode(), "root_path": "",
            "query_string": scope.query_string.encode(),
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()],
            "client": (chost, int(cport or 0)), "server": (host, int(port or 0)),
        }
        status, headers, out = await _asgi_call(self.app, asgi_scope, body)
        proto.response_bytes(status, headers, out)


class PredictWSGI:
    """The server entry for granian's WSGI interface (`server.interface: wsgi`).

    Why a third entry: granian hands a WSGI call to one Python thread with the
    body already read, and takes the answer back, with no event loop between;
    RSGI wakes an asyncio loop and awaits the body for every request. For the
    benchmark's 16 KB POST on 2 cores, an echo app cost 121-127 µs of server CPU
    per request over WSGI against 214-220 µs over RSGI (same run, see README).
    POST /v1/predict goes straight to the service as in the other entries; the
    cold routes run the same Starlette app on a private event loop.

    The worker's start (model, log writer connection, watcher) runs when the
    factory builds this object, in the worker process; its stop (drain the
    log) runs at the worker's exit, after granian has finished its requests.
    """

    def __init__(self, entry: PredictFastPath) -> None:
        self.entry = entry
        self.service = entry.service
        self.max_body = entry.max_body
        self._loops = threading.local()  # an event loop per WSGI thread for the cold routes
        self._stopped = False
        if entry._startup is not None:
            entry._startup()
        import atexit
        from multiprocessing import util

        # granian's workers are multiprocessing children, which leave through os._exit (atexit does not
        # run there); multiprocessing's finalizers do, after the worker's serve loop has returned
        util.Finalize(self, self.stop, exitpriority=100)
        atexit.register(self.stop)

    def stop(self) -> None:
        """Drain the prediction log and stop the watcher (once)."""
        if not self._stopped:
            self._stopped = True
            if self.entry._shutdown is not None:
                self.entry._shutdown()

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO") != "/v1/predict" or environ.get("REQUEST_METHOD") != "POST":
            return self._cold(environ, start_response)
        length = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if length:
            if not length.isdigit() or int(length) > self.max_body:
                return _wsgi_answer(start_response, 413, self.entry._too_large())
            body = stream.read(int(length))
        else:  # chunked: read at most one byte past the limit
            body = stream.read(self.max_body + 1)
            if len(body) > self.max_body:
                return _wsgi_answer(start_response, 413, self.entry._too_large())
        status, out = self.service.handle(body)
        return _wsgi_answer(start_response, status, out)

    def _cold(self, environ: dict, start_response: Callable) -> list[bytes]:
        """A cold route (health, metrics, admin, OpenAPI, 404/405) through the Starlette app."""
        import asyncio

        loop = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = asyncio.new_event_loop()
        length = environ.get("CONTENT_LENGTH") or ""
        body = environ["wsgi.input"].read(int(length)) if length.isdigit() else b""
        headers = [(k[5:].replace("_", "-").lower().encode("latin-1"), v.encode("latin-1"))
                   for k, v in environ.items() if k.startswith("HTTP_")]
        for key, name in (("CONTENT_TYPE", b"content-type"), ("CONTENT_LENGTH", b"content-length")):
            if environ.get(key):
                headers.append((name, environ[key].encode("latin-1")))
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1",
            "method": environ["REQUEST_METHOD"], "scheme": environ.get("wsgi.url_scheme", "http"),
            "path": environ.get("PATH_INFO") or "/", "raw_path": (environ.get("PATH_INFO") or "/").encode(),
            "root_path": "", "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
            "headers": headers, "client": (environ.get("REMOTE_ADDR", ""), int(environ.get("REMOTE_PORT") or 0)),
            "server": (environ.get("SERVER_NAME", ""), int(environ.get("SERVER_PORT") or 0)),
        }
        status, headers, out = loop.run_until_complete(_asgi_call(self.entry.app, scope, body))
        start_response(_status_line(status), headers + [("content-length", str(len(out)))])
        return [out]


async def _asgi_call(app: Any, scope: dict, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """One ASGI HTTP call of `app` with the whole body: (status, headers without content-length, which
    the caller sets for the whole answer, body). The RSGI and WSGI entries' bridge to Starlette."""
    sent_body = False
    status, headers, chunks = 500, [], []

    async def receive() -> dict:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])
                       if k.lower() != b"content-length"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, headers, b"".join(chunks)


def _status_line(status: int) -> str:
    from http import HTTPStatus

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


_STATUS_LINES: dict[int, str] = {}


def _wsgi_answer(start_response: Callable, status: int, body: bytes) -> list[bytes]:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = _status_line(status)
    start_response(line, [("content-type", "application/json"), ("content-length", str(len(body)))])
    return [body]


_JSON_HEADER = (b"content-type", b"application/json")
_RSGI_JSON = [("content-type", "application/json")]


async def _send(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON_HEADER, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
