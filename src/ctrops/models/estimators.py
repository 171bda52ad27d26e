"""FFM, FM and logistic-regression estimators over the native kernels.

scikit-learn conventions: the constructor stores hyper-parameters only,
`fit` learns, learned state ends in `_`. Training state (AdaGrad / FTRL
accumulators) lives in the estimator between fits so `fit(warm_start=True)`
continues where the last fit stopped; a model file holds only the weights, so
an estimator rebuilt with `from_params` restarts the accumulators (AdaGrad at
1, FTRL at n=0), i.e. with full step sizes on the new data.

Warm start on data with more features or fields grows the arrays: new latent
vectors are drawn like fresh ones, new linear weights start at 0.

Prediction refuses feature or field indices the model was not fit with (a
DataError naming the largest index) rather than silently mapping them: the
encoder that produced the model already maps unseen values to the field's
rare index 2*field+1, so an out-of-range index means a mismatched encoder.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import ConfigError, DataError
from ctrops.models import _ffm
from ctrops.models.metrics import log_loss_from_logits
from ctrops.models.params import ModelParams

Callback = Callable[[int, dict], "bool | None"]


# floats drawn at a time when initialising latent weights (16 MB of float32)
_INIT_CHUNK_FLOATS = 1 << 22

def _native_arrays(X: FieldMatrix) -> tuple[np.ndarray, ...]:
    """The matrix arrays in the dtypes the kernels read (no copy when already right)."""
    return (np.ascontiguousarray(X.indptr, dtype=np.int64), np.ascontiguousarray(X.fields, dtype=np.int32),
            np.ascontiguousarray(X.indices, dtype=np.int32), np.ascontiguousarray(X.values, dtype=np.float32))


def check_matrix(X: Any, *, what: str, n_fields: int | None = None, n_features: int | None = None,
                 labels: bool = False) -> None:
    """Raise DataError when X cannot be fed to the kernels (bounds are checked here, not per entry in C)."""
    if not isinstance(X, FieldMatrix):
        raise DataError(f"{what} must be a ctrops.data.matrix.FieldMatrix, got {type(X).__name__}")
    if X.n_rows and int(X.indptr[0]) != 0:
        raise DataError(f"{what}: indptr must start at 0, starts at {int(X.indptr[0])}")
    if X.n_rows and np.any(np.diff(X.indptr) < 0):
        raise DataError(f"{what}: indptr is not non-decreasing")
    if X.nnz:
        lo_f, hi_f = int(X.fields.min()), int(X.fields.max())
        lo_j, hi_j = int(X.indices.min()), int(X.indices.max())
        limit_f = X.n_fields if n_fields is None else n_fields
        limit_j = X.n_features if n_features is None else n_features
        if lo_f < 0 or hi_f >= limit_f:
            bad = lo_f if lo_f < 0 else hi_f
            raise DataError(f"{what}: field {bad} outside [0, {limit_f}) "
                            f"({'the model was fit with' if n_fields is not None else 'n_fields is'} {limit_f} fields)")
        if lo_j < 0 or hi_j >= limit_j:
            bad = lo_j if lo_j < 0 else hi_j
            raise DataError(f"{what}: feature index {bad} outside [0, {limit_j}) "
                            f"({'the model was fit with' if n_features is not None else 'n_features is'} "
                            f"{limit_j} features; encode with the model's own encoder)")
        if not np.all(np.isfinite(X.values)):
            raise DataError(f"{what}: feature values contain NaN or infinity")
    if labels:
        if X.n_rows == 0:
            raise DataError(f"{what} has no rows")
        if not np.all((X.labels == 0.0) | (X.labels == 1.0)):
            raise DataError(f"{what}: labels must be 0 or 1")
        if X.weights is not None and (np.any(X.weights < 0) or not np.all(np.isfinite(X.weights))):
            raise DataError(f"{what}: row weights must be finite and non-negative")


def _log_loss_of_logits(z: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    return log_loss_from_logits(y, z, w)


@dataclass
class _AdaGradState:
    """Training layout of FFM/FM: weights interleaved with their AdaGrad accumulators."""

    latent: np.ndarray            # ffm [n, m, 2k], fm [n, 2k]
    linear: np.ndarray | None     # [n, 2] (w, G)
    bias: np.ndarray | None       # [2] float64 (b, G)


@dataclass
class _FtrlState:
    zn: np.ndarray                # [n, 2] float64 (z, n)
    bias: np.ndarray | None       # [2] float64


class _Estimator:
    """Shared fit loop: epochs, shuffling, validation, early stopping, callbacks."""

    model_type: str = ""

    # -- scikit-learn style parameter access ---------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "_Estimator":
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ConfigError(f"{type(self).__name__} has no hyper-parameter {name!r}; "
                                  f"valid ones: {sorted(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- hooks per model ------------------------------------------------------
    def _validate_hyper(self) -> None:
        raise NotImplementedError

    def _init_state(self, n_features: int, n_fields: int, rng: np.random.Generator):
        raise NotImplementedError

    def _grow_state(self, n_features: int, n_fields: int, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _run_epoch(self, arrays, labels, weights, order) -> tuple[float, float]:
        raise NotImplementedError

    def _state_logits(self, X: FieldMatrix, n_threads: int) -> np.ndarray:
        raise NotImplementedError

    def _state_to_params(self, reuse: ModelParams | None = None) -> ModelParams:
        raise NotImplementedError

    def _params_to_state(self, params: ModelParams) -> None:
        raise NotImplementedError

    # -- public API -----------------------------------------------------------
    def _check_common(self) -> None:
        if not isinstance(self.epochs, (int, np.integer)) or self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.n_threads, (int, np.integer)) or self.n_threads < 1:
            raise ConfigError(f"n_threads must be a positive integer, got {self.n_threads!r}")
        if not isinstance(self.patience, (int, np.integer)) or self.patience < 1:
            raise ConfigError(f"patience must be a positive integer, got {self.patience!r}")

    def fit(self, train: FieldMatrix, valid: FieldMatrix | None = None, *, warm_start: bool = False,
            callback: Callback | None = None) -> "_Estimator":
        """Train for up to `epochs` epochs.

        With `valid` and `early_stopping`, training stops after `patience`
        epochs without a better validation log loss and the best epoch's
        weights are restored (`best_epoch_`, 1-based). `callback(epoch, info)`
        is called after every epoch with the history entry; returning True
        stops training (progress bars, Optuna pruning).
        """
        self._validate_hyper()
        self._check_common()
        check_matrix(train, what="training data", labels=True)
        if warm_start and getattr(self, "_state", None) is None and getattr(self, "params_", None) is not None:
            self._params_to_state(self.params_, fresh=True)      # state was dropped: accumulators restart
        resume = warm_start and getattr(self, "_state", None) is not None
        if resume:
            n_features = max(train.n_features, self.n_features_in_)
            n_fields = max(train.n_fields, self.n_fields_in_)
        else:
            n_features, n_fields = train.n_features, train.n_fields
        if valid is not None:
            check_matrix(valid, what="validation data", labels=True, n_fields=n_fields, n_features=n_features)
        if not resume:
            self._state = self._init_state(n_features, n_fields, np.random.default_rng([self.seed, 0]))
            self._epochs_done = 0
            self.history_: list[dict] = []
        elif n_features > self.n_features_in_ or n_fields > self.n_fields_in_:
            self._grow_state(n_features, n_fields, np.random.default_rng([self.seed, 1, self._epochs_done]))
        self.n_features_in_, self.n_fields_in_ = n_features, n_fields

        arrays = _native_arrays(train)
        labels = np.ascontiguousarray(train.labels, dtype=np.float32)
        weights = (np.empty(0, dtype=np.float32) if train.weights is None
                   else np.ascontiguousarray(train.weights, dtype=np.float32))
        y_valid = None if valid is None else np.asarray(valid.labels, dtype=np.float64)
        w_valid = None if valid is None or valid.weights is None else np.asarray(valid.weights, dtype=np.float64)

        best_loss, best_params, best_epoch, since_best = np.inf, None, None, 0
        run_history: list[dict] = []
        for _ in range(int(self.epochs)):
            epoch_no = self._epochs_done + 1
            order = np.random.default_rng([self.seed, 2, epoch_no]).permutation(train.n_rows).astype(np.int64)
            start, cpu_start = time.perf_counter(), time.process_time()
            loss_sum, weight_sum = self._run_epoch(arrays, labels, weights, order)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            self._epochs_done = epoch_no
            # seconds: wall time of the training pass; cpu_seconds: CPU time of all its threads
            # (on a shared machine the CPU time is the steadier figure)
            info: dict[str, Any] = {"epoch": epoch_no, "train_loss": loss_sum / max(weight_sum, 1e-300),
                                    "valid_loss": None, "seconds": seconds, "cpu_seconds": cpu_seconds,
                                    "valid_seconds": 0.0, "valid_cpu_seconds": 0.0}
            if valid is not None:
                start, cpu_start = time.perf_counter(), time.process_time()
                info["valid_loss"] = _log_loss_of_logits(self._state_logits(valid, self.n_threads), y_valid, w_valid)
                info["valid_seconds"] = time.perf_counter() - start
                info["valid_cpu_seconds"] = time.process_time() - cpu_start
            run_history.append(info)
            self.history_.append(info)
            if self.verbose:
                valid_txt = "" if info["valid_loss"] is None else f" valid {info['valid_loss']:.5f}"
                print(f"[{type(self).__name__}] epoch {epoch_no}: train {info['train_loss']:.5f}"
                      f"{valid_txt} ({seconds:.2f}s)")
            stop = False
            if valid is not None and self.early_stopping:
                if info["valid_loss"] < best_loss:
                    best_loss, best_epoch, since_best = info["valid_loss"], epoch_no, 0
                    best_params = self._state_to_params(reuse=best_params)
                else:
                    since_best += 1
                    stop = since_best >= self.patience
            if callback is not None and callback(epoch_no, dict(info)):
                stop = True
            if stop:
                break

        if best_params is not None and best_epoch != self._epochs_done:
            self._params_to_state(best_params)
            self.params_ = best_params
        elif best_params is not None:
            self.params_ = best_params  # the snapshot of the last epoch: the weights as they are now
        else:
            self.params_ = self._state_to_params()
        if best_epoch is None:
            best_epoch = self._epochs_done
            if valid is not None:
                best_loss = run_history[-1]["valid_loss"]
        self.best_epoch_ = best_epoch
        self.best_valid_loss_ = None if valid is None else float(best_loss)
        self.params_.extra["hyperparameters"] = self.get_params()
        self.params_.extra["best_epoch"] = int(best_epoch)
        return self

    def drop_training_state(self) -> None:
        """Free the AdaGrad/FTRL accumulators (about as large as the weights).

        Prediction is unaffected; a later `fit(warm_start=True)` starts from
        `params_` with fresh accumulators, as after `from_params`.
        """
        self._state = None

    def _fitted_params(self) -> ModelParams:
        params = getattr(self, "params_", None)
        if params is None:
            raise ConfigError(f"this {type(self).__name__} is not fitted yet: call fit() or from_params() first")
        return params

    def predict_logits(self, X: FieldMatrix, n_threads: int | None = None) -> np.ndarray:
        from ctrops.models.scoring import predict_logits
        return predict_logits(self._fitted_params(), X, self.n_threads if n_threads is None else n_threads)

    def predict_proba(self, X: FieldMatrix, n_threads: int | None = None) -> np.ndarray:
        """Click probability of every row (float64)."""
        z = self.predict_logits(X, n_threads)
        return 1.0 / (1.0 + np.exp(-z))

    def to_params(self) -> ModelParams:
        """The learned weights in the file/server layout."""
        return self._fitted_params()

    @classmethod
    def from_params(cls, params: ModelParams, **hyper: Any) -> "_Estimator":
        """An estimator holding `params`, ready to predict or to warm-start.

        Hyper-parameters come from `params.extra["hyperparameters"]` when the
        params were produced by `fit`, overridden by `hyper`; the shape-defining
        ones (k, normalize, linear) always follow the params.
        """
        if params.model_type != cls.model_type:
            raise ConfigError(f"{cls.__name__}.from_params needs a {cls.model_type!r} model, "
                              f"got {params.model_type!r}")
        names = set(cls._param_names())
        stored = {k: v for k, v in dict(params.extra.get("hyperparameters", {})).items() if k in names}
        stored.update(hyper)
        if "k" in names:
            stored["k"] = params.k
        if "normalize" in names:
            stored["normalize"] = params.normalize
        if "linear" in names:
            stored["linear"] = params.linear is not None
        model = cls(**stored)
        model._validate_hyper()
        model.n_features_in_, model.n_fields_in_ = params.n_features, params.n_fields
        model._params_to_state(params, fresh=True)
        model._epochs_done = int(params.extra.get("epochs_done", 0))
        model.history_ = []
        model.params_ = params
        model.best_epoch_ = params.extra.get("best_epoch")
        return model


class _FactorizationMachine(_Estimator):
    """FFM and FM share AdaGrad training with L2, optional L1 proximal step, linear terms and bias.

    Like LIBFFM, `l2` enters every per-row update of a weight (not once per
    epoch), and so does `l1`: after each AdaGrad step the weight is
    soft-thresholded by eta / sqrt(G) * l1, which sets it to exactly zero when
    the step would cross zero. Because frequent features are updated many times
    per epoch, useful `l1` values are small (about 1e-4 to 1e-3 on Criteo-like
    data). `linear` and `bias` add AdaGrad-trained first-order terms (xLearn
    style); LIBFFM has neither. `linear` is off by default: the linear term is
    not scaled by the row's normalization, so its full AdaGrad steps overfit
    rare features (1M Criteo-shaped rows: bias only 0.43404, linear + bias
    0.45089, neither 0.43507 validation log loss; benchmarks/bench_xlearn.py).
    `linear_eta` gives the linear terms their own, smaller learning rate
    (None: `eta`): on 400k of those rows, bias only 0.44466; linear + bias
    0.47183 with eta, 0.44743 with eta/sqrt(39), 0.44487 with eta x 0.05.
    `normalize` scales the pairwise term by
    1 / sum(x^2) of the row. `n_threads` > 1 trains lock-free over rows
    (Hogwild, as LIBFFM), which is not bit-reproducible; one thread is.
    `history_` holds per epoch: epoch, train_loss (measured before each row's
    update), valid_loss, seconds (wall), cpu_seconds, valid_seconds, valid_cpu_seconds.
    """

    def __init__(self, k: int = 4, eta: float = 0.2, l2: float = 2e-5, l1: float = 0.0, epochs: int = 20,
                 normalize: bool = True, linear: bool = False, bias: bool = True, early_stopping: bool = True,
                 patience: int = 2, n_threads: int = 1, seed: int = 0, verbose: bool = False,
                 linear_eta: float | None = None) -> None:
        self.k = k
        self.eta = eta
        self.l2 = l2
        self.l1 = l1
        self.epochs = epochs
        self.normalize = normalize
        self.linear = linear
        self.linear_eta = linear_eta
        self.bias = bias
        self.early_stopping = early_stopping
        self.patience = patience
        self.n_threads = n_threads
        self.seed = seed
        self.verbose = verbose

    def _validate_hyper(self) -> None:
        if not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= _ffm.MAX_K:
            raise ConfigError(f"k must be an integer in [1, {_ffm.MAX_K}], got {self.k!r}")
        for name in ("eta", "l2", "l1"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating)) or not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.eta <= 0:
            raise ConfigError(f"eta must be > 0, got {self.eta!r}")
        le = self.linear_eta
        if le is not None and (isinstance(le, bool) or not isinstance(le, (int, float, np.floating))
                               or not np.isfinite(le) or le <= 0):
            raise ConfigError(f"linear_eta must be a finite number > 0 or None (= eta), got {le!r}")

    def _latent_shape(self, n_features: int, n_fields: int) -> tuple[int, ...]:
        raise NotImplementedError

    def _fresh_latent(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """LIBFFM's start: weights uniform in [0, 1/sqrt(k)), AdaGrad accumulators 1."""
        block = np.empty(shape[:-1] + (2 * self.k,), dtype=np.float32)
        scale = np.float32(1.0 / np.sqrt(self.k))
        # in slices of features: one draw over the whole model would hold a temporary as large
        # as the weights (625 MB at 1e6 features x 39 fields x k=4) at the start of training;
        # successive draws continue one stream, so the weights equal a single draw's
        step = max(1, _INIT_CHUNK_FLOATS // max(1, int(np.prod(shape[1:]))))
        for lo in range(0, shape[0], step):
            part = block[lo:lo + step]
            draw = rng.random(part.shape[:-1] + (self.k,), dtype=np.float32)
            np.multiply(draw, scale, out=part[..., : self.k])
        block[..., self.k:] = 1.0
        return block

    def _init_state(self, n_features, n_fields, rng):
        latent = self._fresh_latent(self._latent_shape(n_features, n_fields), rng)
        linear = None
        if self.linear:
            linear = np.zeros((n_features, 2), dtype=np.float32)
            linear[:, 1] = 1.0
        bias = np.array([0.0, 1.0]) if self.bias else None
        return _AdaGradState(latent=latent, linear=linear, bias=bias)

    def _grow_state(self, n_features, n_fields, rng):
        st: _AdaGradState = self._state
        old = st.latent
        grown = self._fresh_latent(self._latent_shape(n_features, n_fields), rng)
        grown[tuple(slice(0, s) for s in old.shape)] = old
        st.latent = grown
        if st.linear is not None and n_features > st.linear.shape[0]:
            extra = np.zeros((n_features - st.linear.shape[0], 2), dtype=np.float32)
            extra[:, 1] = 1.0
            st.linear = np.concatenate([st.linear, extra])

    def _run_epoch(self, arrays, labels, weights, order):
        st: _AdaGradState = self._state
        indptr, fields, indices, values = arrays
        empty_f = np.empty(0, dtype=np.float32)
        return _ffm.fm_family_epoch(
            _ffm.MODEL_CODES[self.model_type], indptr, fields, indices, values, labels, weights, order,
            st.latent.reshape(-1), self.n_fields_in_, self.k,
            empty_f if st.linear is None else st.linear.reshape(-1),
            np.empty(0) if st.bias is None else st.bias,
            float(self.eta), float(self.l2), float(self.l1), bool(self.normalize), int(self.n_threads),
            float(self.eta if self.linear_eta is None else self.linear_eta))

    def _state_logits(self, X, n_threads):
        st: _AdaGradState = self._state
        indptr, fields, indices, values = _native_arrays(X)
        k2 = 2 * self.k
        sj = self.n_fields_in_ * k2 if self.model_type == "ffm" else k2
        out = np.empty(X.n_rows, dtype=np.float64)
        _ffm.predict_logits(_ffm.MODEL_CODES[self.model_type], indptr, fields, indices, values,
                            st.latent.reshape(-1), sj, k2, self.k,
                            np.empty(0, dtype=np.float32) if st.linear is None else st.linear.reshape(-1), 2,
                            0.0 if st.bias is None else float(st.bias[0]), bool(self.normalize), out, int(n_threads))
        return out

    def _state_to_params(self, reuse: ModelParams | None = None) -> ModelParams:
        """The weights without their accumulators; `reuse`'s arrays are overwritten when shapes allow.

        Early stopping snapshots the best epoch's weights; writing over the previous
        snapshot, rather than building a new one beside it, keeps peak memory at
        state + one snapshot instead of state + two.
        """
        st: _AdaGradState = self._state
        latent_view = st.latent[..., : self.k]
        if reuse is not None and reuse.latent.shape == latent_view.shape and reuse.latent.flags.writeable:
            latent = reuse.latent
            np.copyto(latent, latent_view)
        else:
            latent = np.ascontiguousarray(latent_view)
        return ModelParams(
            model_type=self.model_type, n_features=self.n_features_in_, n_fields=self.n_fields_in_, k=self.k,
            bias=0.0 if st.bias is None else float(st.bias[0]),
            linear=None if st.linear is None else np.ascontiguousarray(st.linear[:, 0]),
            latent=latent,
            normalize=bool(self.normalize),
            extra={"epochs_done": int(self._epochs_done)},
        )

    def _params_to_state(self, params: ModelParams, fresh: bool = False) -> None:
        if fresh:
            latent = np.empty(params.latent.shape[:-1] + (2 * self.k,), dtype=np.float32)
            latent[..., self.k:] = 1.0
            linear = None
            if params.linear is not None:
                linear = np.ones((params.n_features, 2), dtype=np.float32)
            bias = np.array([0.0, 1.0]) if (self.bias or params.bias != 0.0) else None
            self.bias = bias is not None
            self._state = _AdaGradState(latent=latent, linear=linear, bias=bias)
        st: _AdaGradState = self._state
        st.latent[..., : self.k] = params.latent
        if st.linear is not None and params.linear is not None:
            st.linear[:, 0] = params.linear
        if st.bias is not None:
            st.bias[0] = params.bias


class FFM(_FactorizationMachine):
    """Field-aware factorization machine (Juan et al. 2016) trained like LIBFFM, plus linear terms and bias."""

    model_type = "ffm"

    def _latent_shape(self, n_features, n_fields):
        return (n_features, n_fields, self.k)


class FM(_FactorizationMachine):
    """Factorization machine (Rendle 2010), pairwise term in O(nnz * k)."""

    model_type = "fm"

    def _latent_shape(self, n_features, n_fields):
        return (n_features, self.k)


class LogisticRegression(_Estimator):
    """Logistic regression trained with FTRL-proximal (McMahan et al. 2013).

    Per coordinate: learning rate alpha / (beta + sqrt(sum g^2)); `l1` and `l2`
    are FTRL's, applied to the accumulated gradient z, so a weight is exactly
    zero while |z| <= l1 (l1 is on the scale of summed gradients: tens on
    100k-row data). The bias is learned by FTRL without regularization.
    """

    model_type = "lr"

    def __init__(self, alpha: float = 0.05, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0,
                 epochs: int = 10, bias: bool = True, early_stopping: bool = True, patience: int = 2,
                 n_threads: int = 1, seed: int = 0, verbose: bool = False) -> None:
        self.alpha = alpha
        self.beta = beta
        self.l1 = l1
        self.l2 = l2
        self.epochs = epochs
        self.bias = bias
        self.early_stopping = early_stopping
        self.patience = patience
        self.n_threads = n_threads
        self.seed = seed
        self.verbose = verbose

    def _validate_hyper(self) -> None:
        for name in ("alpha", "beta", "l1", "l2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating)) or not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha!r}")

    def _init_state(self, n_features, n_fields, rng):
        return _FtrlState(zn=np.zeros((n_features, 2)), bias=np.zeros(2) if self.bias else None)

    def _grow_state(self, n_features, n_fields, rng):
        st: _FtrlState = self._state
        if n_features > st.zn.shape[0]:
            st.zn = np.concatenate([st.zn, np.zeros((n_features - st.zn.shape[0], 2))])

    def _run_epoch(self, arrays, labels, weights, order):
        st: _FtrlState = self._state
        indptr, _fields, indices, values = arrays
        return _ffm.lr_ftrl_epoch(indptr, indices, values, labels, weights, order, st.zn.reshape(-1),
                                  np.empty(0) if st.bias is None else st.bias,
                                  float(self.alpha), float(self.beta), float(self.l1), float(self.l2),
                                  int(self.n_threads))

    def _weights(self) -> tuple[np.ndarray, float]:
        st: _FtrlState = self._state
        w = _ffm.ftrl_weights(st.zn.reshape(-1), float(self.alpha), float(self.beta), float(self.l1),
                              float(self.l2))
        b = 0.0
        if st.bias is not None:
            b = float(_ffm.ftrl_weights(st.bias, float(self.alpha), float(self.beta), 0.0, 0.0)[0])
        return w, b

    def _state_logits(self, X, n_threads):
        w, b = self._weights()
        indptr, fields, indices, values = _native_arrays(X)
        out = np.empty(X.n_rows, dtype=np.float64)
        _ffm.predict_logits(2, indptr, fields, indices, values, np.empty(0, dtype=np.float32), 0, 0, 0,
                            w, 1, b, False, out, int(n_threads))
        return out

    def _state_to_params(self, reuse: ModelParams | None = None) -> ModelParams:  # small: always a fresh copy
        w, b = self._weights()
        return ModelParams(model_type="lr", n_features=self.n_features_in_, n_fields=self.n_fields_in_, k=0,
                           bias=b, linear=w, latent=None, normalize=False,
                           extra={"epochs_done": int(self._epochs_done)})

    def _params_to_state(self, params: ModelParams, fresh: bool = False) -> None:
        """Invert the FTRL weight formula at n = 0 (exact), so the restored weights score identically."""
        if params.linear is None:
            raise ConfigError("an 'lr' model needs linear weights")
        if fresh:
            self.bias = self.bias or params.bias != 0.0
            self._state = _FtrlState(zn=np.zeros((params.n_features, 2)),
                                     bias=np.zeros(2) if self.bias else None)
        st: _FtrlState = self._state
        st.zn[:, 0] = self._z_for(params.linear.astype(np.float64), st.zn[:, 1], float(self.l1), float(self.l2))
        if st.bias is not None:
            st.bias[0] = self._z_for(np.array([params.bias]), st.bias[1:], 0.0, 0.0)[0]

    def _z_for(self, w: np.ndarray, n: np.ndarray, l1: float, l2: float) -> np.ndarray:
        scale = (self.beta + np.sqrt(n)) / self.alpha + l2
        return np.where(w == 0.0, 0.0, -w * scale - np.sign(w) * l1)


ESTIMATORS: dict[str, type[_Estimator]] = {"ffm": FFM, "fm": FM, "lr": LogisticRegression}


def estimator_for(params: ModelParams, **hyper: Any) -> _Estimator:
    """The estimator class matching `params.model_type`, rebuilt from the params (for warm starts)."""
    return ESTIMATORS[params.model_type].from_params(params, **hyper)
