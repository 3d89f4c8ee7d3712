"""The regression task through the whole path on the shared cluster: `atoll train` on the diabetes demo
(2 workers), the version's card, `atoll serve deploy`, and predictions over real HTTP in the target's units."""

from __future__ import annotations

import os

import httpx
import numpy as np
import pandas as pd
import pytest
from atoll import data
from atoll.serving.predictor import Predictor

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def holdout() -> pd.DataFrame:
    return pd.read_parquet(data.prepare_demo(os.environ["ATOLL_STORAGE"], "diabetes")["holdout"])


def _baseline_rmse(holdout: pd.DataFrame) -> float:
    """Predicting the training split's mean for everyone: what a model must beat to mean anything."""
    train = pd.read_parquet(data.prepare_demo(os.environ["ATOLL_STORAGE"], "diabetes")["train"])
    return float(np.sqrt(((holdout["progression"] - train["progression"].mean()) ** 2).mean()))


def test_a_regressor_trains_on_two_workers_and_reports_its_units(trained_diabetes, holdout):
    metrics = trained_diabetes["registered"]["metrics"]
    assert {"val_rmse", "val_mae", "val_r2", "train_rmse"} <= set(metrics) and "val_accuracy" not in metrics
    assert metrics["val_r2"] > 0.3 and metrics["val_rmse"] < 0.85 * _baseline_rmse(holdout), metrics
    assert metrics["val_mae"] <= metrics["val_rmse"]


def test_the_deployed_regressor_answers_values_over_http(diabetes_app, holdout):
    version, url = diabetes_app["version"], diabetes_app["url"]
    features = [c for c in holdout.columns if c != "progression"]
    rows = holdout[features].to_numpy(dtype=np.float32)
    answer = httpx.post(f"{url}/predict", json={"inputs": rows.tolist()}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "probabilities" not in body and len(body["predictions"]) == len(rows)
    expected, _ = Predictor(os.environ["ATOLL_STORAGE"], f"diabetes:{version}").predict(rows)
    assert np.allclose(body["predictions"], expected, rtol=1e-5)
    rmse = float(np.sqrt(((np.asarray(body["predictions"]) - holdout["progression"]) ** 2).mean()))
    assert rmse < _baseline_rmse(holdout)  # patients it never saw
    card = httpx.get(f"{url}/", timeout=10).json()
    assert card["input_schema"]["task"] == "tabular-regression" and card["input_schema"]["classes"] == []
    assert card["input_schema"]["output_kind"] == "number"
    named = httpx.post(f"{url}/predict", json={"inputs": [dict(zip(features, rows[0].tolist(), strict=True))]},
                       timeout=30)
    assert named.status_code == 200 and named.json()["predictions"][0] == pytest.approx(expected[0], rel=1e-5)
    bad = httpx.post(f"{url}/predict", json={"inputs": [[1.0, 2.0]]}, timeout=30)
    assert bad.status_code == 422 and "this model takes 10" in bad.json()["error"]
