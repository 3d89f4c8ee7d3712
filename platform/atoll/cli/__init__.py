"""The `atoll` command line: parse, call the library, render with rich. No logic of its own.

One module per command group; this one wires them into one app (in the order of the lifecycle, which is
the order of `atoll --help`) and holds the entry point with its error boundary. Start-up stays fast: the
command modules import the library (Ray, torch, pandas, httpx behind it) inside their commands only.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from atoll.cli import cluster, data, jobs, k8s, metrics, models, quickstart, runs, serve, storage, train
from atoll.cli.common import console, err_console
from atoll.cli.errors import ABORTS, CLICK_ERRORS, EXITS, USAGE_ERRORS, usage_line
from atoll.errors import AtollError

__all__ = ["app", "main"]

app = typer.Typer(help="Atoll: the whole ML lifecycle on one Ray cluster.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
for commands in (cluster.app, jobs.app, train.app, serve.query_app, quickstart.app):  # up … quickstart
    app.add_typer(commands)
app.add_typer(data.data_app, name="data")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(runs.runs_app, name="runs")
app.add_typer(models.models_app, name="models")
app.add_typer(serve.serve_app, name="serve")
app.add_typer(metrics.metrics_app, name="metrics")
app.add_typer(k8s.k8s_app, name="k8s")
app.add_typer(storage.storage_app, name="storage")

#: --debug as given to this process (main() also takes it after a command); ATOLL_DEBUG=1 does the same.
_debug = {"on": False}


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        def of(dist: str) -> str:
            try:
                return version(dist)
            except PackageNotFoundError:
                return "not installed"

        console.print(f"atoll {of('atoll')} (ray {of('ray')}, torch {of('torch')}, typer {of('typer')})",
                      highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the versions of Atoll and of the Ray it runs on, and exit."),
          debug: bool = typer.Option(False, "--debug", help="Show full tracebacks of errors (also after any "
                                     "command, or ATOLL_DEBUG=1).")) -> None:
    """Atoll: the whole ML lifecycle on one Ray cluster."""
    if debug:
        _debug["on"] = True


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """Take --debug out from anywhere before `--` (what follows `--` is a job's own command line)."""
    end = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:end] if a != "--debug"]
    return head + argv[end:], len(head) < end


def _command_path(args: list[str]) -> str:
    """``atoll tune`` for ``["tune", "--resume"]``: the commands the arguments name, as far as they do."""
    command, path = typer.main.get_command(app), ["atoll"]
    for token in (a for a in args if not a.startswith("-")):
        command = getattr(command, "commands", {}).get(token)
        if command is None:
            break
        path.append(token)
    return " ".join(path)


def main(argv: list[str] | None = None) -> None:
    """Entry point with one error boundary: an AtollError is one line and exit code ≥ 1; a usage error is
    one line with the closest valid command or option, exit 2."""
    import logging

    from atoll import auth

    args, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    _debug["on"] = debug = debug or os.environ.get("ATOLL_DEBUG") == "1"
    # Ray's client libraries log packaging chatter at INFO; the CLI says what matters itself.
    logging.getLogger("ray").setLevel(logging.DEBUG if debug else logging.ERROR)
    # Before anything imports Ray (it reads RAY_AUTH_MODE once, at import): its clients then send the token.
    auth.enable_for_this_process()
    try:
        code = app(args=args, prog_name="atoll", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except AtollError as exc:
        if _debug["on"]:
            raise
        # escape(): a message may hold brackets ("write [lo, hi]") that rich would take for markup.
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except EXITS as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # typer turns a bare Ctrl-C into a silent Exit(130)
            err_console.print("interrupted")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help is the answer
            exc.show()
            sys.exit(exc.exit_code)
        err_console.print(f"[red]error:[/] {escape(usage_line(exc, _command_path(args)))}", highlight=False,
                          soft_wrap=True)
        sys.exit(2)
    except CLICK_ERRORS as exc:  # e.g. a file it cannot open
        err_console.print(f"[red]error:[/] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except ABORTS:
        err_console.print("aborted")
        sys.exit(1)
    except Exception:
        err_console.print("[red]internal error[/] (please report it; rerun with --debug for details):")
        raise
