"""The text task through the whole path on the shared cluster: a small BERT trained by `atoll train` on the
SMS Spam Collection (2 workers), registered with its tokenizer, deployed, and asked over real HTTP."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from atoll import registry
from atoll.serving.predictor import Predictor

pytestmark = pytest.mark.cluster


def test_a_bert_classifier_learns_spam_and_its_version_carries_the_tokenizer(trained_text):
    metrics = trained_text["registered"]["metrics"]
    # TF-IDF + logistic regression reaches accuracy 0.967 and macro-F1 0.926 on the same split (bench).
    assert metrics["val_accuracy"] > 0.9 and metrics["val_f1"] > 0.8, metrics
    reg = registry.Registry(os.environ["ATOLL_STORAGE"])
    version = reg.get(f"sms-spam:{trained_text['registered']['version']}")
    meta = json.loads(reg.read_file(version, "atoll.json"))
    tokenizer = json.loads(meta["preprocess"]["tokenizer"])  # the WordPiece tokenizer, as plain JSON
    assert tokenizer["model"]["type"] == "WordPiece" and len(tokenizer["model"]["vocab"]) > 1000
    assert version.input_schema["task"] == "text-classification" and version.input_schema["classes"] == ["ham", "spam"]


def test_the_deployed_text_model_answers_texts_over_http(trained_text, text_app):
    url = text_app["url"]
    texts = ["WINNER!! You have won a free prize, call 09061701461 to claim now",
             "Are we still meeting for lunch tomorrow?", "ok " * 200]
    answer = httpx.post(f"{url}/predict", json={"inputs": texts}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected, probs = Predictor(os.environ["ATOLL_STORAGE"], f"sms-spam:{text_app['version']}").predict(texts)
    assert body["predictions"] == expected and body["predictions"][:2] == ["spam", "ham"]
    assert body["truncated"] == [False, False, True] and body["max_length"] == 64
    assert all(abs(sum(p) - 1) < 1e-4 for p in body["probabilities"])
    for bad, message in (({"inputs": [""]}, "inputs.0: the text is empty"), ({"inputs": [3]}, "inputs.0: expected a text"),
                         ({"inputs": "hi"}, "a non-empty list of texts"), ([1, 2], "must be a JSON object")):
        refused = httpx.post(f"{url}/predict", json=bad, timeout=30)
        assert refused.status_code == 422 and message in refused.json()["error"], (bad, refused.text)
    doc = httpx.get(f"{url}/openapi.json", timeout=10).json()
    schema = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["inputs"]["items"]["type"] == "string"
