"""Experiment definitions are validated at load; assignment is stable and honours the shares."""

from __future__ import annotations

import pytest

from ctrops.errors import ConfigError
from ctrops.experiments.assign import Assigner
from ctrops.experiments.definition import ExperimentDefinition

ARMS = [{"name": "production", "share": 80, "model": "production"},
        {"name": "candidate", "share": 15, "model": 3},
        {"name": "random", "share": 5, "random": True}]


def definition(**over) -> ExperimentDefinition:
    raw = {"name": "ctr-test", "salt": "s1", "arms": ARMS, **over}
    return ExperimentDefinition.from_dict(raw, source="exp.yaml")


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: e1\nsalt: abc\narms:\n  - {name: production, share: 90, model: production}\n"
                    "  - {name: control, share: 10, random: true}\n")
    d = ExperimentDefinition.from_yaml(path)
    assert [(a.name, a.share, a.model, a.random) for a in d.arms] == [
        ("production", 90.0, "production", False), ("control", 10.0, None, True)]
    assert d.model_refs() == ["production"]


@pytest.mark.parametrize("arms, message", [
    ([{"name": "a", "share": 80, "model": "production"}], "sum to 100, got 80"),
    ([{"name": "a", "share": 60, "model": "x"}, {"name": "a", "share": 40, "model": "y"}], "more than once"),
    ([{"name": "a", "share": -1, "model": "x"}, {"name": "b", "share": 101, "model": "y"}], "share"),
    ([{"name": "a", "share": 100}], "needs 'model'"),
    ([{"name": "a", "share": 100, "random": True, "model": "x"}], "takes no 'model'"),
    ([{"name": "a", "share": 100, "model": "x", "weight": 3}], "unknown key"),
    ([{"name": "a", "share": 99.995, "model": "x"}, {"name": "b", "share": 0.005, "model": "y"}], "finer"),
    ([], "non-empty list"),
])
def test_invalid_definitions_name_the_problem(arms, message):
    with pytest.raises(ConfigError, match=message) as info:
        definition(arms=arms)
    assert "exp.yaml" in str(info.value)


def test_unknown_model_is_a_clear_error():
    d = definition()
    d.check_models({"production": 2, "candidate": 3}, [1, 2, 3])  # fine
    with pytest.raises(ConfigError, match="arm 'production' uses model alias 'production'"):
        d.check_models({"candidate": 3}, [1, 2, 3])
    with pytest.raises(ConfigError, match="arm 'candidate' uses model version 3"):
        d.check_models({"production": 2}, [1, 2])


def test_assignment_is_stable_and_salted():
    a, b = Assigner(definition()), Assigner(definition())
    units = [f"user-{i}" for i in range(2000)]
    first = [a.assign(u).name for u in units]
    assert first == [b.assign(u).name for u in units]
    assert first == [a.assign(u).name for u in units]
    other = Assigner(definition(salt="s2"))
    moved = sum(x != other.assign(u).name for x, u in zip(first, units))
    assert moved > 200  # a new salt reshuffles users


def test_shares_hold_chi_square_100k():
    d = definition()
    a = Assigner(d)
    n = 100_000
    counts = {arm.name: 0 for arm in d.arms}
    for i in range(n):
        counts[a.assign(f"u{i}").name] += 1
    chi2 = sum((counts[arm.name] - n * arm.share / 100) ** 2 / (n * arm.share / 100) for arm in d.arms)
    assert chi2 < 13.82, (counts, chi2)  # chi-square, 2 degrees of freedom, p = 0.001


def test_zero_share_arm_gets_nothing():
    d = definition(arms=[{"name": "a", "share": 100, "model": "x"}, {"name": "b", "share": 0, "model": "y"}])
    a = Assigner(d)
    assert {a.assign(str(i)).name for i in range(5000)} == {"a"}
