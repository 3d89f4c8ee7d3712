"""Distributed training with Ray Train: the per-worker loop and the TorchTrainer it runs in.

One code path: 2 CPU workers with gloo and fp32 on a laptop, many GPU workers with NCCL and bf16
autocast in the cloud. The choice is made by :func:`choose_scaling` from the spec and the cluster's
resources. Every epoch reports train/validation loss and accuracy with a checkpoint (weights,
optimiser, preprocessing state, spec, history); a re-run with the same run name resumes from it.

Submodules, each importing only those after it: ``__main__`` (the job, ``python -m atoll.train``) →
``run`` (the driver side: run names, data, the TorchTrainer, fit, register) → ``loop`` (the per-worker
loop) → ``checkpoints`` (the checkpoint files); ``run`` → ``scaling`` (CPU/GPU, gloo/NCCL, bf16/fp32).
This module re-exports what the rest of Atoll, its jobs, benches and tests use.
"""

from __future__ import annotations

from atoll.train.checkpoints import (
    LEGACY_MODEL_FILE,
    META_FILE,
    MODEL_FILE,
    OPTIM_FILE,
    input_schema,
    load_model_state,
    load_training_state,
    save_training_state,
)
from atoll.train.loop import TrainSession, loop_config, train_loop, wrap_fsdp
from atoll.train.run import (
    build_trainer,
    check_gpu_workers,
    check_run_name,
    fit,
    in_memory,
    prepare,
    register_checkpoint,
    runs_root,
)
from atoll.train.scaling import ScalingPlan, choose_scaling

__all__ = [
    "LEGACY_MODEL_FILE", "META_FILE", "MODEL_FILE", "OPTIM_FILE", "ScalingPlan", "TrainSession", "build_trainer", "check_gpu_workers",
    "check_run_name",
    "choose_scaling", "fit", "in_memory", "input_schema", "load_model_state", "load_training_state", "loop_config", "prepare",
    "register_checkpoint", "runs_root", "save_training_state", "train_loop", "wrap_fsdp",
]
