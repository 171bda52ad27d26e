"""The FastAPI baseline of the serving benchmarks scores exactly like ctrops (else its ratios mean nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ctrops.predict import Predictor
from serve_support import fitted_encoder, make_model, save

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.parametrize("n_fields", [3, 8])
def test_numpy_baseline_scores_equal_predictor(tmp_path, n_fields):
    pytest.importorskip("fastapi")
    from baselines.fastapi_server import NumpyFFM

    path = tmp_path / "m.ctm"
    save(path, make_model(1, encoder=fitted_encoder(fields=tuple(f"f{i}" for i in range(n_fields)))))
    predictor, baseline = Predictor.from_file(path), NumpyFFM(str(path))
    names = predictor.field_names
    rng = np.random.default_rng(0)
    for trial in range(20):
        context = {n: f"v{rng.integers(0, 30)}" for n in names[: len(names) // 2] if rng.random() < 0.8}
        if trial % 3 == 0 and names:
            context[names[0]] = None                      # missing
        if trial % 4 == 0:
            context["not-a-field"] = "x"                  # ignored
        cands = []
        for _ in range(int(rng.integers(1, 12))):
            c = {n: f"v{rng.integers(0, 30)}" for n in names[len(names) // 2:] if rng.random() < 0.9}
            if trial % 5 == 0:
                c[names[1]] = "override"                 # a candidate's value beats the context's
            cands.append(c)
        np.testing.assert_allclose(baseline.score(context, cands), predictor.score(context, cands),
                                   rtol=1e-5, atol=1e-7)
