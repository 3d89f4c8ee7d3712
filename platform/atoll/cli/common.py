"""What every `atoll` sub-command shares: the consoles, the common options, JSON output, listings, and what
Ctrl-C means while a job is followed. Light on purpose: every command module imports it at start-up."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from atoll.console import console, err_console

__all__ = ["ALL_HELP", "ConfigOpt", "JsonOpt", "cluster_config", "console", "err_console", "following",
           "json_option", "listing", "print_json"]

ConfigOpt = typer.Option(None, "--config", "-c", help="cluster.yaml to use (default: $ATOLL_CLUSTER_CONFIG, "
                         "else ./cluster.yaml).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")
#: --all has one meaning everywhere: include what a listing normally hides.
ALL_HELP = "Include everything normally hidden"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def json_option(text: str, option: str, example: str) -> Any:
    """The JSON value given to ``option``, or one line that shows a valid one.

    Raises:
        ConfigError: not valid JSON.
    """
    from atoll.errors import ConfigError

    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{option}: not valid JSON ({exc}); e.g. {option} '{example}'.") from None


@contextlib.contextmanager
def cluster_config(config: Path | None) -> Iterator[None]:
    """``-c FILE`` for commands whose work reads cluster.yaml later and elsewhere (spec checks, the project
    folder a job ships, the job itself on the cluster): the same as ``ATOLL_CLUSTER_CONFIG=FILE``, which
    those places read and jobs inherit."""
    if config is None:
        yield
        return
    saved = os.environ.get("ATOLL_CLUSTER_CONFIG")
    os.environ["ATOLL_CLUSTER_CONFIG"] = str(Path(config).expanduser().resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("ATOLL_CLUSTER_CONFIG", None)
        else:
            os.environ["ATOLL_CLUSTER_CONFIG"] = saved


@contextlib.contextmanager
def following(job_id: str) -> Iterator[None]:
    """Ctrl-C while following a job stops the following, not the job: say so, and how to stop it (exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print(f"\nInterrupted: job {job_id} keeps running on the cluster. Follow it again with "
                          f"`atoll jobs logs {job_id} -f`; stop it with `atoll jobs stop {job_id}`.",
                          soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(130) from None


def listing(title: str, header: Sequence[str], rows: Sequence[Sequence[str | Text]], *, free: str | None = None,
            width: int | None = None) -> Table:
    """A table whose cells are never cut (ids and names a user copies, e.g. into `atoll jobs stop ID`),
    except those of the ``free`` column (text such as an entrypoint), shortened with … to the room left.

    A cell is printed as it is: a string is never read as rich markup (an entrypoint or a name may hold
    ``[/x]``); style one with a :class:`rich.text.Text` (``Text("READY", style="green")``)."""
    width = width or console.width
    cells = [[c if isinstance(c, Text) else Text(str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(row[i].cell_len for row in cells)]) for i, h in enumerate(header)]
    table = Table(title=title)
    for i, name in enumerate(header):
        if name == free:  # borders and padding: 3 per column plus 1
            room = width - sum(w for j, w in enumerate(widths) if j != i) - (3 * len(header) + 1)
            table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=max(room, 3))
        else:
            table.add_column(name, no_wrap=True, min_width=widths[i])
    for row in cells:
        table.add_row(*row)
    return table
