"""Learned parameters of the factorization-machine family, in one layout.

This layout is the contract between the training kernel, the model file and the
predictor: the file stores these arrays byte for byte and the server
memory-maps them, so nothing is converted between training and delivery.

    bias    float             global bias (0.0 when disabled)
    linear  float32 [n_features]                     or None (no linear terms)
    latent  ffm: float32 [n_features, n_fields, k]   C-contiguous
            fm:  float32 [n_features, k]
            lr:  None
    normalize  instance-wise normalization: the pairwise term of a row is scaled
               by r = 1 / sum(x_i^2) over the row's entries (as LIBFFM does)

Score of a row with entries (f_a, j_a, x_a):
    ffm: z = bias + sum_a linear[j_a] x_a + r * sum_{a<b} <latent[j_a, f_b], latent[j_b, f_a]> x_a x_b
    fm:  z = bias + sum_a linear[j_a] x_a + r * sum_{a<b} <latent[j_a], latent[j_b]> x_a x_b
    lr:  z = bias + sum_a linear[j_a] x_a
    p = 1 / (1 + exp(-z))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ModelType = Literal["ffm", "fm", "lr"]
MODEL_TYPES: tuple[str, ...] = ("ffm", "fm", "lr")


@dataclass
class ModelParams:
    model_type: ModelType
    n_features: int
    n_fields: int
    k: int
    bias: float = 0.0
    linear: np.ndarray | None = None
    latent: np.ndarray | None = None
    normalize: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.linear is not None and self.linear.shape != (self.n_features,):
            raise ValueError(f"linear has shape {self.linear.shape}, expected ({self.n_features},)")
        expected = {
            "ffm": (self.n_features, self.n_fields, self.k),
            "fm": (self.n_features, self.k),
            "lr": None,
        }[self.model_type]
        if expected is None:
            if self.latent is not None:
                raise ValueError("an 'lr' model has no latent factors")
        elif self.latent is None or self.latent.shape != expected:
            got = None if self.latent is None else self.latent.shape
            raise ValueError(f"{self.model_type} latent has shape {got}, expected {expected}")

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.linear, self.latent) if a is not None)
