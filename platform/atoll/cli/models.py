"""`atoll models ...`: the model registry from the command line. Parse, call atoll.registry, render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from atoll.cli.common import (
    ALL_HELP,
    ConfigOpt,
    JsonOpt,
    cluster_config,
    console,
    err_console,
    following,
    json_option,
    listing,
    print_json,
)
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
    evaluations = reg.evaluations(mv.name, mv.version)
    if as_json:
        print_json({**mv.to_dict(), "aliases": aliases, "evaluations": evaluations})
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
                 _evaluations(evaluations), "", Text("Files", style="bold"), files)
    console.print(Panel(body, title=f"[bold]{mv.ref}", expand=False))


def _evaluations(records: list[dict[str, Any]]):
    from atoll import evaluation

    rows = {}
    for r in records:  # one line each: when, on what (the fingerprint the gate matches), the figures, the job
        dataset = r.get("dataset") or {}
        rows[str(r.get("created_at"))] = (f"{evaluation.summary(r)}  on {dataset.get('path')} "
                                          f"({dataset.get('fingerprint')}, {r.get('rows', 0):,} rows; job "
                                          f"{r.get('job') or '-'})")
    return _section("Evaluations", rows or None)


def _evaluate(ref: str, data: str, runtime: str = "auto", as_json: bool = False) -> dict[str, Any]:
    """Submit the evaluation job, follow it with a bar of rows, and return its stored record (exit 1 if it failed)."""
    from atoll import api, jobs, progress

    job_id = api.evaluate(ref, data, runtime=runtime, wait=False)["job"]
    err_console.print(f"Submitted evaluate job [bold]{escape(job_id)}[/] ({escape(ref)} on {escape(data)})", soft_wrap=True)
    with following(job_id):
        details, events = progress.follow_prediction(job_id)
    done = jobs.last_event(events, "evaluated")
    if details["status"] != "SUCCEEDED" or done is None:
        if as_json:
            print_json({"job": details, "evaluation": None})
        progress.job_failed_hint(job_id)
        raise typer.Exit(1)
    return done["record"]


_RuntimeOpt = typer.Option("auto", "--runtime", help="auto, torch or onnx, as for `atoll predict`.")


@models_app.command()
def promote(ref: str = typer.Argument(..., help="NAME:VERSION to promote (NAME@ALIAS also works)."),
            alias: str = typer.Argument(..., help="Alias to point at it, e.g. production."),
            gate: bool = typer.Option(False, "--gate", help="Move the alias only if the version beats the alias's "
                                      "current one on the same evaluation data (the task's objective) and meets "
                                      "the thresholds (its spec's gate: section, --min, --max, --max-regression)."),
            min_: list[str] = typer.Option([], "--min", metavar="METRIC=VALUE", help="With --gate: the lowest the "
                                           "version's evaluation may show, e.g. --min f1=0.9 (repeat)."),
            max_: list[str] = typer.Option([], "--max", metavar="METRIC=VALUE", help="With --gate: the highest, e.g. "
                                           "--max rmse=60 (repeat)."),
            max_regression: float | None = typer.Option(None, "--max-regression", min=0, help="With --gate: how much "
                                                        "worse than the current version it may be on the objective "
                                                        "(default: it must be better)."),
            data: str | None = typer.Option(None, "--data", "-d", help="With --gate: the evaluation data; a side "
                                            "without an evaluation on it is evaluated first (a Ray job)."),
            runtime: str = _RuntimeOpt, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Point ALIAS at a version (moving it from the version it pointed at); with --gate, only if it is better."""
    if not gate:
        given = [o for o, v in (("--min", min_), ("--max", max_), ("--max-regression", max_regression),
                                ("--data", data)) if v]
        if given:
            raise ConfigError(f"{given[0]} is a condition of the promotion gate: add --gate (`atoll models promote "
                              f"{ref} {alias} --gate {given[0]} ...`).")
        mv, before = _open(config).promote(ref, alias)
        was = "" if before is None else f" (was {mv.name}:{before})"
        console.print(f"[green]{mv.name}@{alias}[/] → {mv.ref}{was}", highlight=False)
        return
    _gated(ref, alias, min_, max_, max_regression, data, runtime, config, as_json)


def _gated(ref: str, alias: str, min_: list[str], max_: list[str], max_regression: float | None, data: str | None,
           runtime: str, config: Path | None, as_json: bool) -> None:
    from atoll.evaluation import gate
    from atoll.specs import GateSpec

    cli = GateSpec(min=gate.parse_bounds(min_, "--min"), max=gate.parse_bounds(max_, "--max"),
                   max_regression=max_regression)
    with cluster_config(config):
        result = gate.judge(_open(config), ref, alias, cli=cli, data=data,
                            evaluate=lambda mv, path: _evaluate(mv.ref, path, runtime))
    if as_json:
        print_json(result)
        return
    name = ref.split(":")[0].split("@")[0]
    if not result["moved"] and result["decision"] is None:
        console.print(f"{name}@{alias} already points at {result['ref']}: nothing to judge.", highlight=False)
        return
    was = "" if result["before"] is None else f" (was {name}:{result['before']})"
    passed = "; ".join(_passed_line(c) for c in result["decision"]["checks"])
    console.print(f"[green]{name}@{alias}[/] → {result['ref']}{was}: gate passed"
                  f"{': ' + escape(passed) if passed else ' (no current version, no thresholds)'}", highlight=False)


def _passed_line(check: dict[str, Any]) -> str:
    if check["check"] == "objective":
        return f"{check['metric']} {check['value']:.6g} vs {check['current']:.6g}"
    return f"{check['metric']} {check['value']:.6g} {'≥' if check['check'] == 'min' else '≤'} {check['bound']:.6g}"


@models_app.command()
def evaluate(ref: str = typer.Argument(..., help="NAME:VERSION (NAME@ALIAS, or NAME for the latest, also work)."),
             data: str = typer.Option(..., "--data", "-d", help="Labelled rows: Parquet or CSV (a file or folder, a "
                                      "path or an object-store URI) with the version's inputs and label column."),
             runtime: str = _RuntimeOpt, config: Path | None = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Score a version on labelled data (a Ray job: batch prediction, then the task's metrics) and keep the record
    beside it (`atoll models show` lists them; `promote --gate` compares them)."""
    from atoll import evaluation

    with cluster_config(config):
        record = _evaluate(ref, data, runtime, as_json)
    if as_json:
        print_json(record)
        return
    dataset = record["dataset"]
    console.print(f"Evaluated {record['model']}:{record['version']} on {dataset['path']} ({dataset['fingerprint']}, "
                  f"{record['rows']:,} rows): {evaluation.summary(record)}\n  atoll models show "
                  f"{record['model']}:{record['version']}", highlight=False, markup=False, soft_wrap=True)


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
