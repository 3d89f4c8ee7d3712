"""The `atoll` command line: parse, call the library, render with rich. No logic of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from atoll import auth, cli_views, cluster, jobs
from atoll.cli_common import ConfigOpt, JsonOpt, console, err_console, print_json
from atoll.cli_k8s import k8s_app
from atoll.cli_models import models_app
from atoll.cli_serve import query, serve_app
from atoll.errors import AtollError

app = typer.Typer(help="Atoll: the whole ML lifecycle on one Ray cluster.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
jobs_app = typer.Typer(help="Ray jobs on the cluster (one Jobs API with `ray job`).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")
app.add_typer(k8s_app, name="k8s")
app.command("query")(query)


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
       simulate: bool = typer.Option(False, "--simulate", help="Autoscale cluster.yaml's node types on this "
                                     "machine (Ray's autoscaler + fake multi-node provider)."),
       idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="With --simulate: minutes "
                                                    "before an idle worker node goes (default: cluster.yaml's)."),
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
        info = cluster.up(spec, num_cpus=num_cpus, simulate=simulate, idle_timeout_minutes=idle_timeout)
    if as_json:
        print_json(info.to_dict())
        return
    if info.already_up:
        console.print(f"A cluster is already up: dashboard {info.dashboard_url} (session {info.session_name}).")
        return
    if simulate:
        types = ", ".join(f"{name} x{t.min_workers}..{t.max_workers}" for name, t in spec.worker_types().items())
        console.print(f"Simulated autoscaling: worker types {types}; watch it with `atoll status --watch`.")
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
def status(as_json: bool = JsonOpt,
           watch: bool = typer.Option(False, "--watch", "-w", help="Refresh every 2 s until Ctrl-C."),
           interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes with --watch.")) -> None:
    """Nodes by type, resources, pending nodes and demand, autoscaler actions, jobs and Serve apps."""
    if as_json:
        print_json(cluster.status())
        return
    if not watch:
        console.print(_status_view(cluster.status()))
        return
    from rich.live import Live

    with Live(_status_view(cluster.status()), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(_status_view(cluster.status()), refresh=True)
        except KeyboardInterrupt:
            pass


def _status_view(st: dict[str, Any]):
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [Text(f"Cluster ({st['mode']}) at {st['dashboard_url']}, session {st['session']}, "
                             f"{time.strftime('%H:%M:%S')}")]
    nodes = Table("node", "type", "status", "resources (used / total)", title="Nodes", title_justify="left")
    for n in sorted(st["nodes"], key=lambda n: (not n.get("head"), n["type"], n["node_id"])):
        res = ", ".join(f"{k} {v['used']:g}/{v['total']:g}" for k, v in sorted(n["resources"].items())
                        if not k.endswith("memory"))
        nodes.add_row(n["node_id"][:12] + (" (head)" if n.get("head") else ""), n["type"], n["status"], res)
    parts.append(nodes)
    res = Table("resource", "available", "total", title="Resources", title_justify="left")
    for k, v in sorted(st["resources"].items()):
        scale = 2**30 if k.endswith("memory") else 1
        unit = " GiB" if scale > 1 else ""
        res.add_row(k, f"{v['available'] / scale:.4g}{unit}", f"{v['total'] / scale:.4g}{unit}")
    parts.append(res)
    pending = ", ".join(f"{p.get('count', 1)} x {p['type']}" + (f" ({p['status']})" if p.get("status") else "")
                        for p in st.get("pending_nodes") or [])
    demand = ", ".join(f"{d.get('count', 1)} x {d['shape']}" for d in st["pending_demand"])
    parts.append(Text(f"Launching nodes: {pending or 'none'}\nPending demand: {demand or 'none'}"))
    for d in st.get("infeasible_demand") or []:
        parts.append(Text(f"Infeasible: {d['fits_no_node']} fits no node this cluster has or can add; that work "
                          f"will wait forever. Stop it (`atoll jobs stop ID`) or add a node type that fits.",
                          style="red"))
    if st.get("autoscaler_events"):
        parts.append(Text("Autoscaler, recent actions:\n" + "\n".join(f"  {e}" for e in st["autoscaler_events"])))
    parts.append(Text(f"Running jobs: {', '.join(j['id'] for j in st['jobs']) or 'none'}"))
    apps = st["serve_apps"]
    parts.append(Text("Serve apps: " + (", ".join(f"{k} ({v['status']}, {v['route_prefix']})"
                                                  for k, v in apps.items()) or "none")))
    return Group(*parts)


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
    details["unschedulable"] = jobs.unschedulable(job_id)
    if as_json:
        print_json(details)
        return
    for key in ("id", "status", "entrypoint", "message", "start_time", "end_time"):
        value = _fmt_time(details[key]) if key.endswith("_time") else details[key]
        console.print(f"[bold]{key:11}[/] {value}")
    if details["unschedulable"]:
        console.print(f"[red]It can never be scheduled: {details['unschedulable']}[/] Stop it: atoll jobs stop "
                      f"{job_id}", soft_wrap=True)


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


@app.command("train")
def train_cmd(config: Path = typer.Option(Path("jobs/configs/train.yaml"), "--config", "-c", help="Training spec."),
              set_: list[str] = typer.Option([], "--set", help="Override a field: --set epochs=5 (repeat)."),
              run_name: Optional[str] = typer.Option(None, "--run-name", help="Name of the run."),
              resume: Optional[str] = typer.Option(None, "--resume", help="Resume this run from its checkpoint."),
              wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow progress until it ends."),
              as_json: bool = JsonOpt) -> None:
    """Train a model on the cluster (a Ray job running jobs/train.py) and register it."""
    from atoll.config import load_file
    from atoll.specs import TrainSpec

    load_file(TrainSpec, config, set_)  # fail fast, before anything is submitted
    extra = (["--run-name", run_name] if run_name else []) + (["--resume", resume] if resume else [])
    job_id = _submit_entrypoint("train", config, set_, extra)
    if not wait:
        if as_json:
            print_json({"id": job_id})
        return
    details, view = cli_views.follow_training(job_id)
    registered = view.last("registered")
    if as_json:
        print_json({"job": details, "registered": registered, "finished": view.last("finished")})
    if details["status"] != "SUCCEEDED":
        cli_views.job_failed_hint(job_id)
        raise typer.Exit(1)
    if registered and not as_json:
        cli_views.print_registered(registered)


def _submit_entrypoint(kind: str, config: Path, overrides: list[str], extra: list[str]) -> str:
    try:
        job_id = jobs.submit_atoll_job(kind, config, overrides, extra)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    err_console.print(f"Submitted {kind} job [bold]{job_id}[/]", soft_wrap=True)
    return job_id


# ------------------------------------------------------------------------------------------------
# Sweeps


@app.command("tune")
def tune_cmd(config: Path = typer.Option(Path("jobs/configs/sweep.yaml"), "--config", "-c", help="Sweep spec."),
             set_: list[str] = typer.Option([], "--set", help="Override a field: --set num_samples=4, "
                                            "--set overrides.epochs=4 (training spec) (repeat)."),
             resume: bool = typer.Option(False, "--resume", help="Continue the interrupted sweep of this name."),
             wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the trials until it ends."),
             as_json: bool = JsonOpt) -> None:
    """Sweep hyperparameters with Ray Tune + ASHA (a Ray job running jobs/tune.py); register the best."""
    from atoll.tune import load_sweep

    load_sweep(config, set_)  # fail fast, before anything is submitted
    job_id = _submit_entrypoint("tune", config, set_, ["--resume"] if resume else [])
    if not wait:
        if as_json:
            print_json({"id": job_id})
        return
    details, view = cli_views.follow_sweep(job_id)
    done, registered = view.last("sweep_done"), view.last("registered")
    if as_json:
        print_json({"job": details, "summary": done, "registered": registered})
    if details["status"] != "SUCCEEDED":
        cli_views.job_failed_hint(job_id)
        raise typer.Exit(1)
    if not as_json:
        if done:
            cli_views.print_sweep_summary(done)
        if registered:
            cli_views.print_registered(registered, f" from trial {registered['trial']}")


# ------------------------------------------------------------------------------------------------


@app.command()
def quickstart(fast: bool = typer.Option(False, "--fast", help="Fewest epochs and trials (CI, smoke tests)."),
               down: bool = typer.Option(False, "--down/--keep", help="Stop the cluster at the end (default: keep "
                                         "the cluster and the endpoint running)."),
               config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """The whole lifecycle on this machine: cluster, data, training, sweep, registry, Serve, queries."""
    import contextlib

    from atoll import quickstart as qs

    if not as_json:
        qs.run(fast=fast, down=down, config=config)
        return
    with contextlib.redirect_stdout(sys.stderr):  # the display goes to stderr, the JSON alone to stdout
        result = qs.run(fast=fast, down=down, config=config)
    print_json(result)


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
        # escape(): a message may hold brackets ("write [lo, hi]") that rich would take for markup.
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
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
