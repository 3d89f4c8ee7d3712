"""Tasks: the kind of problem a model solves, and everything that follows from it.

A training spec names its ``task``; one class per task decides how the dataset's columns are checked and
preprocessed (fitted on the training split only), what a batch becomes as tensors, the loss and the
metrics, the input schema recorded with the version, how a request is parsed and how the answer looks.
Training, sweeps, the registry, serving and the playground ask the task rather than assume one kind.

This module is the catalogue only (names → where the class lives), so the pure spec layer can check a
task's name without importing numpy, torch or Ray. Adding a task is one module and one line here.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atoll.tasks.base import Task

DEFAULT_TASK = "tabular-classification"

#: task name → "module:class"
CATALOGUE = {
    "tabular-classification": "atoll.tasks.tabular:TabularClassification",
    "tabular-regression": "atoll.tasks.tabular:TabularRegression",
    "text-classification": "atoll.tasks.text:TextClassification",
    "image-classification": "atoll.tasks.image:ImageClassification",
    "text-generation": "atoll.tasks.generation:TextGeneration",
}
TASK_NAMES = tuple(CATALOGUE)


def unknown_task_message(name: str) -> str:
    close = difflib.get_close_matches(name, TASK_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown task {name!r}{hint}; set task: to one of {', '.join(TASK_NAMES)}"


def get(name: str | None) -> Task:
    """The task called ``name`` (default: tabular classification).

    Raises:
        ConfigError: no task has that name (the message lists them).
    """
    from atoll.errors import ConfigError

    target = CATALOGUE.get(name or DEFAULT_TASK)
    if target is None:
        raise ConfigError(unknown_task_message(str(name)) + ".")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()


def all_tasks() -> list[Task]:
    """One instance of every task in the catalogue."""
    return [get(name) for name in TASK_NAMES]
