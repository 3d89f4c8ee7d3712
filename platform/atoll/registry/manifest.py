"""What a version folder holds and what its ``manifest.json`` says: the reserved file names and the states
of a registration, ``manifest_sha256`` (the checksum every manifest write is sealed with), the checks a READY
manifest passes before anything uses it, the rule that keeps every file name from a manifest or a checkpoint
inside its folder, and the JSON conversion of what ``register`` records. Pure (no IO), so the publishing and
reading code both build on it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable
from typing import Any

from atoll.errors import RegistryError

MANIFEST = "manifest.json"
MANIFEST_SHA256 = "manifest_sha256"
MANIFEST_FORMAT = 2  # 2: sealed with manifest_sha256; 1: written before that (accepted without one)
WEIGHTS = "model.safetensors"  # the weights as safetensors: plain tensors, no pickle
LEGACY_WEIGHTS = "model.pt"  # a state dict saved with torch.save (read with weights_only=True)
BOOSTER_FILES = ("model.ubj", "model.json")  # gradient-boosted trees in XGBoost's own format (atoll.trees)
HF_WEIGHTS = "hf/model.safetensors"  # a language model as a Hugging Face folder (atoll.train.generation)
WEIGHT_FILES = (WEIGHTS, LEGACY_WEIGHTS, *BOOSTER_FILES, HF_WEIGHTS)


def weights_file(files) -> str | None:
    """The weights file among ``files``: safetensors first, else the torch.save one, else a booster, else None."""
    return next((f for f in WEIGHT_FILES if f in files), None)
CHECKPOINT_META = "atoll.json"
PENDING = "PENDING"
READY = "READY"
FAILED = "FAILED"
DELETED = "DELETED"


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
