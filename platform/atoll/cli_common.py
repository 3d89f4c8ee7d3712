"""What every `atoll` sub-command shares: consoles, the common options, JSON output."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

ConfigOpt = typer.Option(None, "--config", "-c", help="cluster.yaml to use (default: ./cluster.yaml).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))
