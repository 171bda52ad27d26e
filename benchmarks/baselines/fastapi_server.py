"""Baseline: the prediction server a team would typically hand-write with FastAPI + pydantic + NumPy.

Same request and response JSON as ctrops' /v1/predict, same model file. It is
written the way such services usually are: pydantic models validate the
request, a Python dict maps each (field, value) key to its feature index, and
NumPy scores all candidates at once with fancy indexing and einsum. No
prediction log (that only favours the baseline).

    BASELINE_MODEL=bench-out/serve/ffm-1000000-k4-s0.ctm \\
        uvicorn benchmarks.baselines.fastapi_server:app --workers 2
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Optional, Union

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel, Field

from ctrops.artifact.format import load_model
from ctrops.data._hashing import feature_key

Scalar = Union[str, int, float, None]


class Candidate(BaseModel):
    id: Union[str, int]
    fields: dict[str, Scalar]
    passthrough: Optional[dict[str, Any]] = None


class PredictRequest(BaseModel):
    request_id: Optional[str] = None
    user_id: Optional[Union[str, int]] = None
    context: dict[str, Scalar]
    candidates: list[Candidate] = Field(min_length=1, max_length=1000)
    top_k: Optional[int] = Field(default=None, ge=1)
    passthrough: Optional[dict[str, Any]] = None


class ScoredCandidate(BaseModel):
    id: Union[str, int]
    score: float
    rank: int
    tracking_id: str


class PredictResponse(BaseModel):
    request_id: str
    experiment: str
    arm: str
    model_version: Optional[int]
    candidates: list[ScoredCandidate]


class NumpyFFM:
    """FFM scoring with a dict vocabulary and vectorised NumPy (all candidates in one pass)."""

    def __init__(self, path: str) -> None:
        model = load_model(path)
        p = model.params
        self.bias = float(p.bias)
        self.linear = np.asarray(p.linear)
        self.latent = np.asarray(p.latent)             # [n_features, n_fields, k]
        self.normalize = p.normalize
        self.names = list(model.encoder_header["field_names"])
        self.field_of = {n: f for f, n in enumerate(self.names)}
        self.seed = int(model.encoder_header["seed"])
        keys, values = model.encoder_arrays["vocab_keys"], model.encoder_arrays["vocab_values"]
        used = keys != 0
        self.vocab: dict[int, int] = dict(zip(keys[used].tolist(), values[used].tolist()))
        self.n_fields = len(self.names)
        self.version = int(model.metadata.get("version", 1))
        a, b = np.triu_indices(self.n_fields, k=1)
        self.pair_a, self.pair_b = a, b

    def index(self, f: int, value: Any) -> int:
        if value is None or value == "":
            return 2 * f
        token = value if isinstance(value, str) else str(int(value)) if float(value).is_integer() else str(value)
        key = feature_key(f, token, self.seed) or 1
        return self.vocab.get(key, 2 * f + 1)

    def score(self, context: dict[str, Any], candidates: list[dict[str, Any]]) -> np.ndarray:
        nf = self.n_fields
        base = [2 * f for f in range(nf)]
        for name, v in context.items():
            f = self.field_of.get(name)
            if f is not None:
                base[f] = self.index(f, v)
        idx = np.empty((len(candidates), nf), dtype=np.int64)
        idx[:] = base
        for c, fields in enumerate(candidates):
            for name, v in fields.items():
                f = self.field_of.get(name)
                if f is not None:
                    idx[c, f] = self.index(f, v)
        z = self.bias + self.linear[idx].sum(axis=1)
        a, b = self.pair_a, self.pair_b
        va = self.latent[idx[:, a], b]                # [n, pairs, k]: latent[j_a, f_b]
        vb = self.latent[idx[:, b], a]                # latent[j_b, f_a]
        pair = np.einsum("npk,npk->n", va, vb)
        z = z + (pair / nf if self.normalize else pair)
        return 1.0 / (1.0 + np.exp(-z))


app = FastAPI(title="baseline")
_model: NumpyFFM | None = None


@app.on_event("startup")
def _load() -> None:
    global _model
    _model = NumpyFFM(os.environ["BASELINE_MODEL"])


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "alive"}


@app.post("/v1/predict", response_model=PredictResponse)
def predict(req: PredictRequest) -> PredictResponse:
    scores = _model.score(req.context, [c.fields for c in req.candidates])
    order = np.argsort(-scores, kind="stable")
    if req.top_k is not None:
        order = order[:req.top_k]
    request_id = req.request_id or uuid.uuid4().hex
    return PredictResponse(
        request_id=request_id, experiment="default", arm="production", model_version=_model.version,
        candidates=[ScoredCandidate(id=req.candidates[i].id, score=float(scores[i]), rank=r,
                                    tracking_id=uuid.uuid4().hex) for r, i in enumerate(order.tolist(), 1)])
