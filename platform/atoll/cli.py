"""The `atoll` command line: parse, call the library, render with rich. No logic of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from atoll import auth, cli_views, cluster, jobs
from atoll.cli_common import (
    ABORTS,
    ALL_HELP,
    CLICK_ERRORS,
    EXITS,
    NO_SUCH_OPTION,
    USAGE_ERRORS,
    ConfigOpt,
    JsonOpt,
    cluster_config,
    console,
    err_console,
    following,
    listing,
    print_json,
    usage_line,
)
from atoll.cli_k8s import k8s_app
from atoll.cli_models import models_app
from atoll.cli_runs import runs_app
from atoll.cli_serve import query, serve_app
from atoll.errors import AtollError, ConfigError

app = typer.Typer(help="Atoll: the whole ML lifecycle on one Ray cluster.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
jobs_app = typer.Typer(help="Ray jobs on the cluster (one Jobs API with `ray job`).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")
app.add_typer(k8s_app, name="k8s")

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


def _fmt_time(ms: Any) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


# ------------------------------------------------------------------------------------------------
# Cluster


@app.command()
def up(config: Path | None = ConfigOpt,
       cloud: bool = typer.Option(False, "--cloud", help="Run Ray's cluster launcher (`ray up`) on the file."),
       dry_run: bool = typer.Option(False, "--dry-run", help="With --cloud: print the command, run nothing."),
       num_cpus: int | None = typer.Option(None, "--num-cpus", help="Logical CPUs of the local head."),
       simulate: bool = typer.Option(False, "--simulate", help="Autoscale cluster.yaml's node types on this "
                                     "machine (Ray's autoscaler + fake multi-node provider)."),
       idle_timeout: float | None = typer.Option(None, "--idle-timeout", help="With --simulate: minutes "
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
    try:
        with console.status("Starting the local Ray cluster…", spinner="dots") if not as_json else _nullcontext():
            info = cluster.up(spec, num_cpus=num_cpus, simulate=simulate, idle_timeout_minutes=idle_timeout)
    except KeyboardInterrupt:  # cluster.up has stopped what it had started
        err_console.print("interrupted: the cluster that was starting is stopped; nothing is left running.")
        raise typer.Exit(130) from None
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

    def __exit__(self, *exc: object) -> None:
        return None


@app.command()
def down(config: Path | None = ConfigOpt,
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
def status(config: Path | None = ConfigOpt, as_json: bool = JsonOpt,
           watch: bool = typer.Option(False, "--watch", "-w", help="Refresh every 2 s until Ctrl-C."),
           interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes with --watch.")) -> None:
    """Nodes by type, resources, pending nodes and demand, autoscaler actions, jobs and Serve apps."""
    info = cluster.current(cluster.load_spec(config))
    if as_json:
        print_json(cluster.status(info))
        return
    if not watch:
        console.print(_status_view(cluster.status(info)))
        return
    from rich.live import Live

    with Live(_status_view(cluster.status(info)), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(_status_view(cluster.status(info)), refresh=True)
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


def _out(text: str) -> None:
    console.out(text, end="", highlight=False)


def follow_job(job_id: str, on_text=None) -> int:
    """Stream a job's logs to the terminal; return the exit code that matches its outcome. Ctrl-C stops
    following (exit 130); the job keeps running."""
    with following(job_id):
        details = jobs.follow(job_id, on_text or _out)
    state = details["status"]
    color = "green" if state == "SUCCEEDED" else "red"
    err_console.print(f"[{color}]Job {job_id} {state}[/]" + (f": {details['message']}" if state != "SUCCEEDED"
                                                              and details.get("message") else ""))
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
    command = list(ctx.args)
    if not command:
        raise typer.BadParameter("give the command after --, e.g. `atoll submit --wait -- python -c 'print(1)'`")
    if command[0].startswith("-"):  # a mistyped option of ours: a command never starts with a dash
        raise NO_SUCH_OPTION(command[0], ctx=ctx)
    with cluster_config(config):  # the job reads the same cluster.yaml
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
def jobs_list(all_: bool = typer.Option(False, "--all", help=f"{ALL_HELP}: also plain drivers (`ray.init` "
                                        f"scripts), not only submitted jobs."),
              as_json: bool = JsonOpt) -> None:
    """All jobs on the cluster, newest first (also those from `ray job submit`)."""
    rows = jobs.list_jobs(include_drivers=all_)
    if as_json:
        print_json(rows)
        return
    console.print(jobs_table(rows))


def jobs_table(rows: list[dict[str, Any]], width: int | None = None) -> Table:
    """Jobs as a table whose ids are never cut (they are what `jobs logs/stop` take); entrypoints are."""
    colors = {"SUCCEEDED": "green", "FAILED": "red", "RUNNING": "cyan"}
    cells = [[j["id"] or "-", f"[{colors[j['status']]}]{j['status']}[/]" if j["status"] in colors else str(j["status"]),
              _fmt_time(j["start_time"]), escape(j["entrypoint"] or "")] for j in rows]
    return listing(f"Jobs ({len(rows)})", ["id", "status", "started", "entrypoint"], cells, free="entrypoint",
                   width=width)


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
def jobs_logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="Stream until it ends."),
              tail: int | None = typer.Option(None, "--tail", "-n", min=0, help="Only the last N lines (with -f: "
                                                 "then follow).")) -> None:
    """A job's output."""
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
    state = jobs.stop(job_id)
    console.print(f"Job {job_id}: {state}")


# ------------------------------------------------------------------------------------------------
# Training


def _one_name(what: str, *names: str | None) -> str | None:
    """The one name that --name, --resume (and for a sweep --set name=) give, or None."""
    given = sorted({n for n in names if n})
    if any(n.startswith("-") for n in given):  # `--resume --json`: the option took the next flag as its value
        raise ConfigError(f"--resume and --name take the {what}'s NAME (`atoll runs list` shows them), not "
                          f"{next(n for n in given if n.startswith('-'))}.")
    if len(given) > 1:
        raise ConfigError(f"two names for the {what}: {', '.join(given)}; give one (`--resume NAME` alone "
                          f"continues NAME).")
    return given[0] if given else None


@app.command("train")
def train_cmd(spec: Path = typer.Argument(Path("jobs/configs/train.yaml"), metavar="SPEC",
                                          help="Training spec (YAML)."),
              set_: list[str] = typer.Option([], "--set", help="Override a field: --set epochs=5 (repeat)."),
              name: str | None = typer.Option(None, "--name", "--run-name", help="Name of the run (default: "
                                                 "NAME-TIMESTAMP); a name in use is refused: resume it instead."),
              resume: str | None = typer.Option(None, "--resume", metavar="NAME", help="Continue the run NAME "
                                                   "from its latest checkpoint (`atoll runs list` shows them)."),
              wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow progress until it ends."),
              config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Train a model on the cluster (a Ray job running jobs/train.py) and register it."""
    from atoll.config import load_file
    from atoll.specs import TrainSpec

    _one_name("run", name, resume)
    with cluster_config(config):
        load_file(TrainSpec, spec, set_)  # fail fast, before anything is submitted
        extra = ["--resume", resume] if resume else (["--run-name", name] if name else [])
        job_id = _submit_entrypoint("train", spec, set_, extra)
    if not wait:
        if as_json:
            print_json({"id": job_id})
        return
    with following(job_id):
        details, view = cli_views.follow_training(job_id)
    registered = view.last("registered")
    if as_json:
        print_json({"job": details, "registered": registered, "finished": view.last("finished")})
    if details["status"] != "SUCCEEDED":
        cli_views.job_failed_hint(job_id)
        raise typer.Exit(1)
    if registered and not as_json:
        cli_views.print_registered(registered)


def _submit_entrypoint(kind: str, spec: Path, overrides: list[str], extra: list[str]) -> str:
    try:
        job_id = jobs.submit_atoll_job(kind, spec, overrides, extra)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    err_console.print(f"Submitted {kind} job [bold]{job_id}[/]", soft_wrap=True)
    return job_id


# ------------------------------------------------------------------------------------------------
# Sweeps


@app.command("tune")
def tune_cmd(spec: Path = typer.Argument(Path("jobs/configs/sweep.yaml"), metavar="SPEC",
                                         help="Sweep spec (YAML)."),
             set_: list[str] = typer.Option([], "--set", help="Override a field: --set num_samples=4, "
                                            "--set overrides.epochs=4 (training spec) (repeat)."),
             name: str | None = typer.Option(None, "--name", help="Name of the sweep (default: the spec's "
                                                "`name`); a name in use is refused: resume it instead."),
             resume: str | None = typer.Option(None, "--resume", metavar="NAME", help="Continue the interrupted "
                                                  "sweep NAME; its finished trials are kept (`atoll runs list`)."),
             wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the trials until it ends."),
             config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Sweep hyperparameters with Ray Tune + ASHA (a Ray job running jobs/tune.py); register the best."""
    from atoll.tune import load_sweep

    in_set = [value for key, _, value in (o.partition("=") for o in set_) if key.strip() == "name"]
    sweep = _one_name("sweep", name, resume, *in_set)
    overrides = [*set_, f"name={sweep}"] if sweep else set_
    with cluster_config(config):
        load_sweep(spec, overrides)  # fail fast, before anything is submitted
        job_id = _submit_entrypoint("tune", spec, overrides, ["--resume"] if resume else [])
    if not wait:
        if as_json:
            print_json({"id": job_id})
        return
    with following(job_id):
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


app.command("query")(query)  # after train and tune: the order of `atoll --help` is the lifecycle's


# ------------------------------------------------------------------------------------------------


@app.command()
def quickstart(fast: bool = typer.Option(False, "--fast", help="Fewest epochs and trials (CI, smoke tests)."),
               down: bool = typer.Option(False, "--down/--keep", help="Stop the cluster at the end (default: keep "
                                         "the cluster and the endpoint running)."),
               config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """The whole lifecycle on this machine: cluster, data, training, sweep, registry, Serve, queries."""
    import contextlib

    from atoll import quickstart as qs

    if not as_json:
        qs.run(fast=fast, down=down, config=config)
        return
    with contextlib.redirect_stdout(sys.stderr):  # the display goes to stderr, the JSON alone to stdout
        result = qs.run(fast=fast, down=down, config=config)
    print_json(result)


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
