"""The model registry: immutable, numbered versions of trained models, with aliases and checksums.

Layout under the storage root (a local directory or an ``s3://`` / ``gs://`` URI)::

    <root>/registry/<name>/versions/<N>/model.pt       weights (a state dict saved with torch.save)
    <root>/registry/<name>/versions/<N>/...            every other file of the checkpoint (atoll.json, ...)
    <root>/registry/<name>/versions/<N>/manifest.json  written last: metrics, spec, lineage, file sha256s
    <root>/registry/<name>/aliases.json                {"production": 3, ...}

A version is visible only once its ``manifest.json`` exists and says ``"status": "READY"``, so a crash in
the middle of a registration never shows a half-written version. Files are first written to
``<root>/registry/<name>/.staging/<uuid>/`` and then published:

* on a local filesystem by ``os.rename(staging, versions/N)``, which fails when ``versions/N`` already
  exists; the writer then retries with N+1, so concurrent registrations (threads or processes) get distinct,
  consecutive versions;
* on an object store (no atomic rename) by copying the files to ``versions/N/`` and writing the manifest
  last. Concurrent registrations of the same name from several writers are best effort there: a version
  number whose folder already holds objects is skipped, and the recorded sha256 catches any clobbered file.

The storage root is a trust boundary: what a manifest says is checked before it is used. Every manifest
carries ``manifest_sha256``, the SHA-256 of its canonical JSON without that field, in the same file (one
atomic write or PUT: no window where a manifest and a separate checksum disagree); a READY manifest that
does not match it is refused. A file name a manifest lists (or a checkpoint holds) must stay inside the
version folder: no absolute path, ``..``, empty segment, backslash, drive letter or NUL. And the
``model.type`` it names is imported by a replica only when it is a built-in or on cluster.yaml's
``metadata.atoll.model_types`` (:mod:`atoll.models`). The checksum is not a signature (whoever can write
the root can recompute it); it catches edits and corruption, and the other two checks keep a writer of
the root from reaching outside a version folder or running code.

Deleting a version keeps its manifest as a tombstone (``"status": "DELETED"``) and removes its files, so a
version number is never reused. All IO goes through :mod:`pyarrow.fs`.

States of a registration (the ``status`` of its manifest):

* ``PENDING``: the first thing ``register`` writes is ``.staging/<id>/manifest.json`` saying PENDING and who
  writes (``writer``: host, pid, started_at); on a local filesystem that folder appears whole, by rename, so
  every staging folder names its writer. It has no version number yet: only the publish claims one, so a
  crashed registration never burns a number and versions stay consecutive.
* ``READY``: written into the staging manifest just before the atomic rename to ``versions/N`` (the object
  store: the manifest is written last into ``versions/N``). Only READY versions are listed, resolved by
  :meth:`Registry.get`, loadable, aliasable and so deployable.
* ``FAILED``: ``register`` raised (a bad file, an IO error): it rewrites the staging manifest as FAILED with
  the error and deletes the staged files, keeping that small manifest for inspection. A PENDING registration
  whose writer is gone (same host, pid no longer alive) or that saw no write for ``STALE_STAGING_S`` is
  reported as FAILED ("writer died"). That is a report only: staging folders are deleted by age alone
  (``STALE_STAGING_S`` after their last write), so a misjudged live writer is never harmed.

:meth:`Registry.registrations` (``atoll models list NAME --all``) lists the PENDING and FAILED ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import difflib
import errno
import hashlib
import io
import json
import os
import posixpath
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from atoll.errors import RegistryError

try:  # POSIX only; without it (Windows) concurrent alias updates are last-writer-wins.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest_sha256"
MANIFEST_FORMAT = 2  # 2: sealed with manifest_sha256; 1: written before that (accepted without one)
WEIGHTS = "model.pt"
CHECKPOINT_META = "atoll.json"
PENDING = "PENDING"
READY = "READY"
FAILED = "FAILED"
DELETED = "DELETED"
STALE_STAGING_S = 3600.0
_CHUNK = 1 << 20
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_REF_HELP = "use NAME, NAME:VERSION or NAME@ALIAS, e.g. digits, digits:3, digits@production"


# ------------------------------------------------------------------------------------------------
# References and names


def _check_name(value: str, what: str, ref: str | None = None) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        where = f"in {ref!r}: " if ref is not None and ref != value else ""
        raise RegistryError(f"{where}invalid {what} {value!r}: it must start with a letter or digit and "
                            f"contain only letters, digits, '_', '.' and '-'.")
    return value


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Split a model reference into ``(name, version, alias)``.

    ``"digits"`` → ``("digits", None, None)`` (the latest version), ``"digits:3"`` → ``("digits", 3, None)``,
    ``"digits@production"`` → ``("digits", None, "production")``.

    Raises:
        RegistryError: an empty reference, a bad name or alias, or a version that is not a positive integer.
    """
    if not isinstance(ref, str) or not ref:
        raise RegistryError(f"empty model reference; {_REF_HELP}.")
    if ":" in ref and "@" in ref:
        raise RegistryError(f"model reference {ref!r} has both a version and an alias; {_REF_HELP}.")
    if ":" in ref:
        name, _, raw = ref.partition(":")
        if not re.fullmatch(r"[0-9]+", raw) or int(raw) < 1:
            raise RegistryError(f"in {ref!r}: the version must be a positive integer ({_REF_HELP}).")
        return _check_name(name, "model name", ref), int(raw), None
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return _check_name(name, "model name", ref), None, _check_name(alias, "alias", ref)
    return _check_name(ref, "model name"), None, None


def versioned_ref(ref: str, action: str) -> tuple[str, int]:
    """``NAME:VERSION`` as ``(name, version)``, for an ``action`` (e.g. "`atoll models delete`") that a bare
    name or an alias must not silently aim at whatever version it means today.

    Raises:
        RegistryError: not ``NAME:VERSION``.
    """
    name, version, _ = parse_ref(ref)
    if version is None:
        raise RegistryError(f"{action} needs an explicit version, NAME:VERSION (e.g. {name}:1), not {ref!r}.")
    return name, version


# ------------------------------------------------------------------------------------------------
# Model versions


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One registered version: where it lives and its manifest (metrics, spec, lineage, files)."""

    name: str
    version: int
    uri: str
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics") or {}

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest.get("spec") or {}

    @property
    def input_schema(self) -> dict[str, Any] | None:
        return self.manifest.get("input_schema")

    @property
    def lineage(self) -> dict[str, Any]:
        return self.manifest.get("lineage") or {}

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.manifest.get("files") or {}

    @property
    def created_at(self) -> str | None:
        return self.manifest.get("created_at")

    def to_dict(self) -> dict[str, Any]:
        """The manifest plus ``ref`` and ``uri``, ready for ``json.dumps``."""
        return {"ref": self.ref, "uri": self.uri, **self.manifest, "name": self.name, "version": self.version}


@dataclasses.dataclass(frozen=True)
class Registration:
    """A registration that is not a version: ``PENDING`` (being written) or ``FAILED``; it has no number."""

    name: str
    id: str
    state: str
    writer: dict[str, Any]
    error: str | None
    manifest: dict[str, Any]

    @property
    def started_at(self) -> str | None:
        return self.writer.get("started_at") or self.manifest.get("created_at")

    def to_dict(self) -> dict[str, Any]:
        """What ``atoll models list NAME --all --json`` prints for it."""
        return {"name": self.name, "version": None, "id": self.id, "state": self.state, "writer": self.writer,
                "started_at": self.started_at, "error": self.error, "metrics": self.manifest.get("metrics")}


# ------------------------------------------------------------------------------------------------
# Helpers


def _resolve(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """A filesystem and a path in it for a local path (``~`` allowed) or a URI."""
    text = os.fspath(location)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... depending on the scheme
        raise RegistryError(f"cannot open storage {text!r}: {exc}. Check the URI (a local path, "
                            f"s3://bucket/prefix or gs://bucket/prefix) and the credentials.") from None
    return fs, path.rstrip("/") or path


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(type(obj).__name__)


def _jsonable(value: Any, field: str) -> Any:
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"register: {field} is not JSON-serializable ({exc}); pass numbers, strings, "
                            f"lists and dicts.") from None


def _sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON (sorted keys, no spaces), its own checksum left out."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SHA256}
    return _sha256_of(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """Set (or refresh) ``manifest_sha256``; every manifest write goes through here."""
    manifest[MANIFEST_SHA256] = _manifest_digest(manifest)
    return manifest


_DRIVE_RE = re.compile(r"[A-Za-z]:")


def _escape_reason(rel: Any) -> str | None:
    """Why ``rel`` cannot name a file inside a version folder, or None when it can."""
    if not isinstance(rel, str) or not rel:
        return "is not a non-empty string"
    if "\0" in rel:
        return "holds a NUL byte"
    if "\\" in rel:
        return "holds a backslash"
    if rel.startswith("/"):
        return "is an absolute path"
    if _DRIVE_RE.match(rel):
        return "starts with a drive letter"
    parts = rel.split("/")
    if "" in parts:
        return "has an empty path segment"
    if "." in parts or ".." in parts:
        return "has a '.' or '..' segment"
    return None


def _inside(folder: str, rel: Any, refuse: Callable[[str], RegistryError]) -> str:
    """``folder/rel``; a ``rel`` that would name something outside ``folder`` raises ``refuse(reason)``.

    Every join of a file name from a manifest or a checkpoint goes through here.
    """
    if (reason := _escape_reason(rel)) is not None:
        raise refuse(reason)
    return posixpath.join(folder, rel)


class TamperedManifestError(RegistryError):
    """A READY version whose manifest fails its checks: refused for everything but deletion."""


def _tampered(ref: str, what: str) -> TamperedManifestError:
    return TamperedManifestError(f"{ref}: {what}, so its {MANIFEST} was tampered with or corrupted after "
                                 f"registration and the version is refused. Delete it (`atoll models delete "
                                 f"{ref}`) and register the model again.")


def _escaping_file(ref: str, rel: Any) -> Callable[[str], RegistryError]:
    return lambda reason: _tampered(ref, f"its manifest names the file {rel!r}, which {reason} (a path "
                                         f"outside the version folder)")


def _verify_manifest(name: str, version: int, manifest: dict[str, Any]) -> None:
    """Refuse a READY manifest that was edited or corrupted, copied from another version, or whose file
    entries are not plain names inside the version folder with a sha256 and a size."""
    ref = f"{name}:{version}"
    recorded = manifest.get(MANIFEST_SHA256)
    if recorded is None and manifest.get("format") == 1:
        pass  # written before manifests were sealed: nothing to compare (the file checks below still apply)
    elif recorded is None:
        raise _tampered(ref, f"its {MANIFEST} has no {MANIFEST_SHA256} (format {manifest.get('format')!r})")
    elif recorded != _manifest_digest(manifest):
        raise _tampered(ref, f"its {MANIFEST} does not match the {MANIFEST_SHA256} recorded in it "
                             f"({_manifest_digest(manifest)[:12]}…, recorded {str(recorded)[:12]}…)")
    if manifest.get("name") != name or manifest.get("version") != version:
        raise _tampered(ref, f"its {MANIFEST} describes {manifest.get('name')}:{manifest.get('version')}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _tampered(ref, f"its {MANIFEST} has no map of files")
    for rel, meta in files.items():
        _inside("", rel, _escaping_file(ref, rel))
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
                and isinstance(meta.get("size"), int)):
            raise _tampered(ref, f"its manifest records no sha256 and size for {rel!r}")


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host runs with that pid (True when it cannot tell)."""
    if os.name != "posix" or pid <= 0:  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: it writes nothing any more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _writer_died(writer: dict[str, Any]) -> bool:
    pid = writer.get("pid")
    return writer.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


# ------------------------------------------------------------------------------------------------
# The registry


class Registry:
    """Numbered, immutable model versions under ``<root>/registry/``.

    Args:
        root: The storage root: a local directory (``~`` allowed) or an ``s3://`` / ``gs://`` URI.
        filesystem: Use this pyarrow filesystem, with ``root`` a path inside it, instead of resolving
            ``root`` (for tests and custom stores). A non-local filesystem gets the object-store protocol.
    """

    def __init__(self, root: str, *, filesystem: pafs.FileSystem | None = None) -> None:
        self.root = os.fspath(root)
        if filesystem is not None:
            self._fs, base = filesystem, self.root.rstrip("/")
            self._uri_prefix = base
        else:
            self._fs, base = _resolve(self.root)
            if "://" in self.root and not isinstance(self._fs, pafs.LocalFileSystem):
                self._uri_prefix = f"{self.root.split('://', 1)[0]}://{base}"
            else:
                self._uri_prefix = base
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self._base = posixpath.join(base, "registry") if base else "registry"

    def __repr__(self) -> str:
        return f"Registry({self.root!r})"

    # -- paths ------------------------------------------------------------------------------------

    def _model_dir(self, name: str) -> str:
        return posixpath.join(self._base, name)

    def _versions_dir(self, name: str) -> str:
        return posixpath.join(self._model_dir(name), "versions")

    def _version_dir(self, name: str, version: int) -> str:
        return posixpath.join(self._versions_dir(name), str(version))

    def _staging_root(self, name: str) -> str:
        return posixpath.join(self._model_dir(name), ".staging")

    def _uri(self, name: str, version: int) -> str:
        rel = f"registry/{name}/versions/{version}"
        return f"{self._uri_prefix}/{rel}" if self._uri_prefix else rel

    # -- low-level IO -----------------------------------------------------------------------------

    def _read_bytes(self, path: str) -> bytes:
        with self._fs.open_input_stream(path, compression=None) as f:
            return f.read()

    def _write_bytes(self, path: str, data: bytes) -> None:
        self._fs.create_dir(posixpath.dirname(path), recursive=True)
        with self._fs.open_output_stream(path, compression=None) as f:
            f.write(data)

    def _write_json_atomic(self, path: str, data: Any) -> None:
        """Replace a small JSON file so that readers see the old or the new content, never half."""
        payload = json.dumps(data, indent=2, sort_keys=True).encode()
        if not self._local:
            self._write_bytes(path, payload)  # an object PUT is atomic on its own
            return
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        self._write_bytes(tmp, payload)
        os.replace(tmp, path)

    def _read_json(self, path: str) -> Any | None:
        """Parsed JSON, or None when the file is missing or unreadable (half-written, foreign)."""
        try:
            return json.loads(self._read_bytes(path))
        except (FileNotFoundError, ValueError):
            return None

    def _list(self, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
        for _ in range(2):
            try:
                return self._fs.get_file_info(selector)
            except FileNotFoundError:
                # pyarrow raises when the folder appears between its failed listing and its existence check
                # (a concurrent first registration), or a subfolder vanishes mid-walk (a publish): look again.
                continue
        return self._fs.get_file_info(selector)

    def _idle_s(self, folder: pafs.FileInfo) -> float:
        """Seconds since the last write in a folder (0 when the store reports no times)."""
        stamps = [i.mtime for i in [folder, *self._list(folder.path, recursive=True)] if i.mtime]
        return time.time() - max(s.timestamp() for s in stamps) if stamps else 0.0

    def _empty_dir(self, path: str, keep: str) -> None:
        """Delete everything in a folder but the file named ``keep``."""
        for entry in self._list(path):
            if entry.base_name == keep:
                continue
            if entry.type == pafs.FileType.Directory:
                self._fs.delete_dir(entry.path)
            else:
                self._fs.delete_file(entry.path)

    def _copy_in(self, src_fs: pafs.FileSystem, src: str, dst: str) -> dict[str, Any]:
        """Stream one file into the registry; return its sha256 and size."""
        digest, size = hashlib.sha256(), 0
        self._fs.create_dir(posixpath.dirname(dst), recursive=True)
        with src_fs.open_input_stream(src, compression=None) as fin, \
                self._fs.open_output_stream(dst, compression=None) as fout:
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                fout.write(chunk)
        return {"sha256": digest.hexdigest(), "size": size}

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """Serialize alias updates and deletes of one model (local filesystems; object stores: no-op)."""
        if not self._local or fcntl is None:
            yield
            return
        path = posixpath.join(self._model_dir(name), ".lock")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # -- reading ----------------------------------------------------------------------------------

    def _version_numbers(self, name: str) -> list[int]:
        """Every version folder, visible or not (tombstones and half uploads included)."""
        return sorted(int(i.base_name) for i in self._list(self._versions_dir(name))
                      if i.type == pafs.FileType.Directory and i.base_name.isdigit())

    def _raw_manifest(self, name: str, version: int) -> dict[str, Any] | None:
        data = self._read_json(posixpath.join(self._version_dir(name, version), MANIFEST))
        return data if isinstance(data, dict) else None

    def _manifest(self, name: str, version: int) -> dict[str, Any] | None:
        """The manifest of a visible (READY) version, else None.

        Raises:
            TamperedManifestError: a READY manifest that fails :func:`_verify_manifest`.
        """
        data = self._raw_manifest(name, version)
        if data is None or data.get("status") != READY:
            return None
        _verify_manifest(name, version, data)
        return data

    def _has_versions(self, name: str) -> bool:
        try:
            return self._latest(name) is not None
        except TamperedManifestError:  # it has one (refused when used): not an unknown model
            return True

    def _model_version(self, name: str, version: int, manifest: dict[str, Any]) -> ModelVersion:
        return ModelVersion(name=name, version=version, uri=self._uri(name, version), manifest=manifest)

    def _candidate_names(self) -> list[str]:
        return sorted(i.base_name for i in self._list(self._base)
                      if i.type == pafs.FileType.Directory and _NAME_RE.match(i.base_name))

    def _latest(self, name: str) -> ModelVersion | None:
        for version in reversed(self._version_numbers(name)):
            if (manifest := self._manifest(name, version)) is not None:
                return self._model_version(name, version, manifest)
        return None

    def _unknown_model(self, name: str) -> RegistryError:
        names = [n for n in self._candidate_names() if self._has_versions(n)]
        msg = f"no model named {name!r} in the registry at {self._uri_prefix or self.root}."
        close = difflib.get_close_matches(name, names, n=1)
        if close:
            msg += f" Did you mean {close[0]!r}?"
        if names:
            msg += f" Models: {', '.join(names)}."
        else:
            msg += " The registry is empty: register a model first."
        return RegistryError(msg)

    def _unknown_alias(self, name: str, alias: str, aliases: dict[str, int]) -> RegistryError:
        if not self._has_versions(name):
            return self._unknown_model(name)
        known = ", ".join(f"@{a} → {v}" for a, v in sorted(aliases.items()))
        hint = f"aliases: {known}" if known else \
            f"it has none yet; create one with `atoll models promote {name}:N {alias}`"
        return RegistryError(f"model {name!r} has no alias {alias!r}; {hint}.")

    def _visible(self, name: str) -> list[ModelVersion]:
        return [self._model_version(name, v, m) for v in self._version_numbers(name)
                if (m := self._manifest(name, v)) is not None]

    def _read_aliases(self, name: str) -> dict[str, int]:
        data = self._read_json(posixpath.join(self._model_dir(name), "aliases.json"))
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of a model, ``{alias: version}`` (empty when it has none)."""
        return self._read_aliases(_check_name(name, "model name"))

    def list_versions(self, name: str) -> list[ModelVersion]:
        """The visible versions of ``name``, oldest first.

        Raises:
            RegistryError: when no model of that name exists (the message lists the models).
        """
        _check_name(name, "model name")
        versions = self._visible(name)
        if not versions:
            raise self._unknown_model(name)
        return versions

    def registrations(self, name: str) -> list[Registration]:
        """The registrations of ``name`` that are not versions, PENDING or FAILED, oldest first.

        A FAILED one stays listed until its staging folder is cleaned, ``STALE_STAGING_S`` after its
        last write.
        """
        _check_name(name, "model name")
        found = []
        for entry in self._list(self._staging_root(name)):
            if entry.type != pafs.FileType.Directory or entry.base_name.startswith("."):
                continue  # hidden: a staging folder still being created
            manifest = self._read_json(posixpath.join(entry.path, MANIFEST))
            manifest = manifest if isinstance(manifest, dict) else {}
            writer = manifest.get("writer") if isinstance(manifest.get("writer"), dict) else {}
            state, error = PENDING, None
            if manifest.get("status") == FAILED:
                state, error = FAILED, str(manifest.get("error") or "failed")
            elif _writer_died(writer):
                state, error = FAILED, f"writer died (host {writer['host']}, pid {writer['pid']})"
            elif (idle := self._idle_s(entry)) > STALE_STAGING_S:
                state, error = FAILED, f"writer died: no write for {idle / 60:.0f} min"
            found.append(Registration(name=name, id=entry.base_name, state=state, writer=writer, error=error,
                                      manifest=manifest))
        return sorted(found, key=lambda r: (r.started_at or "", r.id))

    def version_rows(self, name: str, *, unready: bool = False) -> list[dict[str, Any]]:
        """The versions of ``name``, oldest first, as ``{name, version, state, created_at, metrics, aliases}``;
        with ``unready``, then its PENDING and FAILED registrations (:meth:`Registration.to_dict`).

        Raises:
            RegistryError: no such model (only failed or pending registrations of it are fine with ``unready``).
        """
        pending = self.registrations(name) if unready else []
        try:
            versions = self.list_versions(name)
        except RegistryError:
            if not pending:  # no such model: the error lists the models
                raise
            versions = []
        aliases = self.aliases(name)
        rows = [{"name": name, "version": mv.version, "state": READY, "created_at": mv.created_at,
                 "metrics": mv.metrics, "aliases": sorted(a for a, v in aliases.items() if v == mv.version)}
                for mv in versions]
        return rows + [r.to_dict() for r in pending]

    def list_models(self) -> list[dict[str, Any]]:
        """One summary per model: ``{name, latest_version, versions, aliases}``, by name."""
        rows = []
        for name in self._candidate_names():
            versions = self._visible(name)
            if versions:
                rows.append({"name": name, "latest_version": versions[-1].version, "versions": len(versions),
                             "aliases": self._read_aliases(name)})
        return rows

    def get(self, ref: str) -> ModelVersion:
        """Resolve ``name`` (latest version), ``name:N`` or ``name@alias`` to a visible version.

        Raises:
            RegistryError: an unknown model, version or alias; the message lists what exists.
        """
        name, version, alias = parse_ref(ref)
        if alias is not None:
            aliases = self._read_aliases(name)
            if alias not in aliases:
                raise self._unknown_alias(name, alias, aliases)
            version = aliases[alias]
        if version is None:
            latest = self._latest(name)
            if latest is None:
                raise self._unknown_model(name)
            return latest
        if (manifest := self._manifest(name, version)) is not None:
            return self._model_version(name, version, manifest)
        existing = ", ".join(str(mv.version) for mv in self.list_versions(name))  # unknown model raises
        via = f" (alias @{alias} points at it)" if alias else ""
        why = self._why_not_ready(name, version)
        raise RegistryError(f"model {name!r} has no version {version}{via}{why}; versions: {existing}.")

    def _why_not_ready(self, name: str, version: int) -> str:
        if version not in self._version_numbers(name):
            return ""
        raw = self._raw_manifest(name, version)
        if raw is not None and raw.get("status") == DELETED:
            return f": it was deleted at {raw.get('deleted_at', '?')}"
        path = posixpath.join(self._version_dir(name, version), MANIFEST)
        if raw is None and self._fs.get_file_info(path).type == pafs.FileType.File:
            # Manifests are written whole (rename or one PUT): unreadable means damaged, not unfinished.
            return f": its {MANIFEST} is not a JSON object (corrupted or changed by hand)"
        return ": its publish never finished (no READY manifest)"

    # -- writing ----------------------------------------------------------------------------------

    def register(self, name: str, checkpoint_dir: str | os.PathLike[str], *, metrics: dict[str, Any],
                 spec: dict[str, Any], lineage: dict[str, Any] | None = None,
                 input_schema: dict[str, Any] | None = None,
                 files_from_checkpoint: bool = True) -> ModelVersion:
        """Register a checkpoint as the next version of ``name`` (immutable once published).

        Args:
            name: Model name (letters, digits, ``_ . -``).
            checkpoint_dir: A local directory or URI holding ``model.pt`` and usually ``atoll.json``.
            metrics: Evaluation metrics to record (e.g. ``{"val_accuracy": 0.97}``).
            spec: The training spec that produced the model.
            lineage: Where it came from: dataset fingerprint, Ray job id, git commit, run name, ...
            input_schema: The serving input schema; defaults to ``input_schema`` of ``atoll.json``.
            files_from_checkpoint: Copy every file of the checkpoint (default); False copies only
                ``model.pt`` and ``atoll.json``.

        Returns:
            The new version.

        Raises:
            RegistryError: a bad name, a missing checkpoint or ``model.pt``, unserializable metadata.
                Any error once staging began leaves a FAILED registration (see the module docstring).
        """
        _check_name(name, "model name")
        if not isinstance(metrics, dict) or not isinstance(spec, dict):
            raise RegistryError("register: metrics and spec must be dicts, e.g. metrics={'accuracy': 0.97}.")
        src_fs, src = _resolve(checkpoint_dir)
        files = self._checkpoint_files(src_fs, src, os.fspath(checkpoint_dir))
        if not files_from_checkpoint:
            files = [f for f in files if f in (WEIGHTS, CHECKPOINT_META)]
        meta: dict[str, Any] = {}
        if CHECKPOINT_META in files:
            try:
                with src_fs.open_input_stream(posixpath.join(src, CHECKPOINT_META), compression=None) as f:
                    meta = json.loads(f.read())
            except ValueError as exc:
                raise RegistryError(f"{posixpath.join(src, CHECKPOINT_META)}: invalid JSON ({exc}); "
                                    f"rewrite it or remove it from the checkpoint.") from None
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT, "name": name, "version": None, "status": PENDING, "created_at": _now(),
            "writer": {"host": socket.gethostname(), "pid": os.getpid(), "started_at": _now()},
            "metrics": _jsonable(metrics, "metrics"), "spec": _jsonable(spec, "spec"),
            "input_schema": _jsonable(input_schema if input_schema is not None else meta.get("input_schema"),
                                      "input_schema"),
            "lineage": _jsonable(lineage or {}, "lineage"), "files": {},
            "source": src if isinstance(src_fs, pafs.LocalFileSystem) else os.fspath(checkpoint_dir),
        }
        self._clean_stale_staging(name)
        staging = self._open_staging(name, manifest)
        try:
            for rel in files:
                refuse = self._bad_checkpoint_file(os.fspath(checkpoint_dir), rel)
                manifest["files"][rel] = self._copy_in(src_fs, _inside(src, rel, refuse),
                                                       _inside(staging, rel, refuse))
            manifest["status"] = READY  # what versions/N says; in staging it means "publishing now"
            version = self._publish_local(name, staging, manifest) if self._local else \
                self._publish_remote(name, staging, manifest)
        except BaseException as exc:
            self._fail_staging(staging, manifest, exc)
            raise
        if not self._local:  # the staged copies (a local publish renamed the folder away)
            with contextlib.suppress(OSError):
                self._fs.delete_dir(staging)
        return self._model_version(name, version, manifest)

    def _open_staging(self, name: str, manifest: dict[str, Any]) -> str:
        """Create ``.staging/<id>/`` holding the PENDING manifest; return its path."""
        staging = posixpath.join(self._staging_root(name), uuid.uuid4().hex)
        payload = json.dumps(_seal(manifest), indent=2).encode()
        if not self._local:
            self._write_bytes(posixpath.join(staging, MANIFEST), payload)  # one PUT: whole or absent
            return staging
        # Built hidden, then renamed into place: a staging folder never lacks the name of its writer.
        hidden = posixpath.join(self._staging_root(name), f".{posixpath.basename(staging)}.tmp")
        self._write_bytes(posixpath.join(hidden, MANIFEST), payload)
        os.rename(hidden, staging)
        return staging

    def _fail_staging(self, staging: str, manifest: dict[str, Any], exc: BaseException) -> None:
        """Best effort: mark the registration FAILED with its error and drop the staged files."""
        with contextlib.suppress(Exception):  # never hide the error that got us here
            if self._fs.get_file_info(staging).type == pafs.FileType.NotFound:
                return  # published just before the error, or cleaned by someone else
            failed = {**manifest, "status": FAILED, "version": None, "failed_at": _now(),
                      "error": f"{type(exc).__name__}: {exc}"[:500]}
            self._write_json_atomic(posixpath.join(staging, MANIFEST), _seal(failed))
            self._empty_dir(staging, keep=MANIFEST)

    def _checkpoint_files(self, src_fs: pafs.FileSystem, src: str, shown: str) -> list[str]:
        info = src_fs.get_file_info(src)
        if info.type != pafs.FileType.Directory:
            what = "is a file, not a directory" if info.type == pafs.FileType.File else "does not exist"
            raise RegistryError(f"checkpoint directory {shown} {what}; pass the folder a training run wrote "
                                f"(it holds {WEIGHTS} and {CHECKPOINT_META}).")
        listing = src_fs.get_file_info(pafs.FileSelector(src, recursive=True))
        files = sorted(posixpath.relpath(i.path, src) for i in listing if i.type == pafs.FileType.File)
        if WEIGHTS not in files:
            raise RegistryError(f"checkpoint directory {shown} has no {WEIGHTS}; save the weights there with "
                                f"torch.save(model.state_dict(), '{posixpath.join(src, WEIGHTS)}').")
        if MANIFEST in files:
            raise RegistryError(f"checkpoint directory {shown} holds a {MANIFEST}, a name the registry "
                                f"reserves for its own manifest; rename or remove that file.")
        for rel in files:
            _inside(src, rel, self._bad_checkpoint_file(shown, rel))
        return files

    @staticmethod
    def _bad_checkpoint_file(shown: str, rel: str) -> Callable[[str], RegistryError]:
        return lambda reason: RegistryError(f"checkpoint directory {shown}: the file name {rel!r} {reason}, "
                                            f"which a version folder cannot hold; rename or remove that file.")

    def _next_version(self, name: str) -> int:
        # Counting tombstones and half uploads too: a version number is never reused.
        numbers = self._version_numbers(name)
        return numbers[-1] + 1 if numbers else 1

    def _publish_local(self, name: str, staging: str, manifest: dict[str, Any]) -> int:
        """Rename the staging folder to ``versions/N``; the rename fails if N is taken, then try N+1."""
        os.makedirs(self._versions_dir(name), exist_ok=True)
        version = self._next_version(name)
        for _ in range(10_000):
            manifest["version"] = version
            # Replaced whole, so a crash here leaves the previous (PENDING) manifest readable.
            self._write_json_atomic(posixpath.join(staging, MANIFEST), _seal(manifest))
            try:
                os.rename(staging, self._version_dir(name, version))
                return version
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            version = max(version + 1, self._next_version(name))
        raise RegistryError(f"could not publish a new version of {name!r}: too many concurrent writers.")

    def _publish_remote(self, name: str, staging: str, manifest: dict[str, Any]) -> int:
        """Copy the staged files to the first empty ``versions/N/``, then write the manifest."""
        version = self._next_version(name)
        while self._list(self._version_dir(name, version)):
            version += 1
        dest = self._version_dir(name, version)
        self._fs.create_dir(dest, recursive=True)  # claims N for concurrent writers (marker object)
        for rel in manifest["files"]:
            refuse = _escaping_file(f"{name}:{version}", rel)
            target = _inside(dest, rel, refuse)
            self._fs.create_dir(posixpath.dirname(target), recursive=True)
            self._fs.copy_file(_inside(staging, rel, refuse), target)
        manifest["version"] = version
        self._write_bytes(posixpath.join(dest, MANIFEST), json.dumps(_seal(manifest), indent=2).encode())
        return version

    def _clean_stale_staging(self, name: str) -> None:
        """Remove staging folders untouched for ``STALE_STAGING_S`` (crashed or FAILED); ignore the rest."""
        for entry in self._list(self._staging_root(name)):
            if entry.type != pafs.FileType.Directory:
                continue
            with contextlib.suppress(OSError):  # a concurrent cleaner may get there first
                if self._idle_s(entry) > STALE_STAGING_S:
                    self._fs.delete_dir(entry.path)

    def set_alias(self, name: str, version: int, alias: str) -> None:
        """Point ``alias`` at ``name:version`` (moving it if it pointed elsewhere), atomically.

        Raises:
            RegistryError: an unknown model or version, or an invalid alias.
        """
        _check_name(alias, "alias")
        self._require_version(name, version)  # before locking: no lock file for a mistyped name
        with self._lock(name):
            self._require_version(name, version)  # a concurrent delete may have won the lock first
            aliases = self._read_aliases(name)
            aliases[alias] = int(version)
            self._write_json_atomic(posixpath.join(self._model_dir(name), "aliases.json"), aliases)

    def promote(self, ref: str, alias: str) -> tuple[ModelVersion, int | None]:
        """Point ``alias`` at the version ``ref`` names, ``NAME:VERSION`` or ``NAME@ALIAS`` (a bare name, which
        would silently mean the latest, is refused); returns it and the version the alias pointed at before.

        Raises:
            RegistryError: a bare name, an unknown model or version, or an invalid alias.
        """
        _, version, source_alias = parse_ref(ref)
        if version is None and source_alias is None:
            versioned_ref(ref, "`atoll models promote`")
        mv = self.get(ref)
        before = self.aliases(mv.name).get(alias)
        self.set_alias(mv.name, mv.version, alias)
        return mv, before

    def remove_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` from ``name``.

        Raises:
            RegistryError: an unknown model or alias.
        """
        _check_name(name, "model name")
        if alias not in self._read_aliases(name):
            raise self._unknown_alias(name, alias, self._read_aliases(name))
        with self._lock(name):
            aliases = self._read_aliases(name)
            aliases.pop(alias, None)
            self._write_json_atomic(posixpath.join(self._model_dir(name), "aliases.json"), aliases)

    def _require_version(self, name: str, version: int) -> ModelVersion:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"version must be a positive integer (got {version!r}).")
        return self.get(f"{name}:{version}")

    def deletable(self, name: str, version: int) -> dict[str, Any]:
        """The manifest of a version :meth:`delete` would delete: READY, or READY but refused as tampered.

        Raises:
            RegistryError: an unknown or already deleted version.
        """
        try:
            return self._require_version(name, version).manifest
        except TamperedManifestError:  # deleting is how such a version is cleared
            return self._raw_manifest(name, version) or {}

    def delete(self, name: str, version: int) -> None:
        """Delete ``name:version``; its number is never reused.

        Raises:
            RegistryError: an unknown version, or an alias still points at it (move the alias first).
        """
        self.deletable(name, version)
        with self._lock(name):
            manifest = self.deletable(name, version)
            pointing = sorted(a for a, v in self._read_aliases(name).items() if v == version)
            if pointing:
                shown = ", ".join(f"@{a}" for a in pointing)
                raise RegistryError(f"cannot delete {name}:{version}: {shown} points at it. Move the alias "
                                    f"first (`atoll models promote {name}:OTHER {pointing[0]}`).")
            # The tombstone goes first: from then on readers no longer see the version.
            tombstone = {**manifest, "status": DELETED, "deleted_at": _now()}
            vdir = self._version_dir(name, version)
            self._write_json_atomic(posixpath.join(vdir, MANIFEST), _seal(tombstone))
            self._empty_dir(vdir, keep=MANIFEST)

    # -- files ------------------------------------------------------------------------------------

    def _version_file(self, mv: ModelVersion, rel: str) -> str:
        """The path of one file of a version; a name from its manifest that leaves the folder is refused."""
        return _inside(self._version_dir(mv.name, mv.version), rel, _escaping_file(mv.ref, rel))

    def _file_meta(self, mv: ModelVersion, filename: str) -> dict[str, Any]:
        files = mv.files
        if filename not in files:
            raise RegistryError(f"{mv.ref} has no file {filename!r}; files: {', '.join(sorted(files))}.")
        return files[filename]

    def _check_digest(self, mv: ModelVersion, rel: str, sha256: str, size: int) -> None:
        """Refuse a file whose sha256 is not the one recorded at registration."""
        expected = mv.files[rel]
        if sha256 == expected["sha256"]:
            return
        recorded = expected.get("size")
        truncated = isinstance(recorded, int) and size < recorded
        how = f"truncated to {size:,} of {recorded:,} bytes" if truncated else \
            f"sha256 {sha256[:12]}…, recorded {expected['sha256'][:12]}…"
        raise RegistryError(f"{mv.ref}: {rel} in {mv.uri} does not match the sha256 recorded at registration "
                            f"({how}): the file was changed or corrupted and is refused. Register the model "
                            f"again from its checkpoint.")

    @staticmethod
    def _missing(mv: ModelVersion, rel: str) -> RegistryError:
        return RegistryError(f"{mv.ref}: {rel} is missing from {mv.uri} (deleted?); register the model "
                             f"again.")

    def read_file(self, mv: ModelVersion, filename: str) -> bytes:
        """The bytes of one file of a version, checked against the sha256 in its manifest.

        Raises:
            RegistryError: an unknown file, a missing file or a checksum mismatch.
        """
        self._file_meta(mv, filename)
        path = self._version_file(mv, filename)
        try:
            data = self._read_bytes(path)
        except FileNotFoundError:
            raise self._missing(mv, filename) from None
        self._check_digest(mv, filename, _sha256_of(data), len(data))
        return data

    def load_weights(self, mv: ModelVersion) -> dict[str, Any]:
        """The state dict of a version, verified against its sha256, loaded on the CPU.

        Raises:
            RegistryError: a checksum mismatch, or a file that is not a plain state dict.
        """
        import pickle

        import torch  # late: listing and promoting need no torch

        data = self.read_file(mv, WEIGHTS)
        try:
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise RegistryError(f"{mv.ref}: {WEIGHTS} is not a loadable state dict ({exc}). Save it with "
                                f"torch.save(model.state_dict(), path).") from None
        if not isinstance(state, dict):
            raise RegistryError(f"{mv.ref}: {WEIGHTS} holds a {type(state).__name__}, not a state dict.")
        return state

    def local_copy(self, mv: ModelVersion, dest_dir: str | os.PathLike[str]) -> str:
        """Download a version's files (checked against their sha256) and manifest into a local folder.

        Returns:
            The absolute path of ``dest_dir``.

        Raises:
            RegistryError: a missing file or a checksum mismatch (nothing half-written stays behind).
        """
        dest = Path(dest_dir).expanduser().resolve()
        sources = {rel: self._version_file(mv, rel) for rel in sorted(mv.files)}  # every name, before any IO
        for rel, source in sources.items():
            target = Path(_inside(str(dest), rel, _escaping_file(mv.ref, rel)))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
            digest, size = hashlib.sha256(), 0
            try:
                with self._fs.open_input_stream(source, compression=None) as fin, \
                        open(tmp, "wb") as fout:
                    while chunk := fin.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        fout.write(chunk)
                self._check_digest(mv, rel, digest.hexdigest(), size)
                os.replace(tmp, target)
            except FileNotFoundError:
                raise self._missing(mv, rel) from None
            finally:
                tmp.unlink(missing_ok=True)
        (dest / MANIFEST).write_text(json.dumps(mv.manifest, indent=2))
        return str(dest)


def open_registry(storage_root: str) -> Registry:
    """The registry under a storage root (cluster.yaml's ``metadata.atoll.storage``, ``$ATOLL_STORAGE``)."""
    return Registry(storage_root)
