"""`atoll up`, `atoll down`, `atoll status`: the cluster's lifecycle. Parse, call atoll.cluster, render."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from atoll.cli.common import ConfigOpt, JsonOpt, console, err_console, print_json

app = typer.Typer()


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
    from atoll import auth, cluster
    from atoll.config import load_spec

    spec = load_spec(config)
    if cloud:
        _launch(cluster.cloud_up_command(spec), dry_run)
        return
    start = time.monotonic()
    try:
        with console.status("Starting the local Ray cluster…", spinner="dots") if not as_json \
                else contextlib.nullcontext():
            info = cluster.up(spec, num_cpus=num_cpus, simulate=simulate, idle_timeout_minutes=idle_timeout)
    except KeyboardInterrupt:  # cluster.up has stopped what it had started
        err_console.print("interrupted: the cluster that was starting is stopped; nothing is left running.")
        raise typer.Exit(130) from None
    if as_json:
        print_json(info.to_dict())
        return
    if info.already_up:
        console.print(f"A cluster is already up: dashboard {info.dashboard_url} (session {info.session_name}).",
                      markup=False, highlight=False, soft_wrap=True)
        return
    if simulate:
        types = ", ".join(f"{name} x{t.min_workers}..{t.max_workers}" for name, t in spec.worker_types().items())
        console.print(f"Simulated autoscaling: worker types {types}; watch it with `atoll status --watch`.",
                      markup=False, highlight=False)
    console.print(f"[green]Cluster up[/] in {time.monotonic() - start:.1f} s\n"
                  f"  dashboard + Jobs API  {escape(info.dashboard_url)}  (token: {escape(str(auth.token_path()))})\n"
                  f"  Ray address           {escape(str(info.gcs_address))}\n"
                  f"  stop it with          atoll down", soft_wrap=True)
    if hint := cluster.ray_tools_hint(info):  # Ray's CLI and ray.init() hang on this cluster without it
        console.print(f"  Ray's own tools       {hint}", soft_wrap=True, markup=False, highlight=False)


def _launch(cmd: list[str], dry_run: bool) -> None:
    """Show a command of Ray's cluster launcher, then (unless a dry run) run it and exit with its code."""
    from atoll import cluster

    console.print(f"[bold]$ {escape(' '.join(cmd))}", soft_wrap=True)  # a command to copy: never wrapped
    if not dry_run:
        raise typer.Exit(cluster.cloud_launch(cmd))


@app.command()
def down(config: Path | None = ConfigOpt,
         cloud: bool = typer.Option(False, "--cloud", help="Run `ray down` on the file."),
         dry_run: bool = typer.Option(False, "--dry-run", help="With --cloud: print the command only.")) -> None:
    """Stop what `atoll up` started (and nothing else)."""
    from atoll import cluster
    from atoll.config import load_spec

    if cloud:
        _launch(cluster.cloud_down_command(load_spec(config)), dry_run)
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
    from atoll import cluster
    from atoll import status as cluster_status
    from atoll.config import load_spec

    info = cluster.current(load_spec(config))
    if as_json:
        print_json(cluster_status.status(info))
        return
    if hint := cluster.ray_tools_hint(info):  # a command to copy: its own line, never wrapped or cut
        console.print(f"Ray's own tools on this machine: {hint}", soft_wrap=True, markup=False, highlight=False)
    if not watch:
        console.print(_status_view(cluster_status.status(info)))
        return
    from rich.live import Live

    with Live(_status_view(cluster_status.status(info)), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(_status_view(cluster_status.status(info)), refresh=True)
        except KeyboardInterrupt:
            pass


def _status_view(st: dict[str, Any]):
    """What `atoll status` shows of :func:`atoll.status.status`'s answer."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(f"Cluster ({st['mode']}) at {st['dashboard_url']}, session {st['session']}, "
                             f"{time.strftime('%H:%M:%S')}")]
    nodes = Table("node", "type", "status", "resources (used / total)", title="Nodes", title_justify="left")
    for n in sorted(st["nodes"], key=lambda n: (not n.get("head"), n["type"], n["node_id"])):
        res = ", ".join(f"{k} {'?' if v['used'] is None else format(v['used'], 'g')}/{v['total']:g}"
                        for k, v in sorted(n["resources"].items()) if not k.endswith("memory"))
        # Both ends of the id: simulated nodes share their leading hex digits (ffff…), real ones rarely do.
        shown = f"{n['node_id'][:8]}…{n['node_id'][-4:]}" if len(n["node_id"]) > 12 else n["node_id"]
        nodes.add_row(*map(Text, (shown + (" (head)" if n.get("head") else ""), n["type"], n["status"], res)))
    parts.append(nodes)
    res = Table("resource", "available", "total", title="Resources", title_justify="left")
    for k, v in sorted(st["resources"].items()):
        scale = 2**30 if k.endswith("memory") else 1
        unit = " GiB" if scale > 1 else ""
        res.add_row(Text(k), f"{v['available'] / scale:.4g}{unit}", f"{v['total'] / scale:.4g}{unit}")
    parts.append(res)
    pending = ", ".join(f"{p.get('count', 1)} x {p['type']}" + (f" ({p['status']})" if p.get("status") else "")
                        for p in st.get("pending_nodes") or [])
    demand = ", ".join(f"{d.get('count', 1)} x {d['shape']}" for d in st["pending_demand"])
    parts.append(Text(f"Launching nodes: {pending or 'none'}\nPending demand: {demand or 'none'}"))
    for d in st.get("infeasible_demand") or []:
        parts.append(Text(f"Infeasible: {d['fits_no_node']} fits no node this cluster has or can add; that work "
                          f"will wait forever. Stop it (`atoll jobs stop ID`) or add a node type that fits.",
                          style="red"))
    for warning in st.get("warnings") or []:
        parts.append(Text(f"Warning: {warning}", style="yellow"))
    if st.get("autoscaler_events"):
        parts.append(Text("Autoscaler, recent actions:\n" + "\n".join(f"  {e}" for e in st["autoscaler_events"])))
    parts.append(Text(f"Running jobs: {', '.join(j['id'] for j in st['jobs']) or 'none'}"))
    apps = st["serve_apps"]
    parts.append(Text("Serve apps: " + (", ".join(f"{k} ({v['status']}, {v['route_prefix']})"
                                                  for k, v in apps.items()) or "none")))
    return Group(*parts)
