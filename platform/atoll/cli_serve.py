"""`atoll serve ...` and `atoll query`: model endpoints from the command line. Parse, call
atoll.endpoints, render."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from atoll import cluster, endpoints
from atoll.cli_common import ConfigOpt, JsonOpt, console, err_console, print_json
from atoll.errors import ConfigError
from atoll.specs import ServeSettings

serve_app = typer.Typer(help="Serve registered models as HTTP endpoints (Ray Serve).", no_args_is_help=True)


@serve_app.command("deploy")
def deploy(ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS from the registry."),
           app: Optional[str] = typer.Option(None, "--app", help="Application name = URL path (default: NAME)."),
           replicas: Optional[str] = typer.Option(None, "--replicas", help="Autoscaling bounds MIN:MAX (or N)."),
           set_: list[str] = typer.Option([], "--set", help="Override a Serve setting of cluster.yaml for this "
                                          "app: --set max_batch_size=64 (repeat)."),
           config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Deploy a model version (or roll an app over to it); wait until it is RUNNING."""
    from atoll.config import apply_overrides

    spec = cluster.load_spec(config)
    settings = apply_overrides({}, set_)
    unknown = sorted(set(settings) - set(ServeSettings.PER_APP))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}: not a per-app Serve setting; choose from "
                          f"{', '.join(ServeSettings.PER_APP)}.")
    with err_console.status(f"Deploying {ref} …"):
        result = endpoints.deploy(ref, app=app, replicas=endpoints.parse_replicas(replicas) if replicas else None,
                                  settings=settings, spec=spec)
    if as_json:
        print_json(result)
        return
    pinned = f"{result['model']}:{result['version']}"
    origin = "" if result["requested"] == pinned else f" (from {result['requested']})"
    console.print(f"[green]{result['app']}[/] is {result['status']}: {pinned}{origin}\n"
                  f"  {result['url']}/predict   (docs: {result['url']}/docs)\n"
                  f"  playground: {result['playground']}   (all models: {result['gallery']})\n"
                  f"  atoll query {result['app']} --json '{{\"inputs\": [[...]]}}'\n"
                  f"  curl -s {result['url']}/predict -H 'Content-Type: application/json' "
                  f"-d '{{\"inputs\": [[...]]}}'", soft_wrap=True, highlight=False)


@serve_app.command("status")
def status(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Serve applications: status, model version, replicas, URL."""
    rows = endpoints.status(spec=cluster.load_spec(config))
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("No Serve apps. Deploy one with `atoll serve deploy NAME`.")
        return
    table = Table(title="Serve apps", title_justify="left")
    for col in ("app", "status", "model", "replicas", "url"):
        table.add_column(col)
    for r in rows:
        replicas = ", ".join(f"{n} {state.lower()}" for state, n in r["replicas"].items()) or "-"
        model = r["model"] or "-"
        if r["requested"] and r["requested"] != r["model"]:
            model += f" ({r['requested']})"
        table.add_row(r["app"], r["status"], model, replicas, r["url"])
    console.print(table)
    for r in rows:
        if r["status"] not in ("RUNNING", "DEPLOYING") and r["message"]:
            console.print(f"[red]{r['app']}[/]: {r['message']}", soft_wrap=True)


@serve_app.command("delete")
def delete(app: str = typer.Argument(..., help="Application name."), config: Optional[Path] = ConfigOpt) -> None:
    """Remove an application; the other apps keep serving."""
    with err_console.status(f"Deleting {app} …"):
        endpoints.delete(app, spec=cluster.load_spec(config))
    console.print(f"Deleted Serve app {app}.")


def read_rows_file(path: Path) -> dict[str, Any]:
    """A request body from a file: JSON (``{"inputs": ...}`` or a bare list of rows) or CSV with a header
    (rows sent by feature name)."""
    if not path.is_file():
        raise ConfigError(f"--file {path}: no such file.")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            try:
                rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
            except ValueError as exc:
                raise ConfigError(f"--file {path}: {exc}; every CSV value must be a number.") from None
        return {"inputs": rows}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"--file {path}: not valid JSON ({exc}).") from None
    return data if isinstance(data, dict) else {"inputs": data}


def query(app: str = typer.Argument(..., help="Serve application name (see `atoll serve status`)."),
          body: Optional[str] = typer.Option(None, "--json", help='Request body, e.g. \'{"inputs": [[0, 1, ...]]}\'.'),
          file: Optional[Path] = typer.Option(None, "--file", "-f", help="Rows from a .json or .csv file."),
          config: Optional[Path] = ConfigOpt) -> None:
    """Send rows to a model endpoint and print its JSON answer."""
    if (body is None) == (file is None):
        raise ConfigError("give the rows with exactly one of --json '{\"inputs\": [[...]]}' or --file rows.json|rows.csv.")
    if body is not None:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise ConfigError(f"--json: not valid JSON ({exc}).") from None
    else:
        payload = read_rows_file(file)
    print_json(endpoints.query(app, payload, spec=cluster.load_spec(config)))
