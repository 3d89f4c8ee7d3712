"""Pictures people would rather look at than read: training curves and sweep results (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def training_curve(history: list[dict[str, Any]], path: str | Path, title: str = "") -> str:
    """Loss and accuracy per epoch (train vs validation) side by side."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(epochs, [h[f"{key}_loss"] for h in history], style, marker="o", label=key)
        ax_acc.plot(epochs, [h[f"{key}_accuracy"] for h in history], style, marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(_integer_ticks())
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def sweep_curves(trials: dict[str, list[dict[str, Any]]], metric: str, path: str | Path, title: str = "") -> str:
    """``metric`` per epoch for every trial of a sweep; trials stopped early end early."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for trial, history in sorted(trials.items()):
        ax.plot([h["epoch"] for h in history], [h[metric] for h in history], marker="o", ms=3, label=trial)
    ax.set(xlabel="epoch", ylabel=metric, title=title or f"{metric} per epoch, all trials")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
