"""The per-worker training loop: optimiser, one epoch, and the loop that builds, resumes, trains, evaluates
and reports with a checkpoint every epoch.

:func:`train_loop` is the one loop: Ray Train workers run it through :func:`train_loop_per_worker` with a
:class:`TrainSession`, and a Tune trial runs it in its own process with a session of its own
(``atoll.tune``). Ray pickles :func:`train_loop_per_worker` by reference, so it must stay importable as
``atoll.train.loop.train_loop_per_worker`` on every worker.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from atoll import data, models, tasks
from atoll.events import emit
from atoll.specs import TrainSpec
from atoll.train.checkpoints import META_FILE, input_schema, load_training_state, save_training_state


def wrap_fsdp(model, device):
    """``model`` sharded with FSDP on ``device``, CPU included (Ray's ``prepare_model`` refuses FSDP on CPU).

    FSDP finds no accelerator for CPU parameters unless it is handed the CPU device explicitly.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP(model.to(device), device_id=device)


def _optimizer(spec: TrainSpec, params):
    import torch

    opt = spec.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=opt.lr, weight_decay=opt.weight_decay)


class StreamShard:
    """A worker's shard streamed through Ray Data every epoch (data too large to hold; shuffled locally)."""

    def __init__(self, shard, dtypes: dict[str, Any]) -> None:
        self.shard, self.dtypes = shard, dtypes

    def batches(self, batch_size: int, device, shuffle_seed: int | None = None):
        kwargs = ({"local_shuffle_buffer_size": 4 * batch_size, "local_shuffle_seed": shuffle_seed}
                  if shuffle_seed is not None else {})
        for batch in self.shard.iter_torch_batches(batch_size=batch_size, device=device, dtypes=self.dtypes,
                                                   **kwargs):
            yield batch["x"], batch["y"]


class MemoryShard:
    """A worker's shard read once from Ray Data into tensors; every epoch then shuffles and slices it in
    memory (data that fits, ``dataset.cache``): re-streaming a small shard each epoch costs more than the
    training itself."""

    def __init__(self, shard, dtypes: dict[str, Any]) -> None:
        import torch

        parts = list(shard.iter_torch_batches(batch_size=4096, dtypes=dtypes))
        self.x = torch.cat([p["x"] for p in parts]) if parts else torch.zeros(0)
        self.y = torch.cat([p["y"] for p in parts]) if parts else torch.zeros(0, dtype=dtypes["y"])

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any], dtypes: dict[str, Any]) -> MemoryShard:
        """The shard from its arrays themselves (``atoll.train.run.memory_shards``), with no Ray Data pass."""
        import torch

        shard = cls.__new__(cls)
        shard.x = torch.as_tensor(arrays["x"], dtype=dtypes["x"])
        shard.y = torch.as_tensor(arrays["y"], dtype=dtypes["y"])
        return shard

    def batches(self, batch_size: int, device, shuffle_seed: int | None = None):
        import torch

        n = len(self.y)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
                 if shuffle_seed is not None else torch.arange(n))
        move = self.x.device != torch.device(device)  # .to() costs ~10% of a small batch's slicing even as a no-op
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            x, y = self.x[rows], self.y[rows]
            yield (x.to(device), y.to(device)) if move else (x, y)


class EpochFigures:
    """The task's summed figures of one pass, summed over chunks of batches rather than batch by batch.

    Outputs, targets and the row-weighted loss stay on the device; every ``chunk`` batches one
    :meth:`Task.batch_sums` runs over all of them. The sums add over rows, so the result is the same as
    summing batch by batch, but a small model's step no longer pays for a few bincounts each time (about
    10% of a digits MLP step on CPU, and a host sync per step on a GPU).
    """

    def __init__(self, task, pre, chunk: int = 64) -> None:
        self.task, self.pre, self.chunk = task, pre, chunk
        self.outputs, self.targets, self.loss_sum, self.rows = [], [], None, 0
        self.sums = None

    def add(self, outputs, target, loss) -> None:
        rows = target.shape[0]
        weighted = loss.detach().double() * rows
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        self.outputs.append(outputs.detach())
        self.targets.append(target)
        self.rows += rows
        if len(self.outputs) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        import torch

        if not self.outputs:
            return
        mean_loss = self.loss_sum / max(self.rows, 1)  # batch_sums multiplies it back by the rows
        part = self.task.batch_sums(torch.cat(self.outputs), torch.cat(self.targets), mean_loss, self.pre)
        self.sums = part if self.sums is None else self.sums + part
        self.outputs, self.targets, self.loss_sum, self.rows = [], [], None, 0

    def total(self, device):
        """The pass's sums; for an empty shard the same length of zeros, so every rank all-reduces alike."""
        import torch

        self._flush()
        if self.sums is None:
            empty_out = torch.zeros((0, self.task.out_dim(self.pre)), device=device)
            empty_y = torch.zeros(0, dtype=getattr(torch, self.task.target_dtype), device=device)
            self.sums = self.task.batch_sums(empty_out, empty_y, torch.zeros((), device=device), self.pre)
        return self.sums


def _epoch(model, shard, spec: TrainSpec, task, pre, device, optimizer=None, autocast=None, seed: int = 0):
    """One pass over a shard; trains when ``optimizer`` is given. Returns the task's summed batch figures."""
    import torch

    figures = EpochFigures(task, pre, chunk=task.sums_every)
    training = optimizer is not None
    model.train(training)
    with torch.set_grad_enabled(training):
        for x, y in shard.batches(spec.batch_size, device, shuffle_seed=seed if training else None):
            with autocast() if autocast else contextlib.nullcontext():
                outputs = model(x)
            loss = task.loss(outputs, y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            figures.add(outputs, y, loss)
    with torch.no_grad():
        return figures.total(device)


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

    def shard(self, refs: list):
        """This rank's object of a dataset put in the store whole, one per rank."""
        import ray

        return ray.get(refs[self.rank])

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        ckpt = self._train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._train.report(metrics, checkpoint=ckpt)


def train_loop(config: dict[str, Any], session) -> None:
    """Build, (resume,) train, evaluate, report + checkpoint per epoch: the one training loop."""
    import torch
    import torch.distributed as dist

    spec = TrainSpec.model_validate(config["spec"])
    task = tasks.get(spec.task)
    pre = task.state_from_dict(config["preprocess"])
    rank = session.rank
    torch.manual_seed(spec.seed)
    device = session.device()

    model = models.build(spec.model.type, pre.input_dim, task.out_dim(pre), task.model_params(pre, spec.model.params))
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

    dtypes = {"x": getattr(torch, task.input_dtype), "y": getattr(torch, task.target_dtype)}
    shards = config.get("shards")  # rows handed over as objects (atoll train), else Ray Data's split
    if shards:
        train_data, val_data = (MemoryShard.from_arrays(session.shard(shards[name]), dtypes)
                                for name in ("train", "validation"))
    else:
        shard_kind = MemoryShard if config.get("in_memory") else StreamShard
        train_data, val_data = (shard_kind(session.dataset(name), dtypes) for name in ("train", "validation"))
    for epoch in range(start_epoch, spec.epochs):
        started = time.perf_counter()
        train_sums = _epoch(model, train_data, spec, task, pre, device, optimizer, autocast, seed=spec.seed + epoch)
        train_time = time.perf_counter() - started
        val_sums = _epoch(model, val_data, spec, task, pre, device, autocast=autocast)
        sums = torch.cat([train_sums, val_sums])
        if session.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)  # global metrics, not rank 0's shard
        sums = sums.tolist()
        t_n = sums[1]  # every task's sums begin [loss·n, n, ...]
        metrics = {"epoch": epoch,
                   **{f"train_{k}": v for k, v in task.metrics(sums[:len(train_sums)], pre).items()},
                   **{f"val_{k}": v for k, v in task.metrics(sums[len(train_sums):], pre).items()},
                   "train_samples": int(t_n), "epoch_time_s": round(time.perf_counter() - started, 3),
                   "samples_per_s": round(t_n / train_time, 1) if train_time > 0 else None}
        if task.sample_unit == "tokens":
            metrics["tokens_per_s"] = metrics["samples_per_s"]
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


def loop_config(spec: TrainSpec, pre: data.Preprocessor, run_name: str, precision: str,
                in_memory: bool = False) -> dict[str, Any]:
    """The (JSON-able) config the training loop receives; ``in_memory``: each worker holds its shard as
    tensors after the first pass (:class:`MemoryShard`)."""
    return {"spec": spec.model_dump(mode="json"), "preprocess": pre.to_dict(),
            "input_schema": input_schema(spec, pre), "run_name": run_name, "precision": precision,
            "in_memory": in_memory}
