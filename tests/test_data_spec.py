"""FieldSpec: YAML forms, the built-in Criteo spec, errors that name the key."""

from __future__ import annotations

import pytest

from ctrops.data.spec import FieldDef, FieldSpec
from ctrops.errors import ConfigError


def write(tmp_path, text: str):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


def test_criteo_spec_layout():
    spec = FieldSpec.criteo()
    assert spec.label == "label"
    assert spec.n_fields == 39
    assert spec.field_names[:2] == ("I1", "I2") and spec.field_names[13] == "C1"
    assert all(d.transform == "log2bin" for d in spec.fields[:13])
    assert all(d.kind == "categorical" and d.transform is None for d in spec.fields[13:])
    assert spec.field_index("C26") == 38


def test_yaml_numeric_then_categorical(tmp_path):
    spec = FieldSpec.from_yaml(write(tmp_path, """
label: click
weight: w
id: [tracking_id]
passthrough: [campaign]
missing_values: ["null"]
numeric:
  - depth
  - {name: price, transform: raw}
categorical: [ad_id, user_id]
"""))
    assert spec.field_names == ("depth", "price", "ad_id", "user_id")
    assert spec.fields[0].transform == "log2bin" and spec.fields[1].is_raw
    assert spec.weight == "w" and spec.id_columns == ("tracking_id",) and spec.missing_values == ("null",)
    assert spec.columns == ("click", "w", "depth", "price", "ad_id", "user_id", "tracking_id", "campaign")
    assert FieldSpec.from_dict(spec.to_dict()) == spec


def test_yaml_ordered_fields_list(tmp_path):
    spec = FieldSpec.from_yaml(write(tmp_path, """
label: y
fields:
  - {name: b, kind: categorical}
  - {name: a, kind: numeric, transform: raw}
"""))
    assert spec.field_names == ("b", "a")
    assert spec.fields[1] == FieldDef("a", "numeric", "raw")


@pytest.mark.parametrize("text, needle", [
    ("numeric: [a]\n", "'label'"),
    ("label: y\n", "at least one feature field"),
    ("label: y\ncategorical: [a]\ncolour: red\n", "colour"),
    ("label: y\nnumeric: [{name: a, transform: sqrt}]\n", "numeric[0]"),
    ("label: y\ncategorical: a\n", "'categorical' must be a list"),
    ("label: y\ncategorical: [a, a]\n", "'a' is already used"),
    ("label: y\ncategorical: [y]\n", "'y' is already used"),
    ("label: y\nfields: [{name: a}]\ncategorical: [b]\n", "cannot be combined"),
    ("label: y\nfields: [{name: a, kind: text}]\n", "fields[0]"),
    ("- just\n- a list\n", "must be a mapping"),
    ("label: [unclosed\n", "not valid YAML"),
])
def test_yaml_errors_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=None) as info:
        FieldSpec.from_yaml(write(tmp_path, text))
    assert needle in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read field spec"):
        FieldSpec.from_yaml(tmp_path / "nope.yaml")


def test_unknown_field_name():
    with pytest.raises(ConfigError, match="not a feature field"):
        FieldSpec.criteo().field_index("C99")
