"""XGBoost through the same pipeline: tuning on Parquet rows, gate, registry, pyfunc flavor."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("xgboost")

from _pipeline_support import config, criteo_split

from ctrops.pipeline.runner import run_pipeline


def test_xgboost_model_is_tuned_gated_registered_and_served_by_pyfunc(tmp_path):
    train, valid = criteo_split(tmp_path / "data", rows=3000)
    cfg = config(tmp_path, train, valid, name="ctr-xgb",
                 model={"type": "xgboost", "params": {"n_estimators": 30, "early_stopping_rounds": 5,
                                                      "min_count": 5}},
                 tune={"n_trials": 3, "n_workers": 1},
                 gate={"calibration_band": [0.5, 2.0]})
    res = run_pipeline(cfg)
    assert res.ok, res.error
    tune = res.step("tune").outputs
    assert tune["objective_version"].startswith("xgboost-r1-")
    assert set(tune["best_params"]) == {"learning_rate", "max_depth", "min_child_weight", "subsample",
                                        "colsample_bytree", "reg_lambda"}
    assert tune["best_value"] <= tune["default_value"]
    model_path = res.step("train").outputs["model_path"]
    assert model_path.endswith(".xgb.json")
    assert res.gate_passed and res.promoted and res.version == 1
    # xgboost files are not .ctm: served through MLflow, not published to ctrops storage
    assert res.step("publish").outputs["published"] is False

    import mlflow
    import pandas as pd

    from ctrops.models.xgb import XGBoostModel
    from ctrops.pipeline.steps import _spec, field_rows, read_table

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/ctr-xgb@production")
    spec = _spec("criteo")
    table = read_table(valid, "criteo", spec)
    rows = field_rows(table, spec, 20)
    got = np.asarray(served.predict(pd.DataFrame(rows)))
    want = XGBoostModel.load(model_path).predict_proba(table.slice(0, 20))
    np.testing.assert_allclose(got, want, rtol=1e-6)
