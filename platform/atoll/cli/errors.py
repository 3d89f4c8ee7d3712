"""The CLI's usage errors, as one line: the command, what is wrong, the closest valid command or option.

typer 0.29 raises the exceptions of its vendored click (typer._click); older typers and anything built on
click itself raise click's. The same class names in both: recognise either."""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any

import typer


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
