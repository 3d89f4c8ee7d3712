"""The image task through the whole path on the shared cluster: a small CNN trained by `atoll train` on the
digits stored as PNG files in Parquet (2 workers), deployed, and asked over real HTTP with pixel rows, a PNG
and a larger JPEG in base64."""

from __future__ import annotations

import base64
import io
import os

import httpx
import numpy as np
import pandas as pd
import pytest
from atoll import data
from atoll.serving.predictor import Predictor
from PIL import Image

pytestmark = pytest.mark.cluster


def _encoded(pixels: np.ndarray, fmt: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_an_image_classifier_learns_the_digits_and_answers_pixels_pngs_and_jpegs(trained_images, image_app):
    metrics = trained_images["registered"]["metrics"]
    assert metrics["val_accuracy"] > 0.8 and metrics["val_f1"] > 0.8, metrics
    holdout = pd.read_parquet(data.prepare_demo(os.environ["ATOLL_STORAGE"], "digits_images")["holdout"])[:40]
    grey = [np.asarray(Image.open(io.BytesIO(blob))) for blob in holdout["image"]]
    url = image_app["url"]
    answer = httpx.post(f"{url}/predict", json={"inputs": [g.tolist() for g in grey]}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected, _ = Predictor(os.environ["ATOLL_STORAGE"], f"digit-images:{image_app['version']}").predict(
        [g[None] for g in grey])
    assert body["predictions"] == expected
    assert np.mean(np.asarray(body["predictions"]) == holdout["label"].to_numpy()) > 0.8  # digits it never saw
    png = httpx.post(f"{url}/predict", json={"inputs": [{"b64": _encoded(grey[0], "PNG")}]}, timeout=30).json()
    assert png["predictions"] == expected[:1]
    big = np.kron(grey[0], np.ones((8, 8)))  # 64×64, resized back to the model's 8×8
    jpeg = httpx.post(f"{url}/predict", json={"inputs": [f"data:image/jpeg;base64,{_encoded(big, 'JPEG')}"]},
                      timeout=30)
    assert jpeg.status_code == 200 and len(jpeg.json()["probabilities"][0]) == 10
    for bad, message in (({"inputs": [[[0, 999]]]}, "inputs.0: pixel values must be numbers from 0 to 255"),
                         ({"inputs": [{"b64": "bm90IGFuIGltYWdl"}]}, "inputs.0: not an image"),
                         ({"inputs": ["***"]}, "inputs.0: not valid base64")):
        refused = httpx.post(f"{url}/predict", json=bad, timeout=30)
        assert refused.status_code == 422 and message in refused.json()["error"], (bad, refused.text)
    card = httpx.get(f"{url}/", timeout=10).json()
    assert card["input_schema"]["task"] == "image-classification" and card["input_schema"]["image_shape"] == [1, 8, 8]
    doc = httpx.get(f"{url}/openapi.json", timeout=10).json()
    schema = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "b64" in str(schema["properties"]["inputs"]["items"])
