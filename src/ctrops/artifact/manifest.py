"""The manifest: the one pointer the delivery fleet follows to find model files.

Storage layout under a root (local folder or any fsspec URL):

    models/<model_name>/manifest.json
    models/<model_name>/<version>/model.ctm

Publishing writes the model file under its own version folder first and the
manifest last, atomically. A publisher that dies in between leaves an
unreferenced folder and the previous manifest intact, so servers keep serving
the last good version ("stop anytime"). Old version folders are deleted only
after the new manifest is in place, and never one an alias points to.

One publisher per model name at a time: the read-modify-write of the manifest
is not guarded against concurrent publishers (run publishes from one pipeline).
Format: docs/manifest.md.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ctrops.artifact.format import load_model
from ctrops.artifact.storage import Storage, sha256_file
from ctrops.errors import ConfigError, ModelFileError

MANIFEST_FORMAT = "ctrops-manifest/1"
MANIFEST_NAME = "manifest.json"
MODEL_FILE_NAME = "model.ctm"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ALIAS_RE = _NAME_RE


@dataclass
class ManifestEntry:
    """One published version. `path` is relative to the storage root."""

    version: int
    path: str
    sha256: str
    size_bytes: int
    created_at: str
    model_type: str
    metrics: dict[str, Any] = field(default_factory=dict)
    canary: list[dict[str, Any]] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "path": self.path, "sha256": self.sha256, "size_bytes": self.size_bytes,
                "created_at": self.created_at, "model_type": self.model_type, "metrics": self.metrics,
                "canary": self.canary, "aliases": self.aliases}


@dataclass
class Manifest:
    """All published versions of one model (newest first) and its aliases."""

    model_name: str
    versions: list[ManifestEntry] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)

    @property
    def latest(self) -> ManifestEntry:
        if not self.versions:
            raise ModelFileError(f"model {self.model_name!r} has no published version")
        return self.versions[0]

    def get(self, version: int) -> ManifestEntry:
        for entry in self.versions:
            if entry.version == version:
                return entry
        raise ModelFileError(f"model {self.model_name!r} has no version {version} "
                             f"(published: {[e.version for e in self.versions]})")

    def resolve(self, alias_or_version: str | int) -> ManifestEntry:
        """Entry for an alias ("production"), a version number (7 or "7"), or "latest"."""
        if isinstance(alias_or_version, int) and not isinstance(alias_or_version, bool):
            return self.get(alias_or_version)
        name = str(alias_or_version)
        if name in self.aliases:
            return self.get(self.aliases[name])
        if name == "latest":
            return self.latest
        if name.isdigit():
            return self.get(int(name))
        raise ModelFileError(f"model {self.model_name!r} has no alias {name!r} (aliases: {sorted(self.aliases)})")

    def to_dict(self) -> dict[str, Any]:
        by_version: dict[int, list[str]] = {}
        for alias, version in sorted(self.aliases.items()):
            by_version.setdefault(version, []).append(alias)
        for entry in self.versions:
            entry.aliases = by_version.get(entry.version, [])
        return {"format": MANIFEST_FORMAT, "model_name": self.model_name,
                "versions": [e.to_dict() for e in self.versions], "aliases": dict(sorted(self.aliases.items()))}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "Manifest":
        """Validate parsed JSON; every error names `source` and the bad key."""
        if not isinstance(data, dict):
            raise ModelFileError(f"{source}: manifest is a JSON {type(data).__name__}, expected an object")
        if data.get("format") != MANIFEST_FORMAT:
            raise ModelFileError(f"{source}: unknown manifest format {data.get('format')!r} "
                                 f"(this reader knows {MANIFEST_FORMAT!r})")
        for key, kind in (("model_name", str), ("versions", list), ("aliases", dict)):
            if not isinstance(data.get(key), kind):
                raise ModelFileError(f"{source}: key {key!r} is missing or not a {kind.__name__}")
        versions = [_entry_from_dict(item, f"{source}: versions[{i}]") for i, item in enumerate(data["versions"])]
        numbers = [e.version for e in versions]
        if len(set(numbers)) != len(numbers):
            raise ModelFileError(f"{source}: versions {numbers} repeat a version")
        aliases: dict[str, int] = {}
        for alias, version in data["aliases"].items():
            if not isinstance(version, int) or isinstance(version, bool) or version not in numbers:
                raise ModelFileError(f"{source}: alias {alias!r} points to {version!r}, "
                                     f"which is not a listed version {numbers}")
            aliases[alias] = version
        versions.sort(key=lambda e: e.version, reverse=True)
        return cls(model_name=data["model_name"], versions=versions, aliases=aliases)


_ENTRY_KEYS = {"version": int, "path": str, "sha256": str, "size_bytes": int, "created_at": str,
               "model_type": str, "metrics": dict, "canary": list}


def _entry_from_dict(item: Any, where: str) -> ManifestEntry:
    if not isinstance(item, dict):
        raise ModelFileError(f"{where}: expected an object, got {type(item).__name__}")
    for key, kind in _ENTRY_KEYS.items():
        value = item.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ModelFileError(f"{where}: key {key!r} is missing or not a {kind.__name__} (got {value!r})")
    if not re.fullmatch(r"[0-9a-f]{64}", item["sha256"]):
        raise ModelFileError(f"{where}: sha256 {item['sha256']!r} is not 64 lowercase hex digits")
    if ".." in item["path"].split("/") or item["path"].startswith("/"):
        raise ModelFileError(f"{where}: path {item['path']!r} must be relative to the storage root")
    try:
        datetime.fromisoformat(item["created_at"])
    except ValueError:
        raise ModelFileError(f"{where}: created_at {item['created_at']!r} is not ISO-8601") from None
    try:
        canary = validate_canary(item["canary"])
    except ConfigError as exc:
        raise ModelFileError(f"{where}: {exc}") from None
    return ManifestEntry(version=item["version"], path=item["path"], sha256=item["sha256"],
                         size_bytes=item["size_bytes"], created_at=item["created_at"],
                         model_type=item["model_type"], metrics=item["metrics"], canary=canary,
                         aliases=list(item.get("aliases") or []))


def validate_canary(canary: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check canary requests: a context object, candidate objects, one finite probability per candidate."""
    out = []
    for i, case in enumerate(canary):
        where = f"canary[{i}]"
        if not isinstance(case, Mapping):
            raise ConfigError(f"{where}: expected an object with context, candidates, expected")
        context, candidates, expected = case.get("context"), case.get("candidates"), case.get("expected")
        if not isinstance(context, Mapping):
            raise ConfigError(f"{where}: 'context' must be an object")
        if not isinstance(candidates, Sequence) or not all(isinstance(c, Mapping) for c in candidates):
            raise ConfigError(f"{where}: 'candidates' must be a list of objects")
        if not isinstance(expected, Sequence) or len(expected) != len(candidates):
            raise ConfigError(f"{where}: 'expected' must hold one probability per candidate "
                              f"({len(candidates)})")
        probs = []
        for p in expected:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 <= p <= 1:
                raise ConfigError(f"{where}: expected value {p!r} is not a probability")
            probs.append(float(p))
        out.append({"context": dict(context), "candidates": [dict(c) for c in candidates], "expected": probs})
    return out


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{kind} {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'")


def _model_dir(model_name: str) -> str:
    return f"models/{model_name}"


def _manifest_path(model_name: str) -> str:
    return f"{_model_dir(model_name)}/{MANIFEST_NAME}"


def _read(storage: Storage, model_name: str) -> Manifest | None:
    rel = _manifest_path(model_name)
    try:
        raw = storage.read_bytes(rel)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{storage.describe(rel)}: manifest is not valid UTF-8 JSON: {exc}") from exc
    manifest = Manifest.from_dict(data, storage.describe(rel))
    if manifest.model_name != model_name:
        raise ModelFileError(f"{storage.describe(rel)}: manifest is for model {manifest.model_name!r}, "
                             f"not {model_name!r}")
    return manifest


def _write(storage: Storage, manifest: Manifest) -> None:
    blob = json.dumps(manifest.to_dict(), indent=2, allow_nan=False).encode("utf-8")
    storage.write_bytes_atomic(_manifest_path(manifest.model_name), blob)


def read_manifest(storage_url: str | os.PathLike, model_name: str, *,
                  storage_options: dict[str, Any] | None = None) -> Manifest:
    """The validated manifest of `model_name`; ModelFileError if absent or invalid."""
    _check_name("model name", model_name)
    storage = Storage(storage_url, storage_options)
    manifest = _read(storage, model_name)
    if manifest is None:
        raise ModelFileError(f"{storage.describe(_manifest_path(model_name))}: no manifest "
                             f"(model {model_name!r} was never published here)")
    return manifest


def publish_model(storage_url: str | os.PathLike, model_name: str, model_path: str | os.PathLike, *,
                  version: int | None = None, metrics: Mapping[str, Any] | None = None,
                  canary: Iterable[Mapping[str, Any]] = (), aliases: Iterable[str] = (), keep_last: int = 5,
                  storage_options: dict[str, Any] | None = None) -> ManifestEntry:
    """Publish a verified model file as `version` (default: latest + 1), then point the manifest at it.

    Order: verify the local file -> upload `models/<name>/<version>/model.ctm` ->
    write the manifest atomically -> delete folders of versions beyond the
    newest `keep_last` that no alias points to.
    """
    _check_name("model name", model_name)
    for alias in aliases:
        _check_name("alias", alias)
    if keep_last < 1:
        raise ConfigError(f"keep_last must be at least 1, got {keep_last}")
    model_path = Path(model_path)
    with load_model(model_path, verify=True) as model:  # never publish a file a server would refuse
        model_type = model.params.model_type
    canary_cases = validate_canary(canary)
    storage = Storage(storage_url, storage_options)
    manifest = _read(storage, model_name) or Manifest(model_name=model_name)
    if version is None:
        version = max((e.version for e in manifest.versions), default=0) + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"version must be a positive integer, got {version!r}")
    sha = sha256_file(model_path)
    previous = next((e for e in manifest.versions if e.version == version), None)
    if previous is not None and previous.sha256 != sha:
        raise ConfigError(f"{storage.describe(_manifest_path(model_name))}: version {version} is already "
                          f"published with different content (sha256 {previous.sha256[:12]}...); "
                          f"publish a new version number")
    rel = f"{_model_dir(model_name)}/{version}/{MODEL_FILE_NAME}"
    storage.upload_file_atomic(model_path, rel)
    entry = ManifestEntry(version=version, path=rel, sha256=sha, size_bytes=model_path.stat().st_size,
                          created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          model_type=model_type, metrics=dict(metrics or {}), canary=canary_cases)
    manifest.versions = sorted([e for e in manifest.versions if e.version != version] + [entry],
                               key=lambda e: e.version, reverse=True)
    for alias in aliases:
        manifest.aliases[alias] = version
    removed = _retire(manifest, keep_last, keep={version})
    _write(storage, manifest)  # the commit point
    for old in removed:
        storage.remove_tree(f"{_model_dir(model_name)}/{old.version}")
    return entry


def _retire(manifest: Manifest, keep_last: int, keep: set[int]) -> list[ManifestEntry]:
    """Drop entries beyond the newest `keep_last`, except aliased ones and `keep`; returns the dropped."""
    pinned = set(manifest.aliases.values()) | keep
    kept, removed = [], []
    for i, entry in enumerate(manifest.versions):
        (kept if i < keep_last or entry.version in pinned else removed).append(entry)
    manifest.versions = kept
    return removed


def set_alias(storage_url: str | os.PathLike, model_name: str, alias: str, version: int, *,
              storage_options: dict[str, Any] | None = None) -> Manifest:
    """Point `alias` at a published version (e.g. promote a candidate to production)."""
    _check_name("alias", alias)
    storage = Storage(storage_url, storage_options)
    manifest = read_manifest(storage_url, model_name, storage_options=storage_options)
    manifest.get(version)  # raises if not published
    manifest.aliases[alias] = version
    _write(storage, manifest)
    return manifest


def remove_alias(storage_url: str | os.PathLike, model_name: str, alias: str, *,
                 storage_options: dict[str, Any] | None = None) -> Manifest:
    """Delete an alias (its version then ages out like any other)."""
    storage = Storage(storage_url, storage_options)
    manifest = read_manifest(storage_url, model_name, storage_options=storage_options)
    if manifest.aliases.pop(alias, None) is None:
        raise ConfigError(f"model {model_name!r} has no alias {alias!r}")
    _write(storage, manifest)
    return manifest


def fetch_model(storage_url: str | os.PathLike, entry: ManifestEntry, local_dir: str | os.PathLike, *,
                storage_options: dict[str, Any] | None = None) -> Path:
    """Local copy of `entry`'s file under `local_dir` (same relative path), sha256-verified.

    An existing local copy of the right size and sha256 is reused, so a server
    restart does not download again.
    """
    storage = Storage(storage_url, storage_options)
    local = Path(local_dir) / entry.path
    if local.exists() and local.stat().st_size == entry.size_bytes and sha256_file(local) == entry.sha256:
        return local
    try:
        storage.download_verified(entry.path, local, entry.sha256)
    except FileNotFoundError:
        raise ModelFileError(f"{storage.describe(entry.path)}: model file of version {entry.version} "
                             f"is missing from storage") from None
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    return local

