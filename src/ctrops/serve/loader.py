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
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ctrops.errors import ConfigError, CtropsError, ModelFileError
from ctrops.experiments.assign import Assigner
from ctrops.experiments.definition import Arm, ExperimentDefinition
from ctrops.serve import gil

log = logging.getLogger("ctrops.serve.loader")
VALIDATOR_NICENESS = 19


class VersionRefused(ModelFileError):
    """A model version failed validation; `reason` is a short label for metrics.

    `retry`: the failure says nothing about the file (storage unreachable, a
    read that timed out, the file not in storage yet), so the version is tried
    again at the next poll instead of being remembered as refused.
    """

    def __init__(self, version: int, reason: str, message: str, retry: bool = False) -> None:
        super().__init__(f"model version {version} refused ({reason}{', will retry' if retry else ''}): {message}")
        self.version, self.reason, self.retry = version, reason, retry


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Read a manifest attribute whether the manifest module hands out objects or dicts."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


class ModelStore:
    """One model name in one storage root: manifest reading, fetch and validated loading."""

    def __init__(self, storage_url: str, model_name: str, *, cache_dir: str | Path,
                 max_bytes: int | None = None, canary_tolerance: float | None = 1e-4,
                 require_canary: bool = False, validate_in_subprocess: bool = True,
                 validate_timeout: float = 1800.0, lock_memory: bool = False, cache_keep: int | None = None) -> None:
        self.storage_url = storage_url
        self.model_name = model_name
        self.cache_dir = Path(cache_dir) / model_name
        self.max_bytes = max_bytes
        self.canary_tolerance = canary_tolerance
        self.require_canary = require_canary
        self.validate_in_subprocess = validate_in_subprocess
        self.validate_timeout = validate_timeout
        self.lock_memory = lock_memory
        self.cache_keep = cache_keep  # see prune_cache; None keeps every version fetched

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
        """Fetch, validate and open one version; raises VersionRefused saying which check failed.

        The checks that read the whole file (sha256 against the manifest,
        section checksums, finite weights) run in a separate process at the
        lowest CPU priority (`validate_version`): it shares no GIL with the
        request threads and only uses CPU they leave idle. This process then
        opens the verified file without re-reading it, maps its pages in ahead
        of the swap (so the first requests do not take the page faults) and
        scores the canary rows.
        """
        from ctrops.artifact.format import load_model
        from ctrops.data.slot_file import slot_file_for
        from ctrops.predict import Predictor

        entry = self.entry(manifest, version)
        size = _get(entry, "size_bytes")
        if self.max_bytes is not None and size is not None and int(size) > self.max_bytes:
            raise VersionRefused(version, "size", f"manifest says {size} bytes, over the limit of "
                                                  f"{self.max_bytes}")
        path = self._fetch_validated(entry, version)
        try:
            model = load_model(path, mmap=True, verify=False, max_bytes=self.max_bytes)
        except ModelFileError as exc:
            raise VersionRefused(version, _refusal_reason(str(exc)), str(exc)) from exc
        try:
            # workers serving this file share its request table through the page cache, as its weights
            predictor = Predictor(model, version=version, model_name=self.model_name,
                                  shared_table=slot_file_for(path))
        except (CtropsError, ValueError, KeyError) as exc:
            model.close()
            raise VersionRefused(version, "format", f"cannot build the predictor: {exc}") from exc
        populate_gently(predictor)
        if self.lock_memory:
            lock_gently(predictor)
        try:
            self._check_canary(predictor, entry, version)
        except BaseException:
            predictor.close()
            raise
        return predictor

    def _fetch_validated(self, entry: Any, version: int) -> Path:
        """The local copy of `entry`'s file once every whole-file check passed (here or earlier)."""
        local_dir = self.cache_dir / str(int(_get(entry, "version")))
        local_dir.mkdir(parents=True, exist_ok=True)
        fields = {k: _get(entry, k) for k in ("version", "path", "sha256", "size_bytes")}
        local = local_dir / str(fields["path"])
        if verified_marker_matches(local, fields["sha256"]):  # this or another worker checked this very file
            return local
        job = {"storage": self.storage_url, "entry": fields, "local_dir": str(local_dir),
               "max_bytes": self.max_bytes}
        result = self._validate_elsewhere(job) if self.validate_in_subprocess else validate_version(**job)
        if not result.get("ok"):
            raise VersionRefused(version, str(result.get("reason", "fetch")), str(result.get("message")),
                                 retry=bool(result.get("retry")))
        return Path(result["path"])

    def prune_cache(self, in_use: set[int]) -> list[int]:
        """Delete cached versions that are not `in_use` and not among the `cache_keep` newest; the
        versions deleted.

        Why: every promotion fetches a model file (hundreds of MB) and its
        request table into the cache, and a weekly model fills a disk in
        months. `in_use` holds what this worker serves and what the manifest
        names (aliases, the experiment's arms), which every worker reading the
        same manifest agrees on; the newest few stay for a quick rollback. A
        version another process is validating right now (its lock is held) is
        left for the next prune. A worker still serving a deleted version keeps
        its mapping (an unlinked file stays readable while mapped). Versions
        whose file is a hard link to local storage stay: deleting the link
        frees nothing, and a rollback to them would have to validate again.
        """
        import fcntl

        if self.cache_keep is None or not self.cache_dir.is_dir():
            return []
        present = sorted((int(d.name) for d in self.cache_dir.iterdir() if d.is_dir() and d.name.isdigit()),
                         reverse=True)
        keep = set(in_use) | set(present[:self.cache_keep])
        removed, freed = [], 0
        for version in present:
            if version in keep:
                continue
            folder = self.cache_dir / str(version)
            try:
                if any(f.stat().st_nlink > 1 for f in folder.rglob("*.ctm")):
                    continue  # hard-linked to local storage: deleting frees ~5% of what storage holds anyway
                with open(folder / ".validate.lock", "a") as lock:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # being fetched or validated right now
                    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                    shutil.rmtree(folder)
            except FileNotFoundError:
                continue  # another worker pruned it first
            except OSError as exc:
                log.warning("model cache: could not remove version %d from %s: %s", version, folder, exc)
                continue
            removed.append(version)
            freed += size
        if removed:
            log.info("model cache: removed version(s) %s of %r (%.0f MB; kept %s)", ", ".join(map(str, removed)),
                     self.model_name, freed / 1e6, sorted(keep & set(present), reverse=True))
        return removed

    def _validate_elsewhere(self, job: dict) -> dict:
        argv = [sys.executable, "-m", "ctrops.serve.loader", "validate", json.dumps(job)]
        if shutil.which("nice"):
            argv = ["nice", "-n", str(VALIDATOR_NICENESS)] + argv
        if shutil.which("ionice"):  # idle I/O class: its reads and writes wait for everyone else's
            argv = ["ionice", "-c", "3"] + argv
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.validate_timeout)
        except subprocess.TimeoutExpired:  # slow storage or a busy host: nothing known about the file
            return {"ok": False, "reason": "fetch", "retry": True,
                    "message": f"validation did not finish within {self.validate_timeout:.0f} s"}
        except OSError as exc:  # cannot start a process here: check in this one
            log.warning("validation process could not start (%s); validating in process", exc)
            return validate_version(**job)
        lines = proc.stdout.strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            return {"ok": False, "reason": "fetch", "message": f"validation process exited with {proc.returncode}: "
                                                                 f"{proc.stderr.strip()[-500:]}"}

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
        with self._lock, gil.background_work():
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
        if current is not None:
            release_unused(current, new, locked=self.store.lock_memory)
        self._prune_cache(new, aliases)
        return ReloadResult("success", f"experiment {definition.name!r}: " + ", ".join(
            f"{n}={v if v is not None else '-'}" for n, v in new.versions().items()), refused_now)

    def _prune_cache(self, state: ServingState, aliases: Mapping[str, int]) -> None:
        """After a swap: drop cached versions nobody needs (`ModelStore.prune_cache`); never fails a reload."""
        in_use = {v for v in state.versions().values() if v is not None} | set(aliases.values())
        in_use |= {am.requested_version for am in state.arms.values() if am.requested_version is not None}
        try:
            self.store.prune_cache(in_use)
        except Exception:  # a cache that cannot be tidied is a disk to watch, not a reason to stop serving
            log.exception("model cache: pruning failed")

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
                if not exc.retry:
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
        # The whole-file checks run in a low-priority process (ModelStore.load); this thread keeps the
        # default priority on purpose: a lowered thread can be preempted while it holds the GIL, and
        # the request thread then waits for the GIL as long as the scheduler keeps this one off a core.
        jitter = random.Random()  # workers poll out of step, so they do not all validate at once
        while not self._stop.wait(self.poll_seconds * (1 + 0.5 * jitter.random())):
            self.reload()


# ---- whole-file validation (in a separate process) and page residency ---------------------------

def _transient(exc: BaseException) -> bool:
    """Whether a fetch failure may pass by itself: the storage could not be read (network, timeout,
    permissions, a file the publisher has not finished uploading), as opposed to a file that was read
    and is wrong (sha256 mismatch), which stays wrong."""
    if isinstance(exc, ModelFileError):
        return "missing from storage" in str(exc)
    return isinstance(exc, (OSError, TimeoutError))


def _refusal_reason(text: str) -> str:
    return ("size" if "over the limit" in text else "nonfinite" if "non-finite" in text or "bias is" in text
            else "checksum" if "checksum" in text else "format")


def _marker_path(local: Path) -> Path:
    return local.with_name(local.name + ".verified")


def _identity(local: Path) -> dict[str, int]:
    st = local.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def verified_marker_matches(local: Path, sha256: str) -> bool:
    """True when `local` is the very file (size, mtime, inode) a validation passed for, with this sha256.

    Lets the second worker (and a restart) skip re-reading hundreds of MB: the
    marker is written only after every whole-file check passed, and a new
    download is a new inode.
    """
    try:
        marker = json.loads(_marker_path(local).read_text())
        return marker.get("sha256") == sha256 and marker.get("file") == _identity(local)
    except (OSError, ValueError, AttributeError):
        return False


def validate_version(storage: str, entry: dict, local_dir: str, max_bytes: int | None = None) -> dict:
    """Fetch one version's file (sha256-verified against the manifest) and run the checks that read it
    whole: section checksums and finite weights. Returns {"ok", "path"} or {"ok": False, "reason",
    "message"}; on success leaves a marker beside the file (see `verified_marker_matches`)."""
    import fcntl

    Path(local_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(local_dir) / ".validate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # workers noticing a version together: one reads it, the rest wait
        local = Path(local_dir) / str(entry["path"])
        if verified_marker_matches(local, str(entry["sha256"])):
            return {"ok": True, "path": str(local)}
        return _validate_locked(storage, entry, local_dir, max_bytes)


def _validate_locked(storage: str, entry: dict, local_dir: str, max_bytes: int | None) -> dict:
    from types import SimpleNamespace

    from ctrops.artifact.format import load_model
    from ctrops.artifact.manifest import fetch_model

    try:
        path = Path(fetch_model(storage, SimpleNamespace(**entry), local_dir))
    except Exception as exc:  # missing file, sha256 mismatch, storage trouble
        return {"ok": False, "reason": "fetch", "message": str(exc), "retry": _transient(exc)}
    try:
        load_model(path, mmap=True, verify=True, max_bytes=max_bytes).close()
    except ModelFileError as exc:
        return {"ok": False, "reason": _refusal_reason(str(exc)), "message": str(exc)}
    marker = _marker_path(path)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"sha256": entry["sha256"], "file": _identity(path),
                               "checks": ["sha256", "section checksums", "finite weights"]}))
    os.replace(tmp, marker)
    return {"ok": True, "path": str(path)}


MADV_DONTNEED = 4         # Linux: drop this mapping's page-table entries (file pages stay cached)
MADV_POPULATE_READ = 22   # Linux >= 5.14: map every page now (reads them into the page cache if needed)
POPULATE_CHUNK_BYTES = 16 << 20


def _mapping(predictor: Any) -> np.ndarray | None:
    """The predictor's model mapping as a byte array, or None where madvise cannot apply."""
    buf = getattr(getattr(predictor, "_model", None), "_buffer", None)
    if sys.platform != "linux" or buf is None or isinstance(buf, bytes):
        return None
    try:
        view = np.frombuffer(buf, dtype=np.uint8)
    except (ValueError, TypeError):  # closed map
        return None
    return view if view.size else None


def _mappings(predictor: Any) -> list[np.ndarray]:
    """The file mappings a predictor serves from, as byte arrays: the model's and, when its request
    table is shared through a file (ctrops.data.slot_file), the table's; [] where madvise cannot apply."""
    model = _mapping(predictor)
    if model is None:
        return []
    views = [model]
    try:
        table = predictor.encoder.request_encoder().table
    except AttributeError:
        return views
    if getattr(table, "shared", False) and table.nbytes:
        views.append(np.frombuffer(table.bytes_view(), dtype=np.uint8))
    return views


def _madvise(address: int, length: int, advice: int) -> bool:
    import ctypes

    libc = _libc()
    if libc is None:
        return False
    return libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), ctypes.c_int(advice)) == 0


def advise(predictor: Any, advice: int) -> bool:
    """madvise() over a predictor's model mapping, through ctypes so the GIL is released meanwhile.

    DONTNEED on a retired model tears its page tables down here instead of in
    whichever thread drops the last reference; it is safe while a request
    still scores with the mapping (file pages fault back in). False when the
    platform or the object does not allow it (nothing to do).
    """
    views = _mappings(predictor)
    return bool(views) and all([_madvise(v.ctypes.data, v.size, advice) for v in views])


def populate_gently(predictor: Any, chunk_bytes: int = POPULATE_CHUNK_BYTES, duty: float = 0.5) -> bool:
    """Map a new model's pages (and its shared request table's) before the swap, in slices, resting
    between them.

    Without it the first requests after a swap take the new file's page faults
    (a few thousand per request at first, one per feature row touched). The
    work is ~0.3 s of kernel time per worker for a 650 MB file. It runs in the
    calling (loader) thread at normal priority: a thread at low priority would
    hold the GIL for the few Python lines between calls, and on a busy machine
    the scheduler can leave it off the CPU right then, stalling every request
    thread behind it (34.7 ms measured with two busy processes on two cores).
    Instead each slice's madvise runs without the GIL, and sleeping as long as
    the slice took caps its CPU use at `duty` of one core.
    """
    views = _mappings(predictor)
    return bool(views) and all([_in_slices(v, chunk_bytes, duty, lambda address, length: _madvise(
        address, length, MADV_POPULATE_READ)) == v.size for v in views])


def _in_slices(view: np.ndarray, chunk_bytes: int, duty: float, step: Callable[[int, int], bool]) -> int:
    """`step(address, length)` over a mapping in page-aligned slices of `chunk_bytes`, sleeping after
    each as long as it took over `duty`; the bytes done before a step failed (all of them: `view.size`)."""
    base, size = view.ctypes.data, view.size
    page = os.sysconf("SC_PAGE_SIZE")
    chunk = max(page, chunk_bytes - chunk_bytes % page)
    for offset in range(0, size, chunk):
        started = time.perf_counter()
        if not step(base + offset, min(chunk, size - offset)):
            return offset
        if duty < 1.0:
            time.sleep((time.perf_counter() - started) * (1.0 - duty) / duty)
    return size


def lock_gently(predictor: Any, chunk_bytes: int = POPULATE_CHUNK_BYTES, duty: float = 0.5) -> bool:
    """mlock() a new model's mappings (its file and its shared request table), in slices as
    `populate_gently` maps them; whether they are locked.

    Why: a model's pages are file pages the kernel may reclaim when they look
    cold, and a model of 1e6 features has many rows a few requests touch a
    minute. A host under memory pressure or with proactive reclaim (this one
    runs DAMON's `pageout` of regions idle for a minute) then turns those
    requests into page faults and reads; locked pages are never reclaimed.
    The price: the memory cannot be given back under pressure.

    Needs CAP_IPC_LOCK or an RLIMIT_MEMLOCK above the file's size; when the
    kernel refuses, whatever was locked is unlocked again, a warning says why
    (once per process) and the model serves unlocked.
    """
    import ctypes

    libc = _libc()
    views = _mappings(predictor)
    if libc is None or not views:
        return False
    for i, view in enumerate(views):
        locked = _in_slices(view, chunk_bytes, duty, lambda address, length: libc.mlock(
            ctypes.c_void_p(address), ctypes.c_size_t(length)) == 0)
        if locked < view.size:
            break
    else:
        return True
    err = ctypes.get_errno()
    for done in views[:i]:
        _munlock(libc, done.ctypes.data, done.size)
    _munlock(libc, view.ctypes.data, locked)
    global _lock_warned
    if not _lock_warned:
        _lock_warned = True
        log.warning("model.lock_memory: could not lock the model's pages in memory (%s); serving it unlocked. "
                    "Raise RLIMIT_MEMLOCK (ulimit -l, LimitMEMLOCK= in systemd, --ulimit memlock= in docker) "
                    "or grant CAP_IPC_LOCK", os.strerror(err))
    return False


def unlock(predictor: Any) -> bool:
    """munlock() a predictor's mapping (a retired model: MADV_DONTNEED refuses locked pages)."""
    views = _mappings(predictor)
    libc = _libc()
    return bool(views) and libc is not None and all([_munlock(libc, v.ctypes.data, v.size) for v in views])


def _munlock(libc: Any, address: int, length: int) -> bool:
    import ctypes

    return libc.munlock(ctypes.c_void_p(address), ctypes.c_size_t(length)) == 0


_lock_warned = False
_libc_handle: Any = None


def _libc() -> Any:
    global _libc_handle
    if _libc_handle is None:
        import ctypes
        try:
            _libc_handle = ctypes.CDLL(None, use_errno=True)
            _libc_handle.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _libc_handle.madvise.restype = ctypes.c_int
            for name in ("mlock", "munlock"):
                getattr(_libc_handle, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]
                getattr(_libc_handle, name).restype = ctypes.c_int
        except (OSError, AttributeError):
            _libc_handle = False
    return _libc_handle or None


def release_unused(old: ServingState, new: ServingState, locked: bool = False) -> None:
    """Tear down the page tables of models the new state no longer uses (see `advise`), unlocking
    them first when they were locked (`model.lock_memory`)."""
    keep = {id(am.predictor) for am in new.arms.values() if am.predictor is not None}
    for am in old.arms.values():
        if am.predictor is not None and id(am.predictor) not in keep:
            if locked:
                unlock(am.predictor)
            advise(am.predictor, MADV_DONTNEED)


def _main(argv: list[str]) -> int:
    """`python -m ctrops.serve.loader validate '<json job>'`: the validation process (prints one JSON line)."""
    if len(argv) != 2 or argv[0] != "validate":
        print("usage: python -m ctrops.serve.loader validate '<json job>'", file=sys.stderr)
        return 2
    try:
        os.nice(0)  # started through `nice` where available; nothing to change otherwise
        result = validate_version(**json.loads(argv[1]))
    except Exception as exc:
        result = {"ok": False, "reason": "fetch", "message": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
