"""The seven pipeline steps. Each reads earlier steps' saved outputs and returns its own.

A step's outputs are plain JSON (paths into the run directory, numbers,
strings) so `--from STEP` can resume from the saved state of a previous
invocation. Only the last step, `publish`, moves the `production` pointers
(storage manifest first, then the MLflow alias): any failure before it leaves
production exactly as it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrops.errors import ConfigError, DataError
from ctrops.pipeline.config import PipelineConfig

STEP_NAMES: tuple[str, ...] = ("build-dataset", "tune", "train", "evaluate", "gate", "register", "publish")
FACTORIZATION = ("ffm", "fm", "lr")


@dataclass
class StepContext:
    """What a step may use: the config, its own folder, earlier outputs, MLflow handles."""

    config: PipelineConfig
    run_dir: Path
    outputs: dict[str, dict[str, Any]]
    client: Any
    parent_run_id: str
    note: Callable[[str], None] = lambda text: None
    step_dir: Path = field(default=Path("."))

    def out(self, step: str) -> dict[str, Any]:
        try:
            return self.outputs[step]
        except KeyError:
            raise ConfigError(f"step {step!r} has no saved outputs in {self.run_dir}; "
                              f"run the pipeline from {step!r} or earlier") from None


# ---------------------------------------------------------------- data helpers
def _spec(spec_ref: str) -> Any:
    from ctrops.data.spec import FieldSpec

    return FieldSpec.criteo() if spec_ref == "criteo" else FieldSpec.from_yaml(spec_ref)


def read_table(path: str, fmt: str, spec: Any) -> Any:
    """Raw rows as an Arrow table: numeric fields as float64, everything else as strings."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "parquet":
        return pq.read_table(path)
    numeric = {f.name for f in spec.fields if f.kind == "numeric"}
    types = {c: (pa.float64() if c in numeric else pa.string()) for c in spec.columns}
    types[spec.label] = pa.float64()
    if fmt == "criteo":
        read = pacsv.ReadOptions(column_names=list(spec.columns))
        parse = pacsv.ParseOptions(delimiter="\t")
    elif fmt == "csv":
        read, parse = pacsv.ReadOptions(), pacsv.ParseOptions()
    else:
        raise ConfigError(f"data.format: {fmt!r} cannot be read as a table; use parquet, csv or criteo")
    conv = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False)
    try:
        return pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=conv)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {fmt} rows: {exc}", path=path) from None


def _encoder_input(path: str, fmt: str, spec: Any, seed: int) -> Any:
    if fmt == "criteo":
        from ctrops.data.readers import iter_criteo

        return list(iter_criteo(path, spec, seed))
    return read_table(path, fmt, spec)


def field_rows(table: Any, spec: Any, n: int) -> list[dict[str, Any]]:
    """The first `n` rows as dicts of raw field values (what a delivery request carries)."""
    names = [f.name for f in spec.fields if f.name in table.column_names]
    rows = table.select(names).slice(0, n).to_pylist()
    return [{k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
            for r in rows]


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def _metrics_to(client: Any, run_id: str, metrics: Mapping[str, Any], prefix: str = "") -> None:
    from ctrops.registry.mlflow_glue import finite_metrics

    from mlflow.entities import Metric
    import time

    ts = int(time.time() * 1000)
    items = [Metric(k, v, ts, 0) for k, v in finite_metrics(metrics, prefix).items()]
    for i in range(0, len(items), 900):
        client.log_batch(run_id, metrics=items[i:i + 900])


def _log_step(metrics: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, Any] | None = None) -> None:
    """Log to the active (step) run."""
    import mlflow

    from ctrops.registry.mlflow_glue import finite_metrics, flat_params

    if params:
        mlflow.log_params(flat_params(params))
    if metrics:
        mlflow.log_metrics(finite_metrics(metrics))
    if tags:
        mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items()})


# ---------------------------------------------------------------- build-dataset
def build_dataset(ctx: StepContext) -> dict[str, Any]:
    """Labelled train/valid rows (generated, joined from logs, or given), encoded into matrix caches."""
    cfg = ctx.config.data
    out_dir = ctx.step_dir
    join_report: dict[str, Any] | None = None
    if cfg.source in ("generate", "logs"):
        from datetime import timedelta

        from ctrops.pipeline.join import join_logs

        if cfg.source == "generate":
            from ctrops.pipeline.loggen import generate_logs

            ctx.note("generating logs")
            gen = generate_logs(out_dir / "logs", **cfg.generate)
            imp, clk = Path(gen.out_dir) / "impressions", Path(gen.out_dir) / "clicks"
            conv = Path(gen.out_dir) / "conversions"
            logs = {"impressions": str(imp), "clicks": str(clk),
                    "conversions": str(conv) if conv.exists() else None}
        else:
            logs = {k: cfg.logs.get(k) for k in ("impressions", "clicks", "conversions")}
        join_args = dict(cfg.join)
        for key in ("click_window", "conversion_window"):
            if key in join_args:
                join_args[key] = timedelta(seconds=float(join_args[key]))
        join_args.setdefault("numeric_columns", ["bid_price"] if cfg.source == "generate" else [])
        ctx.note("joining logs")
        report = join_logs(logs["impressions"], logs["clicks"], out_dir / "joined",
                           conversions=logs["conversions"], **join_args)
        split = report.ctr if cfg.target == "ctr" else report.cvr
        if split is None or not split.train_path:
            raise DataError(f"the join produced no {cfg.target} dataset (no conversions log?)")
        train, valid, spec_ref, fmt = split.train_path, split.valid_path, split.spec_path, "parquet"
        join_report = report.to_dict()
    else:
        train, valid, spec_ref, fmt = cfg.train, cfg.valid, cfg.spec, cfg.format
    assert train and valid and spec_ref
    spec = _spec(spec_ref)

    from ctrops.data.features import FeatureEncoder

    fcfg = ctx.config.features
    encoder = FeatureEncoder(spec, indexing=fcfg.get("indexing", "vocab"), min_count=fcfg.get("min_count", 10),
                             hash_space=fcfg.get("hash_space", 1_000_000), seed=fcfg.get("seed", 0))
    ctx.note("encoding features")
    train_in = _encoder_input(train, fmt, spec, encoder.seed)
    X_train = encoder.fit(train_in).transform(train_in)
    X_valid = encoder.transform(_encoder_input(valid, fmt, spec, encoder.seed))
    if X_train.n_rows == 0 or X_valid.n_rows == 0:
        raise DataError(f"empty dataset: {X_train.n_rows} training and {X_valid.n_rows} validation rows")
    X_train.save(out_dir / "train_matrix")
    X_valid.save(out_dir / "valid_matrix")
    encoder.save(out_dir / "encoder")
    ctr_train, ctr_valid = float(np.mean(X_train.labels)), float(np.mean(X_valid.labels))
    if join_report is not None:
        _write_json(out_dir / "join_report.json", join_report)
    _log_step(metrics={"rows_train": X_train.n_rows, "rows_valid": X_valid.n_rows, "ctr_train": ctr_train,
                       "ctr_valid": ctr_valid, "n_features": X_train.n_features},
              params={"data_source": cfg.source, "data_format": fmt})
    return {"train": train, "valid": valid, "format": fmt, "spec": spec_ref,
            "train_matrix": str(out_dir / "train_matrix"), "valid_matrix": str(out_dir / "valid_matrix"),
            "encoder": str(out_dir / "encoder"), "rows_train": X_train.n_rows, "rows_valid": X_valid.n_rows,
            "n_features": X_train.n_features, "ctr_train": ctr_train, "ctr_valid": ctr_valid,
            "join_report": str(out_dir / "join_report.json") if join_report is not None else None}


# ---------------------------------------------------------------- tune
def _xgb_columns(spec: Any) -> dict[str, Any]:
    return {"numeric_columns": [f.name for f in spec.fields if f.kind == "numeric"],
            "categorical_columns": [f.name for f in spec.fields if f.kind == "categorical"],
            "label_column": spec.label}


def _fixed_params(ctx: StepContext, searched: tuple[str, ...] = ()) -> dict[str, Any]:
    """Configured model parameters not searched by tuning (plus xgboost's column roles)."""
    fixed = {k: v for k, v in ctx.config.model_params.items() if k not in searched}
    if ctx.config.model_type == "xgboost":
        data = ctx.out("build-dataset")
        fixed.update(_xgb_columns(_spec(data["spec"])))
    return fixed


def _tuning_data(ctx: StepContext) -> Any:
    from ctrops.tune import TuningData

    data = ctx.out("build-dataset")
    if ctx.config.model_type == "xgboost":
        tables = ctx.step_dir / "tables"
        tables.mkdir(parents=True, exist_ok=True)
        paths = {}
        spec = _spec(data["spec"])
        import pyarrow.parquet as pq

        for part in ("train", "valid"):
            if data["format"] == "parquet":
                paths[part] = data[part]
            else:
                paths[part] = str(tables / f"{part}.parquet")
                pq.write_table(read_table(data[part], data["format"], spec), paths[part])
        return TuningData(paths["train"], paths["valid"], "parquet")
    return TuningData(data["train_matrix"], data["valid_matrix"], "matrix")


def tune_step(ctx: StepContext) -> dict[str, Any]:
    """Optuna over the model's space; warm-started CMA-ES from production's study when compatible."""
    from ctrops.tune import STUDY_ARTIFACT, OBJECTIVE_VERSION_TAG, Objective, WarmStart, load_warm_start, space_for
    from ctrops.tune import tune as run_study

    cfg = ctx.config
    space = space_for(cfg.model_type, cfg.tune.space)
    data = _tuning_data(ctx)
    fixed = _fixed_params(ctx, space.names)
    if not cfg.tune.enabled:
        return {"enabled": False, "params": {**fixed, **space.defaults()}, "data": data.__dict__,
                "objective_version": space.objective_version}
    if cfg.tune.warm_start:
        warm = load_warm_start(ctx.client, cfg.name, space, download_dir=ctx.step_dir / "warm")
    else:
        warm = WarmStart(reason="warm start disabled in the config; using TPE")
    ctx.note(warm.reason)

    def progress(done: int, total: int, best: float | None) -> None:
        ctx.note(f"{done}/{total} trials" + ("" if best is None else f", best {best:.5f}"))

    objective = Objective(cfg.model_type, data, space, fixed,
                          label_column=fixed.get("label_column", "label"))
    result = run_study(objective, space, n_trials=cfg.tune.n_trials, study_path=ctx.step_dir / "study.db",
                       source_trials=warm.source_trials, warm_start_reason=warm.reason,
                       n_workers=cfg.tune.n_workers, seed=cfg.tune.seed, on_progress=progress)
    best_epoch = result.best_user_attrs.get("best_epoch")
    _log_step(params={f"best.{k}": v for k, v in result.best_params.items()},
              metrics={"default_valid_log_loss": result.default_value, "best_valid_log_loss": result.best_value,
                       "best_trial": result.best_trial_number, "n_trials": result.n_trials,
                       "n_source_trials": result.n_source_trials},
              tags={"sampler": result.sampler, "warm_start_reason": warm.reason,
                    OBJECTIVE_VERSION_TAG: space.objective_version})
    # the study and its space version live on the pipeline (parent) run: next week's warm start reads them there
    ctx.client.log_artifact(ctx.parent_run_id, str(ctx.step_dir / "study.db"), STUDY_ARTIFACT.rsplit("/", 1)[0])
    ctx.client.set_tag(ctx.parent_run_id, OBJECTIVE_VERSION_TAG, space.objective_version)
    _metrics_to(ctx.client, ctx.parent_run_id, {"tune.default_valid_log_loss": result.default_value,
                                                "tune.best_valid_log_loss": result.best_value})
    summary = result.to_dict()
    summary.pop("values", None)
    _write_json(ctx.step_dir / "tune_result.json", result.to_dict())
    return {"enabled": True, "params": {**fixed, **result.best_params}, "best_params": result.best_params,
            "best_value": result.best_value, "default_value": result.default_value, "best_epoch": best_epoch,
            "sampler": result.sampler, "warm_start_reason": warm.reason, "study_path": result.study_path,
            "objective_version": space.objective_version, "n_trials": result.n_trials,
            "data": data.__dict__}


# ---------------------------------------------------------------- train
def _model_metadata(ctx: StepContext, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"model_name": ctx.config.name, "pipeline_run_id": ctx.parent_run_id, **extra}


def train_step(ctx: StepContext) -> dict[str, Any]:
    """Final model with the tuned parameters: one model, or shard models averaged."""
    from ctrops.data.matrix import FieldMatrix
    from ctrops.tune import TuningData, fit_and_score

    cfg = ctx.config
    tuned = ctx.out("tune")
    data = ctx.out("build-dataset")
    params = dict(tuned["params"])
    tdata = TuningData(**tuned["data"])
    shard_report = None
    if cfg.shards > 1:
        from ctrops.pipeline.shards import split_rows, train_shards

        train = FieldMatrix.load(data["train_matrix"])
        ctx.note(f"training {cfg.shards} shard models")
        rounds = cfg.shard_rounds
        if rounds == "every_epoch":
            rounds = max(1, int(params.get("epochs", 20)))
        model_params, report = train_shards(cfg.model_type, params, split_rows(train, cfg.shards),
                                            data["valid_matrix"], rounds=int(rounds),
                                            mix_step=cfg.shard_mix_step, work_dir=ctx.step_dir / "shards")
        # the best tuning trial is one model with these parameters on all rows: the baseline to compare with
        report.single_valid_loss = tuned.get("best_value")
        ctx.note(f"averaged {report.averaged_valid_loss:.5f} vs single {report.single_valid_loss}")
        valid_loss = report.averaged_valid_loss
        best_epoch = max(report.shard_best_epoch)
        shard_report = report.to_dict()
        _write_json(ctx.step_dir / "shards.json", shard_report)
    else:
        train, valid = tdata.load()
        ctx.note("fitting")
        model, valid_loss = fit_and_score(cfg.model_type, params, train, valid,
                                          params.get("label_column", "label"))
        best_epoch = getattr(model, "best_epoch_", None)
        model_params = getattr(model, "params_", None)
    meta = _model_metadata(ctx, {"model_type": cfg.model_type, "valid_log_loss": valid_loss,
                                 "best_epoch": best_epoch, "hyperparameters": params,
                                 "objective_version": tuned.get("objective_version")})
    if cfg.model_type in FACTORIZATION:
        from ctrops.artifact.format import save_model
        from ctrops.data.features import FeatureEncoder

        encoder = FeatureEncoder.load(data["encoder"])
        path = ctx.step_dir / "model.ctm"
        save_model(path, model_params, encoder.to_header(), encoder.arrays(), meta,
                   max_bytes=cfg.publish.max_bytes, dtype=cfg.publish.dtype)
    else:
        path = ctx.step_dir / "model.xgb.json"
        model.save(path)
    nbytes = path.stat().st_size
    _log_step(metrics={"valid_log_loss": valid_loss, "model_bytes": nbytes, "best_epoch": best_epoch or 0,
                       **({"shards.averaged_valid_loss": shard_report["averaged_valid_loss"],
                           "shards.single_valid_loss": shard_report["single_valid_loss"],
                           "shards.seconds": shard_report["seconds"]} if shard_report else {})},
              params={k: v for k, v in params.items() if not isinstance(v, (list, dict))})
    return {"model_path": str(path), "model_bytes": nbytes, "valid_log_loss": valid_loss,
            "best_epoch": best_epoch, "params": params, "shards": shard_report}


# ---------------------------------------------------------------- evaluate
def _production_predictions(ctx: StepContext, tmp: Path) -> tuple[np.ndarray | None, int | None, str]:
    """The production model's probabilities on this run's validation rows (re-encoded with its own encoder)."""
    from ctrops.registry.aliases import production_version

    cfg = ctx.config
    data = ctx.out("build-dataset")
    version = production_version(ctx.client, cfg.name)
    if version is None:
        return None, None, "no production model yet"
    mv = ctx.client.get_model_version(cfg.name, str(version))
    path = None
    try:  # storage holds the published file; for xgboost models the registry artifact does
        from ctrops.artifact.manifest import fetch_model, read_manifest

        opts = cfg.publish.storage_options or None
        entry = read_manifest(cfg.publish.storage, cfg.name, storage_options=opts).resolve("production")
        path = fetch_model(cfg.publish.storage, entry, tmp, storage_options=opts)
    except Exception:  # noqa: BLE001 - fall back to the registry copy below
        path = None
    if path is None:
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(f"models:/{cfg.name}/{version}", dst_path=str(tmp / "mv")))
        found = [p for p in (local / "artifacts").glob("*") if p.is_file()]
        if not found:
            raise DataError(f"production version {version} (run {mv.run_id}) has no model file to re-score")
        path = found[0]
    from ctrops.registry.pyfunc import model_kind

    spec = _spec(data["spec"])
    if model_kind(path) == "xgboost":
        from ctrops.models.xgb import XGBoostModel

        table = read_table(data["valid"], data["format"], spec)
        return XGBoostModel.load(path).predict_proba(table), version, str(path)
    from ctrops.artifact.format import load_model
    from ctrops.data.features import FeatureEncoder
    from ctrops.models.scoring import predict_logits

    mf = load_model(path)
    encoder = FeatureEncoder.from_header(mf.encoder_header, mf.encoder_arrays)
    X = encoder.transform(_encoder_input(data["valid"], data["format"], encoder.spec, encoder.seed))
    z = predict_logits(mf.params, X, 1)
    return 1.0 / (1.0 + np.exp(-z)), version, str(path)


def evaluate_step(ctx: StepContext) -> dict[str, Any]:
    """Candidate and current production scored on the same validation rows."""
    from ctrops.data.matrix import FieldMatrix
    from ctrops.pipeline.evaluate import evaluate_model, evaluate_predictions

    cfg = ctx.config
    data = ctx.out("build-dataset")
    trained = ctx.out("train")
    valid = FieldMatrix.load(data["valid_matrix"])
    if cfg.model_type in FACTORIZATION:
        from ctrops.artifact.format import load_model
        from ctrops.data.features import FeatureEncoder

        params = load_model(trained["model_path"]).params
        encoder = FeatureEncoder.load(data["encoder"])
        candidate = evaluate_model(params, valid, plot_dir=ctx.step_dir, name="candidate",
                                   field_names=list(encoder.field_names))
    else:
        from ctrops.models.xgb import XGBoostModel

        table = read_table(data["valid"], data["format"], _spec(data["spec"]))
        p = XGBoostModel.load(trained["model_path"]).predict_proba(table)
        candidate = evaluate_predictions(valid.labels, p, weights=valid.weights, plot_dir=ctx.step_dir,
                                         name="candidate")
    p_prod, prod_version, prod_path = _production_predictions(ctx, ctx.step_dir / "production")
    production = None
    if p_prod is not None:
        production = evaluate_predictions(valid.labels, p_prod, weights=valid.weights, plot_dir=ctx.step_dir,
                                          name="production")
    cand_metrics = candidate.to_dict()
    _write_json(ctx.step_dir / "candidate.json", {"metrics": cand_metrics,
                                                   "data_fingerprint": candidate.data_fingerprint})
    if production is not None:
        _write_json(ctx.step_dir / "production.json", {"metrics": production.to_dict(),
                                                        "data_fingerprint": production.data_fingerprint,
                                                        "version": prod_version})
    import mlflow

    _log_step(metrics={f"candidate.{k}": v for k, v in cand_metrics.items()} |
              ({f"production.{k}": v for k, v in production.to_dict().items()} if production else {}))
    for plot in list(candidate.plots.values()) + (list(production.plots.values()) if production else []):
        mlflow.log_artifact(plot, "plots")
    _metrics_to(ctx.client, ctx.parent_run_id, {k: v for k, v in cand_metrics.items() if "." not in k})
    return {"candidate": str(ctx.step_dir / "candidate.json"),
            "production": str(ctx.step_dir / "production.json") if production is not None else None,
            "production_version": prod_version, "log_loss": candidate.log_loss, "auc": candidate.auc,
            "production_log_loss": None if production is None else production.log_loss}


# ---------------------------------------------------------------- gate
def gate_step(ctx: StepContext) -> dict[str, Any]:
    """May the candidate replace production? Refusal is an outcome, not an error."""
    from ctrops.pipeline.evaluate import EvaluationReport
    from ctrops.pipeline.gate import GateConfig, evaluate_gate

    from ctrops.registry.aliases import production_version

    ev = ctx.out("evaluate")
    current = production_version(ctx.client, ctx.config.name)
    if current != ev.get("production_version"):
        # a resumed run must not compare against a production model that has since been replaced
        raise ConfigError(f"production is v{current} but the saved evaluation compared against "
                          f"v{ev.get('production_version')}; re-run with --from evaluate")

    def report(path: str | None) -> EvaluationReport | None:
        if path is None:
            return None
        doc = json.loads(Path(path).read_text())
        return EvaluationReport.from_dict(doc["metrics"], doc.get("data_fingerprint", ""))

    cand, prod = report(ev["candidate"]), report(ev["production"])
    config = GateConfig.from_dict(ctx.config.gate)
    if config.max_model_bytes is None and ctx.config.publish.max_bytes is not None:
        from dataclasses import replace

        config = replace(config, max_model_bytes=ctx.config.publish.max_bytes)
    decision = evaluate_gate(cand, prod, int(ctx.out("train")["model_bytes"]), config)
    gate_path = _write_json(ctx.step_dir / "gate.json", decision.to_dict())
    reasons = "; ".join(decision.reasons)
    ctx.note("passed" if decision.passed else f"refused: {reasons}")
    _log_step(tags={"gate_passed": str(decision.passed).lower(), "gate_reasons": reasons or "-"})
    ctx.client.log_artifact(ctx.parent_run_id, str(gate_path))
    ctx.client.set_tag(ctx.parent_run_id, "gate_passed", str(decision.passed).lower())
    ctx.client.set_tag(ctx.parent_run_id, "gate_reasons", (reasons or "-")[:5000])
    return {"passed": decision.passed, "reasons": list(decision.reasons), "gate_json": str(gate_path)}


# ---------------------------------------------------------------- register
def register_step(ctx: StepContext) -> dict[str, Any]:
    """Log the pyfunc model, register a version and point `candidate` at it (pass or not)."""
    from ctrops.registry.aliases import CANDIDATE
    from ctrops.registry.mlflow_glue import register_version
    from ctrops.registry.pyfunc import log_pyfunc_model

    cfg = ctx.config
    trained, gate = ctx.out("train"), ctx.out("gate")
    info = log_pyfunc_model(trained["model_path"], tags={"model_type": cfg.model_type})
    version = register_version(ctx.client, cfg.name, info.model_uri, ctx.parent_run_id,
                               tags={"model_type": cfg.model_type, "gate_passed": str(gate["passed"]).lower(),
                                     "gate_reasons": "; ".join(gate["reasons"]) or "-",
                                     "pipeline_run_id": ctx.parent_run_id})
    ctx.client.set_registered_model_alias(cfg.name, CANDIDATE, str(version))
    ctx.client.set_tag(ctx.parent_run_id, "registered_version", str(version))
    ctx.note(f"{cfg.name} v{version} is candidate")
    return {"version": version, "model_uri": info.model_uri}


# ---------------------------------------------------------------- publish
def publish_step(ctx: StepContext) -> dict[str, Any]:
    """Passed: publish the file with a canary to storage, then move `production`. Refused: leave production."""
    from ctrops.registry.aliases import apply_gate

    cfg = ctx.config
    data, trained, gate, reg = (ctx.out("build-dataset"), ctx.out("train"), ctx.out("gate"),
                                ctx.out("register"))
    version = int(reg["version"])
    if not gate["passed"]:
        apply_gate(ctx.client, cfg.name, version, False, gate["reasons"])
        ctx.note(f"not published: {'; '.join(gate['reasons'])}")
        return {"published": False, "version": version, "reasons": gate["reasons"], "production_moved": False}
    entry = None
    if cfg.model_type in FACTORIZATION:
        from ctrops.artifact.manifest import publish_model
        from ctrops.predict import Predictor

        spec = _spec(data["spec"])
        rows = field_rows(read_table(data["valid"], data["format"], spec), spec, cfg.publish.canary_rows)
        with Predictor.from_file(trained["model_path"]) as predictor:
            expected = [float(x) for x in predictor.score({}, rows)]
        canary = [{"context": {}, "candidates": rows, "expected": expected}]
        metrics = {k: v for k, v in json.loads(Path(ctx.out("evaluate")["candidate"]).read_text())["metrics"].items()
                   if "." not in k}
        entry = publish_model(cfg.publish.storage, cfg.name, trained["model_path"], version=version,
                              metrics=metrics, canary=canary, aliases=("production",),
                              keep_last=cfg.publish.keep_last,
                              storage_options=cfg.publish.storage_options or None)
        ctx.note(f"published v{version} to {cfg.publish.storage}")
    else:
        ctx.note("xgboost: served through the MLflow pyfunc flavor; storage holds .ctm files only")
    update = apply_gate(ctx.client, cfg.name, version, True, ())
    return {"published": entry is not None, "version": version, "production_moved": True,
            "previous_production": update.previous_production,
            "storage_path": None if entry is None else entry.path}


STEPS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "build-dataset": build_dataset, "tune": tune_step, "train": train_step, "evaluate": evaluate_step,
    "gate": gate_step, "register": register_step, "publish": publish_step,
}
