"""Training gradient-boosted trees (``model.type: xgboost``) through Ray Train's ``XGBoostTrainer``.

The driver side is :func:`atoll.train.run.fit`'s, unchanged (run name, scaling, Ray Data reading, the split
and the preprocessing fitted on the training split, the same loop config and shards); only the trainer differs
(:func:`build_trainer`). Each worker builds a ``DMatrix`` of its shard of the encoded rows and calls
``xgboost.train``; Ray Train's ``XGBoostConfig`` joins the workers in XGBoost's collective, so the histogram
sums, hence the trees, are global (data-parallel). After every round :class:`RoundReport` computes the task's
own figures (the MLP's definitions: :meth:`Task.batch_sums`) on each shard, sums them over the workers, emits
the ``epoch`` event, stops early on the validation loss, and reports to Ray Train with a checkpoint
(``model.ubj`` + ``atoll.json``) every ``checkpoint_every`` rounds, on a round that improves the objective, and
on the last. A restarted worker group, or ``--resume``, continues the booster of the latest checkpoint.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from atoll import tasks, trees
from atoll.events import emit
from atoll.specs import TrainSpec
from atoll.train.checkpoints import META_FILE


def _arrays(session, config: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """This worker's rows of ``name`` as numpy: its object (rows put in the store per rank), else its Ray Data
    shard read once (a Tune trial's whole dataset)."""
    shards = config.get("shards")
    if shards:
        arrays = session.shard(shards[name])
        return np.asarray(arrays["x"], dtype=np.float32), np.asarray(arrays["y"])
    parts = [b for b in session.dataset(name).iter_batches(batch_size=65_536, batch_format="numpy") if len(b["y"])]
    if not parts:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.float32)
    return (np.concatenate([p["x"] for p in parts]).astype(np.float32, copy=False),
            np.concatenate([p["y"] for p in parts]))


def _allreduce(vector: np.ndarray) -> np.ndarray:
    """The sum of ``vector`` over the workers (XGBoost's collective, which Ray Train set up), or itself alone."""
    from xgboost import collective

    if collective.is_distributed() and collective.get_world_size() > 1:
        return np.asarray(collective.allreduce(vector, collective.Op.SUM), dtype=np.float64)
    return vector


def _sums(task, pre, out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The task's summed figures of one split (the MLP's :meth:`Task.batch_sums`, same definitions)."""
    import torch

    outputs = torch.from_numpy(out)
    target = torch.from_numpy(np.asarray(y)).to(getattr(torch, task.target_dtype))
    if len(target):
        loss = task.loss(outputs, target)
    else:
        loss = torch.zeros((), dtype=torch.float32)
    return task.batch_sums(outputs, target, loss, pre).double().numpy()


def _best_so_far(history: list[dict[str, Any]], key: str, mode: str) -> tuple[float | None, int | None]:
    sign = 1 if mode == "max" else -1
    best, at = None, None
    for h in history:
        v = h.get(key)
        if v is not None and (best is None or sign * v > sign * best):
            best, at = v, h["epoch"]
    return best, at


def make_callback(**kwargs):
    """:class:`RoundReport` as an ``xgboost.callback.TrainingCallback`` (xgboost imported only here)."""
    xgboost = trees.xgb()

    class RoundReport(xgboost.callback.TrainingCallback):
        """After each round: the task's figures on both splits (global), the epoch event, early stopping on the
        validation loss, and Ray Train's report with a checkpoint where one is due."""

        def __init__(self, *, config, session, task, pre, params, splits, history) -> None:
            super().__init__()
            self.config, self.session, self.task, self.pre, self.params = config, session, task, pre, params
            self.splits, self.history = splits, history  # splits: name -> (DMatrix, y, rows)
            self.spec = TrainSpec.model_validate(config["spec"])
            self.objective = task.objective
            self.best, _ = _best_so_far(history, *self.objective)
            self.best_loss, self.best_loss_round = _best_so_far(history, "val_loss", "min")
            self.started = time.perf_counter()

        def after_iteration(self, model, iteration: int, evals_log) -> bool:
            epoch = model.num_boosted_rounds() - 1  # the round overall (xgboost counts from 0 on a resumed booster)
            classification = self.task.output_kind == "labels"
            width = self.task.out_dim(self.pre)
            parts = [_sums(self.task, self.pre, trees.outputs(model, dm, classification=classification) if len(y)
                           else np.zeros((0, width), np.float32), y)  # a worker's shard may be empty
                     for dm, y in self.splits.values()]
            sums = _allreduce(np.concatenate(parts)).tolist()
            cut = len(parts[0])
            train_n = sums[1]
            elapsed = time.perf_counter() - self.started
            metrics = {"epoch": epoch,
                       **{f"train_{k}": v for k, v in self.task.metrics(sums[:cut], self.pre).items()},
                       **{f"val_{k}": v for k, v in self.task.metrics(sums[cut:], self.pre).items()},
                       "train_samples": int(train_n), "epoch_time_s": round(elapsed, 3),
                       "samples_per_s": round(train_n / elapsed, 1) if elapsed > 0 else None}
            self.history.append(metrics)
            key, mode = self.objective
            sign = 1 if mode == "max" else -1
            improved = self.best is None or sign * metrics[key] > sign * self.best
            if improved:
                self.best = metrics[key]
            if self.best_loss is None or metrics["val_loss"] < self.best_loss:
                self.best_loss, self.best_loss_round = metrics["val_loss"], epoch
            patience = self.params.early_stopping_rounds
            stop = patience is not None and epoch - self.best_loss_round >= patience
            last = stop or epoch + 1 >= self.spec.epochs
            due = (improved or last or (epoch + 1) % self.params.checkpoint_every == 0
                   or self.config.get("checkpoint_every_round", False))
            rank = self.session.rank
            if rank == 0:
                emit("epoch", epochs=self.spec.epochs, wall_time=round(time.time(), 3), **metrics)
                if stop:
                    emit("early_stop", epoch=epoch, best_epoch=self.best_loss_round,
                         best_val_loss=self.best_loss, patience=patience)
            if not due:
                # Every round is an epoch event (live progress, the history), but Ray Train hears only of rounds
                # with a checkpoint: its report queue holds one result until the controller polls (~0.26 s a
                # round on the digits, against 0.01 s of boosting). Every worker decides alike (the sums are
                # all-reduced), so all report equally often.
                self.started = time.perf_counter()
                return stop
            with tempfile.TemporaryDirectory() as tmp:
                ckpt_dir = None
                if rank == 0:
                    trees.save_booster(model, tmp)
                    meta = {"epoch": epoch, "history": self.history, "metrics": metrics, "spec": self.config["spec"],
                            "preprocess": self.pre.to_dict(), "input_schema": self.config["input_schema"],
                            "run_name": self.config["run_name"], "world_size": self.session.world_size,
                            "model_file": trees.BOOSTER_FILE}
                    (Path(tmp) / META_FILE).write_text(json.dumps(meta, default=str))
                    ckpt_dir = tmp
                self.session.report(metrics, ckpt_dir)
            self.started = time.perf_counter()
            return stop

    return RoundReport(**kwargs)


def train_loop(config: dict[str, Any], session) -> None:
    """Build the DMatrices of this worker's shards, (resume,) boost ``epochs`` rounds reporting each: the trees'
    loop, on a Ray Train worker (:class:`atoll.train.TrainSession`) or in a Tune trial's process alike."""
    import os

    xgboost = trees.xgb()
    spec = TrainSpec.model_validate(config["spec"])
    task = tasks.get(spec.task)
    pre = task.state_from_dict(config["preprocess"])
    params = trees.check_params(spec.model.params)
    use_gpu = bool(config.get("use_gpu"))
    if use_gpu and not xgboost.build_info().get("USE_CUDA"):
        from atoll.errors import ConfigError

        raise ConfigError("model.type xgboost on GPU workers needs XGBoost's CUDA build: install xgboost==3.2.0 "
                          "in the GPU image instead of xgboost-cpu (or set use_gpu: false).")
    threads = int(os.environ.get("OMP_NUM_THREADS", "") or max(1, int(spec.cpus_per_worker)))
    booster_params = trees.booster_params(params, num_classes=len(pre.classes) if task.output_kind == "labels" else 0,
                                          threads=threads, use_gpu=use_gpu, seed=spec.seed)
    splits = {}
    for name in ("train", "validation"):
        x, y = _arrays(session, config, name)
        if x.size == 0:
            x = np.zeros((0, pre.input_dim), np.float32)
        splits[name] = (xgboost.DMatrix(x, label=y), y)
    start, history, booster = 0, [], None
    checkpoint = session.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            booster = trees.load_dir(ckpt_dir)
            meta = json.loads((Path(ckpt_dir) / META_FILE).read_text())
        start, history = meta["epoch"] + 1, list(meta["history"])
        if session.rank == 0:
            emit("resumed", epoch=start, run=config["run_name"])
    if start >= spec.epochs:
        return
    callback = make_callback(config=config, session=session, task=task, pre=pre, params=params, splits=splits,
                             history=history)
    xgboost.train(booster_params, splits["train"][0], num_boost_round=spec.epochs - start,
                  evals=[(splits["validation"][0], "validation")], verbose_eval=False, xgb_model=booster,
                  callbacks=[callback])


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker of an ``XGBoostTrainer``."""
    from atoll.train.loop import TrainSession

    train_loop(config, TrainSession())


def build_trainer(plan, train_config: dict[str, Any], *, storage: str, run_name: str, datasets: dict[str, Any],
                  callbacks: list | None = None, keep: int = 2, metric: str = "val_accuracy", mode: str = "max",
                  max_failures: int = 1):
    """Ray Train's ``XGBoostTrainer`` running :func:`train_loop_per_worker`, configured as
    :func:`atoll.train.run.build_trainer` configures the ``TorchTrainer`` (storage, kept checkpoints, FailureConfig)."""
    import ray.train
    from ray.train.xgboost import XGBoostTrainer

    from atoll import filesystems

    return XGBoostTrainer(
        train_loop_per_worker,
        train_loop_config={**train_config, "use_gpu": plan.use_gpu},
        scaling_config=ray.train.ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                               resources_per_worker=plan.resources_per_worker,
                                               placement_strategy=plan.placement_strategy),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=filesystems.join(storage, "runs"),  # atoll.train.run.runs_root
            callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=metric,
                                                         checkpoint_score_order=mode),
            failure_config=ray.train.FailureConfig(max_failures=max_failures)),
        datasets=datasets,
    )


def export_artefacts(version_dir: Path, spec: TrainSpec, meta: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``model.onnx`` (where onnxmltools converts the booster, parity checked on the held-out examples) and
    ``preprocess.json`` into a trees version being registered; returns what the manifest records."""
    from atoll import exports

    task = tasks.get(spec.task)
    state = task.state_from_dict(meta["preprocess"])
    booster = trees.load_dir(version_dir)
    examples_file = version_dir / "examples.json"
    examples = json.loads(examples_file.read_text()).get("examples", []) if examples_file.exists() else []
    x = exports.example_inputs(task, state, schema, examples)
    results = trees.export_version(booster, x, version_dir, classification=task.output_kind == "labels",
                                   held_out=len(examples))
    exports.write_preprocess(version_dir, task=task.name, state=state.to_dict(), schema=schema, exports=results)
    return results
