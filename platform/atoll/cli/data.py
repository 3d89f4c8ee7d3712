"""`atoll data profile PATH`: a table's columns as training would see them (kind, gaps, levels or range,
warnings), read on this machine. Parse, call atoll.data, render."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from atoll.cli.common import JsonOpt, console, print_json

data_app = typer.Typer(help="Look at a dataset before training on it.", no_args_is_help=True)


@data_app.command("profile")
def profile(path: str = typer.Argument(..., help="Parquet/CSV file or folder, local or s3:// / gs://, or demo:NAME."),
            label: str | None = typer.Option(None, "--label", help="The label column (default: `label`, when the "
                                             "table has one)."),
            exclude: list[str] = typer.Option([], "--exclude", help="A column to leave out (repeatable)."),
            categorical: list[str] = typer.Option([], "--categorical", help="A column to take as categories "
                                                  "(repeatable), as dataset.categorical does."),
            numeric: list[str] = typer.Option([], "--numeric", help="A column to take as numbers (repeatable)."),
            as_json: bool = JsonOpt) -> None:
    """One line per column: inferred kind, missing share, levels or range, and warnings (a constant column, an
    id-like column unique per row, a label class under 5 rows)."""
    from atoll import config, data, tables

    uri = data.resolve_path(path, config.load_spec().atoll.storage) if path.startswith(data.DEMO_PREFIX) else path
    found = data.profile_path(uri, label or "label", exclude=exclude, categorical=categorical, numeric=numeric,
                              label_required=label is not None)
    if as_json:
        print_json(found)
        return
    table = Table(title=f"{path}: {found['rows']:,} rows ({found['format']})")
    for name in ("column", "kind", "missing", "levels / range", "warnings"):
        table.add_column(name, overflow="fold")
    for entry in found["columns"]:
        missing = "-" if entry["missing"] is None else f"{entry['missing']:.1%}"
        table.add_row(Text(entry["column"]), Text(entry["kind"]), missing, Text(tables.summary(entry)),
                      Text("; ".join(entry["warnings"]), style="yellow"))
    console.print(table)
