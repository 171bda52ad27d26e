"""`ctrops serve`: the prediction server command (a typer sub-app the main CLI mounts)."""

from __future__ import annotations

import os
import sys

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Serve models over HTTP with ABn arms, hot reload and prediction logs.",
                  invoke_without_command=True, no_args_is_help=False)


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False,
                                help="serving.yaml (model storage, experiment, limits, log)"),
    host: Optional[str] = typer.Option(None, help="override server.host"),
    port: Optional[int] = typer.Option(None, help="override server.port"),
    workers: Optional[int] = typer.Option(None, help="override server.workers"),
    runtime: Optional[str] = typer.Option(None, help="granian or uvicorn (override server.runtime)"),
    check: bool = typer.Option(False, "--check", help="validate the config, load the models, print the "
                                                      "arms and exit"),
) -> None:
    """Start the server (or with --check, validate everything it would load)."""
    if ctx.invoked_subcommand is not None:
        return
    from ctrops.errors import CtropsError
    from ctrops.serve.config import ServingConfig

    try:
        cfg = ServingConfig.from_yaml(config)
    except CtropsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    if check:
        from ctrops.serve.app import build_loader

        loader = build_loader(cfg)
        result = loader.reload()
        typer.echo(f"{result.outcome}: {result.message}")
        for line in result.refused:
            typer.echo(f"refused: {line}")
        ready = loader.state is not None and loader.state.ready
        raise typer.Exit(0 if ready else 1)
    # The supervisor stays in memory as long as the server runs: replace this process (same pid, so
    # signals still reach it) by the lean entry, without typer and rich (~7 MiB less).
    argv = [sys.executable, "-m", "ctrops.serve.server", "--config", str(config)]
    for flag, value in (("--host", host), ("--port", port), ("--workers", workers), ("--runtime", runtime)):
        if value is not None:
            argv += [flag, str(value)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def main() -> None:  # `python -m ctrops.cli_serve --config serving.yaml`
    app()


if __name__ == "__main__":
    main()
