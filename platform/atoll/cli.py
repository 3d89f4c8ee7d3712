"""The `atoll` command line: parse, call the library, render with rich. No logic of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from atoll import auth, cluster, jobs
from atoll.cli_models import models_app
from atoll.errors import AtollError

app = typer.Typer(help="Atoll: the whole ML lifecycle on one Ray cluster.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
jobs_app = typer.Typer(help="Ray jobs on the cluster (one Jobs API with `ray job`).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="cluster.yaml to use (default: ./cluster.yaml).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _fmt_time(ms: Any) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


# ------------------------------------------------------------------------------------------------
# Cluster


@app.command()
def up(config: Optional[Path] = ConfigOpt,
       cloud: bool = typer.Option(False, "--cloud", help="Run Ray's cluster launcher (`ray up`) on the file."),
       dry_run: bool = typer.Option(False, "--dry-run", help="With --cloud: print the command, run nothing."),
       num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="Logical CPUs of the local head."),
       as_json: bool = JsonOpt) -> None:
    """Start the cluster described by cluster.yaml (the local one by default)."""
    spec = cluster.load_spec(config)
    if cloud:
        auth.ensure_token()  # synced to every node by cluster.yaml's file_mounts
        cmd = cluster.cloud_up_command(spec)
        console.print(f"[bold]$ {' '.join(cmd)}")
        if not dry_run:
            raise typer.Exit(subprocess.call(cmd, env={**os.environ, **auth.client_env()}))
        return
    start = time.monotonic()
    with console.status("Starting the local Ray cluster…", spinner="dots") if not as_json else _nullcontext():
        info = cluster.up(spec, num_cpus=num_cpus)
    if as_json:
        print_json(info.to_dict())
        return
    if info.already_up:
        console.print(f"A cluster is already up: dashboard {info.dashboard_url} (session {info.session_name}).")
        return
    console.print(f"[green]Cluster up[/] in {time.monotonic() - start:.1f} s\n"
                  f"  dashboard + Jobs API  {info.dashboard_url}  (token: {auth.token_path()})\n"
                  f"  Ray address           {info.gcs_address}\n"
                  f"  stop it with          atoll down")


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


@app.command()
def down(config: Optional[Path] = ConfigOpt,
         cloud: bool = typer.Option(False, "--cloud", help="Run `ray down` on the file."),
         dry_run: bool = typer.Option(False, "--dry-run", help="With --cloud: print the command only.")) -> None:
    """Stop what `atoll up` started (and nothing else)."""
    if cloud:
        cmd = cluster.cloud_down_command(cluster.load_spec(config))
        console.print(f"[bold]$ {' '.join(cmd)}")
        if not dry_run:
            raise typer.Exit(subprocess.call(cmd))
        return
    with console.status("Stopping the local cluster…", spinner="dots"):
        stopped = cluster.down()
    if stopped is None:
        console.print("No cluster started by `atoll up` is recorded; nothing to stop.")
    else:
        console.print(f"[green]Cluster down[/]: stopped {len(stopped)} processes.")


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """Nodes, resources, pending demand, running jobs and Serve apps of the cluster."""
    st = cluster.status()
    if as_json:
        print_json(st)
        return
    console.print(f"Cluster ({st['mode']}) at {st['dashboard_url']}, session {st['session']}")
    nodes = Table("node", "type", "status", "resources (used / total)", title="Nodes")
    for n in st["nodes"]:
        res = ", ".join(f"{k} {v['used']:g}/{v['total']:g}" for k, v in sorted(n["resources"].items())
                        if k in ("CPU", "GPU") or not k.endswith("memory"))
        nodes.add_row(n["node_id"][:12] + (" (head)" if n.get("head") else ""), n["type"], n["status"], res)
    console.print(nodes)
    res = Table("resource", "available", "total", title="Resources")
    for k, v in sorted(st["resources"].items()):
        scale = 2**30 if k.endswith("memory") else 1
        unit = " GiB" if scale > 1 else ""
        res.add_row(k, f"{v['available'] / scale:.4g}{unit}", f"{v['total'] / scale:.4g}{unit}")
    console.print(res)
    if st["pending_demand"] or st.get("pending_nodes"):
        console.print(f"Pending demand: {st['pending_demand']}  pending nodes: {st.get('pending_nodes')}")
    else:
        console.print("Pending demand: none")
    console.print(f"Running jobs: {', '.join(j['id'] for j in st['jobs']) or 'none'}")
    apps = st["serve_apps"]
    console.print("Serve apps: " + (", ".join(f"{k} ({v['status']}, {v['route_prefix']})" for k, v in apps.items())
                                    or "none"))


# ------------------------------------------------------------------------------------------------
# Jobs


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def follow_job(job_id: str, on_text=None) -> int:
    """Stream a job's logs to the terminal; return the exit code that matches its outcome."""
    details = jobs.follow(job_id, on_text or (lambda text: console.out(text, end="", highlight=False)))
    state = details["status"]
    color = "green" if state == "SUCCEEDED" else "red"
    err_console.print(f"[{color}]Job {job_id} {state}[/]" + (f": {details['message']}" if state != "SUCCEEDED"
                                                              and details.get("message") else ""))
    return 0 if state == "SUCCEEDED" else 1


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(ctx: typer.Context,
           wait: bool = typer.Option(False, "--wait", help="Stream the logs; exit with the job's outcome."),
           working_dir: Optional[Path] = typer.Option(None, "--working-dir", help="Directory shipped with "
                                                      "the job (default: the project, minus data and caches)."),
           env: list[str] = typer.Option([], "--env", help="K=V environment variable for the job (repeat)."),
           submission_id: Optional[str] = typer.Option(None, "--id", help="Choose the job id."),
           as_json: bool = JsonOpt) -> None:
    """Submit any command as a Ray job: `atoll submit [--wait] -- python script.py ...`."""
    command = list(ctx.args)
    if not command:
        raise typer.BadParameter("give the command after --, e.g. `atoll submit --wait -- python -c 'print(1)'`")
    workdir = working_dir or cluster.project_root()
    job_id = jobs.submit(command, working_dir=workdir, env=_parse_env(env), submission_id=submission_id)
    if as_json and not wait:
        print_json({"id": job_id})
        return
    err_console.print(f"Submitted job [bold]{job_id}[/] (logs: atoll jobs logs {job_id} -f)", soft_wrap=True)
    if wait:
        code = follow_job(job_id)
        if as_json:
            print_json(jobs.status(job_id))
        raise typer.Exit(code)


@jobs_app.command("list")
def jobs_list(all_: bool = typer.Option(False, "--all", help="Include plain drivers, not only submitted jobs."),
              as_json: bool = JsonOpt) -> None:
    """All jobs on the cluster, newest first (also those from `ray job submit`)."""
    rows = jobs.list_jobs(include_drivers=all_)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "status", "started", "entrypoint", title=f"Jobs ({len(rows)})")
    for j in rows:
        color = {"SUCCEEDED": "green", "FAILED": "red", "RUNNING": "cyan"}.get(j["status"], "")
        table.add_row(j["id"], f"[{color}]{j['status']}[/]" if color else j["status"],
                      _fmt_time(j["start_time"]), (j["entrypoint"] or "")[:70])
    console.print(table)


@jobs_app.command("status")
def jobs_status(job_id: str, as_json: bool = JsonOpt) -> None:
    """One job's status and details."""
    details = jobs.status(job_id)
    if as_json:
        print_json(details)
        return
    for key in ("id", "status", "entrypoint", "message", "start_time", "end_time"):
        value = _fmt_time(details[key]) if key.endswith("_time") else details[key]
        console.print(f"[bold]{key:11}[/] {value}")


@jobs_app.command("logs")
def jobs_logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="Stream until it ends.")) -> None:
    """A job's output."""
    if follow:
        raise typer.Exit(follow_job(job_id))
    console.out(jobs.logs(job_id), end="", highlight=False)


@jobs_app.command("stop")
def jobs_stop(job_id: str) -> None:
    """Stop a running job."""
    state = jobs.stop(job_id)
    console.print(f"Job {job_id}: {state}")


# ------------------------------------------------------------------------------------------------
# Training


class TrainProgress:
    """Renders a training job's progress events (epoch, loss, accuracy) as a live rich progress bar."""

    def __init__(self, progress) -> None:
        self.progress, self.task, self.events = progress, None, []

    def __call__(self, text: str) -> None:
        from atoll.train import parse_events

        for ev in parse_events(text):
            self.events.append(ev)
            if ev["event"] == "start":
                self.progress.console.print(
                    f"Training on {ev['workers']} {'GPU' if ev['use_gpu'] else 'CPU'} workers ({ev['backend']}), "
                    f"{ev['rows'] or '?'} rows x {ev['features']} features, {ev['classes']} classes")
                self.task = self.progress.add_task("epochs", total=ev["epochs"], metrics="")
            elif ev["event"] == "resumed":
                self.progress.console.print(f"Resumed run {ev['run']} at epoch {ev['epoch']}")
            elif ev["event"] == "epoch" and self.task is not None:
                self.progress.update(self.task, completed=ev["epoch"] + 1, metrics=(
                    f"loss {ev['train_loss']:.3f}  val_loss {ev['val_loss']:.3f}  "
                    f"val_acc {ev['val_accuracy']:.3f}  {ev['samples_per_s'] or 0:.0f} samples/s"))
            elif ev["event"] == "error":
                self.progress.console.print(f"[red]error:[/] {ev['message']}", highlight=False, soft_wrap=True)

    def last(self, name: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e["event"] == name), None)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=err_console)


def _job_failed_hint(job_id: str) -> None:
    tail = "\n".join(jobs.logs(job_id).strip().splitlines()[-15:])
    err_console.print(f"[dim]{tail}[/]", highlight=False, soft_wrap=True)
    err_console.print(f"[red]Job {job_id} failed[/]; full logs: atoll jobs logs {job_id}", soft_wrap=True)


@app.command("train")
def train_cmd(config: Path = typer.Option(Path("jobs/configs/train.yaml"), "--config", "-c", help="Training spec."),
              set_: list[str] = typer.Option([], "--set", help="Override a field: --set epochs=5 (repeat)."),
              run_name: Optional[str] = typer.Option(None, "--run-name", help="Name of the run."),
              resume: Optional[str] = typer.Option(None, "--resume", help="Resume this run from its checkpoint."),
              wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow progress until it ends."),
              as_json: bool = JsonOpt) -> None:
    """Train a model on the cluster (a Ray job running jobs/train.py) and register it."""
    from atoll import train as train_lib
    from atoll.config import load_file
    from atoll.specs import TrainSpec

    load_file(TrainSpec, config, set_)  # fail fast, before anything is submitted
    root = cluster.project_root()
    spec_arg = _inside_project(config, root)
    cmd = ["python", "jobs/train.py", "-c", spec_arg]
    for item in set_:
        cmd += ["--set", item]
    if run_name:
        cmd += ["--run-name", run_name]
    if resume:
        cmd += ["--resume", resume]
    submission_id = f"atoll-train-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    env = {"ATOLL_JOB_ID": submission_id, "ATOLL_GIT_COMMIT": train_lib.git_commit(root) or ""}
    job_id = jobs.submit(cmd, working_dir=root, env=env, submission_id=submission_id)
    err_console.print(f"Submitted training job [bold]{job_id}[/]", soft_wrap=True)
    if not wait:
        if as_json:
            print_json({"id": job_id})
        return
    with _progress() as progress:
        view = TrainProgress(progress)
        details = jobs.follow(job_id, view)
    registered = view.last("registered")
    if as_json:
        print_json({"job": details, "registered": registered, "finished": view.last("finished")})
    if details["status"] != "SUCCEEDED":
        _job_failed_hint(job_id)
        raise typer.Exit(1)
    if registered and not as_json:
        m = registered["metrics"]
        console.print(f"[green]Registered[/] {registered['name']}:{registered['version']}  "
                      f"val_accuracy {m.get('val_accuracy', 0):.4f}  val_loss {m.get('val_loss', 0):.4f}\n"
                      f"  atoll models show {registered['name']}:{registered['version']}")


def _inside_project(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        raise typer.BadParameter(f"{path} is outside the project folder {root}, which is what the job ships; "
                                 f"move the spec into it.") from None


# ------------------------------------------------------------------------------------------------


@app.command()
def quickstart() -> None:
    """The whole lifecycle on this machine, end to end (data → train → sweep → registry → serve)."""
    err_console.print("atoll quickstart is not built yet: it will start the local cluster, train the digits "
                      "demo, sweep it, register and serve the best model. Meanwhile: `atoll up`, `atoll submit`.")
    raise typer.Exit(1)


def main() -> None:
    """Entry point with one error boundary: an AtollError is one line and exit code ≥ 1."""
    import logging

    debug = os.environ.get("ATOLL_DEBUG") == "1"
    # Ray's client libraries log packaging chatter at INFO; the CLI says what matters itself.
    logging.getLogger("ray").setLevel(logging.DEBUG if debug else logging.ERROR)
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
        debug = True
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except AtollError as exc:
        if debug:
            raise
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        err_console.print("[red]internal error[/] (please report it; rerun with --debug for details):")
        raise
