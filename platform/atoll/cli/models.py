"""`atoll models ...`: the model registry from the command line. Parse, call atoll.registry, render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from atoll.cli.common import ALL_HELP, ConfigOpt, JsonOpt, console, json_option, listing, print_json
from atoll.errors import ConfigError, RegistryError

models_app = typer.Typer(help="The model registry: versions, metrics, lineage and aliases.",
                         no_args_is_help=True)


def _open(config: Path | None):
    from atoll import registry
    from atoll.config import load_spec

    return registry.open_registry(load_spec(config).atoll.storage)


def _flat(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _section(title: str, data: dict[str, Any] | None):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    # A heading line, not a table title: rich wraps a title to the width of a narrow table.
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="cyan", no_wrap=True)
    table.add_column()
    for key, value in (data or {}).items():  # a foreign checkpoint's metrics and lineage: printed as they are
        table.add_row(Text(str(key)), Text(_flat(value)))
    if not data:
        table.add_row("-", "")
    return Group(Text(title, style="bold"), table)


@models_app.command("list")
def list_(name: str | None = typer.Argument(None, help="A model: list its versions instead."),
          show_all: bool = typer.Option(False, "--all", help=f"{ALL_HELP}: with NAME, also the registrations "
                                        f"that are not READY (PENDING, FAILED)."),
          config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Registered models (latest version, number of versions, aliases), or the versions of NAME."""
    if name is not None:
        _list_versions(_open(config).version_rows(name, unready=show_all), name, as_json)
        return
    if show_all:
        raise RegistryError("--all lists the registrations of one model: pass its name, e.g. "
                            "`atoll models list digits --all`.")
    rows = _open(config).list_models()
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("No models registered yet.")
        return
    cells = [[row["name"], str(row["latest_version"]), str(row["versions"]),
              ", ".join(f"@{a} → {v}" for a, v in sorted(row["aliases"].items())) or "-"] for row in rows]
    console.print(listing(f"Models ({len(rows)})", ["name", "latest", "versions", "aliases"], cells))


def _list_versions(rows: list[dict[str, Any]], name: str, as_json: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    from atoll import registry

    if as_json:
        print_json(rows)
        return
    table = Table("version", "state", "created", "metrics", "aliases / detail",
                  title=f"{name} ({len(rows)})")
    for row in rows:
        if row["state"] == registry.READY:
            table.add_row(str(row["version"]), "[green]READY[/]", Text(row["created_at"] or "-"),
                          Text(_flat(row["metrics"])), Text(", ".join(f"@{a}" for a in row["aliases"]) or "-"))
            continue
        writer = row["writer"]
        detail = row["error"] or f"being written on {writer.get('host', '?')} pid {writer.get('pid', '?')}"
        table.add_row("-", Text(row["state"], style="red" if row["state"] == registry.FAILED else "yellow"),
                      Text(row["started_at"] or "-"), Text(_flat(row["metrics"] or {})), Text(detail))
    console.print(table)


@models_app.command()
def show(ref: str = typer.Argument(..., help="NAME (latest), NAME:VERSION or NAME@ALIAS."),
         config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """One version: metrics, aliases, input schema, lineage and files."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    reg = _open(config)
    mv = reg.get(ref)
    aliases = sorted(a for a, v in reg.aliases(mv.name).items() if v == mv.version)
    if as_json:
        print_json({**mv.to_dict(), "aliases": aliases})
        return
    head = _section("Version", {"ref": mv.ref, "created": mv.created_at or "-",
                                 "aliases": ", ".join(f"@{a}" for a in aliases) or "-", "uri": mv.uri})
    files = Table("file", "size", "sha256")
    for name, meta in sorted(mv.files.items()):
        files.add_row(Text(name), f"{meta.get('size', 0):,}", str(meta.get("sha256", ""))[:16] + "…")
    schema = mv.input_schema if isinstance(mv.input_schema, dict) else \
        ({"schema": mv.input_schema} if mv.input_schema is not None else None)
    exported = {fmt: (f"{r['file']} (max |diff| {r['max_abs_diff']:.2g} on {r.get('examples', 0)} examples)"
                      if "file" in r else r.get("error", "-")) for fmt, r in mv.exports.items()}
    profile = (schema or {}).get("data", {}).get("profile") if isinstance((schema or {}).get("data"), dict) else None
    if schema and "columns" in schema:  # a table's features: kinds and levels in one line each, the profile below
        columns = schema["columns"] if schema.get("dtype") == "mixed" else []  # all numeric: features say it all
        schema = {k: v for k, v in schema.items() if k not in ("columns", "encoded", "data")} | ({
            "columns": "; ".join(f"{c['name']} ({c['kind']}{', ' + str(len(c['levels'])) + ' levels' if 'levels' in c else ''})"
                                 for c in columns)} if columns else {})
    parts = [head, "", _section("Metrics", mv.metrics), "", _section("Input schema", schema), ""]
    if profile:
        from atoll import tables

        parts += [Text("Training data", style="bold"), Text(tables.format_profile(profile)), ""]
    body = Group(*parts, _section("Lineage", mv.lineage), "", _section("Exported", exported or None), "",
                 Text("Files", style="bold"), files)
    console.print(Panel(body, title=f"[bold]{mv.ref}", expand=False))


@models_app.command()
def promote(ref: str = typer.Argument(..., help="NAME:VERSION to promote (NAME@ALIAS also works)."),
            alias: str = typer.Argument(..., help="Alias to point at it, e.g. production."),
            config: Path | None = ConfigOpt) -> None:
    """Point ALIAS at a version (moving it from the version it pointed at)."""
    mv, before = _open(config).promote(ref, alias)
    was = "" if before is None else f" (was {mv.name}:{before})"
    console.print(f"[green]{mv.name}@{alias}[/] → {mv.ref}{was}", highlight=False)


@models_app.command()
def delete(ref: str = typer.Argument(..., help="NAME:VERSION to delete."),
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
           config: Path | None = ConfigOpt) -> None:
    """Delete one version (refused while an alias points at it or a Serve app serves it); its number is never
    reused."""
    from atoll import registry
    from atoll.errors import ClusterNotUpError, RegistryError
    from atoll.serving import endpoints

    name, version = registry.versioned_ref(ref, "`atoll models delete`")
    reg = _open(config)
    reg.deletable(name, version)  # fail on an unknown version before asking (a tampered one is deletable)
    try:  # a replica that starts later (autoscaling, a lost node) must still find its version
        serving = endpoints.apps_serving(reg, name, version)
    except ClusterNotUpError:
        serving = []  # no cluster answers: no app runs
    if serving:
        raise RegistryError(f"cannot delete {name}:{version}: Serve app {serving[0]!r} serves it. Roll the app "
                            f"over first (`atoll serve deploy {name}:OTHER --app {serving[0]}`) or delete it "
                            f"(`atoll serve delete {serving[0]}`).")
    if not yes:
        typer.confirm(f"Delete {name}:{version}?", abort=True)
    reg.delete(name, version)
    console.print(f"Deleted {name}:{version}.", highlight=False)


@models_app.command()
def unalias(name: str = typer.Argument(..., help="The model."),
            alias: str = typer.Argument(..., help="The alias to remove, e.g. staging."),
            config: Path | None = ConfigOpt) -> None:
    """Remove an alias (the version it pointed at stays)."""
    reg = _open(config)
    before = reg.aliases(name).get(alias)
    reg.remove_alias(name, alias)
    console.print(f"Removed {name}@{alias} (it pointed at {name}:{before}).", highlight=False)


_OutputOpt = typer.Option(None, "--output", "-o", help="Folder to write the files to (default: ./NAME-VERSION); "
                          "must be new or empty.")
_CheckpointArg = typer.Argument(..., help="A local checkpoint folder (model.safetensors + atoll.json), e.g. a checkpoint_* "
                                "folder of a run trained elsewhere.")


@models_app.command()
def download(ref: str = typer.Argument(..., help="NAME:VERSION (NAME@ALIAS, or NAME for the latest, also work)."),
             output: Path | None = _OutputOpt, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Copy a version's files and manifest to a local folder, each checked against its recorded sha256."""
    reg = _open(config)
    mv = reg.get(ref)
    dest = output or Path(f"{mv.name}-{mv.version}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"--output {dest}: exists and is not an empty folder; choose a new one.")
    path = reg.local_copy(mv, dest)
    if as_json:
        print_json({"ref": mv.ref, "path": path, "files": sorted(mv.files)})
        return
    console.print(f"Downloaded {mv.ref} ({len(mv.files)} files, sha256 checked) to {path}", highlight=False,
                  markup=False, soft_wrap=True)


@models_app.command()
def export(ref: str = typer.Argument(..., help="NAME:VERSION (NAME@ALIAS, or NAME for the latest, also work)."),
           fmt: str = typer.Option("onnx", "--format", help="onnx (one self-contained file, for ONNX "
                                   "Runtime), pt2 (a torch.export program, for torch alone) or, for a language model, "
                                   "hf (a Hugging Face folder)."),
           output: Path | None = _OutputOpt, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Write a version's exported model, its preprocessing (JSON) and a README of its inputs and outputs to a
    folder another team can use without Atoll."""
    from atoll import exports

    reg = _open(config)
    mv = reg.get(ref)
    dest = exports.hand_over(reg, mv, fmt, output or Path(f"{mv.name}-{mv.version}-{fmt}"))
    if as_json:
        print_json({"ref": mv.ref, "format": fmt, "path": str(dest), "files": sorted(p.name for p in dest.iterdir()),
                    "parity": mv.exports.get(fmt)})
        return
    parity = mv.exports.get(fmt) or {}
    if fmt == exports.HF_FORMAT:
        console.print(f"Exported {mv.ref} as a Hugging Face folder to {dest} (reloaded at registration: max |diff| "
                      f"{parity.get('max_abs_diff', float('nan')):.2g}); load it with "
                      f"AutoModelForCausalLM.from_pretrained({str(dest)!r})", highlight=False, markup=False, soft_wrap=True)
        return
    console.print(f"Exported {mv.ref} as {exports.FILES[fmt]} to {dest} (max |diff| from PyTorch "
                  f"{parity.get('max_abs_diff', float('nan')):.2g} on {parity.get('examples', 0)} held-out examples; "
                  f"README.md says how to run it)", highlight=False, markup=False, soft_wrap=True)


@models_app.command()
def register(name: str = typer.Argument(..., help="Model name; the checkpoint becomes its next version."),
             checkpoint: Path = _CheckpointArg,
             metrics: str | None = typer.Option(None, "--metrics", help='Metrics to record, as JSON: '
                                                '\'{"val_accuracy": 0.97}\' (default: the checkpoint\'s own).'),
             examples: str | None = typer.Option(None, "--examples", help="A dataset (Parquet or CSV, a path or "
                                                 "s3://...) with the checkpoint's feature and label columns: its "
                                                 "rows are the playground's examples (default: none; the dataset "
                                                 "the checkpoint names is never read)."),
             config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Register a checkpoint trained elsewhere as a new version (refused unless it is a whole checkpoint whose
    model type cluster.yaml's metadata.atoll.model_types allows)."""
    from atoll import runs
    from atoll.config import load_spec
    from atoll.model_types import AllowList

    example = '{"val_accuracy": 0.97}'
    recorded = None if metrics is None else json_option(metrics, "--metrics", example)
    if recorded is not None and not isinstance(recorded, dict):
        raise ConfigError(f"--metrics: expected a JSON object, e.g. --metrics '{example}'.")
    spec = load_spec(config)
    if examples is not None and "://" not in examples:
        if not Path(examples).expanduser().exists():
            raise ConfigError(f"--examples {examples}: no such file or folder; name a Parquet or CSV dataset with "
                              f"the checkpoint's feature and label columns, or leave the option out.")
        examples = str(Path(examples).expanduser().resolve())  # relative to here, not to the storage root
    mv = runs.register_checkpoint(spec.atoll.storage, name, checkpoint, recorded, allowed=AllowList.from_spec(spec),
                                  examples=examples)
    if as_json:
        print_json(mv.to_dict())
        return
    console.print(f"[green]Registered[/] {mv.ref} from {escape(str(checkpoint))}\n  atoll models show {mv.ref}",
                  highlight=False, soft_wrap=True)
