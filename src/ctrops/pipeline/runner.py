"""Run the pipeline's steps in order, recording each in MLflow and on screen.

One MLflow parent run per pipeline run, one child run per step (status,
seconds, outputs). Each step's outputs are also saved in `<run_dir>/state.json`
so `from_step` can resume: earlier steps are not re-run, their saved outputs
are reused, and the same MLflow parent run continues.

A failing step stops the run: the step's child run and the parent are marked
FAILED with the error, later steps are reported as skipped, and because only
`publish` moves production, production stays untouched.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctrops.errors import ConfigError
from ctrops.pipeline.config import PipelineConfig
from ctrops.pipeline.steps import STEP_NAMES, STEPS, StepContext

STATE_FILE = "state.json"


@dataclass
class StepRecord:
    name: str
    status: str = "pending"  # pending | running | done | failed | skipped | reused
    seconds: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    note: str = ""
    mlflow_run_id: str | None = None


@dataclass
class PipelineResult:
    """Outcome of `run_pipeline`: per-step records and where production stands."""

    run_dir: str
    parent_run_id: str | None
    tracking_uri: str
    steps: list[StepRecord]
    failed_step: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed_step is None

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)

    @property
    def gate_passed(self) -> bool | None:
        rec = self.step("gate")
        return rec.outputs.get("passed") if rec.status in ("done", "reused") else None

    @property
    def version(self) -> int | None:
        rec = self.step("register")
        return rec.outputs.get("version") if rec.status in ("done", "reused") else None

    @property
    def promoted(self) -> bool:
        rec = self.step("publish")
        return bool(rec.status == "done" and rec.outputs.get("production_moved"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ok=self.ok, gate_passed=self.gate_passed, version=self.version, promoted=self.promoted)
        return out


class _Display:
    """A live table of the steps (rich), or nothing when no console is given."""

    def __init__(self, console: Any, records: list[StepRecord], title: str) -> None:
        self.console, self.records, self.title = console, records, title
        self._live = None

    def _table(self) -> Any:
        from rich.table import Table

        style = {"done": "green", "reused": "cyan", "failed": "bold red", "running": "yellow",
                 "skipped": "dim", "pending": "dim"}
        table = Table(title=self.title, expand=False)
        for col in ("step", "status", "seconds", "details"):
            table.add_column(col)
        for r in self.records:
            detail = r.error if r.status == "failed" else r.note
            table.add_row(r.name, f"[{style.get(r.status, '')}]{r.status}[/]",
                          f"{r.seconds:.1f}" if r.seconds else "", (detail or "")[:110])
        return table

    def __enter__(self) -> "_Display":
        if self.console is not None:
            from rich.live import Live

            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self.refresh()
            self._live.__exit__(*exc)


def _load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable pipeline state ({exc}); run without --from") from None


def _save_state(run_dir: Path, state: Mapping[str, Any]) -> None:
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
    os.replace(tmp, run_dir / STATE_FILE)


def _target(cfg: PipelineConfig) -> Any:
    from ctrops.registry.mlflow_glue import TrackingTarget

    if cfg.tracking_uri:
        return TrackingTarget(cfg.tracking_uri, None, cfg.experiment)
    return TrackingTarget.embedded(cfg.tracking_root, cfg.experiment)


def run_pipeline(config_path_or_dict: str | os.PathLike | Mapping[str, Any], from_step: str | None = None,
                 console: Any = None) -> PipelineResult:
    """Run build-dataset → tune → train → evaluate → gate → register → publish.

    `from_step` re-runs from that step with the saved outputs of the earlier
    ones. `console` (a rich Console) shows a live table of the steps. Never
    raises for a failing step: the result names it (`failed_step`, `error`);
    configuration errors raise ConfigError before anything runs.
    """
    import mlflow

    cfg = PipelineConfig.load(config_path_or_dict)
    if from_step is not None and from_step not in STEP_NAMES:
        raise ConfigError(f"--from: unknown step {from_step!r}; steps are {', '.join(STEP_NAMES)}")
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(run_dir) if from_step else {}
    first = STEP_NAMES.index(from_step) if from_step else 0
    saved = state.get("steps", {})
    for name in STEP_NAMES[:first]:
        if saved.get(name, {}).get("status") not in ("done", "reused"):
            raise ConfigError(f"--from {from_step}: step {name!r} has not completed in {run_dir}; "
                              f"run from {name!r} or without --from")
    records = [StepRecord(name) for name in STEP_NAMES]
    for rec in records[:first]:
        old = saved[rec.name]
        rec.status, rec.outputs, rec.seconds = "reused", old.get("outputs", {}), float(old.get("seconds", 0.0))
        rec.note = "outputs from the previous run"

    target = _target(cfg)
    from ctrops.registry.mlflow_glue import connect

    client = connect(target)
    parent_id = state.get("parent_run_id") if from_step else None
    result = PipelineResult(str(run_dir), None, target.tracking_uri, records)
    outputs = {r.name: r.outputs for r in records[:first]}

    def persist() -> None:
        _save_state(run_dir, {"config": cfg.source, "parent_run_id": result.parent_run_id,
                              "steps": {r.name: asdict(r) for r in records}})

    # a parent run left open by a crashed process must not swallow our child runs
    while mlflow.active_run() is not None:
        mlflow.end_run()
    parent = mlflow.start_run(run_id=parent_id) if parent_id else mlflow.start_run(
        run_name=f"pipeline-{cfg.name}", tags={"ctrops.pipeline": cfg.name, "ctrops.config": cfg.source})
    result.parent_run_id = parent.info.run_id
    with parent, _Display(console, records, f"ctrops pipeline {cfg.name}") as display:
        if from_step:
            mlflow.set_tag("ctrops.resumed_from", from_step)
        mlflow.log_params({"model_type": cfg.model_type, "tune.n_trials": cfg.tune.n_trials,
                           "shards": cfg.shards, "data.source": cfg.data.source} if not from_step else {})
        for rec in records[first:]:
            if result.failed_step is not None:
                rec.status = "skipped"
                continue
            step_dir = run_dir / rec.name
            step_dir.mkdir(parents=True, exist_ok=True)
            rec.status, rec.note, rec.error = "running", "", None
            display.refresh()

            def note(text: str, rec: StepRecord = rec) -> None:
                rec.note = text
                display.refresh()

            start = time.perf_counter()
            with mlflow.start_run(run_name=rec.name, nested=True, tags={"ctrops.step": rec.name}) as child:
                rec.mlflow_run_id = child.info.run_id
                ctx = StepContext(cfg, run_dir, outputs, client, result.parent_run_id, note, step_dir)
                try:
                    rec.outputs = STEPS[rec.name](ctx) or {}
                    rec.status = "done"
                    mlflow.log_dict(json.loads(json.dumps(rec.outputs, default=str)), "outputs.json")
                except Exception as exc:  # noqa: BLE001 - any failure stops the run with its reason
                    rec.status = "failed"
                    rec.error = f"{type(exc).__name__}: {exc}"
                    result.failed_step, result.error = rec.name, rec.error
                    (step_dir / "error.txt").write_text(traceback.format_exc())
                    mlflow.set_tag("error", rec.error[:5000])
                    mlflow.log_artifact(str(step_dir / "error.txt"))
                rec.seconds = time.perf_counter() - start
                mlflow.log_metric("seconds", rec.seconds)
                if rec.status == "failed":
                    mlflow.end_run(status="FAILED")
            outputs[rec.name] = rec.outputs
            client.log_metric(result.parent_run_id, f"step.{rec.name}.seconds", rec.seconds)
            persist()
            display.refresh()
        if result.failed_step is not None:
            mlflow.set_tag("failed_step", result.failed_step)
            mlflow.set_tag("error", (result.error or "")[:5000])
            _write_summary(run_dir, result)
            mlflow.end_run(status="FAILED")
        else:
            _write_summary(run_dir, result)
    persist()
    return result


def _write_summary(run_dir: Path, result: PipelineResult) -> None:
    (run_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
