"""A user model by import path, and a Keras one, through the whole path on the shared cluster: the Keras 3 CNN
of examples/keras_cnn.py trained by `atoll train` (2 workers, the same DDP loop), registered, deployed with
`atoll serve deploy` (which ships the example's code to the replicas), and asked over real HTTP."""

from __future__ import annotations

import io
import os

import httpx
import numpy as np
import pandas as pd
import pytest
from atoll import data, registry
from atoll.serving import endpoints
from atoll.serving.predictor import Predictor
from conftest import REPO, _deployed, _train
from PIL import Image

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def keras_app(ray_cluster):
    # Half a CPU per worker: by now the session's apps hold 2.5 of the cluster's 4 CPUs.
    trained = _train("jobs/configs/keras.yaml", "t-keras", "epochs=6", "cpus_per_worker=0.5")
    yield from (dict(app, trained=trained) for app in _deployed(trained, "digits-keras"))


def test_a_keras_cnn_trains_with_ddp_and_its_replicas_get_its_code(keras_app, monkeypatch):
    metrics = keras_app["trained"]["registered"]["metrics"]
    assert metrics["val_accuracy"] > 0.8, metrics
    version = registry.Registry(os.environ["ATOLL_STORAGE"]).get(f"digits-keras:{keras_app['version']}")
    assert version.spec["model"]["type"] == "examples.keras_cnn:build"
    # Serve's config ships the example as a package in the cluster (the replicas import it from there).
    app_config = next(a for a in endpoints._deployed(endpoints.cluster.current()).values() if a["name"] == "digits-keras")
    assert [uri.startswith("gcs://") for uri in app_config["runtime_env"]["py_modules"]] == [True]

    holdout = pd.read_parquet(data.prepare_demo(os.environ["ATOLL_STORAGE"], "digits_images")["holdout"])[:40]
    grey = [np.asarray(Image.open(io.BytesIO(blob))) for blob in holdout["image"]]
    answer = httpx.post(f"{keras_app['url']}/predict", json={"inputs": [g.tolist() for g in grey]}, timeout=30)
    assert answer.status_code == 200, answer.text
    monkeypatch.syspath_prepend(str(REPO))  # this process imports the example from the project, as training did
    expected, probs = Predictor(os.environ["ATOLL_STORAGE"], version.ref).predict([g[None] for g in grey])
    assert answer.json()["predictions"] == expected
    assert np.allclose(answer.json()["probabilities"], probs, atol=1e-5)
    assert np.mean(np.asarray(expected) == holdout["label"].to_numpy()) > 0.8  # digits it never saw
