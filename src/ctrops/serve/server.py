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
        interface = Interfaces.RSGI if s.interface == "rsgi" else Interfaces.ASGI
        Granian(target, address=host, port=port, workers=workers, interface=interface, http=HTTPModes.http1,
                websockets=False, factory=True, backlog=2048, log_access=False,
                workers_kill_timeout=int(s.shutdown_timeout) + 5).serve()
    else:
        import uvicorn

        uvicorn.run(target, host=host, port=port, workers=workers, factory=True, access_log=False,
                    timeout_graceful_shutdown=int(s.shutdown_timeout), backlog=2048, log_level="info")
