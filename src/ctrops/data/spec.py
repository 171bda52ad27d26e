"""Which columns of an ad log are the label, the features and the bookkeeping.

A `FieldSpec` is the one place that says how a raw log becomes fields: the
field number of a column is its position in `FieldSpec.fields`, and that number
is baked into every feature key (see `hashing.feature_key`) and every model
file. So the order is part of the model: change it only together with a
retrain.

YAML form (either `numeric` + `categorical`, numeric fields numbered first, or
one ordered `fields` list):

    label: click                 # required, values 0/1
    weight: importance           # optional, non-negative per-row weight
    id: [tracking_id]            # optional, carried through, never a feature
    passthrough: [campaign]      # optional, carried through, never a feature
    missing_values: ["null"]     # optional extra tokens meaning "missing"
    numeric:                     # transform log2bin (default) or raw
      - I1
      - {name: price, transform: raw}
    categorical: [C1, C2]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from ctrops.errors import ConfigError

FieldKind = Literal["categorical", "numeric"]
Transform = Literal["log2bin", "raw"]
FIELD_KINDS: tuple[str, ...] = ("categorical", "numeric")
TRANSFORMS: tuple[str, ...] = ("log2bin", "raw")

CRITEO_LABEL = "label"
CRITEO_INTEGER_COLUMNS: tuple[str, ...] = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL_COLUMNS: tuple[str, ...] = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS: tuple[str, ...] = (CRITEO_LABEL, *CRITEO_INTEGER_COLUMNS, *CRITEO_CATEGORICAL_COLUMNS)

_TOP_KEYS = {"label", "weight", "id", "passthrough", "missing_values", "numeric", "categorical", "fields"}


@dataclass(frozen=True)
class FieldDef:
    """One feature field: a column name, its kind, and (numeric only) its transform."""

    name: str
    kind: FieldKind
    transform: Transform | None = None

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ConfigError(f"field {self.name!r}: kind must be one of {FIELD_KINDS}, got {self.kind!r}")
        if self.kind == "numeric":
            if self.transform is None:
                object.__setattr__(self, "transform", "log2bin")
            elif self.transform not in TRANSFORMS:
                raise ConfigError(f"field {self.name!r}: transform must be one of {TRANSFORMS}, "
                                  f"got {self.transform!r}")
        elif self.transform is not None:
            raise ConfigError(f"field {self.name!r}: a categorical field takes no transform "
                              f"(got {self.transform!r})")

    @property
    def is_raw(self) -> bool:
        return self.kind == "numeric" and self.transform == "raw"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "transform": self.transform}


@dataclass(frozen=True)
class FieldSpec:
    """Label, feature fields (in field-number order) and non-feature columns of a log."""

    label: str
    fields: tuple[FieldDef, ...]
    weight: str | None = None
    id_columns: tuple[str, ...] = ()
    passthrough: tuple[str, ...] = ()
    missing_values: tuple[str, ...] = ()
    _positions: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "id_columns", tuple(self.id_columns))
        object.__setattr__(self, "passthrough", tuple(self.passthrough))
        object.__setattr__(self, "missing_values", tuple(str(v) for v in self.missing_values))
        if not isinstance(self.label, str) or not self.label:
            raise ConfigError("spec key 'label': a label column name is required")
        if not self.fields:
            raise ConfigError("spec keys 'numeric'/'categorical'/'fields': at least one feature field is required")
        seen: dict[str, str] = {}
        roles = [("label", [self.label]), ("weight", [self.weight] if self.weight else []),
                 ("id", list(self.id_columns)), ("passthrough", list(self.passthrough)),
                 ("fields", [f.name for f in self.fields])]
        for role, names in roles:
            for name in names:
                if not isinstance(name, str) or not name:
                    raise ConfigError(f"spec key {role!r}: column names must be non-empty strings, got {name!r}")
                if name in seen:
                    raise ConfigError(f"spec key {role!r}: column {name!r} is already used as {seen[name]!r}")
                seen[name] = role
        self._positions.update({f.name: i for i, f in enumerate(self.fields)})

    # -- views ---------------------------------------------------------------
    @property
    def n_fields(self) -> int:
        return len(self.fields)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field_index(self, name: str) -> int:
        """Field number of column `name` (its position in `fields`)."""
        try:
            return self._positions[name]
        except KeyError:
            raise ConfigError(f"{name!r} is not a feature field of this spec "
                              f"(fields: {', '.join(self.field_names)})") from None

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the spec reads: label, weight, fields, ids, passthrough."""
        return (self.label, *([self.weight] if self.weight else []), *self.field_names,
                *self.id_columns, *self.passthrough)

    # -- construction ----------------------------------------------------------
    @classmethod
    def criteo(cls) -> "FieldSpec":
        """The Criteo display-ads layout: label, I1..I13 (log2bin), C1..C26."""
        return cls(label=CRITEO_LABEL,
                   fields=(*(FieldDef(n, "numeric", "log2bin") for n in CRITEO_INTEGER_COLUMNS),
                           *(FieldDef(n, "categorical") for n in CRITEO_CATEGORICAL_COLUMNS)))

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec") -> "FieldSpec":
        """Build from parsed YAML/JSON; errors name the offending key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a field spec must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
        if "label" not in data:
            raise ConfigError(f"{source}: key 'label' is required")
        if "fields" in data and ("numeric" in data or "categorical" in data):
            raise ConfigError(f"{source}: key 'fields' cannot be combined with 'numeric'/'categorical'")
        fields: list[FieldDef] = []
        if "fields" in data:
            for i, item in enumerate(_as_list(data["fields"], f"{source}: key 'fields'")):
                where = f"{source}: key 'fields[{i}]'"
                if not isinstance(item, dict) or "name" not in item:
                    raise ConfigError(f"{where}: each field needs at least {{name: ..., kind: ...}}")
                extra = sorted(set(item) - {"name", "kind", "transform"})
                if extra:
                    raise ConfigError(f"{where}: unknown key(s) {extra}")
                fields.append(_field(item.get("name"), item.get("kind", "categorical"), item.get("transform"),
                                     where))
        else:
            for kind in ("numeric", "categorical"):
                for i, item in enumerate(_as_list(data.get(kind, []), f"{source}: key {kind!r}")):
                    where = f"{source}: key '{kind}[{i}]'"
                    if isinstance(item, dict):
                        extra = sorted(set(item) - {"name", "transform"})
                        if extra or "name" not in item:
                            raise ConfigError(f"{where}: expected {{name: ..., transform: ...}}, got keys "
                                              f"{sorted(item)}")
                        fields.append(_field(item["name"], kind, item.get("transform"), where))
                    else:
                        fields.append(_field(item, kind, None, where))
        for key in ("id", "passthrough", "missing_values"):
            _as_list(data.get(key, []), f"{source}: key {key!r}")
        weight = data.get("weight")
        if weight is not None and not isinstance(weight, str):
            raise ConfigError(f"{source}: key 'weight' must be a column name, got {weight!r}")
        try:
            return cls(label=data["label"], fields=tuple(fields), weight=weight,
                       id_columns=tuple(data.get("id", [])), passthrough=tuple(data.get("passthrough", [])),
                       missing_values=tuple(data.get("missing_values", [])))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "FieldSpec":
        """Read a spec file (see the module docstring for its keys)."""
        import yaml

        try:
            text = open(path, encoding="utf-8").read()
        except OSError as exc:
            raise ConfigError(f"cannot read field spec {path}: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-serialisable form that `from_dict` reads back (ordered `fields` list)."""
        out: dict[str, Any] = {"label": self.label, "fields": [f.to_dict() for f in self.fields]}
        for f in out["fields"]:
            if f["transform"] is None:
                del f["transform"]
        if self.weight:
            out["weight"] = self.weight
        if self.id_columns:
            out["id"] = list(self.id_columns)
        if self.passthrough:
            out["passthrough"] = list(self.passthrough)
        if self.missing_values:
            out["missing_values"] = list(self.missing_values)
        return out


def _as_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _field(name: Any, kind: Any, transform: Any, where: str) -> FieldDef:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: field name must be a non-empty string, got {name!r}")
    try:
        return FieldDef(name=name, kind=kind, transform=transform)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
