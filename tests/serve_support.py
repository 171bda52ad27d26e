"""Helpers shared by the serving tests: configs, an injected loader, a small deterministic scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctrops.data.hashing import feature_key
from ctrops.experiments.assign import Assigner
from ctrops.experiments.definition import ExperimentDefinition
from ctrops.serve.config import ServingConfig
from ctrops.serve.loader import ArmModel, ModelStore, ServingLoader, ServingState


class HashScorer:
    """Stands in for a Predictor where a test is about HTTP, not about models: a logistic score of
    hashed (field, value) pairs, so equal inputs give equal scores and any field changes the score."""

    def __init__(self, version: int, model_name: str = "ctr") -> None:
        self.model_version = version
        self.model_name = model_name

    def _z(self, fields: dict) -> float:
        return sum(((feature_key(len(k), f"{k}={v}", self.model_version) % 2001) - 1000) / 1000.0
                   for k, v in fields.items())

    def score(self, context, candidates) -> np.ndarray:
        zc = self._z(context)
        return 1.0 / (1.0 + np.exp(-np.array([zc + self._z(c) for c in candidates], dtype=np.float64)))

    def explain(self, context, candidate) -> dict:
        return {"model_version": self.model_version, "features": sorted({**context, **candidate})}


def make_config(tmp_path: Path, *, log: bool = True, token: str | None = "s3cret", fmt: str = "jsonl",
                debug_every: int = 0, queue_size: int = 10_000, **limits) -> ServingConfig:
    raw = {"model": {"storage": str(tmp_path / "store"), "name": "ctr", "poll_seconds": 0,
                     "cache_dir": str(tmp_path / "cache")},
           "server": {"admin_token": token, "admin_token_env": "CTROPS_TEST_UNSET_TOKEN"},
           "limits": limits}
    if log:
        raw["log"] = {"path": str(tmp_path / "logs"), "format": fmt, "flush_seconds": 0.05,
                      "debug_every": debug_every, "queue_size": queue_size}
    return ServingConfig.from_dict(raw, source="test-serving.yaml", base_dir=tmp_path)


def injected_loader(config: ServingConfig, arms: list[dict], scorers: dict[str, object]) -> ServingLoader:
    """A loader whose state is set directly (no storage), for tests of the HTTP layer."""
    d = ExperimentDefinition.from_dict({"name": "exp", "salt": "t", "arms": arms})
    store = ModelStore(config.model.storage, config.model.name, cache_dir=config.model.cache_dir)
    loader = ServingLoader(store, lambda: d, poll_seconds=0)
    loader.state = ServingState(d, Assigner(d), {
        a.name: ArmModel(a, scorers.get(a.name), getattr(scorers.get(a.name), "model_version", None))
        for a in d.arms}, "digest")
    return loader


def request_body(n: int = 5, user: str | None = "u1", **extra) -> dict:
    body = {"context": {"site": "news", "device": "ios", "hour": 13},
            "candidates": [{"id": f"ad{i}", "fields": {"ad": f"a{i}", "price": 0.5 + i},
                            "passthrough": {"bid": 1.0 + i}} for i in range(n)], **extra}
    if user is not None:
        body["user_id"] = user
    return body


# ---- real models (FeatureEncoder + ModelParams + .ctm) ----------------------------------------

FIELDS = ("f0", "f1", "f2")
VALUES = tuple(f"v{i}" for i in range(10))


def fitted_encoder(fields=FIELDS, values=VALUES, extra_numeric: bool = False):
    """A vocab encoder that knows every value of `values` in every categorical field."""
    from ctrops.data.features import FeatureEncoder
    from ctrops.data.spec import FieldSpec

    raw = {"label": "click", "categorical": list(fields)}
    if extra_numeric:
        raw["numeric"] = ["n0"]
    spec = FieldSpec.from_dict(raw)
    rows = [{f: v for f in fields} | ({"n0": i} if extra_numeric else {}) for i, v in enumerate(values)]
    return FeatureEncoder(spec, indexing="vocab", min_count=1).fit(rows)


def make_model(seed: int, model_type: str = "ffm", k: int = 4, encoder=None, scale: float = 0.4):
    """(ModelParams, encoder) with random weights over a fitted encoder's features."""
    from ctrops.models.params import ModelParams

    enc = encoder if encoder is not None else fitted_encoder()
    rng = np.random.default_rng(seed)
    n, nf = enc.n_features_, enc.n_fields
    shape = {"ffm": (n, nf, k), "fm": (n, k), "lr": None}[model_type]
    params = ModelParams(model_type, n_features=n, n_fields=nf, k=k if shape else 0,
                         bias=float(rng.normal(scale=0.3)),
                         linear=(rng.normal(scale=scale, size=n)).astype(np.float32),
                         latent=None if shape is None else rng.normal(scale=scale, size=shape).astype(np.float32))
    return params, enc


def save(path: Path, model) -> Path:
    from ctrops.artifact.format import save_model

    params, enc = model
    save_model(path, params, enc.to_header(), enc.arrays(), {"purpose": "test"})
    return path


def reference_scores(model, context: dict, candidates: list[dict]) -> np.ndarray:
    """Probabilities by the slow reference scorer over the encoder's batch transform of joined rows."""
    from ctrops.models import reference

    params, enc = model
    return reference.predict_proba(params, enc.transform([{**context, **c} for c in candidates]))


def kernel_has_custom_slices() -> bool:
    """Whether this machine gives a thread the scheduler slice it asks for (Linux 6.12+, x86-64/arm64)."""
    import subprocess
    import sys

    from ctrops.serve import sched

    if not sched.supported():
        return False
    code = "from ctrops.serve import sched\nsched.set_thread_slice(0, 300)\nprint(sched.thread_slice_us(0))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return out.returncode == 0 and out.stdout.strip() == "300"
