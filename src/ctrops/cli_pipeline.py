"""`ctrops pipeline ...`: run the training pipeline from a YAML config.

The lead mounts this sub-app on the main CLI:
`app.add_typer(cli_pipeline.app, name="pipeline")`.
Exit codes: 0 promoted (or ran through without publishing when the gate
refused: see `--strict`), 1 a step failed (production untouched), 2 a
configuration error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ctrops.errors import ConfigError

app = typer.Typer(help="Build data, tune, train, evaluate, gate, register and publish a model.",
                  no_args_is_help=True)


@app.command("run")
def run(config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False,
                                    help="pipeline YAML (see examples/pipeline.yaml)"),
        from_step: Optional[str] = typer.Option(None, "--from",
                                                help="re-run from this step, reusing earlier steps' saved outputs"),
        strict: bool = typer.Option(False, "--strict", help="exit 3 when the gate refuses the candidate"),
        json_out: bool = typer.Option(False, "--json", help="print the result as JSON on stdout")) -> None:
    """Run the steps build-dataset, tune, train, evaluate, gate, register, publish."""
    from rich.console import Console

    from ctrops.pipeline.runner import run_pipeline

    console = Console(stderr=True)
    try:
        result = run_pipeline(config, from_step=from_step, console=console)
    except ConfigError as exc:
        console.print(f"[bold red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    if not result.ok:
        console.print(f"[bold red]step {result.failed_step} failed:[/] {result.error}\n"
                      f"production is unchanged; details in {result.run_dir}/{result.failed_step}/error.txt; "
                      f"fix and re-run with --from {result.failed_step}")
        raise typer.Exit(1)
    if result.promoted:
        console.print(f"[green]v{result.version} is production[/] (MLflow run {result.parent_run_id})")
    else:
        reasons = result.step("gate").outputs.get("reasons", [])
        console.print(f"[yellow]v{result.version} registered as candidate, not promoted:[/] {'; '.join(reasons)}")
        if strict:
            raise typer.Exit(3)


@app.command("steps")
def steps() -> None:
    """List the step names (for --from)."""
    from ctrops.pipeline.steps import STEP_NAMES

    for name in STEP_NAMES:
        typer.echo(name)


def main() -> None:  # pragma: no cover - `python -m ctrops.cli_pipeline`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
