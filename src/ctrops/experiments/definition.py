"""ABn experiment definitions: a YAML table of arms and their traffic shares.

The table is the single place where the split between the current model, an
experimental model and a random control group is decided, so it is validated
hard at load: a typo in a share or a model name must stop a reload, not
silently send traffic to the wrong arm.

    name: ctr-2026-11          # experiment id, written to every log record
    salt: "2026-11-a"          # change it to reshuffle users between arms
    arms:
      - {name: production, share: 80, model: production}   # alias ...
      - {name: candidate,  share: 15, model: 7}            # ... or version
      - {name: random,     share: 5,  random: true}        # control group

`model` names an alias of the served model's manifest, "latest", or a version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from ctrops.errors import ConfigError

SHARE_RESOLUTION = 10_000  # buckets: shares are honoured to 0.01 %
_ARM_KEYS = {"name", "share", "model", "random"}
_TOP_KEYS = {"name", "salt", "arms", "description"}


@dataclass(frozen=True)
class Arm:
    """One arm: a share of traffic scored by one model, or by a uniform random control."""

    name: str
    share: float
    model: str | int | None  # alias (str) or version (int); None for the random arm
    random: bool = False


@dataclass(frozen=True)
class ExperimentDefinition:
    name: str
    salt: str
    arms: tuple[Arm, ...]
    source: str = "<dict>"

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ExperimentDefinition":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"experiment file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"experiment file {path} is not valid YAML: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def single(cls, model: str | int = "production") -> "ExperimentDefinition":
        """The default when no experiment is configured: all traffic to one model."""
        return cls(name="default", salt="default", arms=(Arm("production", 100.0, model),))

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "<dict>") -> "ExperimentDefinition":
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: an experiment must be a mapping with 'name', 'salt' and 'arms'")
        unknown = set(raw) - _TOP_KEYS
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: 'name' must be a non-empty string")
        salt = raw.get("salt", name)
        if not isinstance(salt, (str, int)) or str(salt) == "":
            raise ConfigError(f"{source}: 'salt' must be a non-empty string")
        arms_raw = raw.get("arms")
        if not isinstance(arms_raw, list) or not arms_raw:
            raise ConfigError(f"{source}: 'arms' must be a non-empty list")
        arms = tuple(_parse_arm(a, i, source) for i, a in enumerate(arms_raw))
        names = [a.name for a in arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{source}: arm name(s) {dupes} appear more than once")
        total = sum(a.share for a in arms)
        if not math.isclose(total, 100.0, abs_tol=1e-9):
            listing = ", ".join(f"{a.name}={a.share:g}" for a in arms)
            raise ConfigError(f"{source}: arm shares must sum to 100, got {total:g} ({listing})")
        for a in arms:
            if abs(a.share * SHARE_RESOLUTION / 100 - round(a.share * SHARE_RESOLUTION / 100)) > 1e-6:
                raise ConfigError(f"{source}: arm {a.name!r} share {a.share} is finer than 0.01")
        return cls(name=name, salt=str(salt), arms=arms, source=source)

    def model_refs(self) -> list[str | int]:
        """Aliases and versions the arms need, in arm order, without duplicates."""
        refs: list[str | int] = []
        for a in self.arms:
            if a.model is not None and a.model not in refs:
                refs.append(a.model)
        return refs

    def check_models(self, aliases: Mapping[str, int], versions: Iterable[int]) -> None:
        """Raise ConfigError naming the arm whose model is neither a known alias nor a version."""
        known_versions = set(int(v) for v in versions)
        for a in self.arms:
            if a.random:
                continue
            if isinstance(a.model, int):
                if a.model not in known_versions:
                    raise ConfigError(
                        f"{self.source}: arm {a.name!r} uses model version {a.model}, which is not in "
                        f"the manifest (versions: {sorted(known_versions)})")
            elif a.model not in aliases and not (a.model == "latest" and known_versions):
                raise ConfigError(
                    f"{self.source}: arm {a.name!r} uses model alias {a.model!r}, which is not in the "
                    f"manifest (aliases: {sorted(aliases)})")


def _parse_arm(raw: Any, i: int, source: str) -> Arm:
    where = f"{source}: arms[{i}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping with 'name', 'share' and 'model' or 'random'")
    unknown = set(raw) - _ARM_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ARM_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    where = f"{source}: arm {name!r}"
    share = raw.get("share")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) or share < 0:
        raise ConfigError(f"{where}: 'share' must be a number between 0 and 100, got {share!r}")
    is_random = raw.get("random", False)
    if not isinstance(is_random, bool):
        raise ConfigError(f"{where}: 'random' must be true or false, got {is_random!r}")
    model = raw.get("model")
    if is_random:
        if model is not None:
            raise ConfigError(f"{where}: a random arm takes no 'model'")
        return Arm(name, float(share), None, True)
    if model is None:
        raise ConfigError(f"{where}: needs 'model' (an alias such as 'production' or a version number) "
                          f"or 'random: true'")
    if isinstance(model, bool) or not isinstance(model, (str, int)):
        raise ConfigError(f"{where}: 'model' must be an alias or a version number, got {model!r}")
    if isinstance(model, str) and model.isdigit():
        model = int(model)
    return Arm(name, float(share), model, False)
