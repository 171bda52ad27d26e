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


def test_mixing_with_kept_accumulators_tracks_one_model(tmp_path):
    """Mixing after every epoch (step 1.5) ends closer to one model on all rows than one averaging."""
    from ctrops.models.estimators import FFM

    train, valid = synthetic(6000, 1), synthetic(3000, 2)
    hyper = {"k": 4, "eta": 0.1, "epochs": 6, "seed": 0, "early_stopping": False}
    single = log_loss(valid.labels, FFM(**hyper).fit(train).predict_proba(valid))
    halves = split_rows(train, 2, seed=0)
    _, once = train_shards("ffm", hyper, halves, valid, n_processes=2, work_dir=tmp_path / "a")
    mixed, report = train_shards("ffm", hyper, halves, valid, n_processes=2, rounds=6, mix_step=1.5,
                                 work_dir=tmp_path / "b")
    assert report.rounds == 6 and mixed.extra["mix_step"] == 1.5
    assert abs(report.averaged_valid_loss - single) < abs(once.averaged_valid_loss - single)
    assert abs(report.averaged_valid_loss - single) < 0.005


def test_worker_processes_give_the_same_model_as_one_process(tmp_path):
    """The exchange between processes moves weights exactly: 2 processes == everything in this one."""
    train, valid = synthetic(4000, 3), synthetic(1000, 4)
    hyper = {"k": 4, "eta": 0.1, "epochs": 3, "seed": 0, "early_stopping": False}
    halves = split_rows(train, 2, seed=1)
    two, r2 = train_shards("ffm", hyper, halves, valid, n_processes=2, rounds=3, mix_step=1.5,
                           work_dir=tmp_path / "a")
    one, r1 = train_shards("ffm", hyper, halves, valid, n_processes=1, rounds=3, mix_step=1.5,
                           work_dir=tmp_path / "b")
    assert r1.start_method == "none" and r2.start_method in ("fork", "forkserver", "spawn")
    np.testing.assert_array_equal(two.latent, one.latent)
    assert two.bias == one.bias and r1.averaged_valid_loss == r2.averaged_valid_loss


def test_mixing_stops_early_on_the_mix_and_keeps_the_best_round(tmp_path):
    train, valid = synthetic(3000, 5), synthetic(1000, 6)
    # a large step size overfits within a few epochs, so the mix's validation loss turns up
    hyper = {"k": 4, "eta": 0.5, "epochs": 12, "seed": 0, "early_stopping": True, "patience": 2}
    model, report = train_shards("ffm", hyper, split_rows(train, 2, seed=0), valid, n_processes=2,
                                 rounds=12, mix_step=1.5, work_dir=tmp_path)
    losses = report.round_valid_loss
    assert 1 <= len(losses) <= 12
    best = int(np.argmin(losses))
    assert model.extra["best_round"] == best + 1
    assert report.averaged_valid_loss == pytest.approx(min(losses))
    if len(losses) < 12:  # stopped: the last `patience` rounds did not improve
        assert len(losses) == best + 1 + 2


def test_extrapolated_mix_is_previous_plus_step_times_the_mean_move():
    from ctrops.pipeline.shards import _extrapolate

    prev, a, b = _params(0, 0.0), _params(1, 1.0), _params(2, 3.0)
    mean = average_params([a, b], [1, 3])
    mix = _extrapolate(prev, [a, b], [1, 3], 1.5)
    np.testing.assert_allclose(mix.latent, prev.latent + 1.5 * (mean.latent - prev.latent), rtol=1e-5, atol=1e-5)
    assert mix.bias == pytest.approx(1.5 * mean.bias)
    same = _extrapolate(prev, [a, b], [1, 3], 1.0)
    np.testing.assert_allclose(same.latent, mean.latent, rtol=1e-5, atol=1e-6)


def test_a_failing_shard_worker_is_reported_with_its_shard(tmp_path):
    good = synthetic(500, 7)
    bad = tmp_path / "missing-shard"
    with pytest.raises(RuntimeError, match=r"shard\(s\) \[0\] failed in round 0: FileNotFoundError"):
        train_shards("ffm", {"epochs": 1}, [str(bad), good], n_processes=2, work_dir=tmp_path / "w")
    with pytest.raises(ConfigError, match="mixing step"):
        train_shards("ffm", {"epochs": 1}, [good], mix_step=0.0)


def test_a_multi_threaded_caller_gets_forkserver_workers_with_the_same_result(tmp_path, monkeypatch):
    """With other threads alive a fork could inherit a held lock: the forkserver path must work too."""
    import ctrops.pipeline.shards as shards_mod

    train, valid = synthetic(3000, 8), synthetic(800, 9)
    hyper = {"k": 4, "eta": 0.1, "epochs": 2, "seed": 0, "early_stopping": False}
    halves = split_rows(train, 2, seed=0)
    forked, _ = train_shards("ffm", hyper, halves, valid, n_processes=2, rounds=2, work_dir=tmp_path / "a")
    monkeypatch.setattr(shards_mod, "_single_threaded", lambda: False)
    served, report = train_shards("ffm", hyper, halves, valid, n_processes=2, rounds=2, work_dir=tmp_path / "b")
    assert report.start_method == "forkserver"
    np.testing.assert_array_equal(served.latent, forked.latent)


def test_one_shard_mixed_every_epoch_is_exactly_one_model(tmp_path):
    """Continuing from the mix keeps the optimizer state: with one shard, 4 rounds of 1 epoch are
    bit-for-bit the model of one 4-epoch fit (a restarted AdaGrad would take full steps again)."""
    from ctrops.models.estimators import FFM

    train = synthetic(2000, 10)
    hyper = {"k": 4, "eta": 0.1, "epochs": 4, "seed": 0, "early_stopping": False}
    single = FFM(**hyper).fit(train).params_
    mixed, report = train_shards("ffm", hyper, [train], n_processes=1, rounds=4, work_dir=tmp_path)
    assert report.start_method == "none" and report.shard_best_epoch == [4]
    np.testing.assert_array_equal(mixed.latent, single.latent)
    assert mixed.bias == single.bias
