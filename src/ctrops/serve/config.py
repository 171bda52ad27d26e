"""serving.yaml: where the models are, which experiment splits traffic, limits, logs.

    model:
      storage: ./models              # local folder or fsspec URL (s3://bucket/prefix)
      name: ctr                      # models/<name>/manifest.json under storage
      cache_dir: /tmp/ctrops-cache   # where remote versions are fetched to
      max_bytes: 2000000000          # refuse bigger model files
      poll_seconds: 10               # watcher period (0 disables the watcher)
      canary_tolerance: 1.0e-4       # |score - recorded| allowed on manifest canary rows
      require_canary: false          # refuse versions that carry no canary rows
      cache_keep: 2                  # cached versions kept besides those in use (null: keep all)
    experiment: experiment.yaml      # path (relative to this file) or inline mapping; omitted:
                                     # all traffic to alias 'production'
    server: {host: 127.0.0.1, port: 8000, workers: 2, runtime: granian, interface: rsgi,
             admin_token_env: CTROPS_ADMIN_TOKEN, sched_slice_us: 0}
    limits: {max_candidates: 1000, max_fields: 256, max_body_bytes: 2000000}
    log: {path: ./prediction-logs, format: parquet, rotate_records: 1000000,
          rotate_seconds: 300, queue_size: 20000, debug_every: 1000}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields as dc_fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from ctrops.errors import ConfigError
from ctrops.experiments.definition import ExperimentDefinition
from ctrops.serve.log_config import LogConfig
from ctrops.serve.schema import Limits
from ctrops.serve.sched import MAX_SLICE_US, MIN_SLICE_US

RUNTIMES = ("granian", "uvicorn")
INTERFACES = ("rsgi", "asgi", "wsgi")  # granian's; uvicorn always speaks ASGI


@dataclass(frozen=True)
class ModelConfig:
    storage: str
    name: str
    cache_dir: str = str(Path(os.environ.get("TMPDIR", "/tmp")) / "ctrops-cache")
    max_bytes: int | None = None
    poll_seconds: float = 10.0
    canary_tolerance: float = 1e-4
    require_canary: bool = False
    storage_options: dict | None = None
    lock_memory: bool = False  # mlock each loaded model's pages (exempt from the kernel's reclaim); see docs/serving.md
    cache_keep: int | None = 2  # cached versions kept beyond those serving or named by the manifest (None: all)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    runtime: str = "granian"
    admin_token: str | None = None
    admin_token_env: str = "CTROPS_ADMIN_TOKEN"
    shutdown_timeout: float = 30.0
    gil_switch_interval: float | None = None  # seconds; None: 0.5 ms with a thread log writer, else Python's
                                              # 5 ms (shortened while a model loads); see serve/gil.py
    interface: str = "rsgi"              # granian only: "rsgi" (native), "wsgi" (cheapest per request) or "asgi"
    sched_slice_us: int = 0              # workers' scheduler slice (Linux 6.12+), 0: the kernel's; see serve/sched.py

    def resolved_admin_token(self) -> str | None:
        """The token from the environment variable wins over the file (keep secrets out of YAML)."""
        return os.environ.get(self.admin_token_env) or self.admin_token


@dataclass(frozen=True)
class ServingConfig:
    model: ModelConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: Limits = field(default_factory=Limits)
    log: LogConfig | None = None
    experiment_path: Path | None = None
    experiment_inline: Mapping[str, Any] | None = None
    source: str = "<dict>"

    def load_experiment(self) -> ExperimentDefinition:
        """Read the experiment now (the watcher calls this on every poll to pick up edits)."""
        if self.experiment_path is not None:
            return ExperimentDefinition.from_yaml(self.experiment_path)
        if self.experiment_inline is not None:
            return ExperimentDefinition.from_dict(self.experiment_inline, source=f"{self.source}: experiment")
        return ExperimentDefinition.single("production")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ServingConfig":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"serving config {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"serving config {path} is not valid YAML: {exc}") from None
        return cls.from_dict(raw, source=str(path), base_dir=path.parent)

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "<dict>", base_dir: Path | None = None) -> "ServingConfig":
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: the serving config must be a mapping")
        allowed = {"model", "server", "limits", "log", "experiment"}
        unknown = set(raw) - allowed
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "model" not in raw:
            raise ConfigError(f"{source}: 'model' (storage and name) is required")
        base = base_dir or Path.cwd()
        model = _section(ModelConfig, raw["model"], f"{source}: model")
        if "://" not in model.storage and not Path(model.storage).is_absolute():
            model = _replace(model, storage=str((base / model.storage).resolve()))
        if model.cache_keep is not None and model.cache_keep < 0:
            raise ConfigError(f"{source}: model.cache_keep must be 0 or more (or null to keep every version), "
                              f"got {model.cache_keep}")
        server = _section(ServerConfig, raw.get("server") or {}, f"{source}: server")
        if server.runtime not in RUNTIMES:
            raise ConfigError(f"{source}: server.runtime must be one of {RUNTIMES}, got {server.runtime!r}")
        if server.interface not in INTERFACES:
            raise ConfigError(f"{source}: server.interface must be one of {INTERFACES}, got {server.interface!r}")
        if server.workers < 1:
            raise ConfigError(f"{source}: server.workers must be at least 1")
        if (type(server.sched_slice_us) is not int or server.sched_slice_us != 0
                and not MIN_SLICE_US <= server.sched_slice_us <= MAX_SLICE_US):
            raise ConfigError(f"{source}: server.sched_slice_us must be 0 (the kernel's slice) or an integer "
                              f"from {MIN_SLICE_US} to {MAX_SLICE_US} microseconds, got {server.sched_slice_us!r}")
        try:
            limits = _section(Limits, raw.get("limits") or {}, f"{source}: limits")
        except ValueError as exc:
            raise ConfigError(f"{source}: limits: {exc}") from None
        log = None
        if raw.get("log") is not None:
            log = _section(LogConfig, raw["log"], f"{source}: log")
            if "://" not in log.path and not Path(log.path).is_absolute():
                log = _replace(log, path=str((base / log.path).resolve()))
        exp = raw.get("experiment")
        exp_path = exp_inline = None
        if isinstance(exp, str):
            exp_path = Path(exp) if Path(exp).is_absolute() else (base / exp)
        elif isinstance(exp, Mapping):
            exp_inline = exp
        elif exp is not None:
            raise ConfigError(f"{source}: 'experiment' must be a file path or a mapping")
        cfg = cls(model=model, server=server, limits=limits, log=log, experiment_path=exp_path,
                  experiment_inline=exp_inline, source=source)
        cfg.load_experiment()  # fail at start-up, not at the first request
        return cfg


def _section(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    names = {f.name for f in dc_fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    try:
        obj = cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for f in dc_fields(cls):
        value = getattr(obj, f.name)
        want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if value is None:
            continue
        if want.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{f.name} must be an integer, got {value!r}")
        if want.startswith("float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}.{f.name} must be a number, got {value!r}")
        if want.startswith("str") and not isinstance(value, str):
            raise ConfigError(f"{where}.{f.name} must be a string, got {value!r}")
        if want.startswith("bool") and not isinstance(value, bool):
            raise ConfigError(f"{where}.{f.name} must be true or false, got {value!r}")
    return obj


def _replace(obj: Any, **changes: Any) -> Any:
    from dataclasses import replace
    return replace(obj, **changes)
