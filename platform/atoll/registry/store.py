"""The :class:`Registry`: resolving references to READY versions, listing models, versions and unfinished
registrations, aliases, deletion with tombstones, reading a version's files back against their sha256, and
``register``, which checks a checkpoint, stages it and hands it to :mod:`atoll.registry.publish`. The top of
the package: it composes the folders and IO (:mod:`~atoll.registry.folders`), the manifest rules
(:mod:`~atoll.registry.manifest`) and the writer checks (:mod:`~atoll.registry.writers`)."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from atoll import filesystems
from atoll.errors import RegistryError
from atoll.registry.folders import Folders, _resolve
from atoll.registry.manifest import (
    CHECKPOINT_META,
    DELETED,
    FAILED,
    MANIFEST,
    MANIFEST_FORMAT,
    PENDING,
    READY,
    WEIGHT_FILES,
    TamperedManifestError,
    _escaping_file,
    _inside,
    _jsonable,
    _now,
    _seal,
    _sha256_of,
    _verify_manifest,
    weights_file,
)
from atoll.registry.publish import (
    bad_checkpoint_file,
    checkpoint_files,
    checkpoint_meta,
    clean_stale_staging,
    fail_staging,
    open_staging,
    publish,
)
from atoll.registry.refs import _NAME_RE, _check_name, parse_ref, versioned_ref
from atoll.registry.versions import ModelVersion, Registration, _check_digest, _file_meta, _missing
from atoll.registry.writers import STALE_STAGING_S, _this_writer, _writer_died

_CHUNK = 1 << 20  # bytes per read when streaming a file in or out
#: :meth:`Registry.set_alias`'s ``expected`` when any current target will do
ANY: Any = object()


@filesystems.speaks_to_the_store("_location")
class Registry:
    """Numbered, immutable model versions under ``<root>/registry/``.

    Every public method raises what the store refuses (credentials, region, network, a missing bucket) as a
    one-line :class:`~atoll.filesystems.StorageError`.

    Args:
        root: The storage root: a local directory (``~`` allowed) or an ``s3://`` / ``gs://`` URI.
        filesystem: Use this pyarrow filesystem, with ``root`` a path inside it, instead of resolving
            ``root`` (for tests and custom stores). A non-local filesystem gets the object-store protocol.
    """

    def __init__(self, root: str, *, filesystem: pafs.FileSystem | None = None) -> None:
        self.root = os.fspath(root)
        if filesystem is not None:
            fs, base = filesystem, self.root.rstrip("/")
            self._uri_prefix = base
        else:
            fs, base = _resolve(self.root)
            if "://" in self.root and not isinstance(fs, pafs.LocalFileSystem):
                self._uri_prefix = f"{self.root.split('://', 1)[0]}://{base}"
            else:
                self._uri_prefix = base
        self._folders = Folders(fs, posixpath.join(base, "registry") if base else "registry",
                                local=isinstance(fs, pafs.LocalFileSystem))
        #: The storage root as errors name it (a URI on an object store).
        self._location = self.root if filesystem is None else self._folders.uri(base)

    def __repr__(self) -> str:
        return f"Registry({self.root!r})"

    def _uri(self, name: str, version: int) -> str:
        rel = f"registry/{name}/versions/{version}"
        return f"{self._uri_prefix}/{rel}" if self._uri_prefix else rel

    def location(self, mv: ModelVersion) -> str:
        """Where a version's folder is: a path, or a URI on an object store (for engines that read it themselves)."""
        return self._uri(mv.name, mv.version)

    # -- reading ----------------------------------------------------------------------------------

    def _raw_manifest(self, name: str, version: int) -> dict[str, Any] | None:
        data = self._folders.read_json(posixpath.join(self._folders.version_dir(name, version), MANIFEST))
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
        return sorted(i.base_name for i in self._folders.listing(self._folders.base)
                      if i.type == pafs.FileType.Directory and _NAME_RE.match(i.base_name))

    def _latest(self, name: str) -> ModelVersion | None:
        for version in reversed(self._folders.version_numbers(name)):
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
        return [self._model_version(name, v, m) for v in self._folders.version_numbers(name)
                if (m := self._manifest(name, v)) is not None]

    def _read_aliases(self, name: str) -> dict[str, int]:
        return self._aliases_of(name, self._folders.read_json_if_present(self._folders.aliases_file(name)))

    def _aliases_of(self, name: str, data: Any) -> dict[str, int]:
        """The ``{alias: version}`` of a parsed aliases.json (None: there is none yet).

        Raises:
            RegistryError: it holds something else; every write refuses it too, so no alias is lost.
        """
        if data is None:
            return {}
        if isinstance(data, dict) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                          for v in data.values()):
            return {str(k): v for k, v in data.items()}
        raise RegistryError(f"{self._folders.uri(self._folders.aliases_file(name))} is not a map of alias to "
                            f"version (e.g. {{\"production\": 3}}); it was left as it is. Repair it, or delete it "
                            f"to drop every alias of {name!r} and promote again.")

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
        for entry in self._folders.listing(self._folders.staging_root(name)):
            if entry.type != pafs.FileType.Directory or entry.base_name.startswith("."):
                continue  # hidden: a staging folder still being created
            manifest = self._folders.read_json(posixpath.join(entry.path, MANIFEST))
            if manifest is None and not self._folders.local and not any(
                    i.type == pafs.FileType.File for i in self._folders.listing(entry.path, recursive=True)):
                continue  # folder markers without objects, which an object store may keep after a delete
            manifest = manifest if isinstance(manifest, dict) else {}
            if self._published(name, manifest):
                continue  # the staging copy of a published version, not yet removed by its writer
            writer = manifest.get("writer") if isinstance(manifest.get("writer"), dict) else {}
            state, error = PENDING, None
            if manifest.get("status") == FAILED:
                state, error = FAILED, str(manifest.get("error") or "failed")
            elif _writer_died(writer):
                state, error = FAILED, f"writer died (host {writer['host']}, pid {writer['pid']})"
            elif (idle := self._folders.idle_s(entry)) > STALE_STAGING_S:
                state, error = FAILED, f"writer died: no write for {idle / 60:.0f} min"
            found.append(Registration(name=name, id=entry.base_name, state=state, writer=writer, error=error,
                                      manifest=manifest))
        return sorted(found, key=lambda r: (r.started_at or "", r.id))

    def _published(self, name: str, staging_manifest: dict[str, Any]) -> bool:
        """Whether a staging manifest is that of a READY version (an object store's publish copies, so its
        staging folder outlives the publish until the writer removes it)."""
        version = staging_manifest.get("version")
        if staging_manifest.get("status") != READY or not isinstance(version, int) or self._folders.local:
            return False
        try:
            published = self._manifest(name, version)
        except TamperedManifestError:
            return False
        return published is not None and all(published.get(k) == staging_manifest.get(k) for k in ("created_at", "writer"))

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
        if version not in self._folders.version_numbers(name):
            return ""
        raw = self._raw_manifest(name, version)
        if raw is not None and raw.get("status") == DELETED:
            return f": it was deleted at {raw.get('deleted_at', '?')}"
        path = posixpath.join(self._folders.version_dir(name, version), MANIFEST)
        if raw is None and self._folders.fs.get_file_info(path).type == pafs.FileType.File:
            # Manifests are written whole (rename or one PUT): unreadable means damaged, not unfinished.
            return f": its {MANIFEST} is not a JSON object (corrupted or changed by hand)"
        return ": its publish never finished (no READY manifest)"

    # -- writing ----------------------------------------------------------------------------------

    def register(self, name: str, checkpoint_dir: str | os.PathLike[str], *, metrics: dict[str, Any],
                 spec: dict[str, Any], lineage: dict[str, Any] | None = None,
                 input_schema: dict[str, Any] | None = None, exports: dict[str, Any] | None = None,
                 files_from_checkpoint: bool = True) -> ModelVersion:
        """Register a checkpoint as the next version of ``name`` (immutable once published).

        Args:
            name: Model name (letters, digits, ``_ . -``).
            checkpoint_dir: A local directory or URI holding ``model.safetensors`` (or ``model.pt``) and usually ``atoll.json``.
            metrics: Evaluation metrics to record (e.g. ``{"val_accuracy": 0.97}``).
            spec: The training spec that produced the model.
            lineage: Where it came from: dataset fingerprint, Ray job id, git commit, run name, ...
            input_schema: The serving input schema; defaults to ``input_schema`` of ``atoll.json``.
            exports: The exported artefacts and their parity (:func:`atoll.exports.export_version`).
            files_from_checkpoint: Copy every file of the checkpoint (default); False copies only
                the weights and ``atoll.json``.

        Returns:
            The new version.

        Raises:
            RegistryError: a bad name, a missing checkpoint or weights file, unserializable metadata.
                Any error once staging began leaves a FAILED registration (see the module docstring).
        """
        _check_name(name, "model name")
        if not isinstance(metrics, dict) or not isinstance(spec, dict):
            raise RegistryError("register: metrics and spec must be dicts, e.g. metrics={'accuracy': 0.97}.")
        src_fs, src = _resolve(checkpoint_dir)
        files = checkpoint_files(src_fs, src, os.fspath(checkpoint_dir))
        if not files_from_checkpoint:
            files = [f for f in files if f in (*WEIGHT_FILES, CHECKPOINT_META)]
        meta = checkpoint_meta(src_fs, src) if CHECKPOINT_META in files else {}
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT, "name": name, "version": None, "status": PENDING, "created_at": _now(),
            "writer": _this_writer(),
            "metrics": _jsonable(metrics, "metrics"), "spec": _jsonable(spec, "spec"),
            "input_schema": _jsonable(input_schema if input_schema is not None else meta.get("input_schema"),
                                      "input_schema"),
            "lineage": _jsonable(lineage or {}, "lineage"), "exports": _jsonable(exports or {}, "exports"),
            "files": {},
            "source": src if isinstance(src_fs, pafs.LocalFileSystem) else os.fspath(checkpoint_dir),
        }
        clean_stale_staging(self._folders, name)
        staging = open_staging(self._folders, name, manifest)
        try:
            for rel in files:
                refuse = bad_checkpoint_file(os.fspath(checkpoint_dir), rel)
                manifest["files"][rel] = self._copy_in(src_fs, _inside(src, rel, refuse),
                                                       _inside(staging, rel, refuse))
            manifest["status"] = READY  # what versions/N says; in staging it means "publishing now"
            version = publish(self._folders, name, staging, manifest)
        except BaseException as exc:
            fail_staging(self._folders, staging, manifest, exc)
            raise
        if not self._folders.local:  # the staged copies (a local publish renamed the folder away)
            with contextlib.suppress(OSError):
                self._folders.fs.delete_dir(staging)
        return self._model_version(name, version, manifest)

    def _copy_in(self, src_fs: pafs.FileSystem, src: str, dst: str) -> dict[str, Any]:
        """Stream one file into the registry; return its sha256 and size."""
        digest, size = hashlib.sha256(), 0
        self._folders.make_parent(dst)
        with src_fs.open_input_stream(src, compression=None) as fin, \
                self._folders.fs.open_output_stream(dst, compression=None) as fout:
            while chunk := fin.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                fout.write(chunk)
        return {"sha256": digest.hexdigest(), "size": size}

    def set_alias(self, name: str, version: int, alias: str, *, expected: int | None | object = ANY) -> None:
        """Point ``alias`` at ``name:version`` (moving it if it pointed elsewhere), atomically.

        Args:
            expected: Move it only if it still points at this version (None: only if it points nowhere), checked
                in the same compare-and-swap as the move; by default wherever it points.

        Raises:
            RegistryError: an unknown model or version, an invalid alias, the alias no longer where ``expected``
                says, or (object store) the version was deleted while the alias moved: the alias is left where
                it was.
        """
        _check_name(alias, "alias")
        self._require_version(name, version)  # before locking: no lock file for a mistyped name
        previous: dict[str, int | None] = {}

        def point(current: Any) -> dict[str, int]:
            aliases = self._aliases_of(name, current)
            previous["version"] = aliases.get(alias)
            if expected is not ANY and aliases.get(alias) != expected:
                now = f"{name}:{aliases[alias]}" if alias in aliases else "nothing"
                raise RegistryError(f"@{alias} of {name!r} moved to {now} meanwhile (it pointed at "
                                    f"{'nothing' if expected is None else f'{name}:{expected}'}); it was left "
                                    f"there: run the command again to judge against it.")
            return {**aliases, alias: int(version)}

        with self._folders.lock(name):
            self._require_version(name, version)  # a concurrent delete may have won the lock first
            self._folders.update_json(self._folders.aliases_file(name), point)
            if self._folders.local or not self._deleted(name, version):
                return
            # No lock on an object store: a delete that read the aliases before this move has tombstoned the
            # version since. Each side checks again after its own write, so at least one sees the other; here
            # the move backs off, and the alias goes back to where it pointed (unless it moved on meanwhile).
            def back(current: Any) -> dict[str, int]:
                aliases = self._aliases_of(name, current)
                if aliases.get(alias) == int(version):
                    aliases.pop(alias)
                    if previous["version"] is not None:
                        aliases[alias] = previous["version"]
                return aliases

            self._folders.update_json(self._folders.aliases_file(name), back)
            raise RegistryError(f"cannot point @{alias} at {name}:{version}: it was deleted meanwhile. Pick "
                                f"another version (`atoll models list {name}`).")

    def promote(self, ref: str, alias: str, *, expected: int | None | object = ANY) -> tuple[ModelVersion, int | None]:
        """Point ``alias`` at the version ``ref`` names, ``NAME:VERSION`` or ``NAME@ALIAS`` (a bare name, which
        would silently mean the latest, is refused); returns it and the version the alias pointed at before.
        ``expected``: as for :meth:`set_alias` (a gate's promotion: only from the version it was judged against).

        Raises:
            RegistryError: a bare name, an unknown model or version, an invalid alias, or the alias moved away
                from ``expected``.
        """
        _, version, source_alias = parse_ref(ref)
        if version is None and source_alias is None:
            versioned_ref(ref, "`atoll models promote`")
        mv = self.get(ref)
        before = self.aliases(mv.name).get(alias) if expected is ANY else expected
        self.set_alias(mv.name, mv.version, alias, expected=expected)
        return mv, before

    # -- evaluations ------------------------------------------------------------------------------

    def add_evaluation(self, name: str, version: int, record: dict[str, Any]) -> dict[str, Any]:
        """Store an evaluation of ``name:version`` (what :mod:`atoll.evaluation` measured) beside the version,
        in ``<name>/evaluations/<version>/``: its sealed folder and manifest are never touched. One file appears
        whole (a rename on a disk, one PUT on an object store), so a crash mid-write leaves no half record.

        Returns:
            The record as stored, with its ``id``, ``model``, ``version`` and ``created_at`` (unless given).

        Raises:
            RegistryError: an unknown version, or a record that is not JSON.
        """
        mv = self._require_version(name, version)
        created = str(record.get("created_at") or _now())
        record_id = f"{created.replace(':', '').replace('-', '').replace('+0000', 'Z')[:15]}-{uuid.uuid4().hex[:8]}"
        stored = _jsonable({**record, "id": record_id, "model": mv.name, "version": mv.version,
                            "created_at": created}, "evaluation")
        self._folders.write_json_atomic(
            posixpath.join(self._folders.evaluations_dir(mv.name, mv.version), f"{record_id}.json"), stored)
        return stored

    def evaluations(self, name: str, version: int) -> list[dict[str, Any]]:
        """The evaluation records of ``name:version``, oldest first (none: an empty list). A file that is not
        one (a foreign file, a temporary one a crash left) is skipped.

        Raises:
            RegistryError: an unknown version.
        """
        mv = self._require_version(name, version)
        found = []
        for entry in self._folders.listing(self._folders.evaluations_dir(mv.name, mv.version)):
            if entry.type != pafs.FileType.File or not entry.base_name.endswith(".json"):
                continue
            record = self._folders.read_json(entry.path)
            if isinstance(record, dict) and record.get("version") == mv.version and isinstance(
                    record.get("metrics"), dict):
                found.append(record)
        return sorted(found, key=lambda r: (str(r.get("created_at")), str(r.get("id"))))

    def remove_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` from ``name``.

        Raises:
            RegistryError: an unknown model or alias.
        """
        _check_name(name, "model name")
        if alias not in self._read_aliases(name):
            raise self._unknown_alias(name, alias, self._read_aliases(name))
        with self._folders.lock(name):
            self._folders.update_json(self._folders.aliases_file(name),
                                      lambda current: {a: v for a, v in self._aliases_of(name, current).items()
                                                      if a != alias})

    def _aliases_on(self, name: str, version: int) -> list[str]:
        return sorted(a for a, v in self._read_aliases(name).items() if v == version)

    def _deleted(self, name: str, version: int) -> bool:
        raw = self._raw_manifest(name, version)
        return raw is not None and raw.get("status") == DELETED

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
            RegistryError: an unknown version, or an alias points at it (move the alias first), also one that
                moved there during the delete (object store): the version is left whole.
        """
        self.deletable(name, version)
        with self._folders.lock(name):
            manifest = self.deletable(name, version)
            if pointing := self._aliases_on(name, version):
                shown = ", ".join(f"@{a}" for a in pointing)
                raise RegistryError(f"cannot delete {name}:{version}: {shown} points at it. Move the alias "
                                    f"first (`atoll models promote {name}:OTHER {pointing[0]}`).")
            # The tombstone goes first: from then on readers no longer see the version.
            tombstone = {**manifest, "status": DELETED, "deleted_at": _now()}
            vdir = self._folders.version_dir(name, version)
            path = posixpath.join(vdir, MANIFEST)
            original = self._folders.read_bytes(path)
            self._folders.write_json_atomic(path, _seal(tombstone))
            if not self._folders.local and (moved := self._aliases_on(name, version)):
                # No lock on an object store: an alias moved here after the check above (see set_alias).
                # The files are still all there: put the manifest back and refuse, as if the alias had
                # been seen first.
                self._folders.write_bytes(path, original)
                raise RegistryError(f"cannot delete {name}:{version}: @{moved[0]} was just pointed at it. Move "
                                    f"the alias first (`atoll models promote {name}:OTHER {moved[0]}`).")
            self._folders.empty_dir(vdir, keep=MANIFEST)
            self._folders.remove_dir(self._folders.evaluations_dir(name, version))  # they measured what is gone

    # -- files ------------------------------------------------------------------------------------

    def _version_file(self, mv: ModelVersion, rel: str) -> str:
        """The path of one file of a version; a name from its manifest that leaves the folder is refused."""
        return _inside(self._folders.version_dir(mv.name, mv.version), rel, _escaping_file(mv.ref, rel))

    def read_file(self, mv: ModelVersion, filename: str) -> bytes:
        """The bytes of one file of a version, checked against the sha256 in its manifest.

        Raises:
            RegistryError: an unknown file, a missing file or a checksum mismatch.
        """
        _file_meta(mv, filename)
        path = self._version_file(mv, filename)
        try:
            data = self._folders.read_bytes(path)
        except FileNotFoundError:
            raise _missing(mv, filename) from None
        _check_digest(mv, filename, _sha256_of(data), len(data))
        return data

    def load_weights(self, mv: ModelVersion) -> dict[str, Any]:
        """The state dict of a version, verified against its sha256, loaded on the CPU.

        Raises:
            RegistryError: a checksum mismatch, or a file that is not a plain state dict.
        """
        import pickle

        import torch  # late: listing and promoting need no torch
        from safetensors import SafetensorError

        name = weights_file(mv.files) or WEIGHT_FILES[0]
        data = self.read_file(mv, name)
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load as load_safetensors

                state = load_safetensors(data)
            else:
                state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, SafetensorError) as exc:
            raise RegistryError(f"{mv.ref}: {name} is not a loadable state dict ({exc}). Save it with "
                                f"safetensors.torch.save_file(model.state_dict(), path).") from None
        if not isinstance(state, dict):
            raise RegistryError(f"{mv.ref}: {name} holds a {type(state).__name__}, not a state dict.")
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
                with self._folders.fs.open_input_stream(source, compression=None) as fin, \
                        open(tmp, "wb") as fout:
                    while chunk := fin.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        fout.write(chunk)
                _check_digest(mv, rel, digest.hexdigest(), size)
                os.replace(tmp, target)
            except FileNotFoundError:
                raise _missing(mv, rel) from None
            finally:
                tmp.unlink(missing_ok=True)
        (dest / MANIFEST).write_text(json.dumps(mv.manifest, indent=2))
        return str(dest)


def open_registry(storage_root: str) -> Registry:
    """The registry under a storage root (cluster.yaml's ``metadata.atoll.storage``, ``$ATOLL_STORAGE``)."""
    return Registry(storage_root)
