"""Live views of Atoll's jobs, rendered from their progress events: a training progress bar, a sweep's
trial table, and the summaries printed at the end. Used by `atoll train`, `atoll tune` and the quickstart
(the library: it imports nothing of the CLI)."""

from __future__ import annotations

import json
from typing import Any

from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from atoll import jobs
from atoll.console import console, err_console


class TrainProgress:
    """Renders a training job's progress events (epoch, loss, accuracy) as a live rich progress bar."""

    def __init__(self, progress) -> None:
        self.progress, self.task = progress, None

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev["event"] == "start":
            self.progress.console.print(
                f"Training on {ev['workers']} {'GPU' if ev['use_gpu'] else 'CPU'} workers ({ev['backend']}), "
                f"{ev['rows'] or '?'} rows x {ev['features']} features, "
                + (f"{ev['classes']} classes" if ev.get("classes") else ev.get("task", "")), markup=False)
            self.task = self.progress.add_task("epochs", total=ev["epochs"], metrics="")
        elif ev["event"] == "resumed":
            self.progress.console.print(f"Resumed run {ev['run']} at epoch {ev['epoch']}", markup=False)
        elif ev["event"] == "epoch" and self.task is not None:
            self.progress.update(self.task, completed=ev["epoch"] + 1, metrics=(
                f"loss {ev['train_loss']:.3f}  val_loss {ev['val_loss']:.3f}  "
                f"{validation_figures(ev, digits=3)}  {ev['samples_per_s'] or 0:.0f} samples/s"))
        elif ev["event"] == "error":
            self.progress.console.print(f"[red]error:[/] {escape(str(ev['message']))}", highlight=False,
                                        soft_wrap=True)


def training_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=err_console)


def job_failed_hint(job_id: str) -> None:
    tail = "\n".join(jobs.logs(job_id).strip().splitlines()[-15:])
    err_console.print(Text(tail, style="dim"), highlight=False, soft_wrap=True)  # the job's own output, as it is
    err_console.print(f"[red]Job {escape(job_id)} failed[/]; full logs: atoll jobs logs {escape(job_id)}",
                      soft_wrap=True)


class SweepView:
    """Renders a sweep job's events as a live table of trials (config, epoch, metric, status)."""

    def __init__(self, live) -> None:
        self.live, self.start = live, None
        self.trials: dict[str, dict[str, Any]] = {}
        self.final: dict[str, str] = {}  # statuses from the sweep's end: they win over late trial lines

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev["event"] == "sweep_start":
            self.start = ev
        elif ev["event"] == "trial":
            self.trials[ev["trial"]] = {**self.trials.get(ev["trial"], {}), **ev}
        elif ev["event"] == "sweep_done":
            self.final = dict(ev.get("statuses") or {})
        elif ev["event"] == "error":
            self.live.console.print(f"[red]error:[/] {escape(str(ev['message']))}", highlight=False, soft_wrap=True)
        self.live.update(self.table())  # cheap; drawing it is the costly part, left to the Live's own timer

    def table(self) -> Table:
        start = self.start or {}
        metric = start.get("metric", "metric")
        title = (f"sweep {start['sweep']}: {len(self.trials)}/{start['trials']} trials, {start['scheduler']}, "
                 f"{start['algorithm']} search" if start else "sweep")
        table = Table(title=Text(title), title_justify="left")
        for col in ("trial", "config", "epoch", metric, "status"):  # only the config may wrap: ids stay whole
            table.add_column(col, justify="right" if col in ("epoch", metric) else "left", no_wrap=col != "config")
        for trial_id, t in self.trials.items():
            value = t.get("value")
            table.add_row(Text(trial_id), Text(short_config(t.get("config"))),
                          f"{(t.get('epoch') or 0) + 1}/{t.get('epochs', '?')}", "-" if value is None else f"{value:.4f}",
                          Text(self.final.get(trial_id, t.get("status", ""))))
        return table


def short_config(config: dict[str, Any] | None) -> str:
    """``optimizer.lr=0.00564 batch_size=32`` as ``lr=0.00564 batch_size=32``: the table stays narrow."""
    def short(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else json.dumps(value).replace(" ", "")

    return "  ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in (config or {}).items())


def print_sweep_summary(done: dict[str, Any]) -> None:
    metric = done["metric"]
    table = Table(title=f"\nTop trials by best {metric} ({done['mode']}), at epoch, epochs ran", title_justify="left")
    for col in ("trial", "best", "epoch", "ran", "status", "config"):
        table.add_column(col, no_wrap=col != "config")
    for row in done.get("top") or []:
        table.add_row(Text(row["trial_id"]), f"{row[f'best_{metric}']:.4f}", str(row["best_epoch"]), str(row["epochs"]),
                      Text(row["status"]), Text(short_config(row["config"])))
    console.print(table)
    console.print(f"{done['trials']} trials, {done['trial_epochs']} trial-epochs of {done['trials'] * done['max_t']}"
                  f" possible, {done['stopped_early']} stopped early, {done['errors']} failed\n"
                  f"results: {done.get('results_csv')}\nplot:    {done.get('plot')}", soft_wrap=True, markup=False)


class PredictProgress:
    """Renders a batch prediction job's events as a live bar of rows done."""

    def __init__(self, progress) -> None:
        self.progress, self.task = progress, None

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev["event"] != "predict_progress":
            return
        if self.task is None:
            self.task = self.progress.add_task("rows", total=ev.get("total"), metrics="")
        self.progress.update(self.task, completed=ev["rows"], total=ev.get("total"))


Followed = tuple[dict[str, Any], list[dict[str, Any]]]  # a job's final details and its events (jobs.follow_events)


def follow_training(job_id: str) -> Followed:
    """Follow a training job to its end with a live progress bar."""
    with training_progress() as progress:
        return jobs.follow_events(job_id, TrainProgress(progress))


def follow_prediction(job_id: str) -> Followed:
    """Follow a batch prediction job to its end with a live bar of rows."""
    with training_progress() as progress:
        return jobs.follow_events(job_id, PredictProgress(progress))


def follow_sweep(job_id: str) -> Followed:
    """Follow a sweep job to its end with a live trial table."""
    with Live(Table(title="waiting for the sweep to start"), console=err_console, refresh_per_second=2) as live:
        return jobs.follow_events(job_id, SweepView(live))


def validation_figures(metrics: dict[str, Any], digits: int = 4, most: int = 2) -> str:
    """The first validation figures after the loss, whatever the task: ``val_accuracy 0.97  val_f1 0.96``
    for a classifier, ``val_rmse 54.1  val_mae 43.0`` for a regressor."""
    shown = [k for k, v in metrics.items() if k.startswith("val_") and k != "val_loss"
             and isinstance(v, (int, float))][:most]
    return "  ".join(f"{k} {metrics[k]:.{digits}f}" for k in shown)


def print_registered(registered: dict[str, Any], source: str = "") -> None:
    m = registered["metrics"]
    console.print(f"[green]Registered[/] {registered['name']}:{registered['version']}{source}  "
                  f"{validation_figures(m)}  val_loss {m.get('val_loss', 0):.4f}\n"
                  f"  atoll models show {registered['name']}:{registered['version']}", highlight=False)
