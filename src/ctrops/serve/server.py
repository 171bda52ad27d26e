"""Start the prediction server on granian (RSGI, or ASGI) or uvicorn (ASGI) from a serving.yaml.

Both runtimes import the app through `app_from_env` in each worker process, so
every worker maps the model itself (the page cache shares the weights) and
runs its own watcher and log writer. The log writer is a child process of the
worker by default (`log.writer: process`, see log_process.py): its Arrow and
Parquet work then never holds the worker's GIL. SIGTERM goes through the
runtime's graceful shutdown into the app's lifespan, which drains the
prediction log (and waits for the writer process to finish its files).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ctrops.serve.config import ServingConfig

CONFIG_ENV = "CTROPS_SERVING_CONFIG"


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
            metrics = ServerMetrics()
            return create_app(config, prediction_log=ProcessPredictionLog(config.log, metrics), metrics=metrics)
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
