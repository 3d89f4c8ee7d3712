"""`atoll storage up|down|status|env`: the S3-compatible object store for development (SeaweedFS on
127.0.0.1). Parse, call atoll.objectstore, render; the credentials stay in their file and are never shown."""

from __future__ import annotations

import contextlib
import shlex

import typer
from rich.markup import escape

from atoll.cli.common import JsonOpt, console, print_json

storage_app = typer.Typer(help="A local S3-compatible object store (SeaweedFS) for development and tests.",
                          no_args_is_help=True)


def _use_it(info) -> str:
    bucket = info.buckets[0] if info.buckets else "atoll"
    return (f"  use it in this shell    eval \"$(atoll storage env)\"   (ATOLL_STORAGE=s3://{bucket}/storage)\n"
            f"  or in cluster.yaml      metadata.atoll: {{storage: s3://{bucket}/storage, s3: {{endpoint: "
            f"{info.endpoint}, credentials: file, credentials_file: {info.credentials_file}}}}}")


@storage_app.command("up")
def up(port: int = typer.Option(8333, "--port", help="Port of the S3 API on 127.0.0.1."),
       bucket: list[str] = typer.Option(["atoll"], "--bucket", help="Bucket to create (repeatable)."),
       as_json: bool = JsonOpt) -> None:
    """Start the store (or reuse the running one) and create its buckets."""
    from atoll import objectstore

    with console.status("Starting SeaweedFS on 127.0.0.1…", spinner="dots") if not as_json \
            else contextlib.nullcontext():
        info = objectstore.up(port=port, buckets=tuple(bucket))
    if as_json:
        print_json(info.to_dict())
        return
    state = "already up" if info.already_up else "[green]up[/]"
    console.print(f"Object store {state}: S3 API {escape(info.endpoint)}, buckets {escape(', '.join(info.buckets))}\n"
                  f"  credentials file        {escape(str(info.credentials_file))}  (owner-only; never printed)\n"
                  f"{escape(_use_it(info))}\n  stop it with            atoll storage down", soft_wrap=True)


@storage_app.command("down")
def down() -> None:
    """Stop the store started by `atoll storage up` (its data stays for the next `up`)."""
    from atoll import objectstore

    stopped = objectstore.down()
    console.print("No object store started by `atoll storage up` is running; nothing to stop." if stopped is None
                  else f"[green]Object store down[/] (pid {stopped.pid}); its data stays in "
                       f"{escape(str(stopped.data_dir))}.", soft_wrap=True)


@storage_app.command("status")
def status(as_json: bool = JsonOpt) -> None:
    """Whether the store runs, where, and its buckets."""
    from atoll import objectstore

    info = objectstore.current()
    if as_json:
        print_json(info.to_dict() if info else None)
        return
    if info is None:
        console.print("No object store is running; start one with `atoll storage up`.")
        return
    console.print(f"Object store up: S3 API {info.endpoint} (pid {info.pid}), data in {info.data_dir}\n{_use_it(info)}",
                  markup=False, soft_wrap=True)


@storage_app.command("env")
def env(bucket: str = typer.Option("atoll", "--bucket", help="Bucket of the storage root.")) -> None:
    """Print `export` lines that point Atoll at the running store (no secret among them)."""
    from atoll import objectstore
    from atoll.objectstore import ObjectStoreError

    info = objectstore.current()
    if info is None:
        raise ObjectStoreError("no object store is running; start one with `atoll storage up`.")
    values = {"ATOLL_STORAGE": f"s3://{bucket}/storage", **info.environment()}
    print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items()))
