"""The registry's folders on one pyarrow filesystem, a local disk or an object store: where each model's
versions, staging folders and aliases live under ``<root>/registry/``, and the IO on them that holds up
under concurrent writers (small JSON files replaced whole, listings that look again when a folder appears
or vanishes mid-walk, folder ages, the per-model lock). It knows nothing of manifests, so publishing
(:mod:`atoll.registry.publish`) and the :class:`~atoll.registry.store.Registry` share it.

A small JSON file that is there but unreadable is not an absent one: :meth:`Folders.update_json` refuses to
write over it (that would lose whatever it held, e.g. every other alias)."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs as pafs

from atoll import filesystems
from atoll.errors import RegistryError

try:  # POSIX only; without it (Windows) concurrent alias updates are last-writer-wins.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def _resolve(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """A filesystem and a path in it for a local path (``~`` allowed) or a URI."""
    return filesystems.resolve(location, RegistryError)


class Folders:
    """``<base>/<name>/{versions/N, .staging/ID, evaluations/N, aliases.json, .lock}`` on ``fs``.

    Args:
        fs: The filesystem; every read and write of the registry goes through this attribute.
        base: The ``registry`` folder in it.
        local: Whether ``fs`` is a local filesystem (atomic renames, file locks) or an object store.
    """

    def __init__(self, fs: pafs.FileSystem, base: str, *, local: bool) -> None:
        self.fs, self.base, self.local = fs, base, local
        #: Whether the store takes conditional writes (S3): claims and compare-and-swap, not rename and lock.
        self.conditional = not local and filesystems.supports_conditional_writes(fs)
        self.object_store = filesystems.is_object_store(fs)  # no folders of its own: none are created
        self._bucket_exists = False  # checked once, the first time a listing comes back empty

    # -- paths ------------------------------------------------------------------------------------

    def uri(self, path: str) -> str:
        """``path`` as a user names it: ``s3://bucket/key`` on an object store, the path on a disk."""
        if not self.object_store:
            return path
        return f"{'gs' if self.fs.type_name == 'gcs' else self.fs.type_name}://{path}"

    def model_dir(self, name: str) -> str:
        return posixpath.join(self.base, name)

    def versions_dir(self, name: str) -> str:
        return posixpath.join(self.model_dir(name), "versions")

    def version_dir(self, name: str, version: int) -> str:
        return posixpath.join(self.versions_dir(name), str(version))

    def staging_root(self, name: str) -> str:
        return posixpath.join(self.model_dir(name), ".staging")

    def evaluations_dir(self, name: str, version: int) -> str:
        """Where a version's evaluation records go: beside its sealed folder, never in it."""
        return posixpath.join(self.model_dir(name), "evaluations", str(version))

    def aliases_file(self, name: str) -> str:
        return posixpath.join(self.model_dir(name), "aliases.json")

    def version_numbers(self, name: str) -> list[int]:
        """Every version folder, visible or not (tombstones and half uploads included)."""
        return sorted(int(i.base_name) for i in self.listing(self.versions_dir(name))
                      if i.type == pafs.FileType.Directory and i.base_name.isdigit())

    # -- IO ---------------------------------------------------------------------------------------

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path, compression=None) as f:
            return f.read()

    def make_parent(self, path: str) -> None:
        """Create the folder ``path`` goes in: on a disk. An object store needs none, and pyarrow's marker
        object would make a folder appear before the object that gives it meaning (a staging folder
        without its manifest)."""
        if not self.object_store:
            self.fs.create_dir(posixpath.dirname(path), recursive=True)

    def write_bytes(self, path: str, data: bytes) -> None:
        self.make_parent(path)
        with self.fs.open_output_stream(path, compression=None) as f:
            f.write(data)

    def write_json_atomic(self, path: str, data: Any) -> None:
        """Replace a small JSON file so that readers see the old or the new content, never half."""
        filesystems.write_whole(self.fs, path, json.dumps(data, indent=2, sort_keys=True).encode())

    def claim(self, path: str, data: bytes) -> bool:
        """Create the object ``path`` holding ``data`` unless it exists (S3: ``If-None-Match: *``)."""
        return filesystems.put_if_absent(self.fs, path, data)

    def take_over(self, path: str, data: bytes, still: Callable[[Any], bool]) -> bool:
        """Replace the JSON object ``path`` with ``data`` if ``still(its content)`` and nobody replaced it
        in between (S3: ``If-Match`` its ETag)."""
        raw, etag = filesystems.read_versioned(self.fs, path)
        try:
            current = json.loads(raw) if raw is not None else None
        except ValueError:
            return False  # not a claim this writer can judge: leave it
        return etag is not None and still(current) and filesystems.put_if_unchanged(self.fs, path, data, etag)

    def update_json(self, path: str, change: Callable[[Any], Any]) -> Any:
        """Apply ``change`` to a small JSON file (None when missing) and write the result, losing no concurrent
        update: a compare-and-swap on S3; on a local disk the caller holds :meth:`lock`.

        Raises:
            RegistryError: the file is there but unreadable (:meth:`read_json_if_present`); it is left as is.
        """
        if not self.conditional:
            new = change(self.read_json_if_present(path))
            self.write_json_atomic(path, new)
            return new
        for _ in range(1000):
            raw, etag = filesystems.read_versioned(self.fs, path)
            new = change(None if raw is None else self._parsed(path, raw))
            if filesystems.put_if_unchanged(self.fs, path, json.dumps(new, indent=2, sort_keys=True).encode(), etag):
                return new
        raise RegistryError(f"{path}: too many concurrent updates; retry.")

    def read_json(self, path: str) -> Any | None:
        """Parsed JSON, or None when the file is missing or unreadable (half-written, foreign)."""
        try:
            return json.loads(self.read_bytes(path))
        except (FileNotFoundError, ValueError):
            return None

    def read_json_if_present(self, path: str) -> Any | None:
        """Parsed JSON, or None only when there is no such file.

        Raises:
            RegistryError: the file is there but not JSON (damaged, or edited by hand). Read as empty, the next
                write would replace whatever it held.
        """
        try:
            raw = self.read_bytes(path)
        except FileNotFoundError:
            return None
        return self._parsed(path, raw)

    def _parsed(self, path: str, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError included
            raise RegistryError(f"{self.uri(path)} is unreadable ({exc}); it was left as it is, since writing "
                                f"over it would lose what it holds. Repair it (from a backup, or by hand) or "
                                f"delete it to start it afresh.") from None

    def listing(self, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
        for _ in range(2):
            try:
                found = self.fs.get_file_info(selector)
                break
            except FileNotFoundError:
                # pyarrow raises when the folder appears between its failed listing and its existence check
                # (a concurrent first registration), or a subfolder vanishes mid-walk (a publish): look again.
                continue
        else:
            found = self.fs.get_file_info(selector)
        if not found:
            self._check_bucket(path)
        return found

    def _check_bucket(self, path: str) -> None:
        """An object store lists a missing bucket as empty: say that it is missing, not that nothing is there
        (and before a write, which some stores answer by creating the bucket)."""
        if not self.object_store or self._bucket_exists:
            return
        bucket = path.lstrip("/").split("/", 1)[0]
        if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise filesystems.bucket_missing(bucket, self.uri(self.base).removesuffix("/registry"))
        self._bucket_exists = True

    def idle_s(self, folder: pafs.FileInfo) -> float:
        """Seconds since the last write in a folder (0 when the store reports no times)."""
        stamps = [i.mtime for i in [folder, *self.listing(folder.path, recursive=True)] if i.mtime]
        return time.time() - max(s.timestamp() for s in stamps) if stamps else 0.0

    def empty_dir(self, path: str, keep: str) -> None:
        """Delete everything in a folder but the file named ``keep``."""
        for entry in self.listing(path):
            if entry.base_name == keep:
                continue
            if entry.type == pafs.FileType.Directory:
                self.fs.delete_dir(entry.path)
            else:
                self.fs.delete_file(entry.path)

    def remove_dir(self, path: str) -> None:
        """Delete a folder with everything in it; nothing to do when there is none."""
        try:
            self.fs.delete_dir(path)
        except FileNotFoundError:
            pass

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialize alias updates and deletes of one model on a local filesystem (an object store: no-op; S3's
        alias updates are a compare-and-swap, :meth:`update_json`)."""
        if not self.local or fcntl is None:
            yield
            return
        path = posixpath.join(self.model_dir(name), ".lock")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
