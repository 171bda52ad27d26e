"""Start the prediction server on granian (RSGI, or ASGI) or uvicorn (ASGI) from a serving.yaml.

Both runtimes import the app through `app_from_env` in each worker process, so
every worker maps the model itself (the page cache shares the weights) and
runs its own watcher. The prediction log's writer is, by default
(`log.writer: process`, see log_process.py), one process for the whole
server, started here before the workers: each worker hands it a shared-memory
ring, so Arrow and Parquet work never holds a worker's GIL, and Python's and
Arrow's memory is paid once, not per worker. SIGTERM goes through the
runtime's graceful shutdown into each worker's lifespan, which stops its ring
after the last request and waits until the writer has written it; when the
workers are gone, `run` tells the writer to finalise its files and waits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from ctrops.serve.config import ServingConfig

CONFIG_ENV = "CTROPS_SERVING_CONFIG"
LOG_HUB_ENV = "CTROPS_LOG_HUB"  # the server's log writer (LogHub.name), for the workers


def app_from_env():
    """ASGI app factory for worker processes: reads the config path from $CTROPS_SERVING_CONFIG."""
    from ctrops.serve.app import create_app

    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"${CONFIG_ENV} must name the serving.yaml")
    logging.basicConfig(level=os.environ.get("CTROPS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServingConfig.from_yaml(path)
    if config.log is not None and config.log.writer == "process":
        from ctrops.serve.log_process import ProcessPredictionLog, process_writer_supported
        from ctrops.serve.metrics import ServerMetrics

        if process_writer_supported():
            metrics = ServerMetrics()  # without a hub (an app factory used on its own): a writer per worker
            plog = ProcessPredictionLog(config.log, metrics, hub=os.environ.get(LOG_HUB_ENV) or None)
            return create_app(config, prediction_log=plog, metrics=metrics)
        logging.getLogger("ctrops.serve").warning(
            "log.writer: process needs Linux and x86-64; the log writer runs as a thread in each worker")
    return create_app(config)


def wsgi_app_from_env():
    """WSGI app factory for granian's WSGI workers (`server.interface: wsgi`); see app.PredictWSGI."""
    from ctrops.serve.app import PredictWSGI

    return PredictWSGI(app_from_env())


def run(config_path: str | Path, *, host: str | None = None, port: int | None = None,
        workers: int | None = None, runtime: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; arguments override the config's server section."""
    config = ServingConfig.from_yaml(config_path)  # validate before forking workers
    s = config.server
    host, port = host or s.host, port or s.port
    workers, runtime = workers or s.workers, runtime or s.runtime
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    hub = None
    if config.log is not None and config.log.writer == "process":
        from ctrops.serve.log_hub import LogHub, process_writer_supported  # no NumPy/Arrow in the supervisor

        if process_writer_supported():
            hub = LogHub(config.log).start()
            os.environ[LOG_HUB_ENV] = hub.name
            # uvicorn re-raises the SIGTERM it shut down on once it restores the previous handler: with
            # the default one the process would die there, before the writer is told to finish
            signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        _serve(config, host, port, workers, runtime)
    finally:
        if hub is not None:
            hub.close(timeout=s.shutdown_timeout + 30)  # after the workers: it finalises the files


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _serve(config: ServingConfig, host: str, port: int, workers: int, runtime: str) -> None:
    s = config.server
    target = "ctrops.serve.server:app_from_env"
    if runtime == "granian":
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces

        # RSGI: granian's native interface hands the app the body as bytes and takes the answer in
        # one call, without ASGI's per-message dicts (the app serves both; see app.PredictFastPath)
        interface = {"rsgi": Interfaces.RSGI, "asgi": Interfaces.ASGI, "wsgi": Interfaces.WSGI}[s.interface]
        if s.interface == "wsgi":
            # two Python threads per worker: requests are CPU-bound, more would only take turns at the
            # GIL (granian would allow 256 by default); a second keeps predictions flowing while the
            # first runs a slow cold route (POST /admin/reload loads a model in the calling thread)
            target = "ctrops.serve.server:wsgi_app_from_env"
            extra = {"blocking_threads": 2}
        else:
            extra = {}
        Granian(target, address=host, port=port, workers=workers, interface=interface, http=HTTPModes.http1,
                websockets=False, factory=True, backlog=2048, log_access=False,
                workers_kill_timeout=int(s.shutdown_timeout) + 5, **extra).serve()
    else:
        import uvicorn

        uvicorn.run(target, host=host, port=port, workers=workers, factory=True, access_log=False,
                    timeout_graceful_shutdown=int(s.shutdown_timeout), backlog=2048, log_level="info")


def main(argv: list[str] | None = None) -> int:
    """`python -m ctrops.serve.server --config serving.yaml [--host --port --workers --runtime]`: the
    server's supervisor with nothing but what it needs (`ctrops serve` execs into this)."""
    import argparse

    from ctrops.errors import CtropsError

    ap = argparse.ArgumentParser(prog="ctrops serve")
    ap.add_argument("--config", required=True)
    ap.add_argument("--host")
    ap.add_argument("--port", type=int)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--runtime", choices=["granian", "uvicorn"])
    a = ap.parse_args(argv)
    try:
        run(a.config, host=a.host, port=a.port, workers=a.workers, runtime=a.runtime)
    except CtropsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
