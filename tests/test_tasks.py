"""Tasks, without a cluster: each task's preprocessing, metrics (against scikit-learn's), answers and checks,
and the stages that ask the task (spec, sweep) rather than assume a classifier."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from atoll import data, tasks
from atoll.config import load_model
from atoll.errors import ConfigError, DataError
from atoll.specs import TrainSpec
from sklearn import metrics as skm


class _Batches:
    """A dataset's one contract the fit uses: ``map_batches(fn).take_all()``, over real pandas batches."""

    def __init__(self, frame: pd.DataFrame, size: int = 50) -> None:
        self.parts = [frame.iloc[i:i + size] for i in range(0, len(frame), size)]

    def map_batches(self, fn, batch_format):
        self.fn = fn
        return self

    def take_all(self):
        return [self.fn(p).iloc[0].to_dict() for p in self.parts]


def _sums_over_ranks(task, outputs, target, state, ranks: int = 3):
    """The loop's reduction: per-batch sums on each 'rank', added up (as all_reduce does)."""
    total = None
    for out, y in zip(np.array_split(outputs, ranks), np.array_split(target, ranks), strict=True):
        o, t = torch.from_numpy(out), torch.from_numpy(y)
        s = task.batch_sums(o, t, task.loss(o, t), state)
        total = s if total is None else total + s
    return total.tolist()


def test_the_catalogue_names_every_task_and_an_unknown_one_gets_the_list():
    assert tasks.TASK_NAMES[:2] == ("tabular-classification", "tabular-regression")
    assert tasks.get(None).name == tasks.DEFAULT_TASK
    with pytest.raises(ConfigError, match=r"unknown task 'tabular-regresion' \(did you mean 'tabular-regression'"):
        tasks.get("tabular-regresion")
    spec = {"name": "m", "dataset": {"path": "demo:digits", "label": "label"}}
    assert load_model(TrainSpec, spec, "t.yaml").task == "tabular-classification"
    with pytest.raises(ConfigError, match=r"t.yaml: task: .*unknown task 'images'.*set task: to one of"):
        load_model(TrainSpec, {**spec, "task": "images"}, "t.yaml")


def test_classification_metrics_match_scikit_learn_across_ranks():
    rng = np.random.default_rng(0)
    task = tasks.get("tabular-classification")
    state = data.Preprocessor(["a"], "y", [0.0], [1.0], classes=["a", "b", "c", "d"])
    logits = rng.normal(size=(301, 4)).astype(np.float32)
    target = rng.integers(0, 3, size=301)  # class "d" never occurs: it is predicted, so it counts in F1
    got = task.metrics(_sums_over_ranks(task, logits, target, state), state)
    predicted = logits.argmax(1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(target, predicted))
    assert got["f1"] == pytest.approx(skm.f1_score(target, predicted, average="macro"))
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                                                          torch.from_numpy(target)).item(), rel=1e-5)
    labels, probs = task.answer(logits[:2], state)
    assert labels == [state.classes[i] for i in predicted[:2]] and np.allclose(np.sum(probs, axis=1), 1)


def test_regression_fits_the_target_on_the_train_split_and_reports_in_its_units():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(3, 2, 200), "b": rng.normal(size=200)})
    frame["y"] = 100 + 30 * frame["a"] + rng.normal(0, 5, 200)
    task = tasks.get("tabular-regression")
    plan = data.DatasetPlan("x", "parquet", ["a", "b"], "y", 200, "fp")
    state = task.fit(_Batches(frame), plan)
    assert state.target_mean == pytest.approx(frame["y"].mean()) and state.target_std == pytest.approx(frame["y"].std(ddof=0))
    assert state.classes == [] and task.out_dim(state) == 1
    assert task.state_from_dict(state.to_dict()) == state
    batch = state(frame)
    assert batch["y"].dtype == np.float32 and abs(batch["y"].mean()) < 1e-4  # standardised for the loss

    predicted_z = batch["y"] + rng.normal(0, 0.3, 200).astype(np.float32)  # a model close to the truth
    got = task.metrics(_sums_over_ranks(task, predicted_z[:, None], batch["y"], state), state)
    predicted = predicted_z * state.target_std + state.target_mean
    assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(frame["y"], predicted), rel=1e-4)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(frame["y"], predicted), rel=1e-4)
    assert got["r2"] == pytest.approx(skm.r2_score(frame["y"], predicted), rel=1e-4)
    values, probabilities = task.answer(predicted_z[:3, None], state)
    assert probabilities is None and np.allclose(values, predicted[:3], rtol=1e-5)


def test_a_regression_target_must_be_numeric(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "y": ["low", "high", "low"]})
    frame.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"label column 'y' is \w*string, not numeric; a regression target must be"):
        tasks.get("tabular-regression").plan(str(tmp_path / "t.parquet"), "auto", None, "y")
    assert tasks.get("tabular-classification").plan(str(tmp_path / "t.parquet"), "auto", None, "y").label == "y"


def test_the_diabetes_demo_is_real_and_held_out(tmp_path):
    paths = data.prepare_demo(str(tmp_path), "diabetes")
    train_df, hold = pd.read_parquet(paths["train"]), pd.read_parquet(paths["holdout"])
    assert len(train_df) + len(hold) == 442 and len(hold) == 44
    assert {"age", "bmi", "bp", "progression"} <= set(train_df.columns)
    assert train_df["progression"].between(25, 346).all()  # the published range of the score


def test_a_sweep_over_a_regressor_optimises_its_rmse_unless_told(tmp_path):
    from atoll.tune import load_sweep

    (tmp_path / "train.yaml").write_text("name: r\ntask: tabular-regression\n"
                                         "dataset: {path: 'demo:diabetes', label: progression}\n")
    (tmp_path / "sweep.yaml").write_text("name: s\ntrain: train.yaml\nsearch_space: {optimizer.lr: {choice: [0.01]}}\n")
    sweep, base = load_sweep(tmp_path / "sweep.yaml")
    assert (base.task, sweep.metric, sweep.mode) == ("tabular-regression", "val_rmse", "min")
    assert load_sweep(tmp_path / "sweep.yaml", ["metric=val_r2"])[0].mode == "max"
    with pytest.raises(ConfigError, match=r"metric: a tabular-regression run does not report 'val_accuracy'; "
                                          r"it reports train_loss, train_rmse"):
        load_sweep(tmp_path / "sweep.yaml", ["metric=val_accuracy"])
    with pytest.raises(ConfigError, match="mode: max on val_rmse would pick the worst trial"):
        load_sweep(tmp_path / "sweep.yaml", ["metric=val_rmse", "mode=max"])


class _Texts:
    """The fit's one contract for text: ``iter_batches(...)`` over real pandas batches."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def iter_batches(self, batch_format, batch_size):
        for i in range(0, len(self.frame), batch_size):
            yield self.frame.iloc[i:i + batch_size]


def test_text_fits_a_wordpiece_tokenizer_on_the_train_split_and_parses_texts(tmp_path):
    from atoll.errors import RequestError
    from atoll.serving.replica import parse_request

    paths = data.prepare_demo(str(tmp_path), "sms_spam")
    frame = pd.read_parquet(paths["train"])
    assert len(frame) + len(pd.read_parquet(paths["holdout"])) == 4862 and set(frame["label"]) == {"ham", "spam"}
    task = tasks.get("text-classification")
    plan = task.plan(paths["train"], "auto", None, "label")
    assert plan.features == ["text"]
    state = task.fit(_Texts(frame.iloc[:800]), plan, {"vocab_size": 800, "max_length": 16})
    assert state.classes == ["ham", "spam"] and 100 < state.vocab_size <= 800 and task.out_dim(state) == 2
    again = task.state_from_dict(json.loads(json.dumps(state.to_dict())))  # plain JSON, nothing pickled
    ids, cut = again.token_ids(["Free prize", "word " * 40])
    assert ids.shape == (2, 16) and ids.dtype == np.int64 and cut == [False, True]
    assert ids[0, 0] == 2 and ids[0, -1] == 0  # [CLS] first, [PAD] (0, masked) after the text
    batch = state(frame.iloc[:5])
    assert batch["x"].shape == (5, 16) and batch["y"].dtype == np.int64
    schema = task.input_schema(state, {"type": "hf-bert"})
    assert parse_request(b'{"inputs": ["hello there"]}', schema, max_rows=4, max_body_bytes=1000) == ["hello there"]
    for body, status, message in ((b'{"inputs": [""]}', 422, "inputs.0: the text is empty"),
                                  (b'{"inputs": ["a", 7]}', 422, "inputs.1: expected a text"),
                                  (b'{"inputs": []}', 422, "a non-empty list of texts"),
                                  (b'{"texts": ["a"]}', 422, "must be a JSON object like"),
                                  (b'["a"]', 422, "must be a JSON object like"),
                                  (b'{"inputs": ["a", "b", "c", "d", "e"]}', 413, "the limit is 4"),
                                  (b"", 400, 'empty body: send JSON like {"inputs": ["some text"')):
        with pytest.raises(RequestError, match=re.escape(message)) as caught:
            parse_request(body, schema, max_rows=4, max_body_bytes=1000)
        assert caught.value.status == status


def test_a_model_made_for_other_inputs_is_refused_before_anything_runs():
    from atoll import models
    from atoll.tasks.base import BUILTIN_MODELS

    assert set(BUILTIN_MODELS) == set(models.BUILTIN) | {"xgboost"}  # trees: atoll.trees, not torch
    with pytest.raises(ConfigError, match=r"model.type: hf-bert does not take a tabular-classification task's "
                                          r"inputs \(table\); use mlp or cnn"):
        tasks.get("tabular-classification").check_model("hf-bert")
    with pytest.raises(ConfigError, match="use hf-bert, or your own model"):
        tasks.get("text-classification").check_model("mlp")
    tasks.get("text-classification").check_model("mypkg.models:build")  # the user's call


def test_the_bert_model_maps_token_ids_to_logits_and_reloads_weights_only(tmp_path):
    from atoll import models

    model = models.build("hf-bert", 300, 2, {"layers": 1, "hidden": 16, "heads": 2, "max_length": 16})
    ids = torch.zeros((3, 16), dtype=torch.int64)
    ids[:, :4] = torch.tensor([2, 57, 99, 3])
    assert model.eval()(ids).shape == (3, 2)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    again = models.build("hf-bert", 300, 2, {"layers": 1, "hidden": 16, "heads": 2, "max_length": 16})
    again.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert torch.equal(again.eval()(ids), model(ids))
    with pytest.raises(ConfigError, match="hidden: 15 is not a multiple of heads"):
        models.build("hf-bert", 300, 2, {"hidden": 15, "heads": 2})


def test_a_pretrained_bert_folder_brings_its_weights_and_tokenizer_and_a_replica_needs_only_the_version(tmp_path):
    """model.params.pretrained: a local folder saved with save_pretrained (here made on the spot: nothing is
    downloaded). Training starts from its weights with its tokenizer; the fitted state records its config,
    so a model rebuilt where the folder is absent (a replica) has the same shape and takes the weights."""
    from atoll import models
    from atoll.tasks.text import train_tokenizer
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    paths = data.prepare_demo(str(tmp_path), "sms_spam")
    frame = pd.read_parquet(paths["train"]).iloc[:400]
    folder = tmp_path / "tiny-bert"
    tokenizer = Tokenizer.from_str(train_tokenizer(frame["text"].tolist(), 500))
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=24, num_labels=5)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    saved = BertForSequenceClassification.from_pretrained(folder).bert.embeddings.word_embeddings.weight

    task = tasks.get("text-classification")
    plan = task.plan(paths["train"], "auto", None, "label")
    params = {"pretrained": str(folder)}
    state = task.fit(_Texts(frame), plan, params)
    assert state.max_length == 24 and state.vocab_size == tokenizer.get_vocab_size()  # the folder's, not fitted
    assert json.loads(state.tokenizer)["model"]["vocab"] == json.loads(tokenizer.to_str())["model"]["vocab"]
    model = models.build("hf-bert", state.input_dim, 2, task.model_params(state, params))
    assert torch.equal(model.bert.bert.embeddings.word_embeddings.weight, saved)  # pretrained weights
    assert model.bert.config.num_labels == 2  # a new head for this task's classes
    elsewhere = task.model_params(task.state_from_dict(json.loads(json.dumps(state.to_dict()))),
                                  {"pretrained": str(tmp_path / "not-here")})
    rebuilt = models.build("hf-bert", state.input_dim, 2, elsewhere)
    rebuilt.load_state_dict(model.state_dict())
    ids = torch.from_numpy(state.token_ids(["free prize call now"])[0])
    assert torch.allclose(rebuilt.eval()(ids), model.eval()(ids), atol=1e-5)

    (folder / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=r"model.params.pretrained: .*tiny-bert has no tokenizer.json"):
        task.fit(_Texts(frame), plan, params)
    with pytest.raises(ConfigError, match=r"'bert-base-uncased' is not a local directory.*never downloads"):
        task.fit(_Texts(frame), plan, {"pretrained": "bert-base-uncased"})


class _Images(_Batches):
    """The image fit's contract: ``take(1)`` and ``map_batches(fn).take_all()``, over real pandas batches."""

    def __init__(self, frame: pd.DataFrame) -> None:
        super().__init__(frame)
        self.frame = frame

    def take(self, n):
        return self.frame.iloc[:n].to_dict("records")


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_images_are_decoded_resized_normalised_on_the_train_split_and_parsed_from_arrays_or_base64(tmp_path):
    import base64
    import io

    import jsonschema
    from atoll import models
    from atoll.errors import RequestError
    from atoll.serving.replica import parse_request
    from PIL import Image

    paths = data.prepare_demo(str(tmp_path), "digits_images")
    frame = pd.read_parquet(paths["train"])
    assert len(frame) + len(pd.read_parquet(paths["holdout"])) == 1797 and frame["image"].map(type).eq(bytes).all()
    task = tasks.get("image-classification")
    plan = task.plan(paths["train"], "auto", None, "label")
    assert plan.features == ["image"]
    train_part = data.SplitFilter(["image", "label"], 0.2, "train")(frame)  # rows of bytes split like any other
    assert 0.75 < len(train_part) / len(frame) < 0.85
    state = task.fit(_Images(train_part), plan)
    assert state.image_shape == [1, 8, 8] and state.classes == list(range(10)) and task.out_dim(state) == 10
    again = task.state_from_dict(json.loads(json.dumps(state.to_dict())))  # plain JSON, nothing pickled
    batch = again(train_part.iloc[:300])
    assert batch["x"].shape == (300, 1, 8, 8) and batch["x"].dtype == np.float32 and batch["y"].dtype == np.int64
    assert abs(float(batch["x"].mean())) < 0.1 and 0.9 < float(batch["x"].std()) < 1.1  # standardised
    bigger = task.fit(_Images(train_part.iloc[:100]), plan, {"image_shape": [3, 16, 16]})
    assert bigger(train_part.iloc[:2])["x"].shape == (2, 3, 16, 16)  # grey → 3 channels, 8×8 → 16×16
    with pytest.raises(ConfigError, match=r"model.params.image_shape: \[2, 8, 8\] is not \[channels, height"):
        task.fit(_Images(train_part.iloc[:10]), plan, {"image_shape": [2, 8, 8]})

    for model_type in ("cnn", "mlp"):  # the task hands the builder its input shape
        model = models.build(model_type, state.input_dim, 10, task.model_params(state, {}))
        assert model(torch.from_numpy(batch["x"][:4])).shape == (4, 10)

    schema = task.input_schema(state, {"type": "cnn"})
    pixels_8x8 = np.asarray(again(frame.iloc[:1])["x"])  # what the PNG path makes of the first image
    first_png = frame["image"].iloc[0]
    raw = np.asarray(Image.open(io.BytesIO(first_png)))
    b64 = base64.b64encode(first_png).decode()
    big = base64.b64encode(_png(np.kron(raw, np.ones((4, 4))), "JPEG")).decode()  # 32×32 JPEG, resized to 8×8
    for body in ({"inputs": [raw.tolist()]}, {"inputs": [{"b64": b64}]}, {"inputs": [f"data:image/png;base64,{b64}"]},
                 {"inputs": [raw[:, :, None].tolist()]}):
        parsed = parse_request(json.dumps(body).encode(), schema, max_rows=4, max_body_bytes=100_000)
        assert np.allclose(task.encode(parsed, again), pixels_8x8, atol=1e-5)
    resized = task.encode(parse_request(json.dumps({"inputs": [{"b64": big}]}).encode(), schema, max_rows=4,
                                        max_body_bytes=100_000), again)
    assert resized.shape == (1, 1, 8, 8) and np.abs(resized - pixels_8x8).mean() < 0.3  # JPEG is lossy

    for payload, message in (({"inputs": [[[0, 300]]]}, "inputs.0: pixel values must be numbers from 0 to 255"),
                             ({"inputs": [[[0, 1], [2]]]}, "inputs.0: the rows are not all the same length"),
                             ({"inputs": [[1, 2, 3]]}, "inputs.0: an array image is height × width"),
                             ({"inputs": ["%%%"]}, "inputs.0: not valid base64"),
                             ({"inputs": [{"b64": base64.b64encode(b"not an image").decode()}]}, "inputs.0: not an image"),
                             ({"inputs": [{"b64": base64.b64encode(first_png[:60]).decode()}]}, "inputs.0: "),
                             ({"inputs": [7]}, "inputs.0: an image is an array of pixel rows"),
                             ({"inputs": []}, "a non-empty list of images"),
                             ({"images": []}, "must be a JSON object like")):
        with pytest.raises(RequestError, match=re.escape(message)) as caught:
            parse_request(json.dumps(payload).encode(), schema, max_rows=4, max_body_bytes=100_000)
        assert caught.value.status == 422, payload
    request = task.request_schema(schema, 4)
    jsonschema.validate({"inputs": [raw.tolist(), {"b64": b64}]}, request)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"inputs": [{"b64": b64, "x": 1}]}, request)


@pytest.mark.parametrize(("sweep_file", "varied", "task"), [
    ("text_sweep.yaml", "model.params.max_length", "text-classification"),
    ("text_sweep.yaml", "model.params.vocab_size", "text-classification"),
    ("image_sweep.yaml", "model.params.image_shape", "image-classification"),
])
def test_a_sweep_may_not_vary_what_the_preprocessing_is_fitted_with(sweep_file, varied, task):
    """One tokenizer (or image size) is fitted per sweep and shared by every trial: varying it is refused
    before anything runs; the shipped sweeps themselves load."""
    from atoll.tune import load_sweep
    from conftest import REPO

    path = REPO / "jobs" / "configs" / sweep_file
    load_sweep(path)
    value = "[[1, 8, 8], [1, 16, 16]]" if varied.endswith("image_shape") else "[32, 64]"
    with pytest.raises(ConfigError, match=rf"search_space.{re.escape(varied)}: the {task} task fits its "
                                          rf"preprocessing with it once"):
        load_sweep(path, [f"search_space.{varied}={{choice: {value}}}"])


@pytest.mark.parametrize("name", ["tabular-classification", "tabular-regression"])
def test_the_loop_summing_chunks_of_batches_matches_summing_batch_by_batch(name):
    """EpochFigures (a chunk of batches per batch_sums call) against the plain per-batch sum."""
    from atoll.train.loop import EpochFigures

    rng = np.random.default_rng(2)
    task = tasks.get(name)
    regression = name == "tabular-regression"
    state = data.Preprocessor(["a"], "y", [0.0], [1.0], classes=[] if regression else ["a", "b", "c"],
                              **({"target_mean": 5.0, "target_std": 2.0} if regression else {}))
    figures, by_batch = EpochFigures(task, state, chunk=4), None
    for rows in [7, 64, 64, 3, 64, 64, 64, 1, 50, 9]:  # 10 batches: two full chunks and a part
        out = torch.from_numpy(rng.normal(size=(rows, task.out_dim(state))).astype(np.float32))
        y = torch.from_numpy(rng.normal(size=rows).astype(np.float32) if regression else rng.integers(0, 3, rows))
        loss = task.loss(out, y)
        figures.add(out, y, loss)
        s = task.batch_sums(out, y, loss, state)
        by_batch = s if by_batch is None else by_batch + s
    assert figures.total(torch.device("cpu")).tolist() == pytest.approx(by_batch.tolist(), rel=1e-9)
    empty = EpochFigures(task, state).total(torch.device("cpu"))
    assert empty.shape == by_batch.shape and not empty.any()
