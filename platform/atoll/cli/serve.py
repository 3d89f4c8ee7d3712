"""`atoll serve ...` and `atoll query`: model endpoints from the command line. Parse, call
atoll.serving.endpoints, render."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from atoll.cli.common import ConfigOpt, JsonOpt, console, err_console, json_option, listing, print_json
from atoll.errors import ConfigError

serve_app = typer.Typer(help="Serve registered models as HTTP endpoints (Ray Serve).", no_args_is_help=True)
query_app = typer.Typer()  # `atoll query`, a top-level command


@serve_app.command("deploy")
def deploy(ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS from the registry."),
           app: str | None = typer.Option(None, "--app", help="Application name = URL path (default: NAME)."),
           replicas: str | None = typer.Option(None, "--replicas", help="Autoscaling bounds MIN:MAX (or N)."),
           set_: list[str] = typer.Option([], "--set", help="Override a Serve setting of cluster.yaml for this "
                                          "app: --set max_batch_size=64 (repeat)."),
           public: bool = typer.Option(False, "--public", help="Serve without an API key even if the app "
                                       "had one (without it, a redeploy keeps the running app's key)."),
           log_requests: float | None = typer.Option(None, "--log-requests", metavar="FRACTION", help="Keep this "
                                                     "share of requests (0 < FRACTION <= 1) in the request log under "
                                                     "the storage root (inputs, outputs, latency; never headers or "
                                                     "keys); retention: --set log_retention_hours=168."),
           canary: float | None = typer.Option(None, "--canary", metavar="PERCENT", help="Run the version beside "
                                               "the one --app serves and send it this share of its requests (then "
                                               "`atoll serve promote APP` or `atoll serve rollback APP`)."),
           auto_rollback: bool = typer.Option(False, "--auto-rollback", help="With --canary: stop the canary's "
                                              "traffic at once when its error rate exceeds the live version's by 5 "
                                              "points or its p99 exceeds 1.5x the live p99 + 50 ms (last 60 s, at "
                                              "least 20 of its requests)."),
           config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Deploy a model version (or roll an app over to it, or run it as a canary); wait until it is RUNNING."""
    from atoll.config import apply_overrides, load_spec
    from atoll.serving import endpoints

    spec = load_spec(config)
    settings = apply_overrides({}, set_)
    if log_requests is not None:
        if not 0 < log_requests <= 1:
            raise ConfigError(f"--log-requests {log_requests:g}: give the share of requests to keep, more than 0 "
                              f"and at most 1 (e.g. 0.1 for one in ten).")
        settings["log_requests"] = log_requests
    if auto_rollback and canary is None:
        raise ConfigError("--auto-rollback watches a canary: add --canary PERCENT (e.g. --canary 10).")
    if canary is not None:
        if not app:
            raise ConfigError("--canary needs --app: the live app whose traffic the new version shares.")
        with err_console.status(f"Starting {escape(ref)} as a canary of {escape(app)} …"):
            moved = endpoints.deploy_canary(ref, app=app, percent=canary, auto_rollback=auto_rollback,
                                            settings=settings, spec=spec)
        if as_json:
            print_json(moved)
            return
        console.print(f"{moved['app']}: {moved['canary']} takes {moved['percent']:g}% of requests, {moved['live']} "
                      f"the rest{' (auto-rollback on)' if moved['auto_rollback'] else ''}; every answer names its "
                      f"version (x-atoll-version).\n  then: atoll serve promote {moved['app']}   or   atoll serve "
                      f"rollback {moved['app']}", soft_wrap=True, highlight=False, markup=False)
        return
    with err_console.status(f"Deploying {escape(ref)} …"):
        result = endpoints.deploy(ref, app=app, replicas=endpoints.parse_replicas(replicas) if replicas else None,
                                  settings=settings, spec=spec, public=public)
    if as_json:
        print_json(result)
        return
    console.print(deploy_summary(result, endpoints.curl_auth(spec.atoll.serve, result["keyed"])), soft_wrap=True,
                  highlight=False, markup=False)
    console.print(key_note(result["api_key"], spec.atoll.serve.api_key_env), soft_wrap=True, highlight=False,
                  markup=False)


def key_note(what: str, variable: str) -> str:
    """One line saying what a deploy did with the app's API key (``what``: one of endpoints.KEY_*)."""
    from atoll.serving import endpoints

    return {endpoints.KEY_NEW: f"API key: required (from ${variable}).",
            endpoints.KEY_KEPT: f"API key: required, the running app's key kept (${variable} is not set here; set "
                                f"it to change the key, or deploy with --public to remove it).",
            endpoints.KEY_REMOVED: "API key: REMOVED (--public): the app answers anyone now.",
            endpoints.KEY_NONE: f"API key: none, the app is public (set ${variable} when deploying to require one)."
            }[what]


def deploy_summary(result: dict[str, Any], auth: str) -> str:
    """What a deploy prints: its live routes and how to call it (``auth``: the curl header for the key, which
    names the variable, never the key)."""
    pinned = f"{result['model']}:{result['version']}"
    origin = "" if result["requested"] == pinned else f" (from {result['requested']})"
    return (f"{result['app']} is {result['status']}: {pinned}{origin}\n"
            f"  predict:    POST {result['url']}/predict   (schema: {result['url']}/openapi.json)\n"
            f"  playground: {result['playground']}   (all models: {result['gallery']})\n"
            f"  logs:       atoll serve logs {result['app']}\n"
            f"  atoll query {result['app']} -d '{{\"inputs\": [[...]]}}'\n"
            f"  curl -s {result['url']}/predict -H 'Content-Type: application/json'{auth} "
            f"-d '{{\"inputs\": [[...]]}}'")


@serve_app.command("promote")
def promote(app: str = typer.Argument(..., help="Application name."), config: Path | None = ConfigOpt,
            as_json: bool = JsonOpt) -> None:
    """Move all of an app's traffic to its canary's version (no request fails), and remove the canary."""
    _move_canary("promote", app, config, as_json)


@serve_app.command("rollback")
def rollback(app: str = typer.Argument(..., help="Application name."), config: Path | None = ConfigOpt,
             as_json: bool = JsonOpt) -> None:
    """Remove an app's canary: its traffic goes back to the live version (no request fails)."""
    _move_canary("rollback", app, config, as_json)


def _move_canary(move: str, app: str, config: Path | None, as_json: bool) -> None:
    from atoll.config import load_spec
    from atoll.serving import endpoints

    with err_console.status(f"{'Promoting' if move == 'promote' else 'Rolling back'} the canary of {escape(app)} …"):
        moved = getattr(endpoints, move)(app, spec=load_spec(config))
    if as_json:
        print_json(moved)
    elif move == "promote":
        console.print(f"{moved['app']} serves {moved['live']} (was {moved['previous']}).", highlight=False,
                      markup=False)
    else:
        console.print(f"{moved['app']} serves {moved['live']} only; canary {moved['removed']} removed.",
                      highlight=False, markup=False)


@serve_app.command("status")
def status(config: Path | None = ConfigOpt, as_json: bool = JsonOpt,
           watch: bool = typer.Option(False, "--watch", "-w", help="Refresh every --interval seconds (Ctrl-C stops)."),
           interval: float = typer.Option(2.0, "--interval", min=0.5, help="Seconds between refreshes of --watch."),
           window: str = typer.Option("2m", "--window", help="Traffic figures over this last stretch (Prometheus "
                                      "duration: 1m, 5m, 1h).")) -> None:
    """Serve applications: status, model version, replicas, URL, and per app and version req/s, p50/p99 latency and
    error rate (from `atoll metrics up`'s Prometheus)."""
    from atoll.config import load_spec

    spec = load_spec(config)
    if as_json:
        print_json(_status_rows(spec, window)[0])
        return
    if not watch:
        console.print(_status_view(*_status_rows(spec, window)))
        return
    from rich.live import Live

    with Live(_status_view(*_status_rows(spec, window)), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(_status_view(*_status_rows(spec, window)), refresh=True)
        except KeyboardInterrupt:
            pass


def _status_rows(spec: Any, window: str) -> tuple[list[dict[str, Any]], str | None]:
    from atoll import prometheus
    from atoll.serving import endpoints

    rows = endpoints.status(spec=spec)
    figures, note = prometheus.traffic(window) if rows else (None, None)
    return prometheus.with_traffic(rows, figures), note


def _figure(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return {"rps": f"{value:.2f}", "ms": f"{value:.1f}", "share": f"{100 * value:.1f}%"}[kind]


def _traffic_cells(t: dict[str, Any] | None) -> list[str]:
    if t is None:
        return ["?"] * 4
    return [_figure(t.get("rps"), "rps"), _figure(t.get("p50_ms"), "ms"), _figure(t.get("p99_ms"), "ms"),
            _figure(t.get("error_rate"), "share")]


def _status_view(rows: list[dict[str, Any]], note: str | None) -> Any:
    """The status table, the failing apps' messages and the note on missing figures, as one renderable."""
    from rich.console import Group
    from rich.text import Text

    if not rows:
        return Text("No Serve apps. Deploy one with `atoll serve deploy NAME`.")
    wide = console.width >= 150  # else the URLs go below the table, whole (a cut URL is no use)
    cells = []
    for r in rows:
        replicas = ", ".join(f"{n} {state.lower()}" for state, n in r["replicas"].items()) or "-"
        model = r["model"] or "-"
        if wide and r["requested"] and r["requested"] != r["model"]:
            model += f" ({r['requested']})"
        cells.append([r["app"], r["status"], model, replicas, *_traffic_cells(r["traffic"]), *([r["url"]] * wide)])
        can = r.get("canary")
        for other, figures in sorted(r["other_versions"].items()):
            if not (can and other == can["model"]):
                cells.append(["", "", f"└ {other}", "", *_traffic_cells(figures), *([""] * wide)])
        if can:
            share = "rolled back" if can["rolled_back"] else f"{can['percent']:g}%"
            replicas = ", ".join(f"{n} {state.lower()}" for state, n in can["replicas"].items()) or "-"
            cells.append(["", can["status"], f"└ {can['model']} (canary, {share})", replicas,
                          *_traffic_cells(r["other_versions"].get(can["model"], {})), *([""] * wide)])
    header = ["app", "status", "model", "replicas", "req/s", "p50 ms", "p99 ms", "errors", *(["url"] * wide)]
    parts: list[Any] = [listing("Serve apps", header, cells, free="replicas")]
    if not wide:
        parts += [Text(f"{r['app']}: {r['url']}") for r in rows]
    for r in rows:
        if r["status"] not in ("RUNNING", "DEPLOYING") and r["message"]:
            parts.append(Text.assemble((r["app"], "red"), f": {r['message']}"))
        if (r.get("canary") or {}).get("rolled_back"):
            parts.append(Text.assemble((r["app"], "red"), f": canary {r['canary']['model']} rolled back automatically"
                                       f" ({r['canary']['rolled_back']}); `atoll serve rollback {r['app']}` removes "
                                       f"its replicas."))
    serving = {r.get("ingress") for r in rows} - {None}
    if serving:
        parts.append(Text("ingress: " + ", ".join(sorted(serving)) + {
            "haproxy": " (Ray's HAProxy, straight to each replica)", "proxy": " (Serve's Python proxy)"}.get(
            next(iter(serving)), "") * (len(serving) == 1), style="dim"))
    if note:
        parts.append(Text(note, style="dim"))
    return Group(*parts)


@serve_app.command("drift")
def drift(app: str = typer.Argument(..., help="Application name."),
          since: float | None = typer.Option(None, "--since", metavar="HOURS", min=0, help="Only requests of the "
                                             "last HOURS hours (default: all the log keeps)."),
          threshold: float = typer.Option(0.2, "--threshold", min=0, help="Flag a feature whose population stability "
                                          "index is above this (0.2: the usual mark of a significant shift)."),
          plot: Path | None = typer.Option(None, "--plot", help="Also draw training vs live distributions, one "
                                           "panel per feature, into this PNG."),
          config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Compare an app's logged inputs (see deploy --log-requests) with its version's training profile: PSI and a
    chi-square test per feature; features past the threshold are flagged."""
    from rich.text import Text

    from atoll import drift as drifts
    from atoll.config import load_spec

    result = drifts.report(app, since_hours=since, threshold=threshold, spec=load_spec(config))
    if plot is not None:
        result["plot"] = drifts.plot(result, plot)
    if as_json:
        print_json({**result, "features": [{k: v for k, v in f.items() if k not in ("bins", "training_share",
                                            "live_share")} for f in result["features"]]})
        return
    rows = [[f["feature"], f["kind"], f"{f['psi']:.3f}", f"{f['statistic']:.1f}", f"{f['p_value']:.3g}",
             Text("FLAGGED", style="bold red") if f["flagged"] else Text("-")]
            for f in sorted(result["features"], key=lambda f: -f["psi"])]
    console.print(listing(f"Drift of {result['app']} ({result['model']}): {result['requests']} logged requests, "
                          f"{result['rows']} rows", ["feature", "kind", "PSI", "chi²", "p-value", "flagged"], rows))
    flagged = ", ".join(result["flagged"]) or "none"
    console.print(f"Flagged (PSI > {threshold:g}): {flagged}", markup=False, highlight=False)
    if plot is not None:
        console.print(f"Plot: {result['plot']}", markup=False, highlight=False)


@serve_app.command("delete")
def delete(app: str = typer.Argument(..., help="Application name."), config: Path | None = ConfigOpt) -> None:
    """Remove an application; the other apps keep serving."""
    from atoll.config import load_spec
    from atoll.serving import endpoints

    with err_console.status(f"Deleting {escape(app)} …"):
        endpoints.delete(app, spec=load_spec(config))
    console.print(f"Deleted Serve app {app}.", markup=False, highlight=False)


@query_app.command()
def query(app: str = typer.Argument(..., help="Serve application name (see `atoll serve status`)."),
          body: str | None = typer.Option(None, "--body", "-d", help='Request body, e.g. '
                                             '\'{"inputs": [[0, 1, ...]]}\' (as curl -d).'),
          file: Path | None = typer.Option(None, "--file", help="Rows from a .json or .csv file."),
          config: Path | None = ConfigOpt,
          as_json: bool = typer.Option(False, "--json", help="Print JSON (what query always prints).")) -> None:
    """Send rows to a model endpoint and print its JSON answer."""
    from atoll.config import load_spec
    from atoll.serving import client

    if (body is None) == (file is None):
        raise ConfigError("give the rows with exactly one of -d/--body '{\"inputs\": [[...]]}' or "
                          "--file rows.json|rows.csv.")
    payload = json_option(body, "--body", '{"inputs": [[0, 1]]}') if body is not None else client.read_rows_file(file)
    print_json(client.query(app, payload, spec=load_spec(config)))


@serve_app.command("logs")
def logs(app: str = typer.Argument(..., help="Application name."),
         tail: int = typer.Option(100, "--tail", "-n", min=1, help="Lines from the end of each replica's log."),
         config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """The logs of an app's replicas (Serve's own lines, requests, what the model prints), on every node."""
    from atoll import cluster
    from atoll.config import load_spec
    from atoll.serving import logs as serve_logs

    found = serve_logs.replica_logs(app, lines=tail, info=cluster.current(load_spec(config)))
    if as_json:
        print_json(found)
        return
    if not found:
        console.print(f"No replica logs of {app} yet (its replicas may still be starting: `atoll serve status`).",
                      markup=False, highlight=False)
    for entry in found:
        console.print(f"==> node {entry['node_id'][:12]}: {entry['file']} <==", style="bold", highlight=False,
                      markup=False, soft_wrap=True)
        console.out(entry["text"], end="" if entry["text"].endswith("\n") else "\n", highlight=False)
