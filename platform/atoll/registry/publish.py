"""Publishing a registration, the write side of :meth:`~atoll.registry.store.Registry.register`: the
checkpoint folder it copies from (checked before anything is written), the staging folder that holds its
PENDING manifest from the first write on, the claim of a version number (an atomic rename on a local
filesystem, the first empty ``versions/N/`` on an object store), and what a failed or crashed registration
leaves (a FAILED manifest; staging folders removed by age alone)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from atoll.errors import RegistryError
from atoll.registry.folders import Folders
from atoll.registry.manifest import (
    CHECKPOINT_META,
    FAILED,
    MANIFEST,
    WEIGHTS,
    _escaping_file,
    _inside,
    _now,
    _seal,
    weights_file,
)
from atoll.registry.writers import STALE_STAGING_S, _writer_died

#: The object that claims ``versions/N/`` on S3 (its staging id and writer), written with ``If-None-Match: *``.
CLAIM = ".claim"

# -- the checkpoint ---------------------------------------------------------------------------------


def checkpoint_files(src_fs: pafs.FileSystem, src: str, shown: str) -> list[str]:
    """The files of a checkpoint folder, relative to it; refused without weights or with a file name a
    version folder cannot hold."""
    info = src_fs.get_file_info(src)
    if info.type != pafs.FileType.Directory:
        what = "is a file, not a directory" if info.type == pafs.FileType.File else "does not exist"
        raise RegistryError(f"checkpoint directory {shown} {what}; pass the folder a training run wrote "
                            f"(it holds {WEIGHTS} and {CHECKPOINT_META}).")
    listing = src_fs.get_file_info(pafs.FileSelector(src, recursive=True))
    files = sorted(posixpath.relpath(i.path, src) for i in listing if i.type == pafs.FileType.File)
    if weights_file(files) is None:
        raise RegistryError(f"checkpoint directory {shown} has no {WEIGHTS}; save the weights there with "
                            f"safetensors.torch.save_file(model.state_dict(), '{posixpath.join(src, WEIGHTS)}') "
                            f"(or torch.save(...) to model.pt).")
    if MANIFEST in files:
        raise RegistryError(f"checkpoint directory {shown} holds a {MANIFEST}, a name the registry "
                            f"reserves for its own manifest; rename or remove that file.")
    for rel in files:
        _inside(src, rel, bad_checkpoint_file(shown, rel))
    return files


def bad_checkpoint_file(shown: str, rel: str) -> Callable[[str], RegistryError]:
    return lambda reason: RegistryError(f"checkpoint directory {shown}: the file name {rel!r} {reason}, "
                                        f"which a version folder cannot hold; rename or remove that file.")


def checkpoint_meta(src_fs: pafs.FileSystem, src: str) -> Any:
    """The parsed ``atoll.json`` of a checkpoint folder."""
    try:
        with src_fs.open_input_stream(posixpath.join(src, CHECKPOINT_META), compression=None) as f:
            return json.loads(f.read())
    except ValueError as exc:
        raise RegistryError(f"{posixpath.join(src, CHECKPOINT_META)}: invalid JSON ({exc}); "
                            f"rewrite it or remove it from the checkpoint.") from None


# -- staging ----------------------------------------------------------------------------------------


def open_staging(folders: Folders, name: str, manifest: dict[str, Any]) -> str:
    """Create ``.staging/<id>/`` holding the PENDING manifest; return its path."""
    staging = posixpath.join(folders.staging_root(name), uuid.uuid4().hex)
    payload = json.dumps(_seal(manifest), indent=2).encode()
    if not folders.local:
        folders.write_bytes(posixpath.join(staging, MANIFEST), payload)  # one PUT: whole or absent
        return staging
    # Built hidden, then renamed into place: a staging folder never lacks the name of its writer.
    hidden = posixpath.join(folders.staging_root(name), f".{posixpath.basename(staging)}.tmp")
    folders.write_bytes(posixpath.join(hidden, MANIFEST), payload)
    os.rename(hidden, staging)
    return staging


def fail_staging(folders: Folders, staging: str, manifest: dict[str, Any], exc: BaseException) -> None:
    """Best effort: mark the registration FAILED with its error and drop the staged files."""
    with contextlib.suppress(Exception):  # never hide the error that got us here
        if folders.fs.get_file_info(staging).type == pafs.FileType.NotFound:
            return  # published just before the error, or cleaned by someone else
        failed = {**manifest, "status": FAILED, "version": None, "failed_at": _now(),
                  "error": f"{type(exc).__name__}: {exc}"[:500]}
        folders.write_json_atomic(posixpath.join(staging, MANIFEST), _seal(failed))
        folders.empty_dir(staging, keep=MANIFEST)


def clean_stale_staging(folders: Folders, name: str) -> None:
    """Remove staging folders untouched for ``STALE_STAGING_S`` (crashed or FAILED); ignore the rest."""
    for entry in folders.listing(folders.staging_root(name)):
        if entry.type != pafs.FileType.Directory:
            continue
        with contextlib.suppress(OSError):  # a concurrent cleaner may get there first
            if folders.idle_s(entry) > STALE_STAGING_S:
                folders.fs.delete_dir(entry.path)


# -- publishing -------------------------------------------------------------------------------------


def _next_version(folders: Folders, name: str) -> int:
    # Counting tombstones and half uploads too: a version number is never reused.
    numbers = folders.version_numbers(name)
    return numbers[-1] + 1 if numbers else 1


def publish(folders: Folders, name: str, staging: str, manifest: dict[str, Any]) -> int:
    """Publish a staged READY manifest and its files as the next free version; return its number."""
    if folders.local:
        return _publish_local(folders, name, staging, manifest)
    if folders.conditional:
        return _publish_claimed(folders, name, staging, manifest)
    return _publish_remote(folders, name, staging, manifest)


def _publish_local(folders: Folders, name: str, staging: str, manifest: dict[str, Any]) -> int:
    """Rename the staging folder to ``versions/N``; the rename fails if N is taken, then try N+1."""
    os.makedirs(folders.versions_dir(name), exist_ok=True)
    version = _next_version(folders, name)
    for _ in range(10_000):
        manifest["version"] = version
        # Replaced whole, so a crash here leaves the previous (PENDING) manifest readable.
        folders.write_json_atomic(posixpath.join(staging, MANIFEST), _seal(manifest))
        try:
            os.rename(staging, folders.version_dir(name, version))
            return version
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        version = max(version + 1, _next_version(folders, name))
    raise RegistryError(f"could not publish a new version of {name!r}: too many concurrent writers.")


def _publish_claimed(folders: Folders, name: str, staging: str, manifest: dict[str, Any]) -> int:
    """S3: claim ``versions/N/.claim`` with a conditional PUT (exactly one writer wins N), copy the staged
    files, write the manifest last. A claim whose writer died before its manifest is taken over by the next
    publisher (If-Match on the claim), so a crash burns no number."""
    claim = json.dumps({"staging": posixpath.basename(staging), "writer": manifest["writer"]}).encode()
    version = _next_version(folders, name)
    if version > 1 and _abandoned(folders, name, version - 1, claim):
        version -= 1
    else:
        for _ in range(10_000):
            if folders.claim(posixpath.join(folders.version_dir(name, version), CLAIM), claim):
                break
            version = max(version + 1, _next_version(folders, name))
        else:
            raise RegistryError(f"could not publish a new version of {name!r}: too many concurrent writers.")
    # The staging manifest says which version it became: if this writer dies after the publish and before
    # removing its staging copy, that copy is not reported as a failed registration.
    manifest["version"] = version
    folders.write_bytes(posixpath.join(staging, MANIFEST), json.dumps(_seal(manifest), indent=2).encode())
    _copy_staged(folders, name, version, staging, manifest)
    return version


def _abandoned(folders: Folders, name: str, version: int, claim: bytes) -> bool:
    """Take over ``versions/N`` when it holds a claim but no manifest and its writer is gone; then empty it."""
    dest = folders.version_dir(name, version)
    if folders.fs.get_file_info(posixpath.join(dest, MANIFEST)).type != pafs.FileType.NotFound:
        return False

    def dead(current: Any) -> bool:
        writer = current.get("writer") if isinstance(current, dict) else None
        return isinstance(writer, dict) and _writer_died(writer)

    if not folders.take_over(posixpath.join(dest, CLAIM), claim, dead):
        return False
    folders.empty_dir(dest, keep=CLAIM)  # what the dead writer copied before its manifest
    return True


def _copy_staged(folders: Folders, name: str, version: int, staging: str, manifest: dict[str, Any]) -> None:
    """Copy the staged files into the claimed ``versions/N/``, then write its READY manifest (one PUT)."""
    dest = folders.version_dir(name, version)
    for rel in manifest["files"]:
        refuse = _escaping_file(f"{name}:{version}", rel)
        target = _inside(dest, rel, refuse)
        folders.make_parent(target)
        folders.fs.copy_file(_inside(staging, rel, refuse), target)
    manifest["version"] = version
    folders.write_bytes(posixpath.join(dest, MANIFEST), json.dumps(_seal(manifest), indent=2).encode())


def _publish_remote(folders: Folders, name: str, staging: str, manifest: dict[str, Any]) -> int:
    """An object store without conditional writes (best effort): copy the staged files to the first empty
    ``versions/N/``, then write the manifest."""
    version = _next_version(folders, name)
    while folders.listing(folders.version_dir(name, version)):
        version += 1
    folders.fs.create_dir(folders.version_dir(name, version), recursive=True)  # claims N (a marker object)
    _copy_staged(folders, name, version, staging, manifest)
    return version
