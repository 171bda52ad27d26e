"""Estimators: learning, determinism, threads, early stopping, warm start, L1, validation."""

from __future__ import annotations

import numpy as np
import pytest
from _models_data import make_matrix

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import ConfigError, DataError
from ctrops.models import reference
from ctrops.models.estimators import FFM, FM, LogisticRegression, estimator_for
from ctrops.models.metrics import log_loss, roc_auc


@pytest.fixture(scope="module")
def split() -> tuple[FieldMatrix, FieldMatrix]:
    return make_matrix(6000, seed=1), make_matrix(2000, seed=2)


def _const_loss(train, valid) -> float:
    return log_loss(valid.labels, np.full(valid.n_rows, train.labels.mean()))


@pytest.mark.parametrize("cls", [FFM, FM, LogisticRegression])
def test_learns_better_than_constant(split, cls):
    train, valid = split
    model = cls(epochs=6).fit(train, valid)
    p = model.predict_proba(valid)
    assert log_loss(valid.labels, p) < _const_loss(train, valid) - 0.01
    assert roc_auc(valid.labels, p) > 0.6
    assert model.params_.model_type == cls.model_type
    assert len(model.history_) >= 1 and all(h["seconds"] >= 0 for h in model.history_)


def test_ffm_beats_lr_on_field_interactions(split):
    train, valid = split
    ffm = FFM(epochs=8).fit(train, valid)
    lr = LogisticRegression(epochs=8).fit(train, valid)
    assert ffm.best_valid_loss_ < lr.best_valid_loss_ - 0.05


def test_predictions_match_reference_scorer(split):
    train, valid = split
    small = valid.take(slice(0, 50))
    for model in (FFM(epochs=2).fit(train), FM(epochs=2).fit(train), LogisticRegression(epochs=2).fit(train)):
        np.testing.assert_allclose(model.predict_proba(small), reference.predict_proba(model.params_, small),
                                   atol=1e-6)


@pytest.mark.parametrize("cls", [FFM, FM, LogisticRegression])
def test_single_thread_fit_is_bit_reproducible(split, cls):
    train, _ = split
    a = cls(epochs=2, seed=5).fit(train).params_
    b = cls(epochs=2, seed=5).fit(train).params_
    c = cls(epochs=2, seed=6).fit(train).params_
    for x, y in ((a.linear, b.linear), (a.latent, b.latent)):
        if x is not None:
            assert np.array_equal(x, y)
    assert a.bias == b.bias
    learned = (lambda p: p.latent) if a.latent is not None else (lambda p: p.linear)
    assert not np.array_equal(learned(a), learned(c))  # another seed, another model


@pytest.mark.parametrize("cls", [FFM, FM, LogisticRegression])
def test_two_threads_reach_similar_loss(split, cls):
    train, valid = split
    one = cls(epochs=4, n_threads=1, early_stopping=False).fit(train, valid)
    two = cls(epochs=4, n_threads=2, early_stopping=False).fit(train, valid)
    assert two.history_[-1]["valid_loss"] == pytest.approx(one.history_[-1]["valid_loss"], abs=0.01)


def test_early_stopping_restores_best_epoch():
    train = make_matrix(600, seed=4, card=40)      # small and high-cardinality: overfits fast
    valid = make_matrix(2000, seed=5, card=40)
    model = FFM(k=8, eta=0.5, l2=0.0, epochs=30, patience=2, linear=True).fit(train, valid)
    losses = [h["valid_loss"] for h in model.history_]
    assert len(losses) < 30, "validation loss never rose; the test data no longer overfits"
    best = int(np.argmin(losses)) + 1
    assert model.best_epoch_ == best < len(losses)
    restored = log_loss(valid.labels, model.predict_proba(valid))
    assert restored == pytest.approx(losses[best - 1], abs=1e-6)
    assert model.best_valid_loss_ == pytest.approx(losses[best - 1])


def test_callback_sees_every_epoch_and_can_stop(split):
    train, valid = split
    seen = []

    def cb(epoch, info):
        seen.append((epoch, info["train_loss"], info["valid_loss"]))
        return epoch == 2

    model = FM(epochs=10, early_stopping=False).fit(train, valid, callback=cb)
    assert [s[0] for s in seen] == [1, 2]
    assert len(model.history_) == 2 and all(s[2] is not None for s in seen)


@pytest.mark.parametrize("cls", [FFM, LogisticRegression])
def test_warm_start_continues_improving(cls):
    valid = make_matrix(2000, seed=9)
    first = make_matrix(3000, seed=7)
    second = make_matrix(3000, seed=8)
    model = cls(epochs=1, eta=0.05, early_stopping=False) if cls is FFM else cls(epochs=1, early_stopping=False)
    model.fit(first, valid)
    before = model.history_[-1]["valid_loss"]
    model.fit(second, valid, warm_start=True)
    assert len(model.history_) == 2 and model.history_[-1]["epoch"] == 2
    assert model.history_[-1]["valid_loss"] < before
    cold = (cls(epochs=1, eta=0.05, early_stopping=False) if cls is FFM
            else cls(epochs=1, early_stopping=False)).fit(second, valid)
    assert model.history_[-1]["valid_loss"] < cold.history_[-1]["valid_loss"]


def test_warm_start_grows_features_and_fields(split):
    train, valid = split
    model = FFM(epochs=1).fit(train)
    old = model.params_
    wide = make_matrix(1000, n_fields=8, card=25, seed=3)
    model.fit(wide, warm_start=True)
    new = model.params_
    assert (new.n_features, new.n_fields) == (wide.n_features, 8)
    assert new.latent.shape == (wide.n_features, 8, 4)
    model.predict_proba(valid)            # old-shaped data still scores
    assert old.latent.shape == (train.n_features, train.n_fields, 4)


@pytest.mark.parametrize("cls", [FFM, FM, LogisticRegression])
def test_from_params_predicts_the_same_and_warm_starts(split, cls):
    train, valid = split
    model = cls(epochs=2, seed=3).fit(train)
    again = cls.from_params(model.params_)
    assert again.get_params() == model.get_params()
    np.testing.assert_allclose(again.predict_proba(valid), model.predict_proba(valid), atol=1e-6)
    assert estimator_for(model.params_).get_params() == model.get_params()
    again.set_params(epochs=1).fit(train, warm_start=True)
    assert again.history_[-1]["epoch"] == 3


def test_l1_yields_exact_zeros(split):
    train, _ = split
    # the proximal step applies l1 at every update of a weight, like l2 in LIBFFM
    ffm = FFM(epochs=2, l1=3e-3).fit(train)
    plain = FFM(epochs=2).fit(train)
    assert np.mean(ffm.params_.latent == 0) > 0.2 > np.mean(plain.params_.latent == 0)
    plain_linear = FFM(epochs=2, linear=True).fit(train)
    assert (np.mean(FFM(epochs=2, l1=0.5, linear=True).fit(train).params_.linear == 0) > 0.2
            > np.mean(plain_linear.params_.linear == 0))
    lr = LogisticRegression(epochs=2, l1=20.0).fit(train)   # FTRL l1 acts on summed gradients z
    assert np.mean(lr.params_.linear == 0) > 0.3


def test_row_weights_are_used(split):
    train, valid = split
    heavy_pos = FieldMatrix.from_arrays(train.indptr, train.fields, train.indices, train.values, train.labels,
                                        train.n_fields, train.n_features,
                                        weights=np.where(train.labels > 0, 5.0, 1.0))
    plain = FFM(epochs=2).fit(train)
    weighted = FFM(epochs=2).fit(heavy_pos)
    assert weighted.predict_proba(valid).mean() > plain.predict_proba(valid).mean() + 0.05


def test_prediction_rejects_unknown_features(split):
    train, _ = split
    model = LogisticRegression(epochs=1).fit(train)
    wider = make_matrix(10, card=30, seed=1)
    with pytest.raises(DataError, match="feature index .* outside"):
        model.predict_proba(wider)
    more_fields = make_matrix(10, n_fields=8, card=5, seed=1)
    with pytest.raises(DataError, match="field 7 outside"):
        model.predict_proba(more_fields)


def test_input_and_hyperparameter_validation(split):
    train, _ = split
    bad_labels = FieldMatrix.from_arrays(train.indptr, train.fields, train.indices, train.values,
                                         np.full(train.n_rows, 2.0), train.n_fields, train.n_features)
    with pytest.raises(DataError, match="labels must be 0 or 1"):
        FFM(epochs=1).fit(bad_labels)
    bad_values = FieldMatrix.from_arrays(train.indptr, train.fields, train.indices,
                                         np.full(train.nnz, np.nan), train.labels, train.n_fields,
                                         train.n_features)
    with pytest.raises(DataError, match="NaN"):
        FM(epochs=1).fit(bad_values)
    with pytest.raises(DataError, match="FieldMatrix"):
        FFM().fit(np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="k must be"):
        FFM(k=0).fit(train)
    with pytest.raises(ConfigError, match="eta"):
        FM(eta=-1.0).fit(train)
    with pytest.raises(ConfigError, match="alpha"):
        LogisticRegression(alpha=0).fit(train)
    with pytest.raises(ConfigError, match="no hyper-parameter 'kk'"):
        FFM().set_params(kk=3)
    with pytest.raises(ConfigError, match="not fitted"):
        FFM().predict_proba(train)
    with pytest.raises(ConfigError, match="needs a 'ffm' model"):
        FFM.from_params(LogisticRegression(epochs=1).fit(train).params_)
    assert FFM(k=8).set_params(eta=0.1).get_params()["eta"] == 0.1


def test_dropped_training_state_still_predicts_and_warm_starts(split):
    train, valid = split
    model = FFM(epochs=1, early_stopping=False).fit(train, valid)
    before = model.predict_proba(valid)
    model.drop_training_state()
    np.testing.assert_array_equal(model.predict_proba(valid), before)
    model.fit(train, valid, warm_start=True)
    assert model.history_[-1]["epoch"] == 2
    assert model.history_[-1]["valid_loss"] < model.history_[0]["valid_loss"]


def test_linear_eta_is_a_checked_hyper_parameter():
    from ctrops.errors import ConfigError
    from ctrops.models.estimators import FFM

    assert FFM(linear=True, linear_eta=0.01).get_params()["linear_eta"] == 0.01
    for bad in (0.0, -1.0, float("nan"), True, "0.1"):
        with pytest.raises(ConfigError, match="linear_eta must be a finite number > 0 or None"):
            FFM(linear=True, linear_eta=bad)._validate_hyper()
