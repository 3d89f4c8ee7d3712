"""The filesystems of Atoll's state: one storage root, a local folder or an object-store URI (``s3://``,
``gs://``), and every path under it, built here on :mod:`pyarrow.fs`.

Never :mod:`pathlib` for a path under the root: ``Path("s3://b/x")`` is a local folder named ``s3:``.

An S3-compatible store is configured by cluster.yaml's ``metadata.atoll.s3`` (endpoint, region, where the
credentials come from). It reaches pyarrow and boto3, in the client and in every job and replica, as the
standard AWS variables. Only the non-secret ones travel (:data:`FORWARDED_ENV`): the endpoint, the region
and the *path* of a credentials file. A key never leaves the process that holds it: each node reads its
own environment, instance role or credentials file.

An object store has no atomic rename and no file lock. :func:`put_if_absent` (``If-None-Match: *``) claims
a name once, and :func:`read_versioned` with :func:`put_if_unchanged` (``If-Match: ETag``) is a
compare-and-swap, so the registry is as safe on S3 as on a local disk.
"""

from __future__ import annotations

import os
import posixpath
from typing import TYPE_CHECKING, Any

from atoll.errors import AtollError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

    from atoll.specs import S3Settings

#: Where the object store is and where its credentials lie: forwarded from the submitting process to jobs
#: and Serve replicas. Never a key (:data:`SECRET_ENV`).
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SHARED_CREDENTIALS_FILE",
                 "AWS_CONFIG_FILE", "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED")
#: Read by pyarrow and boto3 where they are set; never forwarded, printed or written by Atoll.
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is an object-store URI rather than a local path (``file://`` counts as local)."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def resolve(location: str | os.PathLike[str], error: type[AtollError] = AtollError
            ) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it for a local path (``~`` allowed) or a URI.

    Raises:
        error: the URI names no filesystem pyarrow can open (a bad scheme, a missing bucket's region, ...).
    """
    import pyarrow.fs as pafs

    text = os.fspath(location)
    if not is_remote(text):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text.removeprefix("file://")))
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... depending on the scheme
        raise error(f"cannot open storage {text!r}: {exc}. Check the URI (a local path, s3://bucket/prefix or "
                    f"gs://bucket/prefix), metadata.atoll.s3 in cluster.yaml and the credentials.") from None
    return fs, path.rstrip("/") or path


def join(root: str | os.PathLike[str], *parts: str) -> str:
    """``root`` joined with ``parts``: a URI stays a URI (``s3://b/x`` + ``runs`` → ``s3://b/x/runs``), a local
    root becomes an absolute path."""
    text = os.fspath(root)
    if is_remote(text):
        return posixpath.join(text.rstrip("/"), *parts)
    return os.path.join(os.path.abspath(os.path.expanduser(text.removeprefix("file://"))), *parts)


# -- configuration ----------------------------------------------------------------------------------


def environment(settings: S3Settings | None) -> dict[str, str]:
    """The AWS variables ``metadata.atoll.s3`` stands for (none when it is unset)."""
    if settings is None:
        return {}
    env = {"AWS_REGION": settings.region, "AWS_DEFAULT_REGION": settings.region}
    if settings.endpoint:
        env["AWS_ENDPOINT_URL"] = settings.endpoint
        env["AWS_EC2_METADATA_DISABLED"] = "true"  # an S3-compatible server: no instance role to look up
    if settings.credentials == "file":
        env["AWS_SHARED_CREDENTIALS_FILE"] = os.path.expanduser(settings.credentials_file)
    return env


def configure(settings: S3Settings | None) -> None:
    """Point this process's pyarrow and boto3 at the object store of ``metadata.atoll.s3`` (cluster.yaml wins
    over variables already set: it is the more specific word)."""
    os.environ.update(environment(settings))


def forwarded_env() -> dict[str, str]:
    """The non-secret storage variables of this process, for a job's or replica's ``runtime_env``."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


# -- conditional writes on S3 -----------------------------------------------------------------------


def is_object_store(fs: pafs.FileSystem) -> bool:
    """Whether ``fs`` is an object store with no real folders (S3, GCS), not a disk however wrapped."""
    import pyarrow.fs as pafs

    return isinstance(fs, tuple(getattr(pafs, name) for name in ("S3FileSystem", "GcsFileSystem")
                                if hasattr(pafs, name)))


def supports_conditional_writes(fs: pafs.FileSystem) -> bool:
    """Whether ``fs`` is S3, where :func:`put_if_absent` and :func:`put_if_unchanged` hold."""
    import pyarrow.fs as pafs

    return isinstance(fs, pafs.S3FileSystem)


def _client(fs: pafs.FileSystem) -> Any:
    """A boto3 client for the S3 store ``fs`` talks to (the same endpoint, region and credentials chain)."""
    import boto3  # late: only S3 registries need it

    cached = getattr(_client, "cache", None)
    key = (fs.region, os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_SHARED_CREDENTIALS_FILE"))
    if cached is None or cached[0] != key:
        session = boto3.session.Session()
        cached = (key, session.client("s3", region_name=fs.region))
        _client.cache = cached  # type: ignore[attr-defined]
    return cached[1]


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    return bucket, key


def _refused(exc: Exception) -> bool:
    """A precondition that did not hold (412), or a concurrent conditional write in flight (409)."""
    status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status in (409, 412)


def put_if_absent(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` only if nothing is there (``If-None-Match: *``); False when something was."""
    bucket, key = _split(path)
    try:
        _client(fs).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except Exception as exc:
        if _refused(exc):
            return False
        raise
    return True


def read_versioned(fs: pafs.FileSystem, path: str) -> tuple[bytes | None, str | None]:
    """The bytes at ``path`` and their ETag, or ``(None, None)`` when there is no such object."""
    bucket, key = _split(path)
    client = _client(fs)
    try:
        answer = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return None, None
    return answer["Body"].read(), answer["ETag"]


def put_if_unchanged(fs: pafs.FileSystem, path: str, data: bytes, etag: str | None) -> bool:
    """Replace the object at ``path`` only if it still has ``etag`` (None: only if it is still absent);
    False when another writer got there first."""
    if etag is None:
        return put_if_absent(fs, path, data)
    bucket, key = _split(path)
    try:
        _client(fs).put_object(Bucket=bucket, Key=key, Body=data, IfMatch=etag)
    except Exception as exc:
        if _refused(exc):
            return False
        raise
    return True
