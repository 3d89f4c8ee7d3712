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

What the store says when it refuses (expired credentials, another region, no network, no such bucket) is
translated once, by :func:`store_error`, into a :class:`StorageError`: one line naming the bucket and the
likely fix, where pyarrow and botocore would raise a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import posixpath
import re
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

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


class StorageError(AtollError):
    """The storage root's object store (or disk) refused a read or write, or could not be reached."""


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


def write_whole(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees all of it or the file as it was, never half: on a disk
    under a temporary name beginning with ``.`` (which listings skip) in the same folder, then one rename; on an
    object store one PUT (an object appears whole when its upload completes)."""
    if is_object_store(fs):
        with fs.open_output_stream(path, compression=None) as out:
            out.write(data)
        return
    folder, name = posixpath.split(path)
    fs.create_dir(folder, recursive=True)
    tmp = posixpath.join(folder, f".{name}.{os.urandom(4).hex()}.tmp")  # a name of its own per writer
    with fs.open_output_stream(tmp, compression=None) as out:
        out.write(data)
    fs.move(tmp, path)  # a rename: replaces the old file at once


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


# -- what the store's refusals mean ------------------------------------------------------------------

# Error codes as S3 (botocore: "InvalidAccessKeyId") and pyarrow ("INVALID_ACCESS_KEY_ID") spell them, compared
# without case or underscores.
_CREDENTIAL_CODES = {"INVALIDACCESSKEYID", "SIGNATUREDOESNOTMATCH", "EXPIREDTOKEN", "TOKENREFRESHREQUIRED",
                     "REQUESTEXPIRED", "INVALIDTOKEN", "ACCESSDENIED", "MISSINGAUTHENTICATIONTOKEN",
                     "INVALIDCLIENTTOKENID", "UNRECOGNIZEDCLIENTEXCEPTION", "NOCREDENTIALS", "FORBIDDEN"}
_REGION_CODES = {"PERMANENTREDIRECT", "TEMPORARYREDIRECT", "AUTHORIZATIONHEADERMALFORMED",
                 "ILLEGALLOCATIONCONSTRAINTEXCEPTION", "INVALIDREGION"}
_NETWORK_CODES = {"NETWORKCONNECTION", "REQUESTTIMEOUT", "ENDPOINTCONNECTION", "CONNECTTIMEOUT", "READTIMEOUT",
                  "CONNECTIONCLOSED"}
_NETWORK_WORDS = ("curlcode", "could not connect", "couldn't connect", "could not resolve", "timed out",
                  "connection refused", "connection reset")
_BUCKET_IN_MESSAGE = re.compile(r"in bucket '([^']+)'")
_AWS_ERROR = re.compile(r"AWS Error (\w+)(.*?)(?:\s*\(Request ID:.*)?$", re.DOTALL)


def _bucket(location: str) -> str:
    """The bucket of an object-store URI or of a path inside an object-store filesystem."""
    return location.split("://", 1)[-1].lstrip("/").split("/", 1)[0]


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _code_and_detail(exc: BaseException) -> tuple[str, str, str | None]:
    """The store's error code (normalised), a one-line detail and the bucket the error names, if any."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):  # botocore's ClientError
        error = response["Error"]
        code = str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
        detail = f"{code}: {error.get('Message') or exc}"
        return code.replace("_", "").upper(), _one_line(detail), error.get("BucketName")
    text = str(exc)
    bucket = found[1] if (found := _BUCKET_IN_MESSAGE.search(text)) else None
    if (aws := _AWS_ERROR.search(text)) is not None:  # pyarrow: "... AWS Error ACCESS_DENIED during ..."
        code = aws[1]
        if code == "UNKNOWN" and "HTTP status 301" in text:  # S3 answers 301 to a request for another region
            code = "PERMANENT_REDIRECT"
        return code.replace("_", "").upper(), _one_line(f"{aws[1]}{aws[2]}"), bucket
    # botocore's own errors (no answer from the store): the class name is the code.
    return type(exc).__name__.removesuffix("Error").upper(), _one_line(text), bucket


def bucket_missing(bucket: str, location: str) -> StorageError:
    """One line: ``bucket`` does not exist where the storage root ``location`` points."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the object store"
    return StorageError(f"storage {location}: bucket {bucket!r} does not exist at {endpoint}. Create it "
                        f"(`atoll storage up --bucket {bucket}` for the development store) or point "
                        f"metadata.atoll.storage in cluster.yaml (or ATOLL_STORAGE) at a bucket that exists.")


def store_error(exc: BaseException, location: str) -> StorageError | None:
    """What a failure of the object store under ``location`` (a storage root) means, as one line naming the
    bucket and the likely fix; None when ``exc`` is not the store's (a bug stays a traceback, a local disk's
    ``OSError`` stays as the OS said it).

    Args:
        exc: What pyarrow (an ``OSError``) or botocore (``ClientError``, ``BotoCoreError``) raised.
        location: The storage root the call was made for, e.g. ``s3://team/atoll``.
    """
    botocore_errors = sys.modules.get("botocore.exceptions")  # loaded only if boto3 made the call
    from_botocore = botocore_errors is not None and isinstance(
        exc, (botocore_errors.ClientError, botocore_errors.BotoCoreError))
    # A local disk's OSError already says what is wrong, and where; only an object store's needs translating.
    if not from_botocore and not (isinstance(exc, OSError) and is_remote(location)):
        return None
    code, detail, named = _code_and_detail(exc)
    bucket = named or _bucket(location)
    lowered = detail.lower()
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    if code == "NOSUCHBUCKET":
        return bucket_missing(bucket, location)
    if code in _CREDENTIAL_CODES or "credentials" in code.lower() or code.startswith("TOKEN"):
        return StorageError(
            f"storage {location}: {endpoint} refused the credentials for bucket {bucket!r} ({detail}). They are "
            f"wrong, expired or lack access to the bucket: renew them (`aws sso login`, or the keys in the file "
            f"AWS_SHARED_CREDENTIALS_FILE or metadata.atoll.s3.credentials_file names) or ask for access.")
    if code in _REGION_CODES or "region" in lowered:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return StorageError(f"storage {location}: bucket {bucket!r} is not in region {region} ({detail}); set "
                            f"metadata.atoll.s3.region in cluster.yaml (or AWS_REGION) to the bucket's region.")
    if code in _NETWORK_CODES or any(word in lowered for word in _NETWORK_WORDS):
        return StorageError(
            f"storage {location}: cannot reach {endpoint} for bucket {bucket!r} ({detail}); check the network "
            f"and metadata.atoll.s3.endpoint in cluster.yaml (or AWS_ENDPOINT_URL), and that the server runs "
            f"(`atoll storage status` for the development store).")
    return StorageError(f"storage {location}: the object store failed on bucket {bucket!r} ({detail}); check "
                        f"metadata.atoll.storage and metadata.atoll.s3 in cluster.yaml and the credentials.")


@contextlib.contextmanager
def store_errors(location: str) -> Iterator[None]:
    """Raise what the store refuses inside the block as :func:`store_error`'s one line; anything else, an
    ``AtollError`` included, passes unchanged."""
    try:
        yield
    except AtollError:
        raise
    except Exception as exc:
        translated = store_error(exc, location)
        if translated is None:
            raise
        raise translated from exc  # --debug still shows what the store said


_Class = TypeVar("_Class", bound=type)


def speaks_to_the_store(location_attr: str) -> Callable[[_Class], _Class]:
    """Class decorator: every public method of the class raises the store's refusals as one line
    (:func:`store_errors`) for the storage root in ``self.<location_attr>``. The class's surface is the one
    boundary, whichever call inside it (a listing, a stream, a conditional PUT) met the refusal."""
    def guard(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            with store_errors(getattr(self, location_attr)):
                return method(self, *args, **kwargs)
        return guarded

    def decorate(cls: _Class) -> _Class:
        for attr, member in list(vars(cls).items()):
            if not attr.startswith("_") and inspect.isfunction(member):
                setattr(cls, attr, guard(member))
        return cls
    return decorate
