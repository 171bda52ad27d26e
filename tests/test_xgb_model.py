"""XGBoost wrapper: table and FieldMatrix inputs, encodings, early stopping, pickle-free save/load."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("xgboost")

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import DataError, ModelFileError
from ctrops.models.xgb import XGBoostModel
from ctrops.tune.objective import log_loss


def table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    site = rng.choice(["news", "games", "shop", "mail", "video"], size=n, p=[0.4, 0.3, 0.2, 0.07, 0.03])
    logit = 1.2 * np.nan_to_num(x) + np.where(site == "games", 1.5, -0.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pa.table({"label": y, "x": x, "site": site, "unused": np.zeros(n)})


def test_fit_on_table_learns_and_stops_early():
    train, valid = table(4000, 0), table(2000, 1)
    m = XGBoostModel(n_estimators=200, learning_rate=0.3, max_depth=3, early_stopping_rounds=5,
                     numeric_columns=["x"], categorical_columns=["site"]).fit(train, valid)
    y = valid.column("label").to_numpy()
    loss = log_loss(y, m.predict_proba(valid))
    assert loss < log_loss(y, np.full(len(y), y.mean())) - 0.05
    assert m.best_iteration_ < 199 and m.booster_.num_boosted_rounds() == m.best_iteration_ + 1
    assert [c.kind for c in m.columns_] == ["q", "c"]
    assert m.columns_[1].keys == sorted(["games", "mail", "news", "shop", "video"])
    assert len(m.history_["valid"]) > m.best_iteration_


def test_rare_and_unseen_categories_share_one_code():
    m = XGBoostModel(n_estimators=5, numeric_columns=["x"], categorical_columns=["site"],
                     max_categories=3, min_count=1).fit(table(3000, 0))
    col = m.columns_[1]
    assert col.keys == ["games", "news"]  # the two most frequent; max_categories counts the rare code
    feats = m.features(pa.table({"x": [0.0, None], "site": ["never-seen", None]}))
    assert feats[0, 1] == col.rare_code and np.isnan(feats[1, 1]) and np.isnan(feats[1, 0])


def test_roles_are_inferred_from_column_types_when_not_given():
    m = XGBoostModel(n_estimators=3).fit(table(500, 0))
    assert [(c.name, c.kind) for c in m.columns_] == [("x", "q"), ("unused", "q"), ("site", "c")]  # numeric first


def test_field_matrix_input_uses_one_column_per_field():
    rng = np.random.default_rng(0)
    n = 3000
    f0 = rng.integers(0, 4, n)
    f1 = rng.normal(size=n).astype(np.float32)
    y = (rng.random(n) < np.where(f0 == 2, 0.7, 0.2)).astype(np.float32)
    X = FieldMatrix.from_arrays(np.arange(n + 1) * 2, np.tile([0, 1], n),
                                np.stack([f0 + 2, np.full(n, 10)], 1).ravel(),
                                np.stack([np.ones(n, np.float32), f1], 1).ravel(), y, 2, 11)
    m = XGBoostModel(n_estimators=20, min_count=1).fit(X, X)
    assert [c.kind for c in m.columns_] == ["c", "q"]
    p = m.predict_proba(X)
    assert p[f0 == 2].mean() > p[f0 != 2].mean() + 0.3
    with pytest.raises(DataError, match="fitted on a FieldMatrix"):
        m.predict_proba(table(10, 0))


def test_save_load_round_trip_is_exact_and_json_only(tmp_path):
    train = table(2000, 0)
    m = XGBoostModel(n_estimators=20, numeric_columns=["x"], categorical_columns=["site"]).fit(train, train)
    path = m.save(tmp_path / "model.xgb.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "ctrops-xgb/1" and doc["hyper_parameters"]["n_estimators"] == 20
    again = XGBoostModel.load(path)
    np.testing.assert_array_equal(again.predict_proba(train), m.predict_proba(train))


def test_bad_files_and_inputs_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(ModelFileError, match="format"):
        XGBoostModel.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ModelFileError, match="not a readable"):
        XGBoostModel.load(bad)
    m = XGBoostModel(n_estimators=3, numeric_columns=["x"], categorical_columns=["site"]).fit(table(300, 0))
    with pytest.raises(DataError, match="'site'"):
        m.predict_proba(pa.table({"x": [1.0]}))
    with pytest.raises(ValueError, match="not fitted"):
        XGBoostModel().predict_proba(table(3, 0))
