"""Model names and references (``NAME``, ``NAME:VERSION``, ``NAME@ALIAS``): checking and splitting them
needs no storage, so the registry, the CLI and the Kubernetes export share these pure functions."""

from __future__ import annotations

import re

from atoll.errors import RegistryError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_REF_HELP = "use NAME, NAME:VERSION or NAME@ALIAS, e.g. digits, digits:3, digits@production"


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
