"""Hyperparameter sweeps with Ray Tune: a sweep spec, its search space, ASHA, and the best model registered.

A sweep file (``jobs/configs/sweep.yaml``) names a training spec, fixed overrides, and a search space keyed
by dotted training-spec paths::

    search_space:
      optimizer.lr: {loguniform: [0.0003, 0.03]}
      model.params.hidden: {choice: [[64], [128, 64]]}

Everything is checked before any trial starts (:func:`load_sweep`, :func:`check_sweep`,
:func:`check_resources`). Trials run the very same loop as ``atoll train``
(:func:`atoll.train.train_loop`): in the trial's own process through :class:`TuneSession` (one worker, the
cheap path), or, when a trial asks for several workers, in a ``TorchTrainer`` nested in the trial (the Tune
+ Train V2 shape). The data is read and preprocessed once on the driver and shared by every trial.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import random
import sys
import tempfile
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, field_validator, model_validator

from atoll import capacity, config, data, driver, models, train
from atoll.errors import ConfigError
from atoll.specs import BASE_DIR, CHECK_FILES, NAME_PATTERN, SHIPPED, Strict, TrainSpec, resolve_local

#: What :func:`atoll.train.train_loop` reports every epoch: the metrics a sweep can optimise.
TRAINING_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch", "train_samples",
                    "epoch_time_s", "samples_per_s")
_MINIMIZED = ("train_loss", "val_loss", "epoch_time_s")
KINDS = ("uniform", "loguniform", "randint", "choice", "grid")

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


# ------------------------------------------------------------------------------------------------
# The sweep spec


class Distribution(Strict):
    """Where one training-spec field's values come from: exactly one of the keys below."""

    uniform: tuple[float, float] | None = Field(None, description="[lo, hi]: a float drawn uniformly.")
    loguniform: tuple[float, float] | None = Field(None, description="[lo, hi], both > 0: a float drawn "
                                                   "uniformly in log space (learning rates, weight decay).")
    randint: tuple[int, int] | None = Field(None, description="[lo, hi]: an integer in lo..hi-1 (hi is "
                                            "exclusive, as in ray.tune.randint).")
    choice: list[Any] | None = Field(None, description="Values drawn at random, e.g. [[64], [128, 64]].")
    grid: list[Any] | None = Field(None, description="Every value is tried (times num_samples), "
                                   "e.g. [adam, sgd]; random search only.")

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            raise ValueError(f"expected a distribution such as {{choice: [32, 64]}} or "
                             f"{{loguniform: [lo, hi]}} (got {raw!r}); a fixed value goes under overrides")
        return raw

    @model_validator(mode="after")
    def _checks(self) -> Distribution:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'}), "
                             f"e.g. {{loguniform: [0.0001, 0.01]}} or {{choice: [32, 64]}}")
        kind = given[0]
        values = getattr(self, kind)
        if kind in ("choice", "grid"):
            if not values:
                raise ValueError(f"{kind}: empty list; give at least one value, e.g. {{{kind}: [32, 64]}}")
            return self
        lo, hi = values
        if not all(math.isfinite(v) for v in (lo, hi)):
            raise ValueError(f"{kind}: bounds must be finite numbers (got [{lo}, {hi}])")
        if lo >= hi:
            extra = " (hi is exclusive: [lo, lo+1] gives lo only)" if kind == "randint" else ""
            raise ValueError(f"{kind}: lower bound {lo:g} must be below upper bound {hi:g}{extra}; "
                             f"write [lo, hi] with lo < hi")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform: bounds must be > 0 (got [{lo:g}, {hi:g}]); raise the lower bound "
                             f"(e.g. 1e-5) or use uniform for a range that includes 0")
        return self

    @property
    def kind(self) -> str:
        """The distribution's name (``uniform``, ``loguniform``, ``randint``, ``choice`` or ``grid``)."""
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def values(self) -> Any:
        """Its bounds ``(lo, hi)`` or its list of values."""
        return getattr(self, self.kind)

    def candidates(self) -> list[Any]:
        """Values worth checking against the training spec: both ends of a range, every listed value."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        lo, hi = self.values
        return [lo, hi - 1] if self.kind == "randint" else [lo, hi]

    @property
    def encoded(self) -> bool:
        """Whether its values travel through Tune as JSON text (lists and mappings: Optuna takes only
        scalars as categories, and the results table reads better with one value per cell)."""
        return self.kind in ("choice", "grid") and not all(_is_scalar(v) for v in self.values)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class TrialResources(Strict):
    """What one trial holds. One worker: the trial trains in its own process (cheap); several: a
    ``TorchTrainer`` nested in the trial (each trial's driver then holds 1 CPU on top of its workers)."""

    workers: int = Field(1, ge=1, description="Training workers per trial (1: train in the trial's own "
                         "process; >1: a data-parallel TorchTrainer per trial). Replaces the train spec's "
                         "num_workers.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs per worker (fractions allowed, e.g. 0.5).")
    gpus_per_worker: float | None = Field(None, ge=0, description="GPUs per worker (default: 1 when the "
                                          "cluster has GPUs and the train spec allows them, else 0).")


class SchedulerSpec(Strict):
    """When to stop unpromising trials early (ASHA) or never (FIFO)."""

    type: Literal["asha", "fifo"] = Field("asha", description="asha: stop the worst trials at each rung; "
                                          "fifo: run every trial to max_t.")
    grace_period: int = Field(1, ge=1, description="Epochs every trial runs before ASHA may stop it.")
    reduction_factor: float = Field(2, gt=1, description="ASHA keeps the best 1/reduction_factor of the "
                                    "trials at each rung.")
    max_t: int | None = Field(None, ge=1, description="Most epochs a trial runs (default: the train spec's "
                              "epochs; at most that).")


class SearchSpec(Strict):
    """How trial configurations are chosen."""

    algorithm: Literal["random", "optuna"] = Field("random", description="random: independent samples (and "
                                                   "grids); optuna: TPE, which learns from finished trials.")
    seed: int | None = Field(0, description="Seed of the sampler, for repeatable sweeps (null: a new draw).")


def _flatten(mapping: Mapping[str, Any], is_leaf, prefix: str = "") -> dict[str, Any]:
    """Nested sections → dotted keys, stopping at values for which ``is_leaf`` is true."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not is_leaf(value):
            flat.update(_flatten(value, is_leaf, path + "."))
        else:
            flat[path] = value
    return flat


def _is_distribution(value: Mapping[str, Any]) -> bool:
    # A section holds only sections; anything else ({loguniform: [..]}, even misspelt) is a distribution.
    return not all(isinstance(v, Mapping) for v in value.values())


class SweepSpec(Strict):
    """A hyperparameter sweep: which training spec, what to vary, what to optimise, how to schedule."""

    name: str = Field(..., pattern=NAME_PATTERN, description="Sweep name: its experiment folder "
                      "<storage>/sweeps/<name> and the lineage of the model it registers.")
    train: str = Field(..., description="Training spec YAML every trial starts from, relative to the sweep "
                       "file's folder, e.g. train.yaml.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Fixed changes to the training spec for every trial, by dotted path, "
                    "e.g. {epochs: 8, optimizer.name: adam}.")
    search_space: dict[str, Distribution] = Field(
        ..., description="Dotted training-spec path → distribution, "
                         "e.g. optimizer.lr: {loguniform: [0.0003, 0.03]}.")
    metric: str = Field("val_accuracy", description="Reported metric to optimise: "
                        + ", ".join(TRAINING_METRICS) + ".")
    mode: Literal["max", "min"] = Field("max", description="max or min (default: min for losses and "
                                        "epoch_time_s, max otherwise).")
    num_samples: int = Field(8, ge=1, description="Trials to sample (with grid: samples per grid point).")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Most trials at once (default: as "
                                              "many as the cluster's resources allow).")
    resources_per_trial: TrialResources = Field(default_factory=TrialResources,
                                                description="What one trial holds.")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="Early stopping.")
    search: SearchSpec = Field(default_factory=SearchSpec, description="Search algorithm.")

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        # Nested sections and dotted keys mean the same (so `--set search_space.optimizer.lr.uniform=[..]`
        # works); overrides are merged leaf by leaf rather than replacing whole sections.
        if isinstance(raw.get("search_space"), Mapping):
            raw["search_space"] = _flatten(raw["search_space"], _is_distribution)
        if isinstance(raw.get("overrides"), Mapping):
            raw["overrides"] = _flatten(raw["overrides"], lambda _: False)
        if raw.get("mode") is None:
            raw["mode"] = "min" if raw.get("metric", "val_accuracy") in _MINIMIZED else "max"
        return raw

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in TRAINING_METRICS:
            close = difflib.get_close_matches(metric, TRAINING_METRICS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"the training does not report {metric!r}; {hint}it reports "
                             f"{', '.join(TRAINING_METRICS)}")
        return metric

    @field_validator("search_space")
    @classmethod
    def _not_empty(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        if not space:
            raise ValueError("empty: name at least one training-spec field to vary, "
                             "e.g. optimizer.lr: {loguniform: [0.0003, 0.03]}")
        return space

    @model_validator(mode="after")
    def _direction(self) -> SweepSpec:
        wrong = ("max" if self.metric.endswith("_loss") else
                 "min" if self.metric.endswith("_accuracy") else None)
        if self.mode == wrong:
            right = "min" if wrong == "max" else "max"
            raise ValueError(f"mode: {wrong} on {self.metric} would pick the worst trial; set mode: {right} "
                             f"(or leave mode out)")
        return self


# ------------------------------------------------------------------------------------------------
# Checks against the training spec (before any trial starts)


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


def check_sweep(sweep: SweepSpec, base: TrainSpec, source: str = "") -> None:
    """Everything about a sweep that can be checked without a cluster, against its training spec.

    Every search-space path must be a field a sweep may vary, every value it can sample (both ends of a
    range, every choice) must give a valid training spec, and the scheduler must fit the spec's epochs.

    Raises:
        ConfigError: one line per problem, each naming the field and the fix.
    """
    problems = []
    keys = sorted(sweep.search_space)
    base_dict = base.model_dump(mode="json")
    for key in keys:
        dist = sweep.search_space[key]
        if (why := check_search_path(key)) is not None:
            problems.append(f"search_space.{key}: {why}")
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
    if problems:
        head = f"{source}: " if source else ""
        if len(problems) == 1:
            raise ConfigError(head + problems[0])
        raise ConfigError(head + f"{len(problems)} problems:\n  " + "\n  ".join(problems))


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
            try:
                with torch.device("meta"):
                    models.build(base.model.type, input_dim, num_classes, params)
            except Exception as exc:  # the model's own constructor decides what is invalid
                raise ConfigError(f"search_space.{key}: value {value!r} does not build a {base.model.type} "
                                  f"model ({exc}); change the {dist.kind} values.") from None


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


def training_spec_path(sweep_path: str | Path, sweep: SweepSpec, shipped: str | Path | None = None) -> Path:
    """The sweep's training spec file: its ``train:``, relative to the sweep file's folder.

    Raises:
        ConfigError: a relative ``train:`` leaves ``shipped``, the folder a job ships.
    """
    folder = Path(sweep_path).expanduser().resolve().parent
    try:
        return Path(resolve_local(sweep.train, folder, shipped)).expanduser()
    except ValueError as exc:
        raise ConfigError(f"{sweep_path}: train: {exc}.") from None


def load_sweep(path: str | Path, overrides: list[str] | None = None, *,
               shipped: str | Path | None = None) -> tuple[SweepSpec, TrainSpec]:
    """Read a sweep file (with ``--set`` overrides) and its training spec (with the sweep's overrides);
    check them together. Relative paths are relative to the folder of the file they are in (``train:`` to
    the sweep's, ``dataset.path`` to the training spec's); with ``shipped``, none may leave that folder.

    Returns:
        The sweep and the training spec every trial starts from.

    Raises:
        ConfigError: naming the file, the field and the fix.
    """
    raw = config.apply_overrides(config.read_yaml(path), overrides)
    sweep = config.load_model(SweepSpec, raw, str(path))
    train_path = training_spec_path(path, sweep, shipped)
    if not train_path.is_file():
        raise ConfigError(f"{path}: train: {sweep.train} not found (relative to the sweep's folder, "
                          f"{Path(path).expanduser().resolve().parent}); fix the path, e.g. train: train.yaml.")
    merged = config.apply_values(config.read_yaml(train_path), sweep.overrides)
    # The data must exist; the spec's per-worker resources need not fit, resources_per_trial replaces them.
    context: dict[str, Any] = {CHECK_FILES: True, BASE_DIR: str(train_path.resolve().parent)}
    if shipped is not None:
        context[SHIPPED] = str(shipped)
    base = config.load_model(TrainSpec, merged, f"{train_path} (with the overrides of {path})", context=context)
    check_sweep(sweep, base, str(path))
    return sweep, base


# ------------------------------------------------------------------------------------------------
# The search space in Ray Tune's terms


def search_space_to_tune(sweep: SweepSpec) -> dict[str, Any]:
    """The search space as Ray Tune sample objects, keyed by dotted path.

    Lists and mappings among choice/grid values travel as JSON text (see :func:`decode_values`). Under
    ASHA, grid values are shuffled with the search seed: a grid tried in its written order can run its
    worst configurations first, and then ASHA stops nothing (its rungs compare against earlier trials).
    """
    from ray import tune

    space: dict[str, Any] = {}
    for key, dist in sweep.search_space.items():
        values = dist.values
        if dist.kind in ("choice", "grid"):
            values = [json.dumps(v) for v in values] if dist.encoded else list(values)
        if dist.kind == "uniform":
            space[key] = tune.uniform(*values)
        elif dist.kind == "loguniform":
            space[key] = tune.loguniform(*values)
        elif dist.kind == "randint":
            space[key] = tune.randint(*values)
        elif dist.kind == "choice":
            space[key] = tune.choice(values)
        else:
            if sweep.scheduler.type == "asha":
                random.Random(sweep.search.seed).shuffle(values)
            space[key] = tune.grid_search(values)
    return space


def decode_values(sweep: SweepSpec, sampled: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's sampled values as training-spec values (JSON-encoded choices decoded)."""
    out = {}
    for key, value in sampled.items():
        dist = sweep.search_space.get(key)
        encoded = dist is not None and dist.encoded and isinstance(value, str)
        out[key] = json.loads(value) if encoded else value
    return out


def count_trials(sweep: SweepSpec) -> int:
    """Trials the sweep will run: num_samples, times the size of each grid."""
    grids = [len(d.values) for d in sweep.search_space.values() if d.kind == "grid"]
    return sweep.num_samples * math.prod(grids)


# ------------------------------------------------------------------------------------------------
# Inside a trial


def _trial_event(trial_id: str, values: Mapping[str, Any], metric: str, metrics: Mapping[str, Any],
                 epochs: int) -> None:
    epoch = metrics.get("epoch")
    last = epoch is not None and epoch + 1 >= epochs
    train.emit("trial", trial=trial_id, config=dict(values), epoch=epoch, epochs=epochs, metric=metric,
               value=metrics.get(metric), status="finished" if last else "running")


class TuneSession:
    """The training loop's session inside a Tune trial: one process, rank 0 of 1, Tune's report/checkpoint.

    Implements the interface of :class:`atoll.train.TrainSession`, so :func:`atoll.train.train_loop` runs
    unchanged in a sweep.
    """

    rank = 0
    world_size = 1

    def __init__(self, datasets: Mapping[str, Any], *, trial_id: str, values: Mapping[str, Any], metric: str,
                 epochs: int) -> None:
        self._datasets = dict(datasets)
        self.trial_id, self.values, self.metric, self.epochs = trial_id, dict(values), metric, epochs

    def device(self):
        """CUDA when the trial was given a GPU (Tune sets CUDA_VISIBLE_DEVICES), else CPU."""
        import torch

        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def prepare(self, model, strategy: str):
        """One process: no DDP/FSDP wrapper, just the device (``strategy`` applies to several workers)."""
        return model.to(self.device())

    def get_checkpoint(self):
        """The trial's latest checkpoint when Tune restarts or resumes it, else None."""
        from ray import tune

        return tune.get_checkpoint()

    def dataset(self, name: str):
        """The whole (materialised) dataset: the trial is its only worker."""
        return self._datasets[name]

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Report one epoch to Tune (ASHA decides after each) with its checkpoint."""
        from ray import tune

        _trial_event(self.trial_id, self.values, self.metric, metrics, self.epochs)
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What every trial receives besides its sampled values and the datasets (via tune.with_parameters)."""

    sweep: dict[str, Any]  # SweepSpec, dumped
    base: dict[str, Any]  # the trial spec (base + per-trial resources), dumped
    preprocess: dict[str, Any]
    plan: train.ScalingPlan
    storage: str


def _event_callback(trial_id: str, values: Mapping[str, Any], metric: str, epochs: int):
    """A Ray Train callback (it runs in the nested trainer's controller) emitting the trial events."""
    from ray.train import UserCallback

    class TrialEvents(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            _trial_event(trial_id, values, metric, metrics[0], epochs)

    return TrialEvents()


def _fit_nested(loop_config: dict[str, Any], spec: TrainSpec, setup: TrialSetup, sweep: SweepSpec,
                trial_id: str, values: Mapping[str, Any], datasets: dict[str, Any]) -> None:
    """Several workers per trial: a TorchTrainer nested in the trial, reporting through Tune (Train V2).

    Only rank 0's metrics reach Tune, with the checkpoint's path in ``metrics["checkpoint_path"]``; the run
    is named after the trial, so a restarted or resumed trial continues its own run.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    # Keep the trial's best epoch by the sweep's metric: it is the one a sweep registers.
    trainer = train.build_trainer(
        setup.plan, loop_config, storage=setup.storage, run_name=loop_config["run_name"], datasets=datasets,
        callbacks=[TuneReportCallback(), _event_callback(trial_id, values, sweep.metric, spec.epochs)],
        keep=1, metric=sweep.metric, mode=sweep.mode, max_failures=spec.max_failures)
    trainer.fit()


def run_trial(sampled: dict[str, Any], *, setup: TrialSetup, train_ds, val_ds) -> None:
    """The Tune function trainable: apply the sampled values to the trial spec and run the training loop.

    Args:
        sampled: Tune's config for this trial, ``{"overrides": {dotted path: value}}``.
        setup: The sweep, trial spec, preprocessing and scaling plan (shared by all trials).
        train_ds / val_ds: The materialised datasets (shared by all trials through the object store).
    """
    from ray import tune

    sweep = SweepSpec.model_validate(setup.sweep)
    values = decode_values(sweep, sampled["overrides"])
    spec = TrainSpec.model_validate(config.apply_values(setup.base, values))
    pre = data.Preprocessor.from_dict(setup.preprocess)
    trial_id = tune.get_context().get_trial_id()
    data.quiet_progress()  # this process's Ray Data context, not the driver's
    loop_config = train.loop_config(spec, pre, f"{sweep.name}-{trial_id}", setup.plan.precision)
    datasets = {"train": train_ds, "validation": val_ds}
    if setup.plan.num_workers > 1:
        _fit_nested(loop_config, spec, setup, sweep, trial_id, values, datasets)
    else:
        session = TuneSession(datasets, trial_id=trial_id, values=values, metric=sweep.metric,
                              epochs=spec.epochs)
        train.train_loop(loop_config, session)


# ------------------------------------------------------------------------------------------------
# Results


def epoch_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch metrics, one row per epoch (a re-run epoch after a restart keeps its last report)."""
    keep = (*TRAINING_METRICS, "checkpoint_path")
    by_epoch: dict[int, dict[str, Any]] = {}
    for rec in records:
        if rec.get("epoch") is None or rec["epoch"] != rec["epoch"]:  # NaN: a row without an epoch report
            continue
        by_epoch[int(rec["epoch"])] = {**{k: rec[k] for k in keep if k in rec}, "epoch": int(rec["epoch"])}
    return [by_epoch[e] for e in sorted(by_epoch)]


def results_table(trials: list[dict[str, Any]], *, metric: str, mode: str,
                  max_t: int) -> list[dict[str, Any]]:
    """One row per trial, best first: config, epochs run, best and final metric, status.

    Args:
        trials: ``{"trial_id", "config": {path: value}, "history": [per-epoch metrics], "error": str|None}``.
        metric / mode: What the sweep optimises.
        max_t: Epochs a trial runs when nothing stops it.

    Returns:
        Rows with ``trial_id, status, epochs, best_<metric>, best_epoch, final_<metric>, config, error``;
        status is ``completed``, ``stopped early`` (ran fewer than max_t epochs) or ``error``.
    """
    sign = 1 if mode == "max" else -1
    rows = []
    for trial in trials:
        history = [h for h in trial.get("history") or [] if h.get(metric) is not None]
        best = max(history, key=lambda h: sign * h[metric]) if history else None
        epochs = len(trial.get("history") or [])
        status = "error" if trial.get("error") else "completed" if epochs >= max_t else "stopped early"
        rows.append({"trial_id": trial["trial_id"], "status": status, "epochs": epochs,
                     f"best_{metric}": best[metric] if best else None,
                     "best_epoch": best.get("epoch") if best else None,
                     f"final_{metric}": history[-1][metric] if history else None,
                     "config": dict(trial.get("config") or {}), "error": trial.get("error")})
    # Best first; trials without a value last.
    rows.sort(key=lambda r: (r[f"best_{metric}"] is None, -sign * (r[f"best_{metric}"] or 0.0)))
    return rows


def results_frame(rows: list[dict[str, Any]]):
    """The results table as a DataFrame: one column per swept field (lists as JSON text)."""
    import pandas as pd

    flat = []
    for row in rows:
        out = {k: v for k, v in row.items() if k not in ("config", "error")}
        out.update({k: v if _is_scalar(v) else json.dumps(v) for k, v in row["config"].items()})
        out["error"] = row["error"]
        flat.append(out)
    return pd.DataFrame(flat)


def sweep_summary(rows: list[dict[str, Any]], *, metric: str, top: int = 3) -> dict[str, Any]:
    """Counts and the leaders of a results table (for the ``sweep_done`` event and the return value)."""
    ok = [r for r in rows if r[f"best_{metric}"] is not None]
    return {"trials": len(rows), "trial_epochs": sum(r["epochs"] for r in rows),
            "stopped_early": sum(r["status"] == "stopped early" for r in rows),
            "errors": sum(r["status"] == "error" for r in rows),
            "best": ok[0] if ok else None, "best_metric": ok[0][f"best_{metric}"] if ok else None,
            "top": ok[:top], "statuses": {r["trial_id"]: r["status"] for r in rows}}


def _trial_record(sweep: SweepSpec, result) -> dict[str, Any]:
    """A tune.Result as a plain trial dict for :func:`results_table`."""
    frame = result.metrics_dataframe
    records = frame.to_dict("records") if frame is not None else []
    trial_id = (result.metrics or {}).get("trial_id") or Path(str(result.path)).name
    return {"trial_id": trial_id, "config": decode_values(sweep, (result.config or {}).get("overrides", {})),
            "history": epoch_history(records), "error": str(result.error) if result.error else None}


def _write_outputs(rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]], metric: str,
                   experiment: str) -> dict[str, str]:
    """results.csv, results.parquet and sweep.png next to the experiment (local folder or URI)."""
    import pyarrow.fs as pafs

    from atoll import plots

    names = {"results_csv": "results.csv", "results_parquet": "results.parquet", "plot": "sweep.png"}
    fs, folder = data._filesystem(experiment)
    fs.create_dir(folder, recursive=True)
    with tempfile.TemporaryDirectory() as tmp:
        frame = results_frame(rows)
        frame.to_csv(Path(tmp) / names["results_csv"], index=False)
        frame.to_parquet(Path(tmp) / names["results_parquet"], index=False)
        plots.sweep_curves({t: h for t, h in histories.items() if h}, metric, Path(tmp) / names["plot"])
        for name in names.values():
            pafs.copy_files(str(Path(tmp) / name), f"{folder}/{name}", destination_filesystem=fs)
    return {k: f"{experiment.rstrip('/')}/{v}" for k, v in names.items()}


# ------------------------------------------------------------------------------------------------
# The driver


def sweeps_root(storage: str) -> str:
    """Where sweeps live: ``<storage>/sweeps`` (a local folder or a URI)."""
    if "://" in storage:
        return storage.rstrip("/") + "/sweeps"
    return str(Path(storage).expanduser().resolve() / "sweeps")  # Tune wants an absolute path


def experiment_path(storage: str, name: str) -> str:
    """The Tune experiment folder of a sweep."""
    return f"{sweeps_root(storage)}/{name}"


def _check_experiment(path: str, name: str, resume: bool) -> None:
    """A new sweep never silently continues an old one; --resume needs one to resume."""
    import pyarrow.fs as pafs
    from ray import tune

    fs, local = data._filesystem(path)
    exists = fs.get_file_info(local).type != pafs.FileType.NotFound
    if exists and not resume:
        raise ConfigError(f"sweep {name!r} already exists at {path}. Continue it with --resume, or choose a "
                          f"new name (--set name=NEW).")
    if resume and not tune.Tuner.can_restore(path):
        what = "holds no Tune experiment state" if exists else "does not exist"
        raise ConfigError(f"--resume: sweep {name!r} at {path} {what}; check the name, or start it without "
                          f"--resume.")


def _best_checkpoint(result, row: dict[str, Any], sweep: SweepSpec, nested: bool):
    """(checkpoint, metrics) of a trial's best epoch."""
    from ray import tune

    if nested:
        # Tune holds no checkpoint for a nested trainer: the path came with the metrics.
        epoch = row["best_epoch"]
        frame = result.metrics_dataframe
        records = epoch_history(frame.to_dict("records")) if frame is not None else []
        metrics = next((h for h in records if h.get("epoch") == epoch and h.get("checkpoint_path")), None)
        if metrics is None:
            return None, {}
        return tune.Checkpoint(metrics["checkpoint_path"]), metrics
    pairs = [(c, m) for c, m in result.best_checkpoints or [] if m.get(sweep.metric) is not None]
    if not pairs:
        return None, {}
    pick = max if sweep.mode == "max" else min
    return pick(pairs, key=lambda cm: cm[1][sweep.metric])


def _registered_before(storage: str, name: str, lineage: dict[str, Any]):
    """The version a resumed, already finished sweep registered (so --resume does not register it twice)."""
    from atoll import registry
    from atoll.errors import RegistryError

    keys = ("sweep", "experiment_path", "trial_id", "epoch")
    try:
        versions = registry.Registry(storage).list_versions(name)
    except RegistryError:
        return None
    return next((v for v in versions if all(v.lineage.get(k) == lineage.get(k) for k in keys)), None)


def build_tuner(sweep: SweepSpec, trainable, *, storage: str, max_t: int, max_concurrent: int | None,
                max_failures: int):
    """A new ``tune.Tuner`` for the sweep: its search space, scheduler, search algorithm and storage.

    Args:
        sweep: The sweep spec.
        trainable: The function trainable, wrapped with its parameters and resources.
        storage: Storage root; the experiment goes to ``<storage>/sweeps/<name>``.
        max_t: Most epochs per trial.
        max_concurrent: Most trials at once (None: as many as fit).
        max_failures: Restarts of a failed trial from its last checkpoint.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    scheduler = None
    if sweep.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                  grace_period=sweep.scheduler.grace_period,
                                  reduction_factor=sweep.scheduler.reduction_factor)
    # The limit goes on the search algorithm itself: TuneConfig.max_concurrent_trials alone did not hold
    # back a BasicVariantGenerator (seen: 4 trials at once with max_concurrent_trials=1).
    if sweep.search.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=sweep.search.seed)
        if max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=max_concurrent)
    else:
        search_alg = BasicVariantGenerator(random_state=sweep.search.seed, max_concurrent=max_concurrent or 0)
    return tune.Tuner(
        trainable, param_space={"overrides": search_space_to_tune(sweep)},
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    max_concurrent_trials=max_concurrent, scheduler=scheduler,
                                    search_alg=search_alg),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=sweeps_root(storage),
            stop={"training_iteration": max_t},  # max_t below epochs holds under FIFO too
            # Every checkpoint of a trial is kept: Tune deletes one beyond num_to_keep as soon as a newer one
            # is registered, while the experiment state on storage may still name it; a driver killed in that
            # window leaves a trial that a resume cannot restore (seen in 2 of 4 runs of the sweep fault test).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=sweep.metric,
                                                    checkpoint_score_order=sweep.mode),
            failure_config=tune.FailureConfig(max_failures=max_failures)))


def run_sweep(sweep: SweepSpec, base: TrainSpec, *, storage: str, resume: bool = False,
              lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a sweep on the connected Ray cluster, write its results, register its best model.

    Args:
        sweep: The sweep spec.
        base: The training spec every trial starts from (``load_sweep``'s second value).
        storage: Storage root (local folder or URI): the experiment goes to ``<storage>/sweeps/<name>``.
        resume: Continue an interrupted sweep of this name (finished trials are not redone).
        lineage: Extra lineage for the registered version (job id, git commit, ...).

    Returns:
        Summary: best trial and metric, registered name/version, trial and trial-epoch counts, trials
        stopped early, top trials, and the paths of the experiment, results table and plot.

    Raises:
        ConfigError / DataError: before any trial starts.
    """
    from ray import tune

    check_sweep(sweep, base)
    experiment = experiment_path(storage, sweep.name)
    _check_experiment(experiment, sweep.name, resume)
    # Tune saves the experiment's state every 10 s or more by default; a driver that dies loses what happened
    # since, and a resume redoes it. The state of a small sweep is cheap to write every second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    addable = config.autoscaling_worker_types()
    cpus, gpus, max_cpus, max_gpus = capacity.live_capacity(addable)
    node_cpus, node_gpus = capacity.largest_live_node(addable)
    resources = check_resources(sweep, max_cpus, max_gpus, node_cpus=node_cpus, node_gpus=node_gpus,
                                use_gpu=base.use_gpu)
    spec = trial_spec(base, resources)
    plan = train.choose_scaling(spec, cluster_cpus=cpus, cluster_gpus=gpus, max_cpus=max_cpus,
                                max_gpus=max_gpus)
    dplan, pre, train_ds, val_ds = train.prepare(spec, storage)
    check_models(sweep, spec, pre.input_dim, pre.num_classes)
    # Materialise once here: trials share the blocks in the object store instead of each re-reading and
    # re-preprocessing (which would also need CPUs beyond the ones the trials hold).
    train_ds, val_ds = train_ds.materialize(), val_ds.materialize()
    max_t = sweep.scheduler.max_t or spec.epochs

    setup = TrialSetup(sweep=sweep.model_dump(mode="json"), base=spec.model_dump(mode="json"),
                       preprocess=pre.to_dict(), plan=plan, storage=storage)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup, train_ds=train_ds, val_ds=val_ds), resources.trial)
    # A nested trainer's workers are invisible to Tune's accounting: cap trials at what the cluster holds.
    concurrent = sweep.max_concurrent_trials or (resources.max_parallel if resources.nested else None)
    train.emit("sweep_start", sweep=sweep.name, experiment=experiment, trials=count_trials(sweep),
               metric=sweep.metric, mode=sweep.mode, max_t=max_t, scheduler=sweep.scheduler.type,
               algorithm=sweep.search.algorithm, resumed=resume, nested=resources.nested,
               trial_resources=resources.trial, max_concurrent=concurrent or resources.max_parallel,
               search_space={k: {d.kind: d.values} for k, d in sweep.search_space.items()},
               dataset=dplan.uri, rows=dplan.rows)

    if resume:
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        tuner = build_tuner(sweep, trainable, storage=storage, max_t=max_t, max_concurrent=concurrent,
                            max_failures=spec.max_failures)
    grid = tuner.fit()

    results = list(grid)
    trials = [_trial_record(sweep, r) for r in results]
    by_id = {t["trial_id"]: r for t, r in zip(trials, results)}
    rows = results_table(trials, metric=sweep.metric, mode=sweep.mode, max_t=max_t)
    paths = _write_outputs(rows, {t["trial_id"]: t["history"] for t in trials}, sweep.metric, experiment)
    summary = {"sweep": sweep.name, "experiment_path": experiment, "metric": sweep.metric, "mode": sweep.mode,
               "max_t": max_t, **sweep_summary(rows, metric=sweep.metric), **paths, "registered": None}
    train.emit("sweep_done", **summary)

    best = summary["best"]
    if best is None:
        return summary
    ckpt, metrics = _best_checkpoint(by_id[best["trial_id"]], best, sweep, resources.nested)
    metrics = {k: metrics[k] for k in TRAINING_METRICS if k in metrics}  # not Tune's bookkeeping keys
    if base.register_model and ckpt is not None:
        info = {"sweep": sweep.name, "trial_id": best["trial_id"], "config": best["config"],
                "experiment_path": experiment, "epoch": best["best_epoch"], "metric": sweep.metric,
                "dataset": dplan.uri, "dataset_fingerprint": dplan.fingerprint, **(lineage or {})}
        version = _registered_before(storage, base.name, info) or train.register_checkpoint(
            ckpt, metrics, storage=storage, name=base.name, lineage=info)
        summary["registered"] = {"name": version.name, "version": version.version}
        train.emit("registered", name=version.name, version=version.version,
                   metrics=version.manifest["metrics"], sweep=sweep.name, trial=best["trial_id"])
    return summary


# ------------------------------------------------------------------------------------------------
# The job: `python -m atoll.tune`, what `atoll tune` submits


def main(argv: list[str] | None = None) -> int:
    """The sweep job's driver, run ON the cluster: run the sweep, then register the best model.

    ``python -m atoll.tune -c SWEEP [--set KEY=VALUE ...] [--resume]``; what `atoll tune SWEEP` submits
    through the Jobs API. The experiment, its results table (results.csv / results.parquet) and plot (sweep.png) go
    to <storage>/sweeps/<name>; ``--resume`` continues an interrupted sweep of the same name (finished trials
    are not redone); a new sweep needs a new name (``--set name=NEW``).
    """
    parser = driver.parser("atoll.tune", "Run a hyperparameter sweep with Ray Tune and register the best "
                           "model (run on a Ray cluster; `atoll tune` submits it).", "jobs/configs/sweep.yaml",
                           "override a field of the sweep (overrides.KEY=VALUE changes the training spec)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this name")
    args = parser.parse_args(argv)
    return driver.run(lambda: _sweep_job(args.config, args.set, args.resume))


def _sweep_job(sweep_path: str, overrides: list[str], resume: bool) -> int:
    sweep, base = load_sweep(sweep_path, overrides)
    storage = config.load_spec().atoll.storage
    print("resolved sweep:", json.dumps(sweep.model_dump(mode="json", exclude_none=True)), flush=True)
    print("resolved training spec:", json.dumps(base.model_dump(mode="json")), flush=True)
    driver.connect()
    summary = run_sweep(sweep, base, storage=storage, resume=resume, lineage=driver.lineage())
    if summary["best"] is None:
        print(f"error: no trial reported a metric; see the trial errors in {summary['results_csv']}",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(driver.main_of("atoll.tune"))
