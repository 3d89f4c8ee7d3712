"""What every `atoll` sub-command shares: consoles, the common options, JSON output, listings, the
one-line rendering of usage errors, and what Ctrl-C means while a job is followed."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

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


def listing(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], *, free: str | None = None,
            width: int | None = None) -> Table:
    """A table whose cells are never cut (ids and names a user copies, e.g. into `atoll jobs stop ID`),
    except those of the ``free`` column (text such as an entrypoint), shortened with … to the room left.

    Cells may hold rich markup ("[green]READY[/]")."""
    width = width or console.width
    cells = [[Text.from_markup(str(c)) for c in row] for row in rows]
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


# ------------------------------------------------------------------------------------------------
# Usage errors. typer 0.29 raises the exceptions of its vendored click (typer._click); older typers and
# anything built on click itself raise click's. The same class names in both: recognise either.


def _exception_classes(name: str) -> tuple[type[BaseException], ...]:
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


USAGE_ERRORS = _exception_classes("UsageError")
CLICK_ERRORS = _exception_classes("ClickException")  # usage errors and the rest (e.g. a file it cannot open)
NO_SUCH_OPTION = _exception_classes("NoSuchOption")[0]
ABORTS = (typer.Abort, *_exception_classes("Abort"))
EXITS = (typer.Exit, *_exception_classes("Exit"))


def _long_options(ctx: Any) -> list[str]:
    return sorted({o for p in ctx.command.get_params(ctx) for o in (*p.opts, *p.secondary_opts)
                   if o.startswith("--")})


def usage_line(exc: BaseException, path: str = "atoll") -> str:
    """A usage error as one line: the command, what is wrong, the closest valid command or option.

    ``path`` names the command when the error does not (click raises some without their context)."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else path
    message = str(getattr(exc, "message", exc))
    typed, choices, what = None, [], None
    if type(exc).__name__ == "NoSuchOption":
        typed = exc.option_name  # type: ignore[attr-defined]
        choices = _long_options(ctx) if ctx is not None else []
        what = f"no such option {typed}"
    elif (found := re.match(r"No such command '(.+?)'", message)) and ctx is not None:
        typed = found[1]
        choices = list(ctx.command.list_commands(ctx))
        what = f"no such command {typed!r}"
    if what is None:
        what = exc.format_message() if hasattr(exc, "format_message") else message
        return f"{path}: {what.rstrip('.')} (see `{path} --help`)"
    best = difflib.get_close_matches(typed, choices, n=1, cutoff=0.6)
    if best:
        shown = best[0] if best[0].startswith("-") else repr(best[0])
        return f"{path}: {what}; did you mean {shown}? (see `{path} --help`)"
    known = f"; commands: {', '.join(choices)}" if what.startswith("no such command") else ""
    return f"{path}: {what}{known} (see `{path} --help`)"
