"""Distributed training with Ray Train: the per-worker loop and the TorchTrainer it runs in.

One code path: 2 CPU workers with gloo and fp32 on a laptop, many GPU workers with NCCL and bf16
autocast in the cloud. The choice is made by :func:`choose_scaling` from the spec and the cluster's
resources. Every epoch reports train/validation loss and accuracy with a checkpoint (weights,
optimiser, preprocessing state, spec, history); a re-run with the same run name resumes from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from atoll import capacity, config, data, driver, models
from atoll.errors import ConfigError

# Re-exported: progress events and lineage live in atoll.events (the CLI reads them without torch).
from atoll.events import EVENT_PREFIX, emit, git_commit, parse_events  # noqa: F401
from atoll.specs import TrainSpec

# ------------------------------------------------------------------------------------------------
# Scaling: a policy from (spec, cluster resources) to a decision, testable without Ray


@dataclasses.dataclass(frozen=True)
class ScalingPlan:
    num_workers: int
    use_gpu: bool
    backend: str  # "nccl" on GPU, "gloo" on CPU
    precision: str  # "bf16" autocast on GPU, "fp32" on CPU
    resources_per_worker: dict[str, float]


def choose_scaling(spec: TrainSpec, *, cluster_cpus: float, cluster_gpus: float,
                   max_cpus: float | None = None, max_gpus: float | None = None) -> ScalingPlan:
    """Decide GPU vs CPU and check the workers can ever fit.

    Args:
        cluster_cpus / cluster_gpus: what the cluster has now.
        max_cpus / max_gpus: what it can grow to (autoscaling); defaults to what it has now.

    Raises:
        ConfigError: GPU asked for where there is none, or more workers than the cluster can ever hold.
    """
    max_cpus = cluster_cpus if max_cpus is None else max(max_cpus, cluster_cpus)
    max_gpus = cluster_gpus if max_gpus is None else max(max_gpus, cluster_gpus)
    if spec.use_gpu is True and max_gpus <= 0:
        raise ConfigError("use_gpu: true, but the cluster has no GPU and no GPU node type can be added; "
                          "set use_gpu: auto (or false), or add a GPU node type to cluster.yaml.")
    use_gpu = max_gpus > 0 if spec.use_gpu == "auto" else bool(spec.use_gpu)
    resources = {"CPU": spec.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = spec.gpus_per_worker
        need = spec.num_workers * spec.gpus_per_worker
        if need > max_gpus:
            raise ConfigError(f"num_workers: {spec.num_workers} workers x {spec.gpus_per_worker:g} GPU need "
                              f"{need:g} GPUs; the cluster can hold at most {max_gpus:g}. Lower num_workers.")
    need_cpus = spec.num_workers * spec.cpus_per_worker
    if need_cpus > max_cpus:
        raise ConfigError(f"num_workers: {spec.num_workers} workers x {spec.cpus_per_worker:g} CPU need "
                          f"{need_cpus:g} CPUs; the cluster can hold at most {max_cpus:g}. Lower num_workers "
                          f"or cpus_per_worker (e.g. --set cpus_per_worker=0.5).")
    return ScalingPlan(num_workers=spec.num_workers, use_gpu=use_gpu, backend="nccl" if use_gpu else "gloo",
                       precision="bf16" if use_gpu else "fp32", resources_per_worker=resources)


# ------------------------------------------------------------------------------------------------
# Checkpoints: a directory with model.pt, optim.pt and atoll.json


MODEL_FILE, OPTIM_FILE, META_FILE = "model.pt", "optim.pt", "atoll.json"


def input_schema(spec: TrainSpec, pre: data.Preprocessor) -> dict[str, Any]:
    """What a request must look like: named features, their shape and dtype, and the classes."""
    shape = spec.model.params.get("image_shape")
    if shape is None and spec.model.type == "cnn":
        side = math.isqrt(pre.input_dim)
        shape = [1, side, side]
    return {"features": pre.features, "num_features": pre.input_dim, "dtype": "float32",
            "image_shape": shape, "classes": pre.classes, "label": pre.label}


def load_checkpoint_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """(model state, optimiser state or None, metadata) from a checkpoint directory (weights only)."""
    import torch

    path = Path(path)
    model_state = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True)
    optim_state = None
    if (path / OPTIM_FILE).exists():
        optim_state = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=True)
    return model_state, optim_state, json.loads((path / META_FILE).read_text())


def wrap_fsdp(model, device):
    """``model`` sharded with FSDP on ``device``, CPU included (Ray's ``prepare_model`` refuses FSDP on CPU).

    FSDP finds no accelerator for CPU parameters unless it is handed the CPU device explicitly.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP(model.to(device), device_id=device)


def save_training_state(model, optimizer, directory: str | Path, *, rank: int) -> None:
    """Write ``model.pt`` (the unwrapped model's full state dict, what serving loads) and ``optim.pt``
    (the optimiser's, keyed by parameter name) to ``directory`` on rank 0.

    Any model: plain, DDP or FSDP. Collective under FSDP: every rank must call it.
    """
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # Offload gathers to host memory on rank 0 only; on a CPU device FSDP's offload frees the very storage
    # it copies from (empty tensors, or a segfault with use_orig_params), and the tensors are in host
    # memory already, so there every rank gathers the full state and only rank 0 writes it.
    on_cpu = next(model.parameters()).device.type == "cpu"
    options = StateDictOptions(full_state_dict=True, cpu_offload=not on_cpu)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if rank == 0:
        torch.save(model_state, Path(directory) / MODEL_FILE)
        torch.save(optim_state, Path(directory) / OPTIM_FILE)


def load_training_state(model, optimizer, directory: str | Path) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote into the (wrapped) model and its optimiser, on every
    rank (collective under FSDP). Returns the checkpoint's metadata."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    model_state, optim_state, meta = load_checkpoint_dir(directory)
    options = StateDictOptions(full_state_dict=True)  # every rank holds the full files; each keeps its shard
    if optim_state is None:
        # Older Atoll wrote no optimiser state for FSDP runs: say so rather than continue as if restored.
        set_model_state_dict(model, model_state, options=options)
        print(f"atoll: warning: checkpoint {directory} has no optimiser state; the optimiser starts afresh.",
              file=sys.stderr, flush=True)
    elif any(isinstance(p, int) for group in optim_state["param_groups"] for p in group["params"]):
        # Older Atoll saved optimizer.state_dict() (parameter ids, not names) for unsharded models.
        set_model_state_dict(model, model_state, options=options)
        optimizer.load_state_dict(optim_state)
    else:
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=options)
    return meta


def _optimizer(spec: TrainSpec, params):
    import torch

    opt = spec.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=opt.lr, weight_decay=opt.weight_decay)


# ------------------------------------------------------------------------------------------------
# The per-worker loop


def _epoch(model, shard, spec: TrainSpec, device, optimizer=None, autocast=None, seed: int = 0):
    """One pass over a shard; trains when ``optimizer`` is given. Returns [loss_sum, correct, count]."""
    import torch
    import torch.nn.functional as F

    sums = torch.zeros(3, dtype=torch.float64, device=device)
    training = optimizer is not None
    model.train(training)
    kwargs = {"local_shuffle_buffer_size": 4 * spec.batch_size, "local_shuffle_seed": seed} if training else {}
    with torch.set_grad_enabled(training):
        for batch in shard.iter_torch_batches(batch_size=spec.batch_size, device=device,
                                              dtypes={"x": torch.float32, "y": torch.int64}, **kwargs):
            x, y = batch["x"], batch["y"]
            with autocast() if autocast else contextlib.nullcontext():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            n = y.shape[0]
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double(),
                                 torch.tensor(float(n), dtype=torch.float64, device=device)])
    return sums


class TrainSession:
    """Where the loop gets its data, checkpoint and rank, and where it reports: Ray Train's session.

    A Tune trial that trains in one process passes its own session (see ``atoll.tune``), so sweeps run
    the very same loop.
    """

    def __init__(self) -> None:
        import ray.train

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()

    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare(self, model, strategy: str):
        import ray.train.torch

        if strategy == "fsdp" and self.world_size > 1:
            return wrap_fsdp(model, self.device())
        return ray.train.torch.prepare_model(model, parallel_strategy=strategy)

    def get_checkpoint(self):
        return self._train.get_checkpoint()

    def dataset(self, name: str):
        return self._train.get_dataset_shard(name)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        ckpt = self._train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._train.report(metrics, checkpoint=ckpt)


def train_loop(config: dict[str, Any], session) -> None:
    """Build, (resume,) train, evaluate, report + checkpoint per epoch: the one training loop."""
    import torch
    import torch.distributed as dist

    spec = TrainSpec.model_validate(config["spec"])
    pre = data.Preprocessor.from_dict(config["preprocess"])
    rank = session.rank
    torch.manual_seed(spec.seed)
    device = session.device()

    model = models.build(spec.model.type, pre.input_dim, pre.num_classes, spec.model.params)
    model = session.prepare(model, spec.strategy)
    optimizer = _optimizer(spec, model.parameters())
    start_epoch, history = 0, []
    checkpoint = session.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            meta = load_training_state(model, optimizer, ckpt_dir)
        start_epoch, history = meta["epoch"] + 1, meta["history"]
        if rank == 0:
            emit("resumed", epoch=start_epoch, run=config["run_name"])
    autocast = None
    if config["precision"] == "bf16" and device.type == "cuda":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731

    train_data, val_data = session.dataset("train"), session.dataset("validation")
    for epoch in range(start_epoch, spec.epochs):
        started = time.perf_counter()
        train_sums = _epoch(model, train_data, spec, device, optimizer, autocast, seed=spec.seed + epoch)
        train_time = time.perf_counter() - started
        val_sums = _epoch(model, val_data, spec, device, autocast=autocast)
        sums = torch.cat([train_sums, val_sums])
        if session.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)  # global metrics, not rank 0's shard
        t_loss, t_correct, t_n, v_loss, v_correct, v_n = sums.tolist()
        metrics = {"epoch": epoch, "train_loss": t_loss / max(t_n, 1), "train_accuracy": t_correct / max(t_n, 1),
                   "val_loss": v_loss / max(v_n, 1), "val_accuracy": v_correct / max(v_n, 1),
                   "train_samples": int(t_n), "epoch_time_s": round(time.perf_counter() - started, 3),
                   "samples_per_s": round(t_n / train_time, 1) if train_time > 0 else None}
        history = history + [metrics]
        with tempfile.TemporaryDirectory() as tmp:
            save_training_state(model, optimizer, tmp, rank=rank)
            ckpt_dir = None
            if rank == 0:
                meta = {"epoch": epoch, "history": history, "metrics": metrics, "spec": config["spec"],
                        "preprocess": pre.to_dict(), "input_schema": config["input_schema"],
                        "run_name": config["run_name"], "world_size": session.world_size}
                (Path(tmp) / META_FILE).write_text(json.dumps(meta, default=str))
                ckpt_dir = tmp
                # wall_time: when the epoch ended, so a reader of the log can time epochs end to end.
                emit("epoch", epochs=spec.epochs, wall_time=round(time.time(), 3), **metrics)
            session.report(metrics, ckpt_dir)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    train_loop(config, TrainSession())


def loop_config(spec: TrainSpec, pre: data.Preprocessor, run_name: str, precision: str) -> dict[str, Any]:
    """The (JSON-able) config the training loop receives."""
    return {"spec": spec.model_dump(mode="json"), "preprocess": pre.to_dict(),
            "input_schema": input_schema(spec, pre), "run_name": run_name, "precision": precision}


# ------------------------------------------------------------------------------------------------
# The driver side: prepare data, choose scaling, fit, register


def runs_root(storage: str) -> str:
    return storage.rstrip("/") + "/runs" if "://" in storage else str(Path(storage).expanduser() / "runs")


def run_exists(storage: str, run_name: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = data._filesystem(runs_root(storage) + "/" + run_name)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def check_run_name(storage: str, run_name: str, resume: bool) -> None:
    """A new run never silently continues an old run's state; --resume needs a run to resume."""
    exists = run_exists(storage, run_name)
    if exists and not resume:
        raise ConfigError(f"run {run_name!r} already exists under {runs_root(storage)}. Resume it with "
                          f"--resume {run_name}, or choose a new name with --run-name.")
    if resume and not exists:
        raise ConfigError(f"--resume {run_name}: no such run under {runs_root(storage)}; "
                          f"check the name (the runs folder lists them).")


def prepare(spec: TrainSpec, storage: str):
    """Plan, read, split and fit preprocessing; every data error surfaces here, before workers start."""
    uri = data.resolve_path(spec.dataset.path, storage)
    dplan = data.plan(uri, spec.dataset.format, spec.dataset.features, spec.dataset.label)
    models.resolve(spec.model.type)  # a bad import path fails now, not in every worker
    data.quiet_progress()
    ds = data.read(dplan.uri, dplan.format)
    train_raw, val_raw = data.split(ds, dplan, spec.dataset.validation_fraction, spec.seed)
    pre = data.fit_preprocessor(train_raw, dplan)
    # Build once on the driver: wrong params / image shapes fail here with the field named.
    models.build(spec.model.type, pre.input_dim, pre.num_classes, spec.model.params)
    cache = data.should_cache(dplan, spec.dataset.cache)
    return dplan, pre, data.to_training(train_raw, pre, cache), data.to_training(val_raw, pre, cache)


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
                                               resources_per_worker=plan.resources_per_worker),
        torch_config=TorchConfig(backend=plan.backend),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=runs_root(storage), callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute=metric,
                                                         checkpoint_score_order=mode),
            failure_config=ray.train.FailureConfig(max_failures=max_failures)),
        datasets=datasets,
    )


def fit(spec: TrainSpec, *, storage: str, run_name: str, resume: bool = False,
        callbacks: list | None = None, report_events: bool = True):
    """Train on the connected Ray cluster. Returns (ray.train.Result, DatasetPlan, Preprocessor, plan).

    Raises:
        ConfigError / DataError: before any worker starts.
    """
    check_run_name(storage, run_name, resume)
    cpus, gpus, max_cpus, max_gpus = capacity.live_capacity(config.autoscaling_worker_types())
    plan = choose_scaling(spec, cluster_cpus=cpus, cluster_gpus=gpus, max_cpus=max_cpus, max_gpus=max_gpus)
    dplan, pre, train_ds, val_ds = prepare(spec, storage)
    if report_events:
        emit("start", run=run_name, workers=plan.num_workers, use_gpu=plan.use_gpu, backend=plan.backend,
             dataset=dplan.uri, rows=dplan.rows, features=len(dplan.features), classes=pre.num_classes,
             epochs=spec.epochs)
    trainer = build_trainer(plan, loop_config(spec, pre, run_name, plan.precision), storage=storage,
                            run_name=run_name, datasets={"train": train_ds, "validation": val_ds},
                            callbacks=callbacks, keep=spec.keep_checkpoints, max_failures=spec.max_failures)
    result = trainer.fit()
    return result, dplan, pre, plan


def best_checkpoint(result) -> tuple[Any, dict[str, Any]]:
    """The kept checkpoint with the highest validation accuracy, and its metrics."""
    ranked = sorted(result.best_checkpoints or [], key=lambda cm: cm[1].get("val_accuracy", -1), reverse=True)
    if not ranked:
        if result.checkpoint is None:
            raise ConfigError("the run reported no checkpoint; nothing to register.")
        return result.checkpoint, result.metrics
    return ranked[0]


def register_checkpoint(checkpoint, metrics: dict[str, Any], *, storage: str, name: str,
                        lineage: dict[str, Any]):
    """Register a training checkpoint (plus its training-curve picture and ~10 held-out examples of the
    validation split for the playground page) as a new model version."""
    from atoll import playground, plots, registry

    with checkpoint.as_directory() as ckpt_dir, tempfile.TemporaryDirectory() as staging:
        version_dir = Path(staging) / "version"
        shutil.copytree(ckpt_dir, version_dir)
        meta = json.loads((version_dir / META_FILE).read_text())
        plots.training_curve(meta["history"], version_dir / "training_curve.png", title=name)
        schema = playground.add_examples(version_dir, meta, storage)  # examples.json; image shape if any
        return registry.Registry(storage).register(
            name, str(version_dir), metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            spec=meta["spec"], lineage=lineage, input_schema=schema)


def default_run_name(spec: TrainSpec) -> str:
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


# ------------------------------------------------------------------------------------------------
# The job: `python -m atoll.train`, what `atoll train` submits


def main(argv: list[str] | None = None) -> int:
    """The training job's driver, run ON the cluster: train, then register the best checkpoint.

    ``python -m atoll.train -c SPEC [--set KEY=VALUE ...] [--run-name NAME | --resume NAME]``; what
    `atoll train SPEC` submits through the Jobs API, and what ``ray job submit`` can run as well.
    """
    parser = driver.parser("atoll.train", "Train a model with Ray Train and register the best checkpoint "
                           "(run on a Ray cluster; `atoll train` submits it).", "jobs/configs/train.yaml",
                           "override a field of the spec, e.g. --set epochs=3 --set optimizer.lr=0.01")
    parser.add_argument("--run-name", help="name of the run (default: NAME-TIMESTAMP)")
    parser.add_argument("--resume", metavar="RUN_NAME", help="resume this run from its latest checkpoint")
    args = parser.parse_args(argv)
    return driver.run(lambda: _train_job(args.config, args.set, args.run_name, args.resume))


def _train_job(spec_path: str, overrides: list[str], run_name: str | None, resume: str | None) -> None:
    spec = config.load_file(TrainSpec, spec_path, overrides)
    storage = config.load_spec().atoll.storage
    run_name = resume or run_name or default_run_name(spec)
    print("resolved spec:", json.dumps(spec.model_dump(mode="json")), flush=True)
    driver.connect()
    result, dplan, _, plan = fit(spec, storage=storage, run_name=run_name, resume=bool(resume))
    ckpt, metrics = best_checkpoint(result)
    emit("finished", run=run_name, best=metrics, checkpoint=ckpt.path)
    if spec.register_model:
        lineage = {"run_name": run_name, "run_path": result.path, "dataset": dplan.uri,
                   "dataset_fingerprint": dplan.fingerprint, **driver.lineage(),
                   "num_workers": plan.num_workers, "use_gpu": plan.use_gpu, "epoch": metrics.get("epoch")}
        version = register_checkpoint(ckpt, metrics, storage=storage, name=spec.name, lineage=lineage)
        emit("registered", name=version.name, version=version.version, metrics=version.manifest["metrics"])


if __name__ == "__main__":
    sys.exit(driver.main_of("atoll.train"))
