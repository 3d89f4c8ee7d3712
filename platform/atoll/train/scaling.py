"""Scaling: a policy from (training spec, cluster resources) to a decision, testable without Ray.

:func:`choose_scaling` picks GPU or CPU workers, NCCL or gloo, bf16 autocast or fp32, and refuses specs the
cluster can never hold, before any worker starts. It imports neither Ray nor torch, so the CLI and the unit
tests can use it anywhere.
"""

from __future__ import annotations

import dataclasses

from atoll.errors import ConfigError
from atoll.specs import TrainSpec


@dataclasses.dataclass(frozen=True)
class ScalingPlan:
    num_workers: int
    use_gpu: bool
    backend: str  # "nccl" on GPU, "gloo" on CPU
    precision: str  # "bf16" autocast on GPU, "fp32" on CPU
    resources_per_worker: dict[str, float]
    placement_strategy: str = "PACK"  # Ray's placement-group strategy for the worker group


def choose_scaling(spec: TrainSpec, *, cluster_cpus: float, cluster_gpus: float,
                   max_cpus: float | None = None, max_gpus: float | None = None) -> ScalingPlan:
    """Decide GPU vs CPU and check the workers can ever fit.

    ``use_gpu: auto`` trains on GPUs when the cluster has them now: a GPU node type it *could* add is no reason
    to rent one (a two-second MLP would start a g5). ``use_gpu: true`` may make the autoscaler add one.

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
    use_gpu = cluster_gpus > 0 if spec.use_gpu == "auto" else bool(spec.use_gpu)
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
                       precision="bf16" if use_gpu else "fp32", resources_per_worker=resources,
                       placement_strategy=spec.placement.upper())


def gpu_worker_problem(cuda: bool, nccl: bool, torch_version: str) -> str | None:
    """What stops a worker that Ray gave a GPU from training on it (one line), or None. Asked of a probe on a
    GPU node before any process group starts, where a CPU build of torch would die in Ray Train's NCCL set-up
    with ``Distributed package doesn't have NCCL built in``."""
    if cuda and nccl:
        return None
    seen = "sees no CUDA device" if not cuda else "has a torch without NCCL"
    return (f"use_gpu: a worker given a GPU {seen} (torch {torch_version} there); install a CUDA build of torch "
            f"in the GPU nodes' image (worker_image in cluster.yaml), or set use_gpu: false.")
