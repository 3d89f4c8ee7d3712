"""`atoll runs ...`: training runs and sweeps under the storage root. Parse, call atoll.runs, render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from atoll import runs  # light: the standard library only
from atoll.cli.common import ConfigOpt, JsonOpt, console, listing, print_json

runs_app = typer.Typer(help="Training runs and sweeps: their state on disk, what to resume, what to remove.",
                       no_args_is_help=True)

_STATE = {runs.FINISHED: "green", runs.INCOMPLETE: "yellow", runs.EMPTY: "red"}


@runs_app.command("list")
def list_(config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Training runs and sweeps, newest first: finished, or incomplete (interrupted or still running: resume
    it with `atoll train --resume NAME` / `atoll tune --resume NAME`)."""
    storage = _storage(config)
    rows = runs.list_runs(storage) + runs.list_sweeps(storage)
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print(f"No training runs or sweeps under {storage} yet: `atoll train`, `atoll tune`.",
                      highlight=False, markup=False, soft_wrap=True)
        return
    console.print(runs_table(rows))


def _detail(row: dict[str, Any]) -> str:
    if row["kind"] == "run":
        from atoll.progress import validation_figures

        best = validation_figures(row["metrics"], most=1)
        return f"epochs {row['epochs_done']}/{row['epochs'] or '?'}" + (f", best {best}" if best else "")
    best = f", best {row['metric']} {row['best']:.4f} ({row['best_trial']})" if row["best"] is not None else ""
    return f"{row['trials']} trials{best}"


def runs_table(rows: list[dict[str, Any]], width: int | None = None):
    """Runs and sweeps as a table whose names are never cut (they are what --resume takes)."""
    cells = [[r["name"], r["kind"], Text(r["state"], style=_STATE[r["state"]]),
              (r["updated"] or "-")[:19].replace("T", " "), _detail(r)] for r in rows]
    return listing(f"Runs and sweeps ({len(rows)})", ["name", "kind", "state", "updated", "detail"], cells,
                   free="detail", width=width)


RunOpt = typer.Option(False, "--run", help="NAME is the training run (when a sweep has the name too).")
SweepOpt = typer.Option(False, "--sweep", help="NAME is the sweep (when a training run has the name too).")
YesOpt = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


def _storage(config: Path | None) -> str:
    from atoll.config import load_spec

    return load_spec(config).atoll.storage


def _kind(run: bool, sweep: bool) -> str | None:
    from atoll.errors import ConfigError

    if run and sweep:
        raise ConfigError("--run and --sweep: give one (which of the two named NAME), not both.")
    return runs.RUN if run else runs.SWEEP if sweep else None


@runs_app.command()
def delete(name: str = typer.Argument(..., help="The run or sweep, as `atoll runs list` names it."),
           yes: bool = YesOpt, run: bool = RunOpt, sweep: bool = SweepOpt,
           config: Path | None = ConfigOpt) -> None:
    """Delete a training run or a sweep (with its trials' checkpoints), finished or not. Registered model
    versions stay: each holds its own files."""
    storage, kind = _storage(config), _kind(run, sweep)
    if not yes:
        plan = runs.delete(storage, name, kind=kind, dry_run=True)
        console.print(removal_table(plan), crop=False)
        state = "" if plan["state"] == runs.FINISHED else f", {plan['state']}: it can no longer be resumed"
        typer.confirm(f"Delete {plan['kind']} {name} ({size_text(plan['bytes'])}{state})?", abort=True)
    done = runs.delete(storage, name, kind=kind)
    console.print(f"Deleted {done['kind']} {name}: freed {size_text(done['bytes'])}.", highlight=False,
                  markup=False, soft_wrap=True)


@runs_app.command()
def prune(name: str | None = typer.Argument(None, help="One run or sweep (default: every finished one)."),
          yes: bool = YesOpt, dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be "
                                                           "removed; remove nothing."),
          run: bool = RunOpt, sweep: bool = SweepOpt, config: Path | None = ConfigOpt,
          as_json: bool = JsonOpt) -> None:
    """Free the space of finished runs and sweeps: a run keeps only its best checkpoint; a sweep loses its
    trials' checkpoints (its best trial is a registered version) and keeps its results and plot. Incomplete
    runs and sweeps (interrupted or still running) are skipped."""
    from atoll.errors import ConfigError

    if as_json and not (yes or dry_run):
        raise ConfigError("--json: add --yes (or --dry-run); a confirmation prompt would break the JSON.")
    storage, kind = _storage(config), _kind(run, sweep)
    if not (yes or dry_run):
        plan = runs.prune(storage, name, kind=kind, dry_run=True)
        _show_pruning(plan)
        if not plan["removed"]:
            return
        typer.confirm(f"Remove {len(plan['removed'])} folder(s), {size_text(plan['bytes'])}?", abort=True)
        done = runs.prune(storage, name, kind=kind)
        console.print(f"Removed {len(done['removed'])} folder(s): freed {size_text(done['bytes'])}.",
                      highlight=False, markup=False, soft_wrap=True)
        return
    result = runs.prune(storage, name, kind=kind, dry_run=dry_run)
    if as_json:
        print_json(result)
        return
    _show_pruning(result)


def _show_pruning(result: dict[str, Any]) -> None:
    for skipped in result["skipped"]:
        console.print(f"Skipped {skipped['kind']} {skipped['name']}: {skipped['why']}.", highlight=False,
                      markup=False, soft_wrap=True)
    if not result["removed"]:
        console.print("Nothing to prune: no finished run or sweep holds a checkpoint it does not need.",
                      highlight=False, markup=False, soft_wrap=True)
        return
    console.print(removal_table(result), crop=False)
    verb = "Would free" if result["dry_run"] else "Freed"
    console.print(f"{verb} {size_text(result['bytes'])} ({len(result['removed'])} folder(s)).", highlight=False,
                  markup=False, soft_wrap=True)


def removal_table(result: dict[str, Any]):
    """What a delete or prune removed (or, a dry run, would remove) and what it kept, one folder a row, at
    whatever width its paths need: a path is never wrapped or cut (print it with ``crop=False``)."""
    from rich.table import Table

    removed = "would remove" if result["dry_run"] else "removed"
    rows = [(Text(removed, style="red"), r["kind"], r["name"], size_text(r["bytes"]), r["path"])
            for r in result["removed"]]
    rows += [(Text("kept", style="green"), k["kind"], k["name"], "-", k["path"]) for k in result.get("kept", [])]
    header = ("action", "kind", "name", "size", "path")
    table = Table(title=f"{'Would remove' if result['dry_run'] else 'Removed'} {len(result['removed'])} "
                        f"folder(s), {size_text(result['bytes'])}")
    for column in header:
        table.add_column(column, no_wrap=True, justify="right" if column == "size" else "left")
    for row in rows:
        table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in row))
    # As wide as its widest row, whatever the terminal's width: rich would otherwise squeeze the path.
    table.width = sum(max([len(h), *(Text(str(r[i])).cell_len for r in rows)]) for i, h in enumerate(header)) \
        + 3 * len(header) + 1
    return table


def size_text(n_bytes: int) -> str:
    """A byte count as a person reads it: 512 B, 3.4 KiB, 1.2 GiB."""
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n_bytes} B"
