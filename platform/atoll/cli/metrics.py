"""`atoll metrics up|down|status`: a real Prometheus on 127.0.0.1 that scrapes the cluster (Ray's and Serve's
metrics, and Atoll's own). Parse, call atoll.prometheus, render."""

from __future__ import annotations

from pathlib import Path

import typer

from atoll.cli.common import ConfigOpt, JsonOpt, console, print_json

metrics_app = typer.Typer(help="Prometheus for the cluster's metrics (req/s, latency, errors of every app).",
                          no_args_is_help=True)


def _dashboard_path() -> Path:
    from atoll.serving import metrics

    return Path(metrics.__file__).with_name("grafana") / "atoll_dashboard.json"


@metrics_app.command("up")
def up(port: int | None = typer.Option(None, "--port", help="Port on 127.0.0.1 (default: 9090 when free, where "
                                       "Ray's dashboard looks for Prometheus; else a free one)."),
       scrape_interval: float = typer.Option(5.0, "--scrape-interval", min=0.5, help="Seconds between scrapes."),
       config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Start Prometheus (or reuse the running one), scraping every node of the cluster."""
    from atoll import cluster, prometheus
    from atoll.config import load_spec

    info = prometheus.up(cluster.current(load_spec(config)).session_dir, port=port,
                         scrape_interval_s=scrape_interval)
    if as_json:
        print_json(info.to_dict())
        return
    state = "already up" if info.already_up else "up"
    console.print(f"Prometheus {state}: {info.url} (pid {info.pid}), scraping the nodes in {info.sd_file} every "
                  f"{info.scrape_interval_s:g} s\n"
                  f"  data             {info.data_dir}\n"
                  f"  figures          atoll serve status [--watch]\n"
                  f"  Grafana          import {_dashboard_path()}\n"
                  f"  stop it with     atoll metrics down", markup=False, highlight=False, soft_wrap=True)


@metrics_app.command("down")
def down() -> None:
    """Stop the Prometheus that `atoll metrics up` started (by its PID; its data stays)."""
    from atoll import prometheus

    stopped = prometheus.down()
    console.print("No Prometheus started by `atoll metrics up` is running; nothing to stop." if stopped is None
                  else f"Prometheus down (pid {stopped.pid}); its data stays in {stopped.data_dir}.",
                  markup=False, highlight=False, soft_wrap=True)


@metrics_app.command("status")
def status(as_json: bool = JsonOpt) -> None:
    """Whether Prometheus runs, its URL, and the health of what it scrapes."""
    from atoll import prometheus

    info = prometheus.status()
    if as_json:
        print_json(info.to_dict() if info else None)
        return
    if info is None:
        console.print("Prometheus is not running; start it with `atoll metrics up`.")
        return
    up_count = sum(t["health"] == "up" for t in info.targets)
    console.print(f"Prometheus up: {info.url} (pid {info.pid}); {up_count} of {len(info.targets)} targets up",
                  markup=False, highlight=False, soft_wrap=True)
    for t in info.targets:
        error = f"  ({t['last_error']})" if t["last_error"] else ""
        console.print(f"  {t['health']:<8} {t['url']}{error}", markup=False, highlight=False, soft_wrap=True)
