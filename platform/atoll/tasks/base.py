"""The interface every task implements, and what the stages may ask of it.

A task holds no network (the model builder makes that) and no data: its fitted state is a plain,
JSON-able object (``state_to_dict`` / ``state_from_dict``) saved with every checkpoint and version, so a
replica rebuilds the task's view of a request from data alone, never by unpickling or importing.

The training loop sums figures over chunks of batches (:meth:`Task.batch_sums`) into one float64 vector
that every rank all-reduces, then :meth:`Task.metrics` turns the sums into the figures it reports: global
metrics, not rank 0's shard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

#: The names of :data:`atoll.models.BUILTIN`, here without importing torch (a test keeps the two equal), and
#: gradient-boosted trees (``xgboost``: :mod:`atoll.trees`, not a torch module).
BUILTIN_MODELS = ("mlp", "cnn", "hf-bert", "xgboost", "hf-causal-lm")


def not_a_local_folder(directory: str | None):
    """The error for ``model.params.pretrained`` naming no local folder (a hub id is never downloaded)."""
    from atoll.errors import ConfigError

    return ConfigError(f"model.params.pretrained: {directory!r} is not a local directory; name a folder holding "
                       f"config.json, the weights and tokenizer.json (Atoll never downloads a hub id).")


def pretrained_folder(directory: str):
    """``model.params.pretrained`` as a local folder holding ``config.json`` and a fast tokenizer (``tokenizer.json``).

    Raises:
        ConfigError: not a folder, or a file missing (saying how to write them).
    """
    from pathlib import Path

    from atoll.errors import ConfigError

    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise not_a_local_folder(directory)
    missing = [f for f in ("config.json", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"model.params.pretrained: {directory} has no {' or '.join(missing)}; save the model and "
                          f"its fast tokenizer there with save_pretrained().")
    return folder


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
    #: the dtype of the model's input tensor ("float32" features, "int64" token ids)
    input_dtype: ClassVar[str] = "float32"
    #: a request body to show in error messages
    request_example: ClassVar[str]
    #: the model.params the preprocessing is fitted with (once per sweep, for every trial): not for a sweep to vary
    fitted_params: ClassVar[tuple[str, ...]] = ()
    #: the built-in model types made for this task's inputs (user types by import path are the user's call)
    builtin_models: ClassVar[tuple[str, ...]] = ("mlp", "cnn")
    #: rows read and answered together in batch prediction (``atoll predict --batch-size``; the model itself sees
    #: at most :attr:`atoll.serving.predictor.Predictor.RUN_ROWS` at a time): texts and images cost the model far
    #: more per row than a table's row, so the same work per batch is fewer rows
    batch_rows: ClassVar[int] = 4096
    #: batches whose outputs the training loop holds before it sums their figures (:class:`atoll.train.loop.EpochFigures`)
    sums_every: ClassVar[int] = 64
    #: what a training sample is: a row, or a token (a language model's ``samples_per_s`` is tokens per second)
    sample_unit: ClassVar[str] = "rows"

    # ---- what every run reports
    def reported_metrics(self) -> tuple[str, ...]:
        """Every figure an epoch reports: what a sweep may optimise."""
        per_split = tuple(f"{split}_{m}" for split in ("train", "val") for m in self.metric_names)
        speed = ("tokens_per_s",) if self.sample_unit == "tokens" else ()
        return (*per_split, "epoch", "train_samples", "epoch_time_s", "samples_per_s", *speed)

    def mode_of(self, metric: str) -> str:
        bare = metric.removeprefix("train_").removeprefix("val_")
        return "min" if bare in self.minimized or metric == "epoch_time_s" else "max"

    def check_model(self, model_type: str) -> None:
        """A built-in model made for other inputs is refused (a user type by import path is not checked).

        Raises:
            ConfigError: naming model.type and the models this task takes.
        """
        from atoll.errors import ConfigError

        if model_type in BUILTIN_MODELS and model_type not in self.builtin_models:
            raise ConfigError(f"model.type: {model_type} does not take a {self.name} task's inputs "
                              f"({self.input_kind}); use {' or '.join(self.builtin_models)}, or your own model "
                              f"(mypkg.models:build).")

    # ---- the data, on the driver (before any worker starts)
    @abstractmethod
    def plan(self, uri: str, fmt: str, features: list[str] | None, label: str,
             overrides: dict[str, list[str] | None] | None = None):
        """Check the dataset's columns for this task; a :class:`atoll.data.DatasetPlan`. ``overrides``: a table's
        ``dataset.categorical``, ``dataset.numeric`` and ``dataset.exclude`` (keyword arguments of
        :func:`atoll.data.plan`; other tasks take none).

        Raises:
            DataError: naming the column and the fix.
        """

    @abstractmethod
    def fit(self, train_ds, plan, model_params: dict[str, Any] | None = None):
        """The fitted preprocessing state, from the training split only (``model_params``: the spec's
        ``model.params``, for what the model and its inputs must agree on, e.g. a text's max length)."""

    @abstractmethod
    def state_from_dict(self, data: dict[str, Any]):
        """The state :meth:`fit` returned, rebuilt from its ``to_dict()``."""

    def row_bytes(self, state) -> int:
        """The bytes one row takes as the model's input and target (whether the data fits in memory)."""
        return 4 * (state.input_dim + 1)

    def model_params(self, state, params: dict[str, Any] | None) -> dict[str, Any]:
        """The keyword arguments the model builder gets besides ``input_dim`` and ``num_classes``: the spec's
        ``model.params``, and what the fitted state adds (an image task's ``image_shape``)."""
        return dict(params or {})

    @abstractmethod
    def out_dim(self, state) -> int:
        """Width of the model's output: the number of classes, or 1 for a value."""

    # ---- the training step, on a worker
    @abstractmethod
    def loss(self, outputs, target):
        """The mean loss of a batch (outputs: the model's raw output; target: as the transform made it)."""

    @abstractmethod
    def batch_sums(self, outputs, target, loss, state):
        """A float64 vector of sums over the rows (same length every call) for :meth:`metrics`.

        Every figure must add over rows: the loop calls it on many batches at once (``loss`` then their
        row-weighted mean loss) and adds the vectors of chunks and ranks.
        """

    @abstractmethod
    def metrics(self, sums: list[float], state) -> dict[str, float]:
        """The figures of :attr:`metric_names` from the summed vectors of every batch and rank."""

    # ---- the registry and serving
    @abstractmethod
    def input_schema(self, state, model_spec: dict[str, Any]) -> dict[str, Any]:
        """What a request must hold, recorded with the version (the task's name included)."""

    @abstractmethod
    def answer_arrays(self, outputs: np.ndarray, state) -> tuple[np.ndarray, np.ndarray | None]:
        """(one prediction per row ``[n]``, the class probabilities ``[n, classes]`` float64 or None) from raw
        model outputs, rounded to 6 decimals: what batch prediction writes as columns."""

    def answer(self, outputs: np.ndarray, state) -> tuple[list[Any], list[list[float]] | None]:
        """:meth:`answer_arrays` as plain lists (a JSON answer)."""
        predictions, probabilities = self.answer_arrays(outputs, state)
        return predictions.tolist(), None if probabilities is None else probabilities.tolist()

    @abstractmethod
    def parse_inputs(self, payload: Any, schema: dict[str, Any], *, max_request_pixels: int | None = None) -> Any:
        """A decoded ``/predict`` body's inputs, checked against the version's schema. ``max_request_pixels``:
        the most pixels a request's images may hold together (image tasks; None: no cap per request).

        Raises:
            RequestError: 422, naming the field (``inputs.3``) and what it must be; 413 past a limit.
        """

    @abstractmethod
    def frame_inputs(self, frame, schema: dict[str, Any]) -> Any:
        """A pandas batch of a dataset to predict as parsed inputs (what :meth:`parse_inputs` returns)."""

    @abstractmethod
    def encode(self, inputs: Any, state) -> np.ndarray:
        """Parsed inputs as the model's input array (what the training transform makes of a batch)."""

    def encode_with_notes(self, inputs: Any, state) -> tuple[np.ndarray, dict[str, Any]]:
        """:meth:`encode`, and the extra fields of an answer about the inputs (e.g. which texts were
        truncated) from that same encoding; none by default."""
        return self.encode(inputs, state), {}

    @abstractmethod
    def request_schema(self, schema: dict[str, Any], max_rows: int) -> dict[str, Any]:
        """The JSON Schema of a ``/predict`` body for this version (its OpenAPI document)."""
