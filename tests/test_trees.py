"""Gradient-boosted trees (`model.type: xgboost`): the booster's own file format, the spec's checks, the trees'
training loop run in this process through a stand-in for Ray Train's session (rounds reported with the task's
figures, checkpoints, resume, early stopping), registration and prediction parity (the registry's booster, its
ONNX export); then one end-to-end run on the shared cluster: `atoll train` → deploy → HTTP → `atoll predict`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from atoll import config, data, trees
from atoll.errors import ConfigError
from atoll.specs import TrainSpec
from conftest import REPO, SMALL_APP, run_cli

xgboost = pytest.importorskip("xgboost")


def _spec(**fields) -> dict:
    base = {"name": "t", "task": "tabular-classification", "dataset": {"path": "demo:digits", "label": "label"},
            "model": {"type": "xgboost", "params": {"max_depth": 3}}, "epochs": 12, "num_workers": 1}
    return {**base, **fields}


def _digits(regression: bool = False):
    from sklearn.datasets import load_diabetes, load_digits

    x, y = (load_diabetes if regression else load_digits)(return_X_y=True)
    x = x.astype(np.float32)
    features = [f"f{i}" for i in range(x.shape[1])]
    std = np.where(x.std(0) < 1e-8, 1.0, x.std(0))
    pre = data.Preprocessor(features=features, label="label", mean=x.mean(0).tolist(), std=std.tolist(),
                            classes=[] if regression else sorted(set(y.tolist())))
    if regression:
        pre.target_mean, pre.target_std = float(y.mean()), float(y.std())
    return x, y, pre


class FakeSession:
    """Ray Train's session as the loop sees it (rank 0 of 1): rows by object, checkpoints copied aside."""

    rank, world_size = 0, 1

    def __init__(self, arrays: dict, checkpoint: str | None = None) -> None:
        self.arrays, self.checkpoint = arrays, checkpoint
        self.reports: list[dict] = []
        self.checkpoints: list[tuple[dict, str]] = []

    def get_checkpoint(self):
        if self.checkpoint is None:
            return None
        path = self.checkpoint

        class Ckpt:
            @contextlib.contextmanager
            def as_directory(self):
                yield path

        return Ckpt()

    def shard(self, name):
        return self.arrays[name]

    @property
    def history(self) -> list[dict]:
        """Every round's figures, as the latest checkpoint's atoll.json keeps them."""
        return json.loads(Path(self.checkpoints[-1][1], "atoll.json").read_text())["history"]

    def report(self, metrics, checkpoint_dir):
        self.reports.append(metrics)
        if checkpoint_dir:
            kept = tempfile.mkdtemp(prefix="trees-ckpt-")
            shutil.copytree(checkpoint_dir, kept, dirs_exist_ok=True)
            self.checkpoints.append((metrics, kept))


def _run(spec: dict, x, y, pre, checkpoint: str | None = None) -> FakeSession:
    from atoll.train import trees as train_trees
    from atoll.train.loop import loop_config

    train_spec = TrainSpec.model_validate(spec)
    cfg = loop_config(train_spec, pre, "run", "fp32", True)
    encoded, labels = pre.transform_features(x), pre.encode_labels(y)
    cut = int(len(x) * 0.8)
    cfg["shards"] = {"train": "train", "validation": "validation"}
    session = FakeSession({"train": {"x": encoded[:cut], "y": labels[:cut]},
                           "validation": {"x": encoded[cut:], "y": labels[cut:]}}, checkpoint)
    train_trees.train_loop(cfg, session)
    return session


# ------------------------------------------------------------------------------------------------
# The booster's own format


@pytest.mark.parametrize("name", ["model.ubj", "model.json"])
def test_a_booster_round_trips_through_xgboosts_own_file_formats(tmp_path, name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    booster = xgboost.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3},
                            xgboost.DMatrix(x, label=rng.integers(0, 3, 200)), 5)
    path = trees.save_booster(booster, tmp_path, name)
    if name.endswith(".json"):
        assert json.loads(path.read_text())["learner"]  # plain JSON, no pickle
    else:
        assert path.read_bytes()[:1] == b"{"  # UBJSON opens an object
    before = trees.outputs(booster, x, classification=True)
    for loaded in (trees.load_booster(path), trees.load_booster(path.read_bytes()), trees.load_dir(tmp_path)):
        np.testing.assert_array_equal(trees.outputs(loaded, x, classification=True), before)
    probabilities = np.exp(before)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)  # log p: softmax gives p back


def test_the_registry_takes_a_booster_as_a_versions_model():
    from atoll.registry import manifest

    assert manifest.BOOSTER_FILES == trees.BOOSTER_FILES
    assert manifest.weights_file(["atoll.json", "model.ubj"]) == "model.ubj"


# ------------------------------------------------------------------------------------------------
# The spec's checks: one line each, before any work


@pytest.mark.parametrize(("params", "message"), [
    ({"max_dpth": 3}, "model.params.max_dpth: unknown key for model.type xgboost; did you mean 'max_depth'?"),
    ({"num_boost_round": 50}, "model.params.num_boost_round: unknown key for model.type xgboost; boosting rounds "
                              "are the spec's `epochs`."),
    ({"eta": 0}, "model.params.eta: 0: Input should be greater than 0."),
    ({"early_stopping_rounds": "soon"}, "model.params.early_stopping_rounds: 'soon': Input should be a valid integer"),
])
def test_bad_tree_params_are_one_line_naming_the_field(params, message):
    with pytest.raises(ConfigError) as caught:
        config.load_model(TrainSpec, _spec(model={"type": "xgboost", "params": params}), "trees.yaml")
    text = str(caught.value)
    assert text.startswith("trees.yaml: ") and message in text and "\n" not in text


def test_trees_take_tables_only():
    from atoll import tasks

    tasks.get("tabular-regression").check_model("xgboost")
    with pytest.raises(ConfigError, match="model.type: xgboost does not take a image-classification task's"):
        tasks.get("image-classification").check_model("xgboost")


def test_the_demo_specs_load():
    for name in ("trees.yaml", "penguins_trees.yaml"):
        spec = config.load_file(TrainSpec, REPO / "jobs" / "configs" / name)
        assert trees.is_trees(spec.model.type) and trees.check_params(spec.model.params).early_stopping_rounds


def test_trees_hold_their_shards_in_memory_whatever_the_cache_setting():
    """Streaming a shard would need CPUs for Ray Data's tasks beside the workers' (a 1M-row job on a 2-CPU cluster
    waited forever); XGBoost holds the shard as one DMatrix anyway."""
    from atoll.train.run import in_memory

    x, _, pre = _digits()
    plan = data.DatasetPlan(uri="x.parquet", format="parquet", features=pre.features, label="label",
                            rows=10**9, fingerprint="f")
    spec = TrainSpec.model_validate(_spec(dataset={"path": "x.parquet", "label": "label", "cache": False}))
    assert in_memory(spec, plan, pre)
    mlp = TrainSpec.model_validate(_spec(model={"type": "mlp"}, dataset={"path": "x.parquet", "label": "label"}))
    assert not in_memory(mlp, plan, pre)  # a billion rows stream for the MLP


# ------------------------------------------------------------------------------------------------
# The training loop, in this process


def test_every_round_is_an_epoch_with_the_tasks_figures_and_checkpoints_are_reported(capsys):
    from atoll.events import parse_events

    x, y, pre = _digits()
    session = _run(_spec(model={"type": "xgboost", "params": {"max_depth": 3, "checkpoint_every": 5}}), x, y, pre)
    events = [e for e in parse_events(capsys.readouterr().out) if e["event"] == "epoch"]
    assert [e["epoch"] for e in events] == [h["epoch"] for h in session.history] == list(range(12))
    last = session.history[-1]
    assert {"train_loss", "train_accuracy", "train_f1", "val_loss", "val_accuracy", "val_f1"} <= set(last)
    assert last["val_accuracy"] > 0.8 and last["train_loss"] < session.history[0]["train_loss"]
    # Ray Train hears of the rounds with a checkpoint only: each 5th, each that improves accuracy, the last.
    assert len(session.reports) == len(session.checkpoints) and {4, 9, 11} <= {m["epoch"] for m in session.reports}
    metrics, folder = session.checkpoints[-1]
    assert metrics["epoch"] == 11 and sorted(os.listdir(folder)) == ["atoll.json", "model.ubj"]
    meta = json.loads(Path(folder, "atoll.json").read_text())
    assert len(meta["history"]) == 12 and meta["spec"]["model"]["type"] == "xgboost"
    assert trees.load_dir(folder).num_boosted_rounds() == 12


def test_a_run_resumes_from_its_latest_checkpoint():
    x, y, pre = _digits()
    first = _run(_spec(epochs=6), x, y, pre)
    _, folder = first.checkpoints[-1]
    resumed = _run(_spec(epochs=10), x, y, pre, checkpoint=folder)
    assert [h["epoch"] for h in resumed.history] == list(range(10)) and resumed.reports[0]["epoch"] >= 6
    _, last = resumed.checkpoints[-1]
    assert trees.load_dir(last).num_boosted_rounds() == 10
    assert len(json.loads(Path(last, "atoll.json").read_text())["history"]) == 10


def test_early_stopping_on_the_validation_loss(capsys):
    x, y, pre = _digits(regression=True)
    spec = _spec(task="tabular-regression", epochs=200,
                 model={"type": "xgboost", "params": {"eta": 0.5, "max_depth": 6, "early_stopping_rounds": 3}})
    session = _run(spec, x, y, pre)
    assert len(session.history) < 200
    assert '"event": "early_stop"' in capsys.readouterr().out
    losses = [m["val_loss"] for m in session.history]
    assert min(losses) < losses[-1] and losses.index(min(losses)) == len(losses) - 4
    assert session.checkpoints[-1][0]["epoch"] == len(losses) - 1


# ------------------------------------------------------------------------------------------------
# Registered, then predicted by the registry's booster and by its ONNX export


class _Dir:
    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def as_directory(self):
        yield self.path


@pytest.mark.parametrize("kind", ["classes", "two classes", "regression"])
def test_the_registered_version_predicts_as_the_trained_booster(storage, kind):
    from atoll import tasks
    from atoll.serving.predictor import Predictor
    from atoll.train.run import register_checkpoint

    regression = kind == "regression"
    x, y, pre = _digits(regression)
    if kind == "two classes":  # binary:logistic (onnxmltools gets a 2-class softprob booster wrong)
        y, pre.classes = (y >= 5).astype(int), [0, 1]
    task = "tabular-regression" if regression else "tabular-classification"
    session = _run(_spec(task=task, epochs=8), x, y, pre)
    metrics, folder = session.checkpoints[-1]
    mv = register_checkpoint(_Dir(folder), metrics, storage=str(storage), name="trees", lineage={"run": "t"},
                             foreign=True)
    assert "model.ubj" in mv.files and mv.metrics["epoch"] == 7
    onnx = mv.exports["onnx"]
    assert onnx["file"] == "model.onnx" and onnx["max_abs_diff"] <= onnx["tolerance"], mv.exports
    assert mv.exports["xgboost"]["file"] == "model.ubj" and "error" in mv.exports["pt2"]

    trained = trees.load_dir(folder)
    rows = x[-40:]
    expected = trees.outputs(trained, pre.transform_features(rows), classification=not regression)
    want = tasks.get(task).answer_arrays(expected, pre)
    for runtime in ("torch", "onnx"):  # torch: the native booster (no torch model is built for trees)
        predictor = Predictor(str(storage), "trees:1", device="cpu", runtime=runtime)
        assert predictor.runtime == ("xgboost" if runtime == "torch" else "onnx")
        predictions, probabilities = predictor.predict_arrays(rows)
        if regression:
            np.testing.assert_allclose(predictions, want[0], atol=1e-3)
        else:
            assert predictions.tolist() == want[0].tolist()
            np.testing.assert_allclose(probabilities, want[1], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# End to end on the shared cluster


@pytest.mark.cluster
def test_atoll_train_trees_then_serve_and_batch_predict(ray_cluster, tmp_path):
    import httpx
    import pandas as pd
    from atoll.serving import endpoints
    from atoll.serving.predictor import Predictor

    result = run_cli("train", "jobs/configs/trees.yaml", "--set", "epochs=12", "--run-name", "t-trees", "--json",
                     timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    ref = f"digits-trees:{out['registered']['version']}"
    assert out["registered"]["metrics"]["val_accuracy"] > 0.85, out
    storage = os.environ["ATOLL_STORAGE"]
    native = Predictor(storage, ref, device="cpu", runtime="torch")  # the booster itself
    assert native.runtime == "xgboost" and native.version.exports["onnx"]["file"] == "model.onnx"

    holdout = pd.read_parquet(data.prepare_demo(storage, "digits")["holdout"])
    rows = holdout[native.schema["features"]].to_numpy(dtype=np.float32)
    expected, _ = native.predict(rows)
    deployed = run_cli("serve", "deploy", ref, "--app", "digits-trees", *SMALL_APP, "--json", timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    url = json.loads(deployed.stdout)["url"]
    try:
        resp = httpx.post(f"{url}/predict", json={"inputs": rows[:16].tolist()}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == expected[:16]
    finally:
        endpoints.delete("digits-trees")

    holdout.insert(0, "row_id", np.arange(len(holdout)))
    holdout.to_parquet(tmp_path / "rows.parquet")
    predicted = run_cli("predict", ref, "--input", str(tmp_path / "rows.parquet"), "--output",
                        str(tmp_path / "out.parquet"), "--json", timeout=300)
    assert predicted.returncode == 0, predicted.stdout[-2000:] + predicted.stderr[-2000:]
    written = pd.read_parquet(tmp_path / "out.parquet")
    assert written["row_id"].tolist() == list(range(len(holdout)))
    assert written["prediction"].tolist() == expected
    assert np.mean(np.asarray(expected) == holdout["label"].to_numpy()) > 0.85


@pytest.mark.cluster
def test_atoll_tune_sweeps_tree_params_with_rounds_as_the_time_unit(ray_cluster):
    # 3 trials of up to 9 rounds, successive halving with its rung at round 3: all 3 boost 3 rounds and pause, the
    # best (3/3) resumes its booster from its round-3 checkpoint and runs to 9: 3*3 + 6 = 15 trial-rounds.
    result = run_cli("tune", "jobs/configs/trees_sweep.yaml", "--set", "name=t-trees-sweep", "--set", "num_samples=3",
                     "--set", "overrides.epochs=9", "--json", timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    summary = out["summary"]
    assert summary["trials"] == 3 and summary["errors"] == 0 and summary["trial_epochs"] == 15, summary
    assert out["registered"]["name"] == "digits-trees" and summary["best_metric"] > 0.8
