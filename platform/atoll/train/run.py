"""The driver side of a training run: name the run, prepare the data, choose scaling, fit, register.

Everything here runs in the job's driver (or a sweep's trial driver), never in a Ray Train worker:
:func:`fit` checks the run name and the data before any worker starts, builds the ``TorchTrainer``
(:func:`build_trainer`, shared with sweeps) around :func:`atoll.train.loop.train_loop_per_worker`, and
:func:`register_checkpoint` turns the best checkpoint into a model version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from atoll import capacity, config, data, filesystems, models, tasks
from atoll.errors import ConfigError
from atoll.events import emit
from atoll.specs import TrainSpec, check_name
from atoll.train.checkpoints import META_FILE, OPTIM_FILE
from atoll.train.loop import loop_config, train_loop_per_worker
from atoll.train.scaling import ScalingPlan, choose_scaling, gpu_worker_problem


def runs_root(storage: str) -> str:
    """Where training runs (Ray Train's storage_path) live: ``<storage>/runs``, a local folder or a URI."""
    return filesystems.join(storage, "runs")


def run_exists(storage: str, run_name: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystems.resolve(filesystems.join(runs_root(storage), run_name))
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def check_run_name(storage: str, run_name: str, resume: bool) -> None:
    """A new run never silently continues an old run's state; --resume needs a run to resume; the name is
    one folder under ``<storage>/runs`` (never ``../registry/x`` or an absolute path)."""
    check_name(run_name, "run name")
    exists = run_exists(storage, run_name)
    if exists and not resume:
        raise ConfigError(f"run {run_name!r} already exists under {runs_root(storage)}. Resume it with "
                          f"--resume {run_name}, or choose a new name with --run-name.")
    if resume and not exists:
        raise ConfigError(f"--resume {run_name}: no such run under {runs_root(storage)}; "
                          f"check the name (the runs folder lists them).")


def prepare(spec: TrainSpec, storage: str):
    """Plan, read, split and fit preprocessing; every data error surfaces here, before workers start."""
    task = tasks.get(spec.task)
    task.check_model(spec.model.type)
    uri = data.resolve_path(spec.dataset.path, storage)
    overrides = spec.dataset.overrides() if task.input_kind == "table" else None
    dplan = task.plan(uri, spec.dataset.format, spec.dataset.features, spec.dataset.label, overrides)
    trees = spec.model.type == "xgboost"  # gradient-boosted trees (atoll.train.trees): no torch module to build
    if not trees:
        models.resolve(spec.model.type)  # a bad import path fails now, not in every worker
    data.quiet_progress()
    ds = data.read(dplan.uri, dplan.format, small=data.should_cache(dplan, spec.dataset.cache))
    train_raw, val_raw = data.split(ds, dplan, spec.dataset.validation_fraction, spec.seed)
    pre = task.fit(train_raw, dplan, spec.model.params)
    if task.input_kind == "table":
        report_data(pre, data.check_validation(val_raw, pre))
    # Build once on the driver: wrong params / image shapes fail here with the field named.
    if not trees:
        models.build(spec.model.type, pre.input_dim, task.out_dim(pre), task.model_params(pre, spec.model.params))
    cache = in_memory(spec, dplan, pre)
    return dplan, pre, data.to_training(train_raw, pre, cache), data.to_training(val_raw, pre, cache)


def report_data(pre, validation: dict[str, Any]) -> None:
    """The training split's profile in the job's log (one line per column), and a ``data`` event with the rows
    training leaves out: without a label, or (validation) of a class the training split never had."""
    from atoll import tables

    report = pre.report or {}
    print("data profile (training split):\n" + tables.format_profile(report.get("profile") or []), flush=True)
    dropped = report.get("unlabelled_rows", 0) + validation["validation_unlabelled_rows"]
    unseen = validation["validation_only_classes"]
    if dropped:
        print(f"left out: {dropped} rows without a label ({report.get('unlabelled_rows', 0)} training, "
              f"{validation['validation_unlabelled_rows']} validation)", flush=True)
    if unseen:
        print(f"left out of validation: {sum(unseen.values())} rows of classes the training split never had "
              f"({', '.join(f'{k}: {v}' for k, v in list(unseen.items())[:5])})", flush=True)
    emit("data", training_rows=report.get("training_rows"), unlabelled_rows=dropped,
         validation_only_classes=unseen, profile=report.get("profile"))


def in_memory(spec: TrainSpec, dplan, pre) -> bool:
    """Whether the rows, as model inputs, fit in memory (``dataset.cache``): then they are materialised once
    in the object store and each worker holds its shard as tensors. Trees always: XGBoost holds a worker's
    shard as one DMatrix in memory anyway, and streaming it needs CPUs for Ray Data's tasks beside the ones the
    workers hold (seen: a 1M-row job on a 2-CPU cluster waiting forever for them)."""
    if spec.model.type == "xgboost":
        return True
    return data.should_cache(dplan, spec.dataset.cache, tasks.get(spec.task).row_bytes(pre))


def memory_shards(ds, num_workers: int) -> list:
    """A materialised ``{"x", "y"}`` dataset cut into ``num_workers`` equal shards, each put in the object
    store once (references travel in the loop's config; rank r reads shard r). Equal like Ray Data's split for
    DDP (every rank runs as many batches): the remainder of the division is left out."""
    import numpy as np
    import ray

    parts = [b for b in ds.iter_batches(batch_size=None, batch_format="numpy") if len(b["y"])]
    x = np.concatenate([p["x"] for p in parts]) if parts else np.zeros((0,), np.float32)
    y = np.concatenate([p["y"] for p in parts]) if parts else np.zeros((0,), np.int64)
    per = len(y) // num_workers
    return [ray.put({"x": x[r * per:(r + 1) * per], "y": y[r * per:(r + 1) * per]}) for r in range(num_workers)]


def build_trainer(plan: ScalingPlan, train_config: dict[str, Any], *, storage: str, run_name: str,
                  datasets: dict[str, Any], callbacks: list | None = None, keep: int = 2,
                  metric: str = "val_accuracy", mode: str = "max", max_failures: int = 1):
    """The TorchTrainer running :func:`train_loop_per_worker`, for ``atoll train`` and sweeps alike.

    Checkpoints go to ``<storage>/runs/<run_name>`` (re-running the name resumes it); the best ``keep``
    by ``metric`` are kept; a failed worker group restarts from the last one up to ``max_failures`` times.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=train_config,
        scaling_config=ray.train.ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                               resources_per_worker=plan.resources_per_worker,
                                               placement_strategy=plan.placement_strategy),
        torch_config=TorchConfig(backend=plan.backend),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=runs_root(storage), callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=metric,
                                                         checkpoint_score_order=mode),
            failure_config=ray.train.FailureConfig(max_failures=max_failures)),
        datasets=datasets,
    )


def check_gpu_workers(plan: ScalingPlan) -> None:
    """For a GPU plan: one probe task on a GPU, as a worker gets it, checks that torch there sees CUDA and has
    NCCL, before Ray Train starts any process group (where a CPU build of torch fails deep in Ray).

    Raises:
        ConfigError: :func:`atoll.train.scaling.gpu_worker_problem`'s line.
    """
    if not plan.use_gpu:
        return
    import ray

    @ray.remote(num_cpus=0, num_gpus=plan.resources_per_worker.get("GPU", 1))
    def probe() -> tuple[bool, bool, str]:
        import torch
        import torch.distributed as dist

        return torch.cuda.is_available(), dist.is_available() and dist.is_nccl_available(), torch.__version__

    if problem := gpu_worker_problem(*ray.get(probe.remote())):
        raise ConfigError(problem)


def fit(spec: TrainSpec, *, storage: str, run_name: str, resume: bool = False,
        callbacks: list | None = None, report_events: bool = True, timings: dict[str, float] | None = None):
    """Train on the connected Ray cluster. Returns (ray.train.Result, DatasetPlan, Preprocessor, plan).

    ``timings``: the caller's own steps so far (seconds), reported with the ``start`` event beside this one's
    (``prepare_s``: capacity, data plan, preprocessing, shards), so that a reader can tell where a job's time
    went before its first epoch.

    Raises:
        ConfigError / DataError: before any worker starts.
    """
    started = time.perf_counter()
    check_run_name(storage, run_name, resume)
    cpus, gpus, max_cpus, max_gpus = capacity.live_capacity(config.autoscaling_worker_types())
    plan = choose_scaling(spec, cluster_cpus=cpus, cluster_gpus=gpus, max_cpus=max_cpus, max_gpus=max_gpus)
    if spec.model.type != "xgboost":  # trees check their own build on the workers (atoll.train.trees)
        check_gpu_workers(plan)
    dplan, pre, train_ds, val_ds = prepare(spec, storage)
    metric, mode = tasks.get(spec.task).objective
    train_config = loop_config(spec, pre, run_name, plan.precision, in_memory(spec, dplan, pre))
    datasets = {"train": train_ds, "validation": val_ds}
    if train_config["in_memory"]:
        # Rows that fit go to each worker as its own object: Ray Data's per-epoch split (a coordinator actor
        # per dataset, planned on the first pass) costs more than every epoch of a small run together.
        train_config["shards"] = {name: memory_shards(ds, plan.num_workers) for name, ds in datasets.items()}
        datasets = {}
    if report_events:
        emit("start", run=run_name, workers=plan.num_workers, use_gpu=plan.use_gpu, backend=plan.backend,
             dataset=dplan.uri, rows=dplan.rows, features=len(dplan.features), classes=pre.num_classes, task=spec.task,
             epochs=spec.epochs, timings={**(timings or {}), "prepare_s": round(time.perf_counter() - started, 2)})
    if spec.model.type == "xgboost":  # Ray Train's XGBoostTrainer over the same data, rounds as epochs
        from atoll.train.trees import build_trainer as build
    else:
        build = build_trainer
    trainer = build(plan, train_config, storage=storage, run_name=run_name, datasets=datasets,
                    callbacks=callbacks, keep=spec.keep_checkpoints, metric=metric, mode=mode,
                    max_failures=spec.max_failures)
    result = trainer.fit()
    return result, dplan, pre, plan


def best_checkpoint(result, spec: TrainSpec) -> tuple[Any, dict[str, Any]]:
    """The kept checkpoint best by the task's objective (e.g. validation accuracy), and its metrics."""
    metric, mode = tasks.get(spec.task).objective
    sign = 1 if mode == "max" else -1
    ranked = sorted((cm for cm in result.best_checkpoints or [] if cm[1].get(metric) is not None),
                    key=lambda cm: sign * cm[1][metric], reverse=True)
    if not ranked:
        if result.checkpoint is None:
            raise ConfigError("the run reported no checkpoint; nothing to register.")
        return result.checkpoint, result.metrics
    return ranked[0]


def register_checkpoint(checkpoint, metrics: dict[str, Any], *, storage: str, name: str,
                        lineage: dict[str, Any], foreign: bool = False, examples: str | None = None):
    """Register a training checkpoint (plus its training-curve picture, ~10 held-out examples for the
    playground page and the profile of its training inputs for drift checks) as a new model version.

    The version holds what serving, export and its card need; the optimiser's state (a pickle, twice the
    weights for Adam) is training state and stays with the run's checkpoints.

    Args:
        foreign: The checkpoint was trained elsewhere (`atoll models register`): the dataset its spec names
            is not one this caller chose, so no example is read from it.
        examples: A dataset (path or URI) the caller names, whose rows (every row) give the examples. None:
            the validation split of the spec's own dataset for a run of this cluster, none when ``foreign``.
    """
    import atoll.train.examples as held_out  # (the parameter `examples` names a dataset)
    from atoll import plots, profiles, registry

    with checkpoint.as_directory() as ckpt_dir, tempfile.TemporaryDirectory() as staging:
        version_dir = Path(staging) / "version"
        shutil.copytree(ckpt_dir, version_dir, ignore=shutil.ignore_patterns(OPTIM_FILE))
        meta = json.loads((version_dir / META_FILE).read_text())
        plots.training_curve(meta["history"], version_dir / "training_curve.png", title=name)
        if examples is not None or foreign:  # sampled from the caller's data only, never a path it did not name
            dataset = {"path": examples, "format": "auto", "validation_fraction": 1.0}  # None: no examples
            shown = {**meta, "spec": {**meta["spec"], "dataset": dataset}}
        else:
            shown = meta
        if meta["spec"].get("task") == "text-generation":  # prompts and their reference answers
            from atoll.train.generation import add_examples
        else:
            add_examples = held_out.add_examples
        schema = add_examples(version_dir, shown, storage)  # examples.json; image shape if any
        if not foreign and examples is None:  # profile.json: the training inputs, for `atoll serve drift`
            profiles.write_profile(version_dir, meta["spec"], schema, storage)
        exported = export_artefacts(version_dir, meta, schema)
        return registry.Registry(storage).register(
            name, str(version_dir), metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            spec=meta["spec"], lineage=lineage, input_schema=schema, exports=exported)


def export_artefacts(version_dir: Path, meta: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``model.pt2``, ``model.onnx`` and ``preprocess.json`` into a version being registered, each artefact
    checked on the version's held-out examples (:mod:`atoll.exports`); returns what the manifest records."""
    from atoll import exports
    from atoll.train.checkpoints import load_model_state

    spec = TrainSpec.model_validate(meta["spec"])
    if spec.model.type == "xgboost":  # the booster: ONNX where onnxmltools converts it, else its own format
        from atoll.train.trees import export_artefacts as export_trees

        return export_trees(version_dir, spec, meta, schema)
    if spec.task == "text-generation":  # a Hugging Face folder (hf/), checked by reloading it
        from atoll.train.generation import export_artefacts as export_hf

        return export_hf(version_dir, spec, meta, schema)
    task = tasks.get(spec.task)
    state = task.state_from_dict(meta["preprocess"])
    model = models.build(spec.model.type, state.input_dim, task.out_dim(state),
                         task.model_params(state, spec.model.params))
    model.load_state_dict(load_model_state(version_dir))
    examples_file = version_dir / "examples.json"
    examples = json.loads(examples_file.read_text()).get("examples", []) if examples_file.exists() else []
    x = exports.example_inputs(task, state, schema, examples)
    results = exports.export_version(model.eval(), x, version_dir, held_out=len(examples),
                                     text_max=getattr(state, "max_length", None) if task.input_kind == "text" else None)
    exports.write_preprocess(version_dir, task=task.name, state=state.to_dict(), schema=schema, exports=results)
    return results


def default_run_name(spec: TrainSpec) -> str:
    """``NAME-TIMESTAMP-RANDOM``, within check_name's 64 characters (a long model name is shortened)."""
    return f"{spec.name[:42]}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
