"""What every classifier shares, whatever its inputs: cross-entropy, accuracy and macro-F1, and answers as
class labels with their probabilities."""

from __future__ import annotations

import numpy as np

from atoll.tasks.base import Task


class Classifier(Task):
    output_kind = "labels"
    metric_names = ("loss", "accuracy", "f1")
    minimized = ("loss",)
    objective = ("val_accuracy", "max")
    target_dtype = "int64"

    def out_dim(self, state) -> int:
        return len(state.classes)

    def loss(self, outputs, target):
        import torch.nn.functional as F

        return F.cross_entropy(outputs.float(), target)

    def batch_sums(self, outputs, target, loss, state):
        """[loss·n, n, correct, per class: true positives, predicted, actual] (macro-F1 needs all three)."""
        import torch

        c = len(state.classes)
        predicted = outputs.argmax(1)
        n = float(target.shape[0])
        head = torch.stack([loss.detach().double() * n, torch.tensor(n, dtype=torch.float64, device=target.device),
                            (predicted == target).sum().double()])
        tp = torch.bincount(target[predicted == target], minlength=c).double()
        return torch.cat([head, tp, torch.bincount(predicted, minlength=c).double(),
                          torch.bincount(target, minlength=c).double()])

    def metrics(self, sums: list[float], state) -> dict[str, float]:
        c = len(state.classes)
        loss, n, correct = sums[:3]
        tp, predicted, actual = (np.asarray(sums[3 + i * c: 3 + (i + 1) * c]) for i in range(3))
        present = (predicted + actual) > 0  # a class absent from both counts in no average
        f1 = (2 * tp[present] / (predicted[present] + actual[present])).mean() if present.any() else 0.0
        return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1), "f1": float(f1)}

    def answer_arrays(self, outputs: np.ndarray, state) -> tuple[np.ndarray, np.ndarray]:
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        return np.asarray(state.classes)[probs.argmax(axis=1)], probs.astype(np.float64).round(6)
