"""`ctrops logs`: generate realistic ad logs and join them into labelled training data."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ctrops.errors import CtropsError

app = typer.Typer(help="Ad logs: generate, and join impressions with clicks and conversions.",
                  no_args_is_help=True)
console = Console(stderr=True)


@app.command()
def generate(
    out: Path = typer.Argument(..., metavar="OUT_DIR"),
    days: int = typer.Option(14, "--days"),
    impressions_per_day: int = typer.Option(20_000, "--impressions-per-day"),
    seed: int = typer.Option(0, "--seed"),
    week_drift: float = typer.Option(0.5, "--week-drift", help="how far the hidden click model moves each week"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl, csv or parquet"),
    malformed_rate: float = typer.Option(0.001, "--malformed-rate"),
) -> None:
    """Write impression, click and conversion logs drawn from a hidden model with weekly drift."""
    from ctrops.pipeline.loggen import generate_logs

    with console.status(f"generating {days} days of logs"):
        logs = generate_logs(out, days=days, impressions_per_day=impressions_per_day, seed=seed,
                             week_drift=week_drift, format=fmt, malformed_rate=malformed_rate)
    typer.echo(json.dumps(logs.to_dict(), indent=2, default=str))


@app.command()
def join(
    impressions: str = typer.Argument(..., help="impression log file, folder or glob"),
    clicks: str = typer.Argument(..., help="click log file, folder or glob"),
    out: Path = typer.Option(..., "--out", help="output folder (ctr/, cvr/, rejects.jsonl, join_report.json)"),
    conversions: Optional[str] = typer.Option(None, "--conversions"),
    click_window_minutes: float = typer.Option(60.0, "--click-window-minutes"),
    conversion_window_hours: float = typer.Option(72.0, "--conversion-window-hours"),
    valid_days: int = typer.Option(1, "--valid-days", help="the latest N days become validation"),
) -> None:
    """Label impressions with clicks (CTR) and clicks with conversions (CVR) within attribution windows."""
    from ctrops.pipeline.join import join_logs

    try:
        with console.status("joining logs"):
            report = join_logs(impressions, clicks, out, conversions=conversions,
                               click_window=timedelta(minutes=click_window_minutes),
                               conversion_window=timedelta(hours=conversion_window_hours), valid_days=valid_days)
    except (CtropsError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2)
    typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
