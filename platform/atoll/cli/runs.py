"""`atoll runs ...`: training runs and sweeps under the storage root. Parse, call atoll.runs, render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from atoll import runs  # light: the standard library only
from atoll.cli.common import ConfigOpt, JsonOpt, console, listing, print_json

runs_app = typer.Typer(help="Training runs and sweeps: their state on disk, what to resume.", no_args_is_help=True)

_STATE = {runs.FINISHED: "green", runs.INCOMPLETE: "yellow", runs.EMPTY: "red"}


@runs_app.command("list")
def list_(config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Training runs and sweeps, newest first: finished, or incomplete (interrupted or still running: resume
    it with `atoll train --resume NAME` / `atoll tune --resume NAME`)."""
    from atoll.config import load_spec

    storage = load_spec(config).atoll.storage
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
