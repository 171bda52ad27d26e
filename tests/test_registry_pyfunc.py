"""Pyfunc flavor and registry glue: logged from code, raw-row inputs, aliases after the gate."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("xgboost")

from ctrops.models.xgb import XGBoostModel
from ctrops.registry.aliases import apply_gate, production_version
from ctrops.registry.mlflow_glue import TrackingTarget, connect, finite_metrics, flat_params, register_version
from ctrops.registry.pyfunc import CtropsPyfuncModel, log_pyfunc_model, model_kind


@pytest.fixture(scope="module")
def xgb_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 1500
    site = rng.choice(["a", "b", "c"], n)
    price = rng.gamma(2.0, 1.0, n)
    y = (rng.random(n) < np.where(site == "a", 0.6, 0.2)).astype(int)
    m = XGBoostModel(n_estimators=15, min_count=1, numeric_columns=["price"], categorical_columns=["site"])
    m.fit(pa.table({"label": y, "price": price, "site": site}))
    return m.save(tmp_path_factory.mktemp("m") / "model.xgb.json"), m


def test_pyfunc_accepts_frames_column_dicts_and_row_lists(xgb_file):
    import pandas as pd

    path, model = xgb_file
    assert model_kind(path) == "xgboost"
    py = CtropsPyfuncModel().load(path)
    rows = [{"site": "a", "price": 1.0}, {"site": "zzz"}, {"price": None}]
    want = model.predict_proba(pa.table({"price": [1.0, None, None], "site": ["a", "zzz", None]}))
    np.testing.assert_allclose(py.predict(None, pd.DataFrame(rows)), want)
    np.testing.assert_allclose(py.predict(None, rows), want)
    np.testing.assert_allclose(py.predict(None, {"site": ["a"], "price": [1.0]}), want[:1])
    assert py.predict(None, []).shape == (0,)
    with pytest.raises(TypeError, match="DataFrame"):
        py.predict(None, 42)


def test_logged_from_code_registered_and_promoted(xgb_file, tmp_path):
    import pandas as pd

    path, model = xgb_file
    client = connect(TrackingTarget.embedded(tmp_path, experiment="pyfunc-test"))
    with mlflow.start_run() as run:
        info = log_pyfunc_model(path)
    version = register_version(client, "ctr-pyfunc", info.model_uri, run.info.run_id, tags={"k": "v"})
    assert version == 1 and production_version(client, "ctr-pyfunc") is None
    apply_gate(client, "ctr-pyfunc", version, passed=False, reasons=["too big"])
    assert production_version(client, "ctr-pyfunc") is None
    apply_gate(client, "ctr-pyfunc", version, passed=True)
    assert production_version(client, "ctr-pyfunc") == 1
    loaded = mlflow.pyfunc.load_model("models:/ctr-pyfunc@production")
    # logged as code: the stored model holds the entry script, not a pickled object
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl"))
    from pathlib import Path

    assert not list(Path(local).rglob("*.pkl")) and list(Path(local).rglob("pyfunc_entry.py"))
    frame = pd.DataFrame([{"site": "b", "price": 2.0}])
    np.testing.assert_allclose(loaded.predict(frame),
                               model.predict_proba(pa.table({"price": [2.0], "site": ["b"]})))


def test_flat_params_and_finite_metrics():
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": "1", "a.c": "[1, 2]", "d": "x"}
    assert finite_metrics({"x": 1, "y": float("nan"), "z": {"w": True}, "s": "no"}) == {"x": 1.0, "z.w": 1.0}
