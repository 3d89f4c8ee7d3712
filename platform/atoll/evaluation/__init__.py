"""Evaluating a registered version on labelled data: ``atoll models evaluate NAME:V --data PATH``.

A Ray job (``python -m atoll.evaluation``) runs the version over the data with batch prediction's own machinery
(:func:`atoll.batch.run`: Ray Data and an actor pool of :class:`~atoll.batch.Scorer`), then compares the
predictions with the label column the version was trained on (its ``input_schema["label"]``) and computes the
task's metrics with numpy: accuracy and macro-F1 (and per class: rows, predicted, correct) for a classifier; RMSE,
MAE and R² in the target's own units for regression. The record (dataset as given and resolved, its
:func:`atoll.data.fingerprint`, rows, metrics, time, job id) is stored beside the version by
:meth:`atoll.registry.Registry.add_evaluation`; the version's sealed manifest is never touched.

Language models (``text-generation``) are not evaluated yet: refused with one line before any job starts.

What is wrong with a request (an unknown version, missing data, no label column, a column of the wrong type) is
refused by :func:`check` with one line, on the client before anything is submitted and again in the job. The
promotion gate that reads these records is :mod:`atoll.evaluation.gate`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from atoll import data
from atoll.errors import AtollError, DataError
from atoll.specs import EVALUATED_METRICS

if TYPE_CHECKING:
    from atoll.registry import ModelVersion, Registry


class EvaluationError(AtollError):
    """A version that cannot be evaluated or judged (a language model, no evaluation to compare)."""


def task_of(version: ModelVersion) -> str:
    """The task a version solves (older manifests name it in the input schema only)."""
    return str(version.spec.get("task") or (version.input_schema or {}).get("task") or "tabular-classification")


def check_task(version: ModelVersion) -> str:
    """The version's task, when it is one that is evaluated.

    Raises:
        EvaluationError: a language model (naming what to do instead).
    """
    task = task_of(version)
    if task not in EVALUATED_METRICS:
        raise EvaluationError(f"{version.ref} is a {task} model: evaluation of language models is not supported "
                              f"yet (its training run reports val_perplexity; `atoll predict` writes completions).")
    return task


# -- metrics ----------------------------------------------------------------------------------------


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """(accuracy and macro-F1, per class ``{rows, predicted, correct}``) of predicted against true labels.

    Macro-F1 averages over every class that occurs among the labels or the predictions, as training's ``val_f1``
    and scikit-learn's ``f1_score(average="macro")`` do.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if len(labels) != len(predictions) or not len(labels):
        raise DataError(f"no labelled rows to score ({len(labels)} labels, {len(predictions)} predictions).")
    correct = labels == predictions
    classes, index = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true_i, pred_i = index[:len(labels)], index[len(labels):]
    rows = np.bincount(true_i, minlength=len(classes))
    predicted = np.bincount(pred_i, minlength=len(classes))
    hits = np.bincount(true_i[correct], minlength=len(classes))
    f1 = 2 * hits / np.maximum(rows + predicted, 1)
    per_class = {str(c.item() if hasattr(c, "item") else c): {"rows": int(r), "predicted": int(p), "correct": int(h)}
                 for c, r, p, h in zip(classes, rows, predicted, hits, strict=True)}
    return {"accuracy": float(correct.mean()), "f1": float(f1.mean())}, per_class


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² (1 - SSE/SST; 0 when the labels do not vary) in the target's own units."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    if len(y) != len(p) or not len(y):
        raise DataError(f"no labelled rows to score ({len(y)} labels, {len(p)} predictions).")
    err = p - y
    sse, sst = float(err @ err), float(((y - y.mean()) ** 2).sum())
    return {"rmse": float(np.sqrt(sse / len(y))), "mae": float(np.abs(err).mean()),
            "r2": 1.0 - sse / sst if sst > 0 else 0.0}


def score(task: str, labels: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
    """The task's metrics (:data:`atoll.specs.EVALUATED_METRICS`) as ``{"metrics": …}``, for a classifier with
    ``per_class`` too."""
    if task == "tabular-regression":
        return {"metrics": regression_metrics(labels, predictions)}
    metrics, per_class = classification_metrics(labels, predictions)
    return {"metrics": metrics, "per_class": per_class}


def labelled(table) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, predictions, rows left out) from an Arrow table of the label column and ``prediction``: a row
    whose label is null or NaN is left out, as training leaves it out."""
    import pyarrow as pa
    import pyarrow.compute as pc

    label = table.column(0)
    keep = pc.is_valid(label)
    if pa.types.is_floating(label.type):
        keep = pc.and_(keep, pc.invert(pc.is_nan(label)))
    kept = table.filter(pc.fill_null(keep, False))
    return (kept.column(0).to_numpy(zero_copy_only=False), kept.column(1).to_numpy(zero_copy_only=False),
            table.num_rows - kept.num_rows)


# -- the request ------------------------------------------------------------------------------------


def _label_kinds(task: str, schema: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """The Arrow type prefixes the label column may have, and how to say it."""
    if task == "tabular-regression":
        return data.NUMERIC_PREFIXES, "numbers (the values the model predicts)"
    classes = schema.get("classes") or []
    if classes and all(isinstance(c, str) for c in classes):
        return (*data.STRING_PREFIXES, "dictionary<values=string", "dictionary<values=large_string"), \
            f"words (classes such as {classes[0]!r})"
    return data.NUMERIC_PREFIXES, f"numbers (classes such as {classes[0] if classes else 0!r})"


def check(version: ModelVersion, data_uri: str, shown: str | None = None) -> dict[str, Any]:
    """What :func:`atoll.batch.check` says of the data (format, rows, kept columns, footers) plus ``label``, after
    checking that the version is evaluated and the data holds its inputs and its label column with the right types.

    Args:
        shown: The path as the user gave it, for messages (default ``data_uri``).

    Raises:
        EvaluationError: a language model. DataError: missing data, no label column, a column of the wrong type
            (one line: the column, what it must be).
    """
    from atoll import batch

    task = check_task(version)
    shown = shown or data_uri
    schema = version.input_schema or {}
    label = schema.get("label")
    if not label:
        raise DataError(f"{version.ref} records no label column (input_schema.label), so its predictions cannot be "
                        f"scored; register it again from a checkpoint made by `atoll train`.")
    try:
        checked = batch.check(schema, data_uri, None)
    except DataError as exc:  # batch prediction names its option --input; here it is --data
        message = str(exc).replace(f"--input {data_uri}", f"--data {shown}", 1)
        raise DataError(message.replace("--input", "--data")) from None
    columns, _ = data.read_schema(data_uri, checked["format"])
    if label not in columns:
        raise DataError(f"--data {shown}: no label column {label!r} (what {version.ref} was trained to predict); its "
                        f"columns are {', '.join(list(columns)[:8])}. Add the true {label!r} of every row.")
    prefixes, what = _label_kinds(task, schema)
    if not columns[label].startswith(prefixes):
        raise DataError(f"--data {shown}: label column {label!r} is {columns[label]}; for {version.ref} it must hold "
                        f"{what}.")
    return {**checked, "label": label, "task": task}


# -- the job ----------------------------------------------------------------------------------------


def run(ref: str, data_uri: str, *, storage: str, shown: str | None = None, runtime: str = "auto",
        job_id: str | None = None, on_progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """Evaluate version ``ref`` on ``data_uri`` on the connected cluster and store the record (what the job runs).

    Returns:
        The stored record (:meth:`atoll.registry.Registry.add_evaluation`).

    Raises:
        RegistryError / DataError / EvaluationError: before any work starts.
    """
    import os
    import tempfile
    import time

    import pyarrow.parquet as pq

    from atoll import batch, registry

    reg = registry.Registry(storage)
    version = reg.get(ref)
    checked = check(version, data_uri, shown)
    started = time.time()
    fingerprint = data.fingerprint(data_uri)
    with tempfile.TemporaryDirectory(prefix="atoll-evaluate-") as folder:
        predicted = batch.run(version.ref, data_uri, os.path.join(folder, "predictions.parquet"), storage=storage,
                              runtime=runtime, on_progress=on_progress)
        table = pq.read_table(os.path.join(folder, "predictions.parquet"), columns=[checked["label"], "prediction"])
    labels, predictions, unlabelled = labelled(table)
    if not len(labels):
        raise DataError(f"--data {shown or data_uri}: no row has a label in {checked['label']!r}; nothing to score.")
    scored = score(checked["task"], labels, predictions)
    record = {"task": checked["task"], "label": checked["label"],
              "dataset": {"path": shown or data_uri, "uri": data_uri, "fingerprint": fingerprint,
                          "format": checked["format"]},
              "rows": int(len(labels)), "unlabelled": unlabelled, **scored, "job": job_id,
              "runtime": predicted["runtime"], "seconds": round(time.time() - started, 2)}
    return reg.add_evaluation(version.name, version.version, record)


# -- reading records --------------------------------------------------------------------------------


def latest_on(reg: Registry, version: ModelVersion, fingerprint: str) -> dict[str, Any] | None:
    """The newest evaluation of ``version`` on the data of that fingerprint, or None."""
    found = [r for r in reg.evaluations(version.name, version.version)
             if (r.get("dataset") or {}).get("fingerprint") == fingerprint]
    return found[-1] if found else None


def summary(record: dict[str, Any], digits: int = 4) -> str:
    """``accuracy 0.9611  f1 0.9598`` for a record's metrics."""
    return "  ".join(f"{k} {v:.{digits}f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in (record.get("metrics") or {}).items())
