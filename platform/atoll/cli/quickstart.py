"""`atoll quickstart`: the whole lifecycle on this machine (atoll.quickstart does it and shows it)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

from atoll.cli.common import ConfigOpt, JsonOpt, print_json

app = typer.Typer()


@app.command()
def quickstart(fast: bool = typer.Option(False, "--fast", help="Fewest epochs and trials (CI, smoke tests)."),
               down: bool = typer.Option(False, "--down/--keep", help="Stop the cluster at the end (default: keep "
                                         "the cluster and the endpoint running)."),
               task: str = typer.Option("tabular", "--task", help="Whose demo: tabular (the digits as pixel rows), "
                                        "text (a small BERT on SMS spam), image (a CNN on digit PNGs) or generate (a "
                                        "small language model writing texts, served with OpenAI's API)."),
               config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """The whole lifecycle on this machine: cluster, data, training, sweep, registry, Serve, queries."""
    from atoll import quickstart as qs

    if not as_json:
        qs.run(fast=fast, down=down, config=config, task=task)
        return
    with contextlib.redirect_stdout(sys.stderr):  # the display goes to stderr, the JSON alone to stdout
        result = qs.run(fast=fast, down=down, config=config, task=task)
    print_json(result)
