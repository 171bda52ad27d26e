"""Loading model versions from storage, validating them, and swapping them in.

The delivery side must never be broken by the training side: a new version is
only served after it passed every check (manifest size, sha256 on fetch,
format version and section checksums, finite weights, and the manifest's
canary rows scoring as recorded). A refused version is counted, logged and
remembered, and the arm keeps its current model. At start-up, a refused
version falls back to the newest older version that passes; if an arm ends up
with no model, readiness fails and says why.

The whole serving state (experiment, assigner, one Predictor per arm) is one
immutable object swapped by a single reference assignment: a request reads
`loader.state` once and finishes on that snapshot, so a swap never fails an
in-flight request, and the old maps are released when the last user drops them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ctrops.errors import ConfigError, CtropsError, ModelFileError
from ctrops.experiments.assign import Assigner
from ctrops.experiments.definition import Arm, ExperimentDefinition

log = logging.getLogger("ctrops.serve.loader")
WATCHER_NICENESS = 10


class VersionRefused(ModelFileError):
    """A model version failed validation; `reason` is a short label for metrics."""

    def __init__(self, version: int, reason: str, message: str) -> None:
        super().__init__(f"model version {version} refused ({reason}): {message}")
        self.version, self.reason = version, reason


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Read a manifest attribute whether the manifest module hands out objects or dicts."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


class ModelStore:
    """One model name in one storage root: manifest reading, fetch and validated loading."""

    def __init__(self, storage_url: str, model_name: str, *, cache_dir: str | Path,
                 max_bytes: int | None = None, canary_tolerance: float | None = 1e-4,
                 require_canary: bool = False) -> None:
        self.storage_url = storage_url
        self.model_name = model_name
        self.cache_dir = Path(cache_dir) / model_name
        self.max_bytes = max_bytes
        self.canary_tolerance = canary_tolerance
        self.require_canary = require_canary

    def manifest(self) -> Any:
        from ctrops.artifact.manifest import read_manifest
        return read_manifest(self.storage_url, self.model_name)

    @staticmethod
    def versions(manifest: Any) -> list[Any]:
        """Entries newest first."""
        return sorted(_get(manifest, "versions", []), key=lambda e: -int(_get(e, "version")))

    @staticmethod
    def aliases(manifest: Any) -> dict[str, int]:
        return {str(k): int(v) for k, v in (_get(manifest, "aliases") or {}).items()}

    def entry(self, manifest: Any, version: int) -> Any:
        for e in self.versions(manifest):
            if int(_get(e, "version")) == version:
                return e
        raise ConfigError(f"model {self.model_name!r} has no version {version} in its manifest")

    def resolve(self, manifest: Any, ref: str | int) -> int:
        """The version an alias or number names (ConfigError when unknown)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            version = int(ref)
            self.entry(manifest, version)
            return version
        aliases = self.aliases(manifest)
        if ref == "latest" and ref not in aliases:
            return int(_get(self.versions(manifest)[0], "version"))
        if ref not in aliases:
            raise ConfigError(f"model {self.model_name!r} has no alias {ref!r} (aliases: {sorted(aliases)})")
        return aliases[ref]

    def load(self, manifest: Any, version: int) -> Any:
        """Fetch, validate and open one version; raises VersionRefused saying which check failed."""
        from ctrops.artifact.format import load_model
        from ctrops.predict import Predictor

        entry = self.entry(manifest, version)
        size = _get(entry, "size_bytes")
        if self.max_bytes is not None and size is not None and int(size) > self.max_bytes:
            raise VersionRefused(version, "size", f"manifest says {size} bytes, over the limit of "
                                                  f"{self.max_bytes}")
        try:
            path = self._fetch(entry)
        except Exception as exc:
            raise VersionRefused(version, "fetch", str(exc)) from exc
        try:
            model = load_model(path, mmap=True, verify=True, max_bytes=self.max_bytes)
        except ModelFileError as exc:
            text = str(exc)
            reason = ("size" if "over the limit" in text else "nonfinite" if "non-finite" in text
                      or "bias is" in text else "checksum" if "checksum" in text else "format")
            raise VersionRefused(version, reason, text) from exc
        try:
            predictor = Predictor(model, version=version, model_name=self.model_name)
        except (CtropsError, ValueError, KeyError) as exc:
            model.close()
            raise VersionRefused(version, "format", f"cannot build the predictor: {exc}") from exc
        try:
            self._check_canary(predictor, entry, version)
        except BaseException:
            predictor.close()
            raise
        return predictor

    def _fetch(self, entry: Any) -> Path:
        from ctrops.artifact.manifest import fetch_model
        local = self.cache_dir / str(int(_get(entry, "version")))
        local.mkdir(parents=True, exist_ok=True)
        return Path(fetch_model(self.storage_url, entry, local))

    def _check_canary(self, predictor: Any, entry: Any, version: int) -> None:
        rows = _get(entry, "canary") or []
        if not rows:
            if self.require_canary:
                raise VersionRefused(version, "canary", "the manifest entry has no canary rows and "
                                                        "model.require_canary is set")
            log.warning("model %s version %d has no canary rows; only file checks were applied",
                        self.model_name, version)
            return
        if self.canary_tolerance is None:
            return
        for i, row in enumerate(rows):
            try:
                got = predictor.score(_get(row, "context") or {}, list(_get(row, "candidates") or []))
            except Exception as exc:
                raise VersionRefused(version, "canary", f"canary row {i} failed to score: {exc}") from exc
            want = np.asarray(_get(row, "expected"), dtype=np.float64)
            if got.shape != want.shape:
                raise VersionRefused(version, "canary", f"canary row {i}: {got.shape[0]} scores for "
                                                        f"{want.shape[0]} expected")
            diff = np.abs(np.asarray(got, dtype=np.float64) - want)
            if not np.all(diff <= self.canary_tolerance):  # also catches NaN scores
                j = int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff)))
                raise VersionRefused(version, "canary",
                                     f"canary row {i} candidate {j} scores {float(got[j]):.6g}, the manifest "
                                     f"recorded {float(want[j]):.6g} (tolerance {self.canary_tolerance})")


@dataclass(frozen=True)
class ArmModel:
    arm: Arm
    predictor: Any | None          # None for the random arm or when nothing could be loaded
    requested_version: int | None  # what the manifest / definition asked for
    problem: str | None = None     # why the requested version is not the one serving


@dataclass(frozen=True)
class ServingState:
    experiment: ExperimentDefinition
    assigner: Assigner
    arms: dict[str, ArmModel]
    experiment_digest: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def problems(self) -> list[str]:
        out = []
        for name, am in self.arms.items():
            if not am.arm.random and am.predictor is None:
                out.append(f"arm {name!r} has no model: {am.problem or 'not loaded'}")
        return out

    @property
    def ready(self) -> bool:
        return not self.problems

    def versions(self) -> dict[str, int | None]:
        return {n: (am.predictor.model_version if am.predictor is not None else None)
                for n, am in self.arms.items()}


@dataclass
class ReloadResult:
    outcome: str                   # "success", "unchanged" or "failure"
    message: str
    refused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "message": self.message, "refused": self.refused}


class ServingLoader:
    """Keeps `state` current: initial load with fallback, polling watcher, on-demand reload."""

    def __init__(self, store: ModelStore, experiment_source: Any, *, metrics: Any = None,
                 poll_seconds: float = 10.0) -> None:
        """`experiment_source` is a callable returning the current ExperimentDefinition."""
        self.store = store
        self.experiment_source = experiment_source
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.state: ServingState | None = None
        self.startup_error: str | None = None
        self._refused: dict[int, str] = {}   # version -> reason, never retried
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- reload -------------------------------------------------------------------------------
    def reload(self) -> ReloadResult:
        with self._lock:
            try:
                result = self._reload_locked()
            except CtropsError as exc:
                result = ReloadResult("failure", str(exc))
            except Exception as exc:  # storage or parse trouble: keep serving what we have
                log.exception("reload failed")
                result = ReloadResult("failure", f"{type(exc).__name__}: {exc}")
        if self.metrics is not None:
            self.metrics.reloads.labels(result.outcome).inc()
        if result.outcome == "failure":
            log.error("reload refused, current models keep serving: %s", result.message)
            if self.state is None:
                self.startup_error = result.message
        elif result.outcome == "success":
            log.info("reload: %s", result.message)
        return result

    def _reload_locked(self) -> ReloadResult:
        definition = self.experiment_source()
        manifest = self.store.manifest()
        aliases = self.store.aliases(manifest)
        entries = self.store.versions(manifest)
        definition.check_models(aliases, [int(_get(e, "version")) for e in entries])
        digest = hashlib.sha256(json.dumps(
            [definition.name, definition.salt, [(a.name, a.share, a.model, a.random) for a in definition.arms]],
            default=str).encode()).hexdigest()
        current = self.state
        loaded: dict[int, Any] = {}
        if current is not None:
            for am in current.arms.values():
                if am.predictor is not None:
                    loaded.setdefault(am.predictor.model_version, am.predictor)
        refused_now: list[str] = []
        arms: dict[str, ArmModel] = {}
        for arm in definition.arms:
            if arm.random:
                arms[arm.name] = ArmModel(arm, None, None)
                continue
            want = self.store.resolve(manifest, arm.model)
            predictor, problem = self._obtain(manifest, entries, want, loaded, refused_now)
            if predictor is None or predictor.model_version != want:
                # keep what this arm served before rather than an older fallback
                prev = current.arms.get(arm.name) if current is not None else None
                if prev is not None and prev.predictor is not None and prev.arm.model == arm.model:
                    predictor = prev.predictor
            arms[arm.name] = ArmModel(arm, predictor, want, problem)
        new = ServingState(definition, Assigner(definition), arms, digest)
        if current is not None and current.experiment_digest == digest and current.versions() == new.versions():
            if refused_now:
                return ReloadResult("failure", "; ".join(refused_now), refused_now)
            return ReloadResult("unchanged", "no new model versions or experiment changes", refused_now)
        if current is not None and not new.ready:
            return ReloadResult("failure", "; ".join(new.problems), refused_now)
        self.state = new  # the atomic swap
        self.startup_error = None if new.ready else "; ".join(new.problems)
        self._publish_metrics(new)
        return ReloadResult("success", f"experiment {definition.name!r}: " + ", ".join(
            f"{n}={v if v is not None else '-'}" for n, v in new.versions().items()), refused_now)

    def _obtain(self, manifest: Any, entries: list[Any], want: int, loaded: dict[int, Any],
                refused_now: list[str]) -> tuple[Any | None, str | None]:
        """The predictor for `want`, else the newest good older version; and why not `want`."""
        problem = None
        for e in entries:
            v = int(_get(e, "version"))
            if v > want:
                continue
            if v in loaded:
                return loaded[v], problem
            if v in self._refused:
                problem = problem or f"version {want} refused earlier: {self._refused[v]}"
                continue
            try:
                p = self.store.load(manifest, v)
            except VersionRefused as exc:
                self._refused[v] = str(exc)
                refused_now.append(str(exc))
                problem = problem or str(exc)
                log.error("%s", exc)
                if self.metrics is not None:
                    self.metrics.refused_versions.labels(exc.reason).inc()
                continue
            loaded[v] = p
            if v != want:
                log.warning("model version %d is refused; falling back to version %d", want, v)
            return p, problem
        return None, problem or f"no loadable version at or below {want}"

    def _publish_metrics(self, state: ServingState) -> None:
        if self.metrics is None:
            return
        for name, am in state.arms.items():
            v = am.predictor.model_version if am.predictor is not None else None
            self.metrics.model_version.labels(name, self.store.model_name).set(-1 if v is None else v)

    # ---- watcher ------------------------------------------------------------------------------
    def start_watcher(self) -> None:
        if self.poll_seconds <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="ctrops-model-watcher", daemon=True)
        self._thread.start()

    def stop_watcher(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _watch(self) -> None:
        # Validating a new version hashes and scans the whole file (hundreds of MB): at a lower CPU
        # priority (Linux niceness is per thread) it yields the cores to the request threads.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WATCHER_NICENESS)
        except (AttributeError, OSError):
            pass
        jitter = random.Random()  # workers poll out of step, so they do not all validate at once
        while not self._stop.wait(self.poll_seconds * (1 + 0.5 * jitter.random())):
            self.reload()
