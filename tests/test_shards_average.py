"""Shard training: weight averaging, pickle-free exchange, parallel shard models near a single model."""

from __future__ import annotations

import numpy as np
import pytest

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import ConfigError
from ctrops.models.params import ModelParams
from ctrops.pipeline.shards import average_params, load_params, save_params, split_rows, train_shards
from ctrops.tune.objective import log_loss


def synthetic(n: int, seed: int, n_fields: int = 4, card: int = 20) -> FieldMatrix:
    """Rows with one categorical value per field; clicks from main effects plus a field-0 x field-1 interaction."""
    world = np.random.default_rng(123)
    w = world.normal(0, 0.8, size=n_fields * card)
    inter = world.normal(0, 1.0, size=(card, card))
    rng = np.random.default_rng(seed)
    vals = rng.integers(0, card, size=(n, n_fields))
    idx = vals + np.arange(n_fields) * card
    z = w[idx].sum(axis=1) + inter[vals[:, 0], vals[:, 1]] - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return FieldMatrix.from_arrays(np.arange(n + 1) * n_fields, np.tile(np.arange(n_fields), n), idx.ravel(),
                                   np.ones(n * n_fields), y, n_fields, n_fields * card)


def _params(seed: int, scale: float = 1.0) -> ModelParams:
    rng = np.random.default_rng(seed)
    return ModelParams("ffm", 6, 2, 3, bias=scale, linear=rng.normal(size=6).astype(np.float32),
                       latent=rng.normal(size=(6, 2, 3)).astype(np.float32))


def test_average_is_the_row_weighted_mean():
    a, b = _params(0, 1.0), _params(1, -1.0)
    avg = average_params([a, b], weights=[3, 1])
    np.testing.assert_allclose(avg.latent, 0.75 * a.latent + 0.25 * b.latent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(avg.linear, 0.75 * a.linear + 0.25 * b.linear, rtol=1e-5, atol=1e-6)
    assert avg.bias == pytest.approx(0.5)
    same = average_params([a, a, a])
    np.testing.assert_allclose(same.latent, a.latent, rtol=1e-6)


def test_average_refuses_models_of_another_layout():
    other = ModelParams("ffm", 7, 2, 3, linear=np.zeros(7, np.float32), latent=np.zeros((7, 2, 3), np.float32))
    with pytest.raises(ConfigError, match="another layout"):
        average_params([_params(0), other])
    with pytest.raises(ConfigError, match="at least one"):
        average_params([])
    with pytest.raises(ConfigError, match="non-negative"):
        average_params([_params(0), _params(1)], weights=[1, -1])


def test_params_round_trip_without_pickle(tmp_path):
    p = _params(3)
    p.extra["hyperparameters"] = {"eta": 0.1}
    q = load_params(save_params(p, tmp_path / "p.npz"))
    assert (q.model_type, q.n_features, q.n_fields, q.k, q.bias) == (p.model_type, 6, 2, 3, p.bias)
    np.testing.assert_array_equal(q.latent, p.latent)
    assert q.extra["hyperparameters"] == {"eta": 0.1}


def test_split_rows_partitions_every_row():
    X = synthetic(101, 0)
    parts = split_rows(X, 3)
    assert [p.n_rows for p in parts] == [33, 34, 34]
    shuffled = split_rows(X, 2, seed=1)
    assert sum(p.n_rows for p in shuffled) == 101
    assert sorted(np.concatenate([p.labels for p in shuffled]).tolist()) == sorted(X.labels.tolist())
    with pytest.raises(ConfigError, match="shards.n"):
        split_rows(X, 0)


def test_two_shard_processes_average_close_to_one_model(tmp_path):
    from ctrops.models.estimators import FFM

    train, valid = synthetic(6000, 1), synthetic(3000, 2)
    hyper = {"k": 4, "eta": 0.1, "epochs": 6, "seed": 0}
    single = FFM(**hyper).fit(train, valid)
    single_loss = log_loss(valid.labels, single.predict_proba(valid))
    avg, report = train_shards("ffm", hyper, split_rows(train, 2, seed=0), valid, n_processes=2,
                               work_dir=tmp_path)
    assert report.n_shards == 2 and report.n_processes == 2 and report.rows_per_shard == [3000, 3000]
    base_rate = log_loss(valid.labels, np.full(valid.n_rows, valid.labels.mean()))
    assert report.averaged_valid_loss < base_rate - 0.02  # it learned the clicks
    assert abs(report.averaged_valid_loss - single_loss) < 0.01
    assert avg.extra["shards"] == 2
    # the averaged model is a normal model: the estimator scores it the same way
    again = FFM.from_params(avg).predict_proba(valid)
    assert log_loss(valid.labels, again) == pytest.approx(report.averaged_valid_loss, rel=1e-5)


def test_trees_cannot_be_averaged():
    with pytest.raises(ConfigError, match="trees cannot be averaged"):
        train_shards("xgboost", {}, [synthetic(10, 0)])
