"""XGBoost as a second model type with the estimator contract of the FFM family.

Trees want numbers, not one-hot hashes, so features are built per column:
numeric columns go in as they are (missing -> NaN) and categorical columns
become small integer codes for xgboost's native categorical splits. The codes
are frequency-ranked (target-free, so no label leaks into the encoding): the
`max_categories - 1` most frequent values seen at least `min_count` times keep
their own code, every other value shares one "rare" code.

Input is either rows of a Parquet/Arrow table (column roles given to the
constructor, usually from the FieldSpec) or a `FieldMatrix`, where each field
becomes one column: a categorical over its feature indices when every value is
1.0 (tokens, log2-binned numbers), otherwise the numeric value.

The fitted model saves to one JSON file (encoding tables + xgboost's own JSON
model) so nothing on the load path unpickles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrops.data.matrix import FieldMatrix
from ctrops.errors import DataError, ModelFileError

FILE_FORMAT = "ctrops-xgb/1"
_HYPER = ("n_estimators", "learning_rate", "max_depth", "min_child_weight", "subsample",
          "colsample_bytree", "reg_lambda", "early_stopping_rounds", "max_categories", "min_count",
          "numeric_columns", "categorical_columns", "label_column", "n_threads", "seed")


@dataclass
class ColumnEncoding:
    """How one input column becomes one xgboost feature."""

    name: str
    kind: str  # "q" numeric, "c" categorical
    keys: list = field(default_factory=list)  # kept categories, sorted (str for tables, int for matrices)

    @property
    def rare_code(self) -> int:
        return len(self.keys)

    def codes(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Category codes as float32 (NaN = missing, `rare_code` = not kept)."""
        out = np.full(len(values), np.nan, dtype=np.float32)
        present = ~missing
        if not self.keys:
            out[present] = self.rare_code
            return out
        keys = np.asarray(self.keys)
        vals = values[present]
        pos = np.searchsorted(keys, vals)
        pos_c = np.minimum(pos, len(keys) - 1)
        hit = keys[pos_c] == vals
        out[present] = np.where(hit, pos_c, self.rare_code).astype(np.float32)
        return out


def _frequent(values: np.ndarray, max_categories: int, min_count: int) -> list:
    uniq, counts = np.unique(values, return_counts=True)
    keep = counts >= min_count
    uniq, counts = uniq[keep], counts[keep]
    if len(uniq) > max_categories - 1:
        top = np.argsort(-counts, kind="stable")[: max_categories - 1]
        uniq = uniq[top]
    return sorted(v.item() if hasattr(v, "item") else v for v in uniq)


def _table_column(table: Any, name: str, as_text: bool = False) -> tuple[np.ndarray, np.ndarray, bool]:
    """(values, missing mask, is_numeric) of one Arrow column; `as_text` reads categories as strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if name not in table.column_names:
        raise DataError(f"column {name!r} is missing from the input table "
                        f"(columns: {', '.join(table.column_names)})", field=name)
    col = table.column(name)
    numeric = pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
    if numeric and not as_text:
        vals = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        vals = np.asarray(vals, dtype=np.float64)
        return vals, np.isnan(vals), True
    strings = pc.cast(col, pa.string())
    missing = np.asarray(pc.or_kleene(pc.is_null(strings), pc.equal(strings, "")).fill_null(True)
                         .to_numpy(zero_copy_only=False), dtype=bool)
    vals = np.asarray(strings.fill_null("").to_numpy(zero_copy_only=False), dtype=object).astype(str)
    return vals, missing, numeric


def _matrix_columns(X: FieldMatrix) -> tuple[np.ndarray, np.ndarray]:
    """Per (row, field): the feature index of its entry (-1 if none) and the summed value."""
    n = X.n_rows
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(X.indptr))
    fields = np.asarray(X.fields, dtype=np.int64)
    index = np.full((n, X.n_fields), -1, dtype=np.int64)
    index[rows, fields] = X.indices
    value = np.zeros((n, X.n_fields), dtype=np.float64)
    np.add.at(value, (rows, fields), X.values)
    return index, value


class XGBoostModel:
    """Gradient-boosted trees for click probability; `fit` / `predict_proba` like `FFM`.

    `n_estimators` is an upper bound: with a validation set, training stops
    after `early_stopping_rounds` rounds without improvement and keeps only the
    trees up to the best round (`best_iteration_`).
    """

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.3, max_depth: int = 6,
                 min_child_weight: float = 1.0, subsample: float = 1.0, colsample_bytree: float = 1.0,
                 reg_lambda: float = 1.0, early_stopping_rounds: int = 20, max_categories: int = 64,
                 min_count: int = 20, numeric_columns: list[str] | None = None,
                 categorical_columns: list[str] | None = None, label_column: str = "label",
                 n_threads: int = 1, seed: int = 0) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.max_categories = max_categories
        self.min_count = min_count
        self.numeric_columns = numeric_columns
        self.categorical_columns = categorical_columns
        self.label_column = label_column
        self.n_threads = n_threads
        self.seed = seed

    # -- estimator protocol -------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _HYPER}

    def set_params(self, **params: Any) -> "XGBoostModel":
        unknown = set(params) - set(_HYPER)
        if unknown:
            raise ValueError(f"XGBoostModel has no parameter(s) {sorted(unknown)}")
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def fit(self, train: Any, valid: Any | None = None, *, callback: Any = None) -> "XGBoostModel":
        """Learn the column encodings on `train`, then boost with early stopping on `valid`."""
        import xgboost as xgb

        self.input_kind_ = "matrix" if isinstance(train, FieldMatrix) else "table"
        self.columns_ = self._fit_encoding(train)
        dtrain = self._dmatrix(train, with_label=True)
        evals = [(dtrain, "train")]
        dvalid = None
        if valid is not None:
            dvalid = self._dmatrix(valid, with_label=True)
            evals.append((dvalid, "valid"))
        history: dict[str, dict[str, list[float]]] = {}
        booster = xgb.train(
            self._booster_params(), dtrain, num_boost_round=int(self.n_estimators), evals=evals,
            evals_result=history, verbose_eval=False,
            early_stopping_rounds=int(self.early_stopping_rounds) if dvalid is not None else None,
        )
        if dvalid is not None and getattr(booster, "best_iteration", None) is not None:
            self.best_iteration_ = int(booster.best_iteration)
            booster = booster[: self.best_iteration_ + 1]
        else:
            self.best_iteration_ = int(booster.num_boosted_rounds()) - 1
        self.booster_ = booster
        self.history_ = {name: list(m["logloss"]) for name, m in history.items()}
        self.best_epoch_ = self.best_iteration_ + 1  # same meaning as FFM.best_epoch_: rounds kept
        return self

    def predict_proba(self, X: Any, n_threads: int | None = None) -> np.ndarray:
        """Click probability of every row (1-D float64)."""
        self._check_fitted()
        d = self._dmatrix(X, with_label=False)
        if n_threads is not None:
            self.booster_.set_param({"nthread": int(n_threads)})
        return np.asarray(self.booster_.predict(d), dtype=np.float64)

    # -- features -----------------------------------------------------------
    def _fit_encoding(self, train: Any) -> list[ColumnEncoding]:
        if isinstance(train, FieldMatrix):
            index, value = _matrix_columns(train)
            cols = []
            for f in range(train.n_fields):
                in_field = train.fields == f
                if np.all(train.values[in_field] == 1.0):
                    present = index[:, f] >= 0
                    keys = _frequent(index[present, f], self.max_categories, self.min_count)
                    cols.append(ColumnEncoding(f"field_{f}", "c", keys))
                else:
                    cols.append(ColumnEncoding(f"field_{f}", "q"))
            return cols
        numeric, categorical = self._roles(train)
        cols = [ColumnEncoding(name, "q") for name in numeric]
        for name in categorical:
            vals, missing, _ = _table_column(train, name, as_text=True)
            cols.append(ColumnEncoding(name, "c", _frequent(vals[~missing], self.max_categories, self.min_count)))
        return cols

    def _roles(self, table: Any) -> tuple[list[str], list[str]]:
        if self.numeric_columns is not None or self.categorical_columns is not None:
            return list(self.numeric_columns or []), list(self.categorical_columns or [])
        numeric, categorical = [], []
        for name in table.column_names:
            if name == self.label_column:
                continue
            _, _, is_num = _table_column(table, name)
            (numeric if is_num else categorical).append(name)
        return numeric, categorical

    def features(self, X: Any) -> np.ndarray:
        """The float32 feature matrix xgboost sees (NaN = missing)."""
        self._check_fitted(encoding_only=True)
        if isinstance(X, FieldMatrix):
            if self.input_kind_ != "matrix":
                raise DataError("this XGBoost model was fitted on table rows; pass a table, not a FieldMatrix")
            if X.n_fields != len(self.columns_):
                raise DataError(f"matrix has {X.n_fields} fields, the model was fitted on {len(self.columns_)}")
            index, value = _matrix_columns(X)
            out = np.empty((X.n_rows, len(self.columns_)), dtype=np.float32)
            for f, col in enumerate(self.columns_):
                if col.kind == "c":
                    out[:, f] = col.codes(index[:, f], index[:, f] < 0)
                else:
                    out[:, f] = value[:, f]
            return out
        if self.input_kind_ != "table":
            raise DataError("this XGBoost model was fitted on a FieldMatrix; pass a FieldMatrix")
        out = np.empty((X.num_rows, len(self.columns_)), dtype=np.float32)
        for j, col in enumerate(self.columns_):
            vals, missing, is_num = _table_column(X, col.name, as_text=col.kind == "c")
            if col.kind == "q":
                if not is_num:
                    raise DataError(f"numeric column {col.name!r} holds non-numeric values", field=col.name)
                out[:, j] = np.where(missing, np.nan, vals)
            else:
                out[:, j] = col.codes(vals, missing)
        return out

    def _labels(self, X: Any) -> np.ndarray:
        if isinstance(X, FieldMatrix):
            return np.asarray(X.labels, dtype=np.float32)
        vals, missing, is_num = _table_column(X, self.label_column)
        if not is_num or missing.any():
            raise DataError("labels must be numeric 0/1 without gaps", field=self.label_column)
        return vals.astype(np.float32)

    def _dmatrix(self, X: Any, *, with_label: bool) -> Any:
        import xgboost as xgb

        feats = self.features(X)
        types = [c.kind for c in self.columns_]
        label = self._labels(X) if with_label else None
        weight = X.weights if isinstance(X, FieldMatrix) and X.weights is not None else None
        return xgb.DMatrix(feats, label=label, weight=weight, feature_names=[c.name for c in self.columns_],
                           feature_types=types, enable_categorical=True, nthread=int(self.n_threads))

    def _booster_params(self) -> dict[str, Any]:
        return {
            "objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
            "eta": float(self.learning_rate), "max_depth": int(self.max_depth),
            "min_child_weight": float(self.min_child_weight), "subsample": float(self.subsample),
            "colsample_bytree": float(self.colsample_bytree), "lambda": float(self.reg_lambda),
            "max_cat_to_onehot": 4, "max_bin": 256, "nthread": int(self.n_threads), "seed": int(self.seed),
        }

    def _check_fitted(self, encoding_only: bool = False) -> None:
        if not hasattr(self, "columns_") or (not encoding_only and not hasattr(self, "booster_")):
            raise ValueError("this XGBoostModel is not fitted yet: call fit() first")

    # -- persistence (JSON only, no pickle) ----------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (hyper-parameters, encodings, trees) to one JSON file, atomically."""
        self._check_fitted()
        out = Path(path)
        doc = {
            "format": FILE_FORMAT,
            "hyper_parameters": self.get_params(),
            "input_kind": self.input_kind_,
            "best_iteration": self.best_iteration_,
            "columns": [{"name": c.name, "kind": c.kind, "keys": c.keys} for c in self.columns_],
            "booster": json.loads(bytes(self.booster_.save_raw("json")).decode()),
        }
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "XGBoostModel":
        import xgboost as xgb

        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path}: not a readable ctrops XGBoost model ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
            raise ModelFileError(f"{path}: format is {doc.get('format') if isinstance(doc, dict) else None!r}, "
                                 f"expected {FILE_FORMAT!r}")
        try:
            model = cls(**doc["hyper_parameters"])
            model.input_kind_ = doc["input_kind"]
            model.best_iteration_ = int(doc["best_iteration"])
            model.best_epoch_ = model.best_iteration_ + 1
            model.columns_ = [ColumnEncoding(c["name"], c["kind"], list(c["keys"])) for c in doc["columns"]]
            booster = xgb.Booster()
            booster.load_model(bytearray(json.dumps(doc["booster"]).encode()))
        except (KeyError, TypeError, ValueError, xgb.core.XGBoostError) as exc:
            raise ModelFileError(f"{path}: incomplete or corrupt XGBoost model ({exc})") from exc
        model.booster_ = booster
        return model
