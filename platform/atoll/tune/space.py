"""The sweep spec and its search space: what a sweep file says, validated, and that search space in Ray Tune's
terms.

Pure data: the pydantic models of a sweep file (:class:`SweepSpec` and its sections, :class:`Distribution`),
the metrics a sweep can optimise, and the conversion of the search space to Tune's sample objects and back
(:func:`search_space_to_tune`, :func:`decode_values`). Every other module of the package builds on these;
this one imports none of them, and Ray only inside :func:`search_space_to_tune`.
"""

from __future__ import annotations

import difflib
import json
import math
import random
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from atoll import tasks
from atoll.specs import NAME_PATTERN, Strict

#: What :func:`atoll.train.train_loop` reports every epoch, for some task: the metrics a sweep can optimise
#: (which of them a given training spec reports is its task's to say: :func:`atoll.tune.checks.check_sweep`).
TRAINING_METRICS = tuple(dict.fromkeys(m for task in tasks.all_tasks() for m in task.reported_metrics()))
_MINIMIZED = tuple(m for m in TRAINING_METRICS if any(task.mode_of(m) == "min" for task in tasks.all_tasks()
                                                       if m in task.reported_metrics()))
#: Metrics with a direction: optimising them the other way would pick the worst trial.
_DIRECTED = tuple(m for m in TRAINING_METRICS if m.startswith(("train_", "val_")))
KINDS = ("uniform", "loguniform", "randint", "choice", "grid")


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

    type: Literal["asha", "successive_halving", "hyperband", "fifo"] = Field(
        "asha", description="asha: stop the worst trials at each rung as their results arrive (asynchronous: "
        "whoever reaches a rung first may be promoted, so the epochs spent depend on the order trials ran); "
        "successive_halving: one synchronous bracket, a rung decides once every trial has reached it (trials "
        "pause meanwhile and resume from their checkpoint), so the epochs spent follow from num_samples alone; "
        "hyperband: Ray's HyperBand, several synchronous brackets from least to most aggressive; fifo: run every "
        "trial to max_t. The synchronous ones create every trial at once: max_concurrent_trials does not apply, "
        "the cluster's CPUs bound how many run.")
    grace_period: int = Field(1, ge=1, description="Epochs every trial runs before it may be stopped: the first "
                              "rung (asha and successive_halving; hyperband's first rung is "
                              "max_t / reduction_factor^brackets).")
    reduction_factor: float = Field(2, gt=1, description="Each rung keeps the best 1/reduction_factor of the "
                                    "trials at each rung.")
    max_t: int | None = Field(None, ge=1, description="Most epochs a trial runs (default: the train spec's "
                              "epochs; at most that).")

    @property
    def synchronous(self) -> bool:
        """Whether a rung waits for every trial (which must then all exist at once)."""
        return self.type in ("successive_halving", "hyperband")


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
        wrong = None
        if self.metric in _DIRECTED:
            wrong = "max" if self.metric in _MINIMIZED else "min"
        if self.mode == wrong:
            right = "min" if wrong == "max" else "max"
            raise ValueError(f"mode: {wrong} on {self.metric} would pick the worst trial; set mode: {right} "
                             f"(or leave mode out)")
        return self


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

