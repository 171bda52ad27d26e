"""Tuning: defaults first, warm-started CMA-ES vs TPE, parallel workers, objective on real models."""

from __future__ import annotations

import math

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from ctrops.errors import ConfigError
from ctrops.tune import Objective, TuningData, load_source_trials, space_for, tune
from ctrops.tune.space import Param, SearchSpace

SPACE = SearchSpace("ffm", (Param("eta", "float", 0.01, 1.0, 0.2, log=True),
                            Param("l2", "float", 1e-7, 1e-3, 2e-5, log=True),
                            Param("k", "int", 2, 16, 4)))


def bowl(trial) -> float:
    """A smooth bowl whose minimum (eta=0.05, l2=1e-5, k=8) is far from the defaults."""
    eta = trial.suggest_float("eta", 0.01, 1.0, log=True)
    l2 = trial.suggest_float("l2", 1e-7, 1e-3, log=True)
    k = trial.suggest_int("k", 2, 16)
    return (math.log10(eta) - math.log10(0.05)) ** 2 + (math.log10(l2) + 5) ** 2 + ((k - 8) / 4) ** 2


def test_defaults_run_first_and_best_is_never_worse(tmp_path):
    res = tune(bowl, SPACE, n_trials=8, study_path=tmp_path / "s.db", seed=1)
    assert res.sampler == "tpe"
    assert res.n_trials == 8
    assert res.default_params == {"eta": 0.2, "l2": 2e-5, "k": 4}
    study = optuna.load_study(study_name=res.study_name, storage=f"sqlite:///{tmp_path / 's.db'}")
    first = study.trials[0]
    assert first.params == res.default_params and first.user_attrs["is_default"]
    assert res.default_value == pytest.approx(first.value)
    assert res.best_value <= res.default_value
    assert res.values[0] == pytest.approx(res.default_value)


def test_warm_started_cmaes_uses_source_trials_and_beats_cold_start(tmp_path):
    src = tune(bowl, SPACE, n_trials=30, study_path=tmp_path / "week0.db", seed=2)
    trials = load_source_trials(tmp_path / "week0.db", SPACE)
    assert len(trials) == 30
    warm = tune(bowl, SPACE, n_trials=10, study_path=tmp_path / "week1.db", source_trials=trials, seed=3)
    assert warm.sampler == "cmaes-warm" and warm.n_source_trials == 30
    # the prior concentrates proposals near last week's optimum
    assert min(warm.values[1:]) < 0.5 * warm.default_value
    assert src.objective_version == warm.objective_version


def test_warm_start_replays_last_weeks_best_trials_after_the_defaults(tmp_path):
    from ctrops.tune.study import best_source_params

    tune(bowl, SPACE, n_trials=20, study_path=tmp_path / "week0.db", seed=5)
    trials = load_source_trials(tmp_path / "week0.db", SPACE)
    ranked = sorted(trials, key=lambda t: (t.value, t.number))
    expected = best_source_params(trials, SPACE, 3, exclude=[SPACE.defaults()])
    assert len(expected) == 3 and expected[0] == ranked[0].params  # the best first, no repeats
    assert SPACE.defaults() not in expected and len({tuple(sorted(p.items())) for p in expected}) == 3
    warm = tune(bowl, SPACE, n_trials=6, study_path=tmp_path / "week1.db", source_trials=trials, seed=6,
                n_replayed=3)
    study = optuna.load_study(study_name=warm.study_name, storage=f"sqlite:///{tmp_path / 'week1.db'}")
    first = sorted(study.trials, key=lambda t: t.number)
    assert first[0].user_attrs["is_default"]
    assert [t.params for t in first[1:4]] == expected
    assert [t.user_attrs["replayed_source_rank"] for t in first[1:4]] == [0, 1, 2]
    # the same objective scores a replayed set as last week did, so warm starts at last week's best
    assert warm.best_value <= ranked[0].value
    # off by default (CMA-ES alone), and never replays on a cold start
    alone = tune(bowl, SPACE, n_trials=3, study_path=tmp_path / "alone.db", source_trials=trials, seed=6)
    cold = tune(bowl, SPACE, n_trials=3, study_path=tmp_path / "cold.db", seed=6)
    for res, path in ((alone, "alone.db"), (cold, "cold.db")):
        st = optuna.load_study(study_name=res.study_name, storage=f"sqlite:///{tmp_path / path}")
        assert not any("replayed_source_rank" in t.user_attrs for t in st.trials)


def test_replayed_trials_run_before_parallel_workers_start(tmp_path):
    tune(bowl, SPACE, n_trials=12, study_path=tmp_path / "w0.db", seed=7)
    trials = load_source_trials(tmp_path / "w0.db", SPACE)
    res = tune(bowl, SPACE, n_trials=7, study_path=tmp_path / "w1.db", source_trials=trials, seed=8,
               n_workers=2, n_replayed=3)
    study = optuna.load_study(study_name=res.study_name, storage=f"sqlite:///{tmp_path / 'w1.db'}")
    assert res.n_trials == 7
    replayed = [t for t in study.trials if "replayed_source_rank" in t.user_attrs]
    assert sorted(t.number for t in replayed) == [1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_source_trials_of_another_space_are_ignored(tmp_path):
    tune(bowl, SPACE, n_trials=3, study_path=tmp_path / "a.db", seed=0)
    other = SPACE.with_overrides({"k": {"high": 32}})
    assert other.objective_version != SPACE.objective_version
    assert load_source_trials(tmp_path / "a.db", other) == []


def test_parallel_workers_share_one_study(tmp_path):
    res = tune(bowl, SPACE, n_trials=6, study_path=tmp_path / "p.db", n_workers=2, seed=4)
    assert res.n_trials == 6
    assert res.default_value is not None


def test_bad_settings_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="n_trials"):
        tune(bowl, SPACE, n_trials=0, study_path=tmp_path / "x.db")
    with pytest.raises(ConfigError, match="unknown parameter"):
        space_for("ffm", {"gamma": {"low": 1}})
    with pytest.raises(ConfigError, match="no search space"):
        space_for("svm")
    with pytest.raises(ConfigError, match="outside"):
        Param("eta", "float", 0.1, 1.0, 2.0)


def test_objective_version_is_stable_and_sensitive():
    a, b = space_for("ffm"), space_for("ffm")
    assert a.objective_version == b.objective_version
    assert a.objective_version.startswith("ffm-r1-")
    assert space_for("ffm", {"eta": {"low": 0.001}}).objective_version != a.objective_version
    assert space_for("xgboost").objective_version != a.objective_version


def _write_table(path, rows, seed):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    cat = rng.choice(["a", "b", "c", "d"], size=rows)
    logit = 1.5 * x + np.where(cat == "a", 1.0, -0.5)
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    pq.write_table(pa.table({"label": y, "x": x, "cat": cat}), path)


def test_xgboost_objective_records_rounds_chosen_by_early_stopping(tmp_path):
    _write_table(tmp_path / "train.parquet", 2000, 0)
    _write_table(tmp_path / "valid.parquet", 800, 1)
    space = space_for("xgboost")
    obj = Objective("xgboost", TuningData(str(tmp_path / "train.parquet"), str(tmp_path / "valid.parquet"),
                                          "parquet"), space, fixed={"n_estimators": 50, "early_stopping_rounds": 5})
    res = tune(obj, space, n_trials=3, study_path=tmp_path / "x.db", seed=0)
    assert 0.3 < res.best_value < 0.69
    assert 1 <= res.best_user_attrs["best_epoch"] <= 50
    with pytest.raises(ConfigError, match="both fixed and searched"):
        Objective("xgboost", obj.data, space, fixed={"max_depth": 3})
