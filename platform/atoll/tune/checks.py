"""Checks of a sweep against its training spec and the cluster, before any trial starts.

Which training-spec fields a sweep may vary (:func:`searchable_paths`, :func:`check_search_path`), whether
every value it can sample gives a valid training spec and model (:func:`check_sweep`, :func:`check_models`),
and whether a trial fits the cluster, planned as a :class:`ResourcePlan` (:func:`check_resources`,
:func:`trial_spec`). No Ray needed: each takes what it checks against as arguments, so a mistake fails in one
line on the user's machine rather than in a trial.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

import pydantic

from atoll import config, models, tasks
from atoll.errors import ConfigError
from atoll.specs import TrainSpec
from atoll.tune.space import SweepSpec

# ------------------------------------------------------------------------------------------------
# Which training-spec fields a sweep may vary

# Training-spec fields a sweep must not vary, and why (the fix is in the message).
_NOT_SEARCHABLE = {
    "name": "the registry name is the same for every trial",
    "dataset": "the data is read and preprocessed once for all trials; set it in overrides",
    "seed": "the train/validation split uses one seed for all trials; set it in overrides",
    "epochs": "epochs is the sweep's time budget; set scheduler.max_t or overrides.epochs",
    "num_workers": "set resources_per_trial.workers instead",
    "cpus_per_worker": "set resources_per_trial.cpus_per_worker instead",
    "gpus_per_worker": "set resources_per_trial.gpus_per_worker instead",
    "use_gpu": "set resources_per_trial.gpus_per_worker instead",
    "keep_checkpoints": "it is not a hyperparameter; set it in overrides",
    "max_failures": "it is not a hyperparameter; set it in overrides",
    "register_model": "it is not a hyperparameter; set it in overrides",
}


def _variants(annotation: Any) -> list[Any]:
    """The members of ``X | Y | None`` (without None), or ``[annotation]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _submodel(annotation: Any) -> type[pydantic.BaseModel] | None:
    models_ = [a for a in _variants(annotation) if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]
    return models_[0] if models_ else None


def _is_mapping(annotation: Any) -> bool:
    return any(typing.get_origin(a) is dict or a is dict for a in _variants(annotation))


def searchable_paths(model: type[pydantic.BaseModel] = TrainSpec, prefix: str = "") -> list[str]:
    """Every dotted training-spec field a sweep may vary, except keys of free-form mappings such as
    ``model.params`` (any key below them is allowed)."""
    paths = []
    for name, field in model.model_fields.items():
        path = prefix + name
        if path in _NOT_SEARCHABLE or _is_mapping(field.annotation):
            continue
        sub = _submodel(field.annotation)
        paths += searchable_paths(sub, path + ".") if sub else [path]
    return paths


def check_search_path(path: str) -> str | None:
    """Why a dotted path is no field a sweep can vary (with a suggestion), or None when it is one."""
    parts = path.split(".")
    if not all(parts):
        return "empty segment in the path; write dotted paths like optimizer.lr"
    model: type[pydantic.BaseModel] = TrainSpec
    for i, part in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if part not in model.model_fields:
            return f"unknown training-spec field; {_suggest(path)}"
        if here in _NOT_SEARCHABLE:
            return f"cannot be varied by a sweep: {_NOT_SEARCHABLE[here]}"
        annotation = model.model_fields[part].annotation
        last = i == len(parts) - 1
        if (sub := _submodel(annotation)) is not None:
            if last:
                inner = ", ".join(f"{here}.{f}" for f in sub.model_fields)
                return f"is a section; vary one of its fields: {inner}"
            model = sub
        elif _is_mapping(annotation):
            # Free-form keyword arguments (model.params): any key below is fine; the model build checks it.
            return f"is a mapping; vary one of its keys, e.g. {here}.hidden" if last else None
        elif not last:
            return f"{here} is a value, not a section; did you mean {here!r}?"
    return None


def _suggest(path: str) -> str:
    leaves = searchable_paths()
    tail = path.rsplit(".", 1)[-1]
    same_tail = [p for p in leaves if p.rsplit(".", 1)[-1] == tail]
    # A high cutoff: 'model.hiden' is a model argument, not a typo of 'model.type'.
    close = same_tail or difflib.get_close_matches(path, leaves, n=1, cutoff=0.8)
    if close:
        return f"did you mean {close[0]!r}?"
    known = f"fields that can be varied: {', '.join(leaves)} and model.params.*"
    if path.startswith("model."):
        return f"model arguments go under model.params: did you mean 'model.params.{path[6:]}'?"
    if "." not in path:
        return f"if it is a model argument, write 'model.params.{path}'; {known}"
    return known


# ------------------------------------------------------------------------------------------------
# Checks against the training spec


def check_sweep(sweep: SweepSpec, base: TrainSpec, source: str = "") -> None:
    """Everything about a sweep that can be checked without a cluster, against its training spec.

    Every search-space path must be a field a sweep may vary, every value it can sample (both ends of a
    range, every choice) must give a valid training spec, and the scheduler must fit the spec's epochs.

    Raises:
        ConfigError: one line per problem, each naming the field and the fix.
    """
    problems = []
    reported = tasks.get(base.task).reported_metrics()
    if sweep.metric not in reported:
        problems.append(f"metric: a {base.task} run does not report {sweep.metric!r}; it reports "
                        f"{', '.join(reported)}")
    keys = sorted(sweep.search_space)
    base_dict = base.model_dump(mode="json")
    for key in keys:
        dist = sweep.search_space[key]
        if (why := check_search_path(key)) is not None:
            problems.append(f"search_space.{key}: {why}")
            continue
        if key.removeprefix("model.params.") in tasks.get(base.task).fitted_params and key.startswith("model.params."):
            problems.append(f"search_space.{key}: the {base.task} task fits its preprocessing with it once, for "
                            f"every trial (one tokenizer or image size per sweep); set it in the training spec")
            continue
        inner = [k for k in keys if k.startswith(key + ".")]
        if inner:
            problems.append(f"search_space.{key}: also varied below it ({', '.join(inner)}); "
                            f"keep one of them")
            continue
        for value in dist.candidates():
            try:
                TrainSpec.model_validate(config.apply_values(base_dict, {key: value}))
            except ConfigError as exc:
                problems.append(f"search_space.{key}: {exc}")
                break
            except pydantic.ValidationError as exc:
                why = config.format_validation_error(exc, TrainSpec, "")
                problems.append(f"search_space.{key}: {dist.kind} value {value!r} gives an invalid training "
                                f"spec ({why}); change the {dist.kind} values")
                break
        if dist.kind == "grid" and sweep.search.algorithm == "optuna":
            problems.append(f"search_space.{key}: grid needs search.algorithm: random (Optuna samples "
                            f"instead); use choice, or set search.algorithm: random")
    max_t = sweep.scheduler.max_t
    if max_t is not None and max_t > base.epochs:
        problems.append(f"scheduler.max_t: {max_t} exceeds the training spec's epochs ({base.epochs}), which "
                        f"no trial runs past; lower max_t or set overrides: {{epochs: {max_t}}}")
    if sweep.scheduler.grace_period > (max_t or base.epochs):
        problems.append(f"scheduler.grace_period: {sweep.scheduler.grace_period} exceeds max_t "
                        f"({max_t or base.epochs} epochs); lower grace_period")
    if sweep.scheduler.type == "hyperband" and (problem := hyperband_problem(max_t or base.epochs,
                                                                         sweep.scheduler.reduction_factor)):
        problems.append(problem)
    if problems:
        head = f"{source}: " if source else ""
        if len(problems) == 1:
            raise ConfigError(head + problems[0])
        raise ConfigError(head + f"{len(problems)} problems:\n  " + "\n  ".join(problems))


def hyperband_problem(max_t: int, eta: float) -> str | None:
    """Why Ray's HyperBand cannot use ``max_t`` with ``reduction_factor`` ``eta``, or None. Its most aggressive
    bracket's first rung is ``int(max_t / eta**s)`` epochs with ``s = round(log(max_t) / log(eta))``: below one
    epoch (max_t 8, eta 3: 8/9), no rung ever decides and every trial runs to max_t."""
    import math

    rungs = round(math.log(max_t) / math.log(eta))
    if max_t >= 1 and int(max_t / eta**rungs) >= 1:
        return None
    fits = ", ".join(str(round(eta**k)) for k in range(1, 4))
    return (f"scheduler: hyperband with reduction_factor {eta:g} and max_t {max_t}: its first rung would be "
            f"{max_t / eta**rungs:.2g} epochs, so no trial would ever be stopped; use a max_t that is a power of "
            f"reduction_factor ({fits}, ... epochs)")


def check_models(sweep: SweepSpec, base: TrainSpec, input_dim: int, num_classes: int) -> None:
    """Build the model with every sampled ``model.params`` value (on the meta device: no memory, no
    compute), so that e.g. ``hidden: [-4]`` fails now rather than in a trial.

    Raises:
        ConfigError: naming the search-space field and the value.
    """
    import torch

    for key, dist in sorted(sweep.search_space.items()):
        if not key.startswith("model.params."):
            continue
        for value in dist.candidates():
            params = config.apply_values(base.model.params, {key.removeprefix("model.params."): value})
            if base.model.type == "xgboost":  # trees: their params are checked, there is no module to build
                from atoll import trees

                try:
                    trees.check_params(params)
                except ConfigError as exc:
                    raise ConfigError(f"search_space.{key}: value {value!r}: {exc}; change the {dist.kind} "
                                      f"values.") from None
                continue
            try:
                with torch.device("meta"):
                    models.build(base.model.type, input_dim, num_classes, params)
            except Exception as exc:  # the model's own constructor decides what is invalid
                raise ConfigError(f"search_space.{key}: value {value!r} does not build a {base.model.type} "
                                  f"model ({exc}); change the {dist.kind} values.") from None


# ------------------------------------------------------------------------------------------------
# Checks against the cluster: what a trial holds


def _resolve_gpus(sweep: SweepSpec, cluster_gpus: float, use_gpu: bool | str) -> float:
    if use_gpu is True and cluster_gpus <= 0:
        raise ConfigError("the training spec says use_gpu: true, but the cluster has no GPU; set "
                          "overrides: {use_gpu: auto} in the sweep, or add a GPU node type to cluster.yaml.")
    gpus = sweep.resources_per_trial.gpus_per_worker
    if gpus is None:
        return 1.0 if cluster_gpus > 0 and use_gpu is not False else 0.0
    if gpus > 0 and cluster_gpus <= 0:
        raise ConfigError(f"resources_per_trial.gpus_per_worker: {gpus:g}, but the cluster has no GPU; "
                          f"set it to 0 (or leave it out).")
    return float(gpus)


@dataclasses.dataclass(frozen=True)
class ResourcePlan:
    """How trials are placed: what each trial holds and how many fit at once."""

    nested: bool  # a TorchTrainer per trial (workers > 1) rather than training in the trial's process
    trial: dict[str, float]  # what the Tune trial itself holds (tune.with_resources)
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    cpus_per_trial: float  # the trial and its workers together
    gpus_per_trial: float
    max_parallel: int  # trials the cluster can hold at once


def check_resources(sweep: SweepSpec, cluster_cpus: float, cluster_gpus: float, *,
                    node_cpus: float | None = None, node_gpus: float | None = None,
                    use_gpu: bool | str = "auto") -> ResourcePlan:
    """Check one trial fits the cluster and plan the placement; no Ray needed.

    Args:
        sweep: The sweep (its ``resources_per_trial``).
        cluster_cpus / cluster_gpus: What the cluster has (or can grow to).
        node_cpus / node_gpus: The largest node (default: the whole cluster). A single-worker trial trains
            in one process, so it must fit on one node; so must each worker of a nested trainer.
        use_gpu: The training spec's ``use_gpu`` (``auto``, True, False).

    Raises:
        ConfigError: a trial (or one of its workers) can never be placed, naming the field and the fix.
    """
    res = sweep.resources_per_trial
    node_cpus = cluster_cpus if node_cpus is None else node_cpus
    node_gpus = cluster_gpus if node_gpus is None else node_gpus
    gpus = _resolve_gpus(sweep, cluster_gpus, use_gpu)
    cpw, workers, nested = res.cpus_per_worker, res.workers, res.workers > 1
    if cpw > node_cpus:
        where = "a worker" if nested else "a trial (one process)"
        raise ConfigError(f"resources_per_trial.cpus_per_worker: {where} needs {cpw:g} CPUs, but the largest "
                          f"node has {node_cpus:g}; lower cpus_per_worker (e.g. 1 or 0.5).")
    if gpus > node_gpus:
        raise ConfigError(f"resources_per_trial.gpus_per_worker: {gpus:g} GPUs per worker, but the largest "
                          f"node has {node_gpus:g}; lower gpus_per_worker.")
    if nested:
        # Each trial's driver holds 1 CPU (Tune refuses 0) while its TorchTrainer's workers hold theirs.
        trial = {"cpu": 1.0}
        cpus, need_gpus = 1 + workers * cpw, workers * gpus
        if cpus > cluster_cpus:
            raise ConfigError(f"resources_per_trial: a trial needs {cpus:g} CPUs (1 for the trial's driver + "
                              f"{workers} workers x {cpw:g}), but the cluster has {cluster_cpus:g}; lower "
                              f"resources_per_trial.workers or cpus_per_worker (e.g. 0.5).")
        if need_gpus > cluster_gpus:
            raise ConfigError(f"resources_per_trial: a trial needs {need_gpus:g} GPUs ({workers} workers x "
                              f"{gpus:g}), but the cluster has {cluster_gpus:g}; lower "
                              f"resources_per_trial.workers.")
    else:
        trial = {"cpu": float(cpw), **({"gpu": gpus} if gpus > 0 else {})}
        cpus, need_gpus = cpw, gpus
    parallel = math.floor(cluster_cpus / cpus + 1e-9)
    if need_gpus > 0:
        parallel = min(parallel, math.floor(cluster_gpus / need_gpus + 1e-9))
    return ResourcePlan(nested=nested, trial=trial, workers=workers, cpus_per_worker=cpw,
                        gpus_per_worker=gpus, cpus_per_trial=cpus, gpus_per_trial=need_gpus,
                        max_parallel=max(parallel, 1))


def trial_spec(base: TrainSpec, resources: ResourcePlan) -> TrainSpec:
    """The training spec every trial starts from: the base with the sweep's per-trial resources, so that
    what a registered version records is what actually ran."""
    return TrainSpec.model_validate(config.apply_values(base.model_dump(mode="json"), {
        "num_workers": resources.workers, "cpus_per_worker": resources.cpus_per_worker,
        "gpus_per_worker": resources.gpus_per_worker, "use_gpu": resources.gpus_per_worker > 0}))
