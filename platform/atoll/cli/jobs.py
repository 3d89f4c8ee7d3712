"""`atoll submit` and `atoll jobs ...`: Ray jobs on the cluster. Parse, call atoll.jobs, render."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from atoll.cli.common import (
    ALL_HELP,
    ConfigOpt,
    JsonOpt,
    cluster_config,
    console,
    err_console,
    following,
    listing,
    print_json,
)
from atoll.cli.errors import NO_SUCH_OPTION

app = typer.Typer()
jobs_app = typer.Typer(help="Ray jobs on the cluster (one Jobs API with `ray job`).", no_args_is_help=True)


def _fmt_time(ms: Any) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def _out(text: str) -> None:
    console.out(text, end="", highlight=False)


def follow_job(job_id: str, on_text=None) -> int:
    """Stream a job's logs to the terminal; return the exit code that matches its outcome. Ctrl-C stops
    following (exit 130); the job keeps running."""
    from atoll import jobs

    with following(job_id):
        details = jobs.follow(job_id, on_text or _out)
    state = details["status"]
    color = "green" if state == "SUCCEEDED" else "red"
    message = f": {details['message']}" if state != "SUCCEEDED" and details.get("message") else ""
    err_console.print(Text(f"Job {job_id} {state}{message}", style=color), soft_wrap=True)
    return 0 if state == "SUCCEEDED" else 1


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(ctx: typer.Context,
           wait: bool = typer.Option(False, "--wait", help="Stream the logs; exit with the job's outcome."),
           working_dir: Path | None = typer.Option(None, "--working-dir", help="Directory shipped with "
                                                      "the job (default: the project, minus data and caches)."),
           env: list[str] = typer.Option([], "--env", help="K=V environment variable for the job (repeat)."),
           submission_id: str | None = typer.Option(None, "--id", help="Choose the job id."),
           config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Submit any command as a Ray job: `atoll submit [--wait] -- python script.py ...`."""
    from atoll import jobs
    from atoll.config import project_root

    command = list(ctx.args)
    if not command:
        raise typer.BadParameter("give the command after --, e.g. `atoll submit --wait -- python -c 'print(1)'`")
    if command[0].startswith("-"):  # a mistyped option of ours: a command never starts with a dash
        raise NO_SUCH_OPTION(command[0], ctx=ctx)
    with cluster_config(config):  # the job reads the same cluster.yaml
        workdir = working_dir or project_root()
        job_id = jobs.submit(command, working_dir=workdir, env=_parse_env(env), submission_id=submission_id)
    if as_json and not wait:
        print_json({"id": job_id})
        return
    err_console.print(f"Submitted job [bold]{escape(job_id)}[/] (logs: atoll jobs logs {escape(job_id)} -f)",
                      soft_wrap=True)
    if wait:
        code = follow_job(job_id)
        if as_json:
            print_json(jobs.status(job_id))
        raise typer.Exit(code)


@jobs_app.command("list")
def jobs_list(all_: bool = typer.Option(False, "--all", help=f"{ALL_HELP}: also plain drivers (`ray.init` "
                                        f"scripts), not only submitted jobs."),
              as_json: bool = JsonOpt) -> None:
    """All jobs on the cluster, newest first (also those from `ray job submit`)."""
    from atoll import jobs

    rows = jobs.list_jobs(include_drivers=all_)
    if as_json:
        print_json(rows)
        return
    console.print(jobs_table(rows))


def jobs_table(rows: list[dict[str, Any]], width: int | None = None) -> Table:
    """Jobs as a table whose ids are never cut (they are what `jobs logs/stop` take); entrypoints are."""
    colors = {"SUCCEEDED": "green", "FAILED": "red", "RUNNING": "cyan"}
    cells = [[j["id"] or "-", Text(str(j["status"]), style=colors.get(j["status"], "")), _fmt_time(j["start_time"]),
              j["entrypoint"] or ""] for j in rows]
    return listing(f"Jobs ({len(rows)})", ["id", "status", "started", "entrypoint"], cells, free="entrypoint",
                   width=width)


@jobs_app.command("status")
def jobs_status(job_id: str, as_json: bool = JsonOpt) -> None:
    """One job's status and details."""
    from atoll import jobs

    details = jobs.status(job_id)
    details["unschedulable"] = jobs.unschedulable(job_id)
    if as_json:
        print_json(details)
        return
    for key in ("id", "status", "entrypoint", "message", "start_time", "end_time"):
        value = _fmt_time(details[key]) if key.endswith("_time") else details[key]
        console.print(f"[bold]{key:11}[/] {escape(str(value))}", highlight=False, soft_wrap=True)
    if details["unschedulable"]:
        console.print(f"[red]It can never be scheduled: {escape(details['unschedulable'])}[/] Stop it: atoll jobs stop "
                      f"{escape(job_id)}", soft_wrap=True)


@jobs_app.command("logs")
def jobs_logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="Stream until it ends."),
              tail: int | None = typer.Option(None, "--tail", "-n", min=0, help="Only the last N lines (with -f: "
                                                 "then follow).")) -> None:
    """A job's output."""
    from atoll import jobs

    if tail is None:
        if follow:
            raise typer.Exit(follow_job(job_id))
        _out(jobs.logs(job_id))
        return
    text = jobs.logs(job_id)
    _out("".join(text.splitlines(keepends=True)[-tail:]) if tail else "")
    if follow:  # the stream starts at the beginning: skip what was just shown (or left out)
        raise typer.Exit(follow_job(job_id, _skipping(len(text), _out)))


def _skipping(count: int, on_text):
    """``on_text`` for a stream, minus its first ``count`` characters."""
    left = count

    def take(text: str) -> None:
        nonlocal left
        cut, left = min(left, len(text)), left - min(left, len(text))
        if text[cut:]:
            on_text(text[cut:])

    return take


@jobs_app.command("stop")
def jobs_stop(job_id: str) -> None:
    """Stop a running job."""
    from atoll import jobs

    state = jobs.stop(job_id)
    console.print(f"Job {job_id}: {state}", markup=False, highlight=False)
