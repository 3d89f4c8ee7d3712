"""The interface every task implements, and what the stages may ask of it.

A task holds no network (the model builder makes that) and no data: its fitted state is a plain,
JSON-able object (``state_to_dict`` / ``state_from_dict``) saved with every checkpoint and version, so a
replica rebuilds the task's view of a request from data alone, never by unpickling or importing.

The training loop sums per-batch figures (:meth:`Task.batch_sums`) into one float64 vector that every rank
all-reduces, then :meth:`Task.metrics` turns the sums into the figures it reports: global metrics, not
rank 0's shard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np


class Task(ABC):
    name: ClassVar[str]
    #: what the playground asks for: "table" (a form of numbers), "image" or "text"
    input_kind: ClassVar[str]
    #: what an answer holds: "labels" (classes and their probabilities) or "number" (a predicted value)
    output_kind: ClassVar[str]
    #: reported per split as train_<m> and val_<m>, every epoch
    metric_names: ClassVar[tuple[str, ...]]
    #: of those, the ones where lower is better
    minimized: ClassVar[tuple[str, ...]]
    #: (metric, mode) a run keeps its best checkpoints by, and a sweep optimises unless told otherwise
    objective: ClassVar[tuple[str, str]]
    #: the dtype of a batch's target tensor ("int64" class indices, "float32" values)
    target_dtype: ClassVar[str]

    # ---- what every run reports
    def reported_metrics(self) -> tuple[str, ...]:
        """Every figure an epoch reports: what a sweep may optimise."""
        per_split = tuple(f"{split}_{m}" for split in ("train", "val") for m in self.metric_names)
        return (*per_split, "epoch", "train_samples", "epoch_time_s", "samples_per_s")

    def mode_of(self, metric: str) -> str:
        bare = metric.removeprefix("train_").removeprefix("val_")
        return "min" if bare in self.minimized or metric == "epoch_time_s" else "max"

    # ---- the data, on the driver (before any worker starts)
    @abstractmethod
    def plan(self, uri: str, fmt: str, features: list[str] | None, label: str):
        """Check the dataset's columns for this task; a :class:`atoll.data.DatasetPlan`.

        Raises:
            DataError: naming the column and the fix.
        """

    @abstractmethod
    def fit(self, train_ds, plan):
        """The fitted preprocessing state, from the training split only (one streaming pass)."""

    @abstractmethod
    def state_from_dict(self, data: dict[str, Any]):
        """The state :meth:`fit` returned, rebuilt from its ``to_dict()``."""

    @abstractmethod
    def out_dim(self, state) -> int:
        """Width of the model's output: the number of classes, or 1 for a value."""

    # ---- the training step, on a worker
    @abstractmethod
    def loss(self, outputs, target):
        """The mean loss of a batch (outputs: the model's raw output; target: as the transform made it)."""

    @abstractmethod
    def batch_sums(self, outputs, target, loss, state):
        """A float64 vector of sums over the batch (same length every batch) for :meth:`metrics`."""

    @abstractmethod
    def metrics(self, sums: list[float], state) -> dict[str, float]:
        """The figures of :attr:`metric_names` from the summed vectors of every batch and rank."""

    # ---- the registry and serving
    @abstractmethod
    def input_schema(self, state, model_spec: dict[str, Any]) -> dict[str, Any]:
        """What a request must hold, recorded with the version (the task's name included)."""

    @abstractmethod
    def answer(self, outputs: np.ndarray, state) -> tuple[list[Any], list[list[float]] | None]:
        """(one prediction per row, the class probabilities per row or None) from raw model outputs."""
