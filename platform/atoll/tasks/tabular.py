"""Rows of numeric features in: one class out (``tabular-classification``) or one value (``tabular-regression``).

Both standardise the features with means and spreads fitted on the training split
(:class:`atoll.data.Preprocessor`); regression standardises its target too and answers in the target's
own units. Classification reports loss, accuracy and macro-F1; regression loss (MSE of the standardised
target), RMSE, MAE and R², all in the target's units.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from atoll import data
from atoll.tasks.base import Task


def _input_schema(task: Task, pre: data.Preprocessor, model_spec: dict[str, Any]) -> dict[str, Any]:
    shape = (model_spec.get("params") or {}).get("image_shape")
    if shape is None and model_spec.get("type") == "cnn":
        side = math.isqrt(pre.input_dim)
        shape = [1, side, side]
    return {"task": task.name, "input_kind": task.input_kind, "output_kind": task.output_kind,
            "features": pre.features, "num_features": pre.input_dim, "dtype": "float32",
            "image_shape": shape, "classes": pre.classes, "label": pre.label}


class _Tabular(Task):
    input_kind = "table"

    def state_from_dict(self, state: dict[str, Any]) -> data.Preprocessor:
        return data.Preprocessor.from_dict(state)

    def input_schema(self, state: data.Preprocessor, model_spec: dict[str, Any]) -> dict[str, Any]:
        return _input_schema(self, state, model_spec)


class TabularClassification(_Tabular):
    name = "tabular-classification"
    output_kind = "labels"
    metric_names = ("loss", "accuracy", "f1")
    minimized = ("loss",)
    objective = ("val_accuracy", "max")
    target_dtype = "int64"

    def plan(self, uri, fmt, features, label):
        return data.plan(uri, fmt, features, label)

    def fit(self, train_ds, plan) -> data.Preprocessor:
        return data.fit_preprocessor(train_ds, plan)

    def out_dim(self, state: data.Preprocessor) -> int:
        return state.num_classes

    def loss(self, outputs, target):
        import torch.nn.functional as F

        return F.cross_entropy(outputs.float(), target)

    def batch_sums(self, outputs, target, loss, state):
        """[loss·n, n, correct, per class: true positives, predicted, actual] (macro-F1 needs all three)."""
        import torch

        c = state.num_classes
        predicted = outputs.argmax(1)
        n = float(target.shape[0])
        head = torch.stack([loss.detach().double() * n, torch.tensor(n, dtype=torch.float64, device=target.device),
                            (predicted == target).sum().double()])
        tp = torch.bincount(target[predicted == target], minlength=c).double()
        return torch.cat([head, tp, torch.bincount(predicted, minlength=c).double(),
                          torch.bincount(target, minlength=c).double()])

    def metrics(self, sums: list[float], state) -> dict[str, float]:
        c = state.num_classes
        loss, n, correct = sums[:3]
        tp, predicted, actual = (np.asarray(sums[3 + i * c: 3 + (i + 1) * c]) for i in range(3))
        present = (predicted + actual) > 0  # a class absent from both counts in no average
        f1 = (2 * tp[present] / (predicted[present] + actual[present])).mean() if present.any() else 0.0
        return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1), "f1": float(f1)}

    def answer(self, outputs: np.ndarray, state) -> tuple[list[Any], list[list[float]]]:
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        return [state.classes[i] for i in probs.argmax(axis=1)], probs.astype(np.float64).round(6).tolist()


class TabularRegression(_Tabular):
    name = "tabular-regression"
    output_kind = "number"
    metric_names = ("loss", "rmse", "mae", "r2")
    minimized = ("loss", "rmse", "mae")
    objective = ("val_rmse", "min")
    target_dtype = "float32"

    def plan(self, uri, fmt, features, label):
        return data.plan(uri, fmt, features, label, numeric_label=True)

    def fit(self, train_ds, plan) -> data.Preprocessor:
        return data.fit_preprocessor(train_ds, plan, regression=True)

    def out_dim(self, state) -> int:
        return 1

    def loss(self, outputs, target):
        import torch.nn.functional as F

        return F.mse_loss(outputs.float().reshape(-1), target.float())

    def batch_sums(self, outputs, target, loss, state):
        """[loss·n, n, squared error, absolute error, Σy, Σy²], errors and y in the target's own units."""
        import torch

        std, mean = state.target_std, state.target_mean
        predicted = outputs.detach().double().reshape(-1) * std + mean
        actual = target.double() * std + mean
        err = predicted - actual
        n = float(target.shape[0])
        return torch.stack([loss.detach().double() * n, torch.tensor(n, dtype=torch.float64, device=target.device),
                            (err * err).sum(), err.abs().sum(), actual.sum(), (actual * actual).sum()])

    def metrics(self, sums: list[float], state) -> dict[str, float]:
        loss, n, sse, sae, y_sum, y_sumsq = sums
        n = max(n, 1)
        sst = y_sumsq - y_sum * y_sum / n
        return {"loss": loss / n, "rmse": math.sqrt(sse / n), "mae": sae / n,
                "r2": 1.0 - sse / sst if sst > 0 else 0.0}

    def answer(self, outputs: np.ndarray, state) -> tuple[list[float], None]:
        values = outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64) * state.target_std + state.target_mean
        return values.round(6).tolist(), None
