"""Offline evaluation of a CTR/CVR model on held-out rows.

A promotion decision needs more than one number, so this module measures:

* accuracy: log loss, ROC AUC, normalized entropy (log loss divided by the
  entropy of the observed rate: below 1.0 means the model beats always
  predicting the base rate);
* calibration: predicted over observed positives (1.0 is perfect; bids are
  priced from the probability, so a ratio of 1.2 overpays by 20 %) and a
  reliability curve rendered as a PNG for the experiment tracker;
* segments: the same metrics on the top-N segments by volume (per ad, per
  site...), because an average can hide a broken large advertiser;
* robustness to noise: how much log loss / AUC move when a fraction of a
  field's values is replaced by the field's "rare" index, or a whole field goes
  missing (what the server sees when an upstream feed breaks);
* retraining stability: the spread of the metrics when the same model is
  fitted with several seeds (a model whose AUC swings with the seed cannot be
  trusted to beat production by a small margin).

Everything returns plain dataclasses; `EvaluationReport.to_dict()` flattens the
numbers for `mlflow.log_metrics` and `EvaluationReport.plots` holds artifact
paths.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ctrops.data.hashing import reserved_missing, reserved_rare
from ctrops.data.matrix import FieldMatrix
from ctrops.errors import DataError
from ctrops.models import metrics
from ctrops.models.params import ModelParams

class ProbabilisticModel(Protocol):
    """Anything with `predict_proba(FieldMatrix) -> probabilities` (every ctrops estimator)."""

    def predict_proba(self, X: FieldMatrix) -> np.ndarray: ...


# --------------------------------------------------------------------------- metrics

def _as_arrays(y: Any, p: Any, weights: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise DataError(f"labels have {y_arr.size} rows but predictions have {p_arr.size}")
    w_arr = None
    if weights is not None:
        w_arr = np.asarray(weights, dtype=np.float64).ravel()
        if w_arr.shape != y_arr.shape:
            raise DataError(f"weights have {w_arr.size} rows but labels have {y_arr.size}")
    return y_arr, p_arr, w_arr


def _safe(metric: Callable[..., float], *args: Any) -> float:
    """The shared metric, or NaN where it is undefined (one class only, NaN predictions).

    ctrops.models.metrics raises on undefined inputs so training notices; a
    report records NaN instead, and the quality gate refuses any NaN metric.
    """
    try:
        return float(metric(*args))
    except DataError:
        return float("nan")


def _accuracy(y: np.ndarray, p: np.ndarray, w: np.ndarray | None) -> dict[str, float]:
    return {
        "log_loss": _safe(metrics.log_loss, y, p, w),
        "auc": _safe(metrics.roc_auc, y, p),
        "normalized_entropy": _safe(metrics.normalized_entropy, y, p, w),
        "calibration": _safe(metrics.calibration_ratio, y, p, w),
    }


# --------------------------------------------------------------------------- reliability

@dataclass(frozen=True)
class ReliabilityCurve:
    """Mean prediction against observed rate per bin of predictions."""

    mean_predicted: np.ndarray
    observed_rate: np.ndarray
    counts: np.ndarray
    strategy: str

    @property
    def expected_calibration_error(self) -> float:
        """Count-weighted mean |predicted - observed| over the bins."""
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        return float(np.dot(np.abs(self.mean_predicted - self.observed_rate), self.counts) / total)


def reliability_curve(y: Any, p: Any, n_bins: int = 10, strategy: str = "quantile") -> ReliabilityCurve:
    """Bin predictions and compare each bin's mean prediction with its click rate.

    `quantile` bins hold equal numbers of rows, which suits CTR predictions that
    crowd near zero (equal-width bins would leave all rows in the first bin);
    `uniform` bins split [0, 1] evenly. Empty bins are omitted.
    """
    y_arr, p_arr, _ = _as_arrays(y, p)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "quantile":
        edges = np.quantile(p_arr, np.linspace(0.0, 1.0, n_bins + 1)) if p_arr.size else np.zeros(n_bins + 1)
    elif strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    bins = np.clip(np.searchsorted(edges[1:-1], p_arr, side="right"), 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(bins, weights=p_arr, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y_arr, minlength=n_bins)
    keep = counts > 0
    return ReliabilityCurve(
        mean_predicted=sum_p[keep] / counts[keep],
        observed_rate=sum_y[keep] / counts[keep],
        counts=counts[keep],
        strategy=strategy,
    )


def plot_reliability(curve: ReliabilityCurve, path: str | Path, title: str = "Reliability",
                     predictions: Any = None) -> Path:
    """Write the reliability diagram as a PNG, with the distribution of predictions under it.

    With `predictions`, the lower panel is their histogram (where the model
    puts its mass); without, the row count of each bin.

    Uses the Agg canvas directly, so it works on servers without a display and
    does not touch pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5.5, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]})
    hi = float(max(curve.mean_predicted.max(initial=0.0), curve.observed_rate.max(initial=0.0), 1e-6)) * 1.05
    top.plot([0, hi], [0, hi], linestyle="--", color="grey", label="perfect calibration")
    top.plot(curve.mean_predicted, curve.observed_rate, marker="o", label="model")
    top.set_xlim(0, hi)
    top.set_ylim(0, hi)
    top.set_xlabel("mean predicted probability")
    top.set_ylabel("observed rate")
    top.set_title(f"{title} (ECE {curve.expected_calibration_error:.4f})")
    top.legend(loc="upper left")
    if predictions is not None:
        p = np.asarray(predictions, dtype=np.float64)
        p = p[np.isfinite(p)]
        top_p = max(float(p.max(initial=0.0)), hi)
        bottom.hist(p, bins=50, range=(0.0, top_p), color="tab:blue")
        bottom.set_xlim(0, top_p)
        bottom.set_yscale("log")
        bottom.set_xlabel("predicted probability")
    else:
        bottom.bar(np.arange(curve.counts.size), curve.counts, color="tab:blue")
        bottom.set_xlabel(f"bin ({curve.strategy})")
    bottom.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


# --------------------------------------------------------------------------- segments

MISSING_SEGMENT = "(missing)"


@dataclass(frozen=True)
class SegmentMetrics:
    """Metrics of the rows sharing one value of a segment column."""

    key: str
    rows: int
    positives: float
    log_loss: float
    auc: float
    calibration: float
    mean_prediction: float
    observed_rate: float


def segment_metrics(y: Any, p: Any, keys: Any, top_n: int = 10,
                    weights: Any = None) -> list[SegmentMetrics]:
    """Metrics of the `top_n` segments with the most rows, largest first."""
    y_arr, p_arr, w = _as_arrays(y, p, weights)
    key_arr = np.asarray(keys)
    if key_arr.dtype == object:  # e.g. strings with nulls from Parquet: make them sortable
        key_arr = np.array([MISSING_SEGMENT if k is None else str(k) for k in key_arr.tolist()], dtype=str)
    if key_arr.shape != y_arr.shape:
        raise DataError(f"segment keys have {key_arr.size} rows but labels have {y_arr.size}")
    uniques, inverse, counts = np.unique(key_arr, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top_n]
    out = []
    for u in order:
        rows = inverse == u
        ys, ps = y_arr[rows], p_arr[rows]
        ws = None if w is None else w[rows]
        acc = _accuracy(ys, ps, ws)
        out.append(SegmentMetrics(
            key=str(uniques[u]), rows=int(counts[u]), positives=float(ys.sum()),
            log_loss=acc["log_loss"], auc=acc["auc"], calibration=acc["calibration"],
            mean_prediction=float(ps.mean()), observed_rate=float(ys.mean()),
        ))
    return out


def segment_keys_from_matrix(X: FieldMatrix, field: int) -> np.ndarray:
    """Per row, the feature index the row holds in `field` (-1 when absent).

    Lets a caller segment by ad or site straight from the encoded validation
    matrix, without keeping the raw columns aligned beside it.
    """
    if not 0 <= field < X.n_fields:
        raise ValueError(f"field {field} is outside [0, {X.n_fields})")
    keys = np.full(X.n_rows, -1, dtype=np.int64)
    rows = np.repeat(np.arange(X.n_rows), np.diff(X.indptr))
    in_field = X.fields == field
    keys[rows[in_field]] = X.indices[in_field]  # last entry of the field wins (one per field by design)
    return keys


# --------------------------------------------------------------------------- robustness

@dataclass(frozen=True)
class PerturbationResult:
    """Metric change when the validation inputs are corrupted one way."""

    name: str
    field: str
    kind: str  # "rare" (fraction of values replaced by the rare index) or "missing" (field dropped)
    fraction: float
    log_loss: float
    auc: float
    delta_log_loss: float  # perturbed - clean: positive is worse
    delta_auc: float  # perturbed - clean: negative is worse


def _probabilities(model: ProbabilisticModel | ModelParams, X: FieldMatrix) -> np.ndarray:
    if isinstance(model, ModelParams):
        from ctrops.models.scoring import predict_proba

        return np.asarray(predict_proba(model, X), dtype=np.float64)
    return np.asarray(model.predict_proba(X), dtype=np.float64)


def _with_entries(X: FieldMatrix, indices: np.ndarray, values: np.ndarray) -> FieldMatrix:
    return FieldMatrix(indptr=X.indptr, fields=X.fields, indices=indices, values=values,
                       labels=X.labels, n_fields=X.n_fields, n_features=X.n_features, weights=X.weights)


def perturb_rare(X: FieldMatrix, field: int | None, fraction: float, rng: np.random.Generator) -> FieldMatrix:
    """Copy of `X` with `fraction` of the entries of `field` (all fields if None) set to the rare index."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    candidates = np.ones(X.nnz, dtype=bool) if field is None else (np.asarray(X.fields) == field)
    hit = candidates & (rng.random(X.nnz) < fraction)
    indices = np.array(X.indices, dtype=np.int32, copy=True)
    values = np.array(X.values, dtype=np.float32, copy=True)
    indices[hit] = reserved_rare(np.asarray(X.fields)[hit])
    values[hit] = 1.0
    return _with_entries(X, indices, values)


def perturb_missing(X: FieldMatrix, field: int) -> FieldMatrix:
    """Copy of `X` where every entry of `field` becomes the field's missing index (the field is dropped)."""
    hit = np.asarray(X.fields) == field
    indices = np.array(X.indices, dtype=np.int32, copy=True)
    values = np.array(X.values, dtype=np.float32, copy=True)
    indices[hit] = reserved_missing(field)
    values[hit] = 1.0
    return _with_entries(X, indices, values)


def robustness(model: ProbabilisticModel | ModelParams, X: FieldMatrix, *,
               fractions: Sequence[float] = (0.1,), drop_fields: bool = True,
               field_names: Sequence[str] | None = None, seed: int = 0) -> list[PerturbationResult]:
    """Log-loss / AUC change under input noise, per field and for all fields at once.

    For every field f and fraction q: replace a random q of f's values by f's
    rare index (as if those values had never been seen in training); with
    `drop_fields`, also replace all of f's values by its missing index. A last
    perturbation per fraction corrupts every field at once. Fields absent from
    `X` are skipped. Deterministic for a given `seed`.
    """
    names = list(field_names) if field_names is not None else [f"f{i}" for i in range(X.n_fields)]
    if len(names) != X.n_fields:
        raise ValueError(f"field_names has {len(names)} names for {X.n_fields} fields")
    y = np.asarray(X.labels, dtype=np.float64)
    clean = _probabilities(model, X)
    base_ll, base_auc = _safe(metrics.log_loss, y, clean), _safe(metrics.roc_auc, y, clean)
    present = np.unique(np.asarray(X.fields))

    def result(name: str, fname: str, kind: str, q: float, Xp: FieldMatrix) -> PerturbationResult:
        p = _probabilities(model, Xp)
        ll, auc = _safe(metrics.log_loss, y, p), _safe(metrics.roc_auc, y, p)
        return PerturbationResult(name=name, field=fname, kind=kind, fraction=q, log_loss=ll, auc=auc,
                                  delta_log_loss=ll - base_ll, delta_auc=auc - base_auc)

    out: list[PerturbationResult] = []
    rng = np.random.default_rng(seed)
    for q in fractions:
        label = f"rare_{round(q * 100):d}pct"
        for f in present:
            out.append(result(f"{label}.{names[f]}", names[f], "rare", float(q),
                              perturb_rare(X, int(f), q, rng)))
        out.append(result(f"{label}.all", "*", "rare", float(q), perturb_rare(X, None, q, rng)))
    if drop_fields:
        for f in present:
            out.append(result(f"missing.{names[f]}", names[f], "missing", 1.0, perturb_missing(X, int(f))))
    return out


# --------------------------------------------------------------------------- stability

@dataclass(frozen=True)
class StabilityResult:
    """Spread of validation metrics over refits that differ only by seed."""

    seeds: tuple[int, ...]
    log_losses: tuple[float, ...]
    aucs: tuple[float, ...]
    prediction_spread: float  # mean over rows of the std of the row's prediction across seeds

    @staticmethod
    def _stats(values: Sequence[float]) -> dict[str, float]:
        a = np.asarray(values, dtype=np.float64)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
                "min": float(a.min()), "max": float(a.max())}

    @property
    def log_loss_stats(self) -> dict[str, float]:
        return self._stats(self.log_losses)

    @property
    def auc_stats(self) -> dict[str, float]:
        return self._stats(self.aucs)


def retraining_stability(model: Any, train: FieldMatrix, valid: FieldMatrix,
                         seeds: Iterable[int] = (0, 1, 2)) -> StabilityResult:
    """Fit the same model once per seed and measure how much the validation metrics move.

    `model` is either an estimator following the ctrops convention (`get_params`,
    a `seed` hyper-parameter, `fit(train, valid)`, `predict_proba`), cloned
    unfitted for every seed, or a callable `seed -> unfitted estimator`.
    """
    seeds_t = tuple(int(s) for s in seeds)
    if len(seeds_t) < 2:
        raise ValueError("retraining stability needs at least two seeds")
    y = np.asarray(valid.labels, dtype=np.float64)
    lls, aucs, preds = [], [], []
    for s in seeds_t:
        if callable(model) and not hasattr(model, "get_params"):
            est = model(s)
        else:
            params = dict(model.get_params())
            if "seed" not in params:
                raise ValueError(f"{type(model).__name__} has no 'seed' hyper-parameter to vary")
            params["seed"] = s
            est = type(model)(**params)
        est.fit(train, valid)
        p = np.asarray(est.predict_proba(valid), dtype=np.float64)
        preds.append(p)
        lls.append(_safe(metrics.log_loss, y, p))
        aucs.append(_safe(metrics.roc_auc, y, p))
    spread = float(np.std(np.vstack(preds), axis=0).mean()) if valid.n_rows else float("nan")
    return StabilityResult(seeds=seeds_t, log_losses=tuple(lls), aucs=tuple(aucs), prediction_spread=spread)


# --------------------------------------------------------------------------- report

def data_fingerprint(y: Any, weights: Any = None) -> str:
    """Short digest of the validation labels (and weights): equal digests mean comparable reports."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(y, dtype=np.float32)).tobytes())
    if weights is not None:
        h.update(np.ascontiguousarray(np.asarray(weights, dtype=np.float32)).tobytes())
    return h.hexdigest()[:16]


_METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /:]")


def _metric_key(*parts: str) -> str:
    return ".".join(_METRIC_NAME_UNSAFE.sub("_", p) for p in parts)


@dataclass
class EvaluationReport:
    """All offline figures of one model on one validation set."""

    n_rows: int
    positives: float
    log_loss: float
    auc: float
    normalized_entropy: float
    calibration: float
    mean_prediction: float
    observed_rate: float
    prediction_std: float
    data_fingerprint: str = ""
    reliability: ReliabilityCurve | None = None
    segments: dict[str, list[SegmentMetrics]] = field(default_factory=dict)
    robustness: list[PerturbationResult] = field(default_factory=list)
    stability: StabilityResult | None = None
    plots: dict[str, str] = field(default_factory=dict)

    _CORE = ("n_rows", "positives", "log_loss", "auc", "normalized_entropy", "calibration",
             "mean_prediction", "observed_rate", "prediction_std")

    def to_dict(self) -> dict[str, float]:
        """Flat name -> float mapping, ready for `mlflow.log_metrics` (NaN kept as NaN)."""
        out: dict[str, float] = {name: float(getattr(self, name)) for name in self._CORE}
        if self.reliability is not None:
            out["calibration_ece"] = self.reliability.expected_calibration_error
        for column, segs in self.segments.items():
            for s in segs:
                for metric in ("rows", "log_loss", "auc", "calibration"):
                    out[_metric_key("segment", column, s.key, metric)] = float(getattr(s, metric))
        if self.robustness:
            for r in self.robustness:
                out[_metric_key("robustness", r.name, "delta_log_loss")] = r.delta_log_loss
                out[_metric_key("robustness", r.name, "delta_auc")] = r.delta_auc
            out["robustness.max_delta_log_loss"] = max(r.delta_log_loss for r in self.robustness)
            out["robustness.min_delta_auc"] = min(r.delta_auc for r in self.robustness)
        if self.stability is not None:
            for stat, v in self.stability.log_loss_stats.items():
                out[f"stability.log_loss_{stat}"] = v
            for stat, v in self.stability.auc_stats.items():
                out[f"stability.auc_{stat}"] = v
            out["stability.prediction_spread"] = self.stability.prediction_spread
        return out

    def save_json(self, path: str | Path) -> Path:
        """Write every detail (segments, reliability bins, perturbations, seeds) as JSON, for an artifact."""
        def clean(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None  # JSON has no NaN
            if isinstance(x, np.ndarray):
                return [clean(v) for v in x.tolist()]
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            return x

        doc: dict[str, Any] = {name: getattr(self, name) for name in self._CORE}
        doc["data_fingerprint"] = self.data_fingerprint
        doc["metrics"] = self.to_dict()
        if self.reliability is not None:
            doc["reliability"] = {"mean_predicted": self.reliability.mean_predicted,
                                  "observed_rate": self.reliability.observed_rate,
                                  "counts": self.reliability.counts, "strategy": self.reliability.strategy}
        doc["segments"] = {col: [asdict(s) for s in segs] for col, segs in self.segments.items()}
        doc["robustness"] = [asdict(r) for r in self.robustness]
        doc["stability"] = None if self.stability is None else asdict(self.stability)
        doc["plots"] = dict(self.plots)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(clean(doc), indent=2) + "\n")
        return out

    @classmethod
    def from_dict(cls, metrics: Mapping[str, float], data_fingerprint: str = "") -> "EvaluationReport":
        """Rebuild the core figures from `to_dict()` output (e.g. a production run's logged metrics).

        Missing core metrics become NaN, so a gate fed an incomplete record
        refuses rather than compares against a default.
        """
        values = {name: float(metrics.get(name, float("nan"))) for name in cls._CORE}
        n_rows = values.pop("n_rows")
        return cls(n_rows=0 if math.isnan(n_rows) else int(n_rows), data_fingerprint=data_fingerprint,
                   **values)


def segments_from_parquet(path: str | Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Raw segment keys (e.g. ad_id, site_id) of a labelled Parquet file, one per row in file order.

    Pairs with the matrix `load_dataset` builds from the same file (rows keep
    their order); `evaluate_predictions` refuses keys whose length differs.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(columns))
    return {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in columns}


def evaluate_predictions(y: Any, p: Any, *, weights: Any = None,
                         segments: Mapping[str, Any] | None = None, top_n: int = 10,
                         plot_dir: str | Path | None = None, name: str = "model",
                         n_bins: int = 10) -> EvaluationReport:
    """Metrics, calibration, reliability plot and per-segment metrics of predictions `p` for labels `y`.

    `segments` maps a column name (e.g. "ad_id") to one key per row. With
    `plot_dir`, the reliability diagram is written to
    `<plot_dir>/<name>_reliability.png` and listed in `report.plots`.
    """
    y_arr, p_arr, w = _as_arrays(y, p, weights)
    if y_arr.size and ((y_arr < 0) | (y_arr > 1)).any():
        raise DataError("labels must be 0 or 1")
    acc = _accuracy(y_arr, p_arr, w)
    curve = reliability_curve(y_arr, p_arr, n_bins=n_bins) if y_arr.size else None
    report = EvaluationReport(
        n_rows=int(y_arr.size), positives=float(y_arr.sum()),
        log_loss=acc["log_loss"], auc=acc["auc"], normalized_entropy=acc["normalized_entropy"],
        calibration=acc["calibration"],
        mean_prediction=float(p_arr.mean()) if p_arr.size else float("nan"),
        observed_rate=float(y_arr.mean()) if y_arr.size else float("nan"),
        prediction_std=float(p_arr.std()) if p_arr.size else float("nan"),
        data_fingerprint=data_fingerprint(y_arr, w),
        reliability=curve,
    )
    for column, keys in (segments or {}).items():
        report.segments[column] = segment_metrics(y_arr, p_arr, keys, top_n=top_n, weights=w)
    if plot_dir is not None and curve is not None:
        path = plot_reliability(curve, Path(plot_dir) / f"{name}_reliability.png", title=f"{name} reliability",
                                predictions=p_arr)
        report.plots["reliability"] = str(path)
    return report


def evaluate_model(model: ProbabilisticModel | ModelParams, valid: FieldMatrix, *,
                   segments: Mapping[str, Any] | None = None, segment_fields: Mapping[str, int] | None = None,
                   top_n: int = 10, plot_dir: str | Path | None = None, name: str = "model",
                   robustness_fractions: Sequence[float] | None = (0.1,), field_names: Sequence[str] | None = None,
                   stability_of: tuple[Any, FieldMatrix, Sequence[int]] | None = None,
                   seed: int = 0) -> EvaluationReport:
    """Score `valid` with `model` and build the full report.

    `segments` gives raw keys per row (e.g. from the validation Parquet);
    `segment_fields` maps a name to a field number of `valid` whose feature
    index serves as the key. `robustness_fractions=None` skips the noise study.
    `stability_of=(estimator_or_factory, train, seeds)` adds retraining stability.
    """
    p = _probabilities(model, valid)
    seg = dict(segments or {})
    for seg_name, f in (segment_fields or {}).items():
        seg[seg_name] = segment_keys_from_matrix(valid, f)
    report = evaluate_predictions(valid.labels, p, weights=valid.weights, segments=seg, top_n=top_n,
                                  plot_dir=plot_dir, name=name)
    if robustness_fractions is not None:
        report.robustness = robustness(model, valid, fractions=robustness_fractions,
                                       field_names=field_names, seed=seed)
    if stability_of is not None:
        estimator, train, seeds = stability_of
        report.stability = retraining_stability(estimator, train, valid, seeds)
    return report
