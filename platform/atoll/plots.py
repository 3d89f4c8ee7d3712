"""Pictures people would rather look at than read: training curves and sweep results (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _figure(**kwargs):
    """A figure drawn and saved without pyplot: no global backend to switch, so a driver may draw while
    another thread imports matplotlib (the export warm-up does), and no display is needed on a node."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def training_curve(history: list[dict[str, Any]], path: str | Path, title: str = "") -> str:
    """Loss and the task's first figure after it (accuracy, or RMSE for a regressor) per epoch, train vs
    validation, side by side."""
    epochs = [h["epoch"] for h in history]
    # The first val_ figure after the loss that has a train_ twin: what the task reports (progress order).
    figure = next((k.removeprefix("val_") for k in history[-1] if k.startswith("val_") and k != "val_loss"
                   and f"train_{k.removeprefix('val_')}" in history[-1]), None)
    fig = _figure(figsize=(9 if figure else 4.8, 3.4))
    axes = fig.subplots(1, 2 if figure else 1, squeeze=False)
    panels = [("loss", axes[0][0])] + ([(figure, axes[0][1])] if figure else [])
    for name, ax in panels:
        for key, style in (("train", "-"), ("val", "--")):
            ax.plot(epochs, [h.get(f"{key}_{name}") for h in history], style, marker="o", label=key)
        ax.set(xlabel="epoch", ylabel=name, title=name)
        if name in ("accuracy", "f1"):
            ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def sweep_curves(trials: dict[str, list[dict[str, Any]]], metric: str, path: str | Path, title: str = "") -> str:
    """``metric`` per epoch for every trial of a sweep; trials stopped early end early."""
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    for trial, history in sorted(trials.items()):
        ax.plot([h["epoch"] for h in history], [h[metric] for h in history], marker="o", ms=3, label=trial)
    ax.set(xlabel="epoch", ylabel=metric, title=title or f"{metric} per epoch, all trials")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)
