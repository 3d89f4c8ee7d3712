"""API keys of model endpoints: how long they must be, how they are stored, how a request is checked.

A key never leaves the machine that deploys: the Serve config (and so the dashboard, the KubeRay manifests
and every replica) holds only ``hmac-sha256$<salt>$<digest>``, an HMAC of the key under a random salt drawn
for each deploy, so the same key gives a different record every time and a leaked record cannot be looked
up in a table of hashes. Checking a request takes the same HMAC and a constant-time compare whatever the
header holds. Pure standard library: the CLI, Serve replicas and the HTTP proxy's middleware all use it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from atoll.errors import ConfigError

MIN_LENGTH = 16
SCHEME = "hmac-sha256"
_RECORD = re.compile(rf"^{SCHEME}\$([0-9a-f]{{32}})\$([0-9a-f]{{64}})$")
# What a caller sees without a valid key, from the proxy and from a replica alike.
REFUSED = "missing or wrong API key: send 'Authorization: Bearer <key>'."

# Routes of a model app that need no key: its health check and the playground's page shells (no model
# data; /ui/chat: a language model's). The gallery (route /) keeps only its list of apps behind a key.
MODEL_APP_PUBLIC = ("/healthz", "/ui", "/ui/", "/ui/chat")
MODEL_APP_PUBLIC_PREFIXES = ("/ui/static/",)
GALLERY_KEYED = ("/_gallery/apps", "/_gallery/traffic")


def check_key(key: str, source: str) -> str:
    """The key, stripped; refuse one too short to resist guessing.

    Raises:
        ConfigError: naming where the key came from and how to make a good one.
    """
    key = key.strip()
    if len(key) < MIN_LENGTH:
        raise ConfigError(f"{source}: the API key is {len(key)} characters; use at least {MIN_LENGTH}, e.g. "
                          f"`python -c 'import secrets; print(secrets.token_urlsafe(24))'`.")
    return key


def hash_key(key: str, salt: bytes | None = None) -> str:
    """The record a deploy stores instead of the key: ``hmac-sha256$<salt hex>$<HMAC-SHA256(salt, key)>``."""
    salt = salt if salt is not None else os.urandom(16)
    return f"{SCHEME}${salt.hex()}${hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()}"


def _bearer(authorization: str | None) -> tuple[bool, str]:
    scheme, _, key = (authorization or "").partition(" ")
    return scheme.lower() == "bearer", key.strip()


def key_matches(authorization: str | None, record: str) -> bool:
    """Whether an ``Authorization: Bearer KEY`` header holds the key behind ``record``, in constant time.

    A missing, malformed or wrong key takes the same HMAC and comparison, so timing tells a caller nothing
    about how close a guess was. A malformed record matches nothing.
    """
    is_bearer, key = _bearer(authorization)
    found = _RECORD.match(record or "")
    salt, digest = (bytes.fromhex(found[1]), found[2]) if found else (b"\0" * 16, "0" * 64)
    candidate = hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(candidate, digest) and is_bearer and bool(key) and found is not None


def any_key_matches(authorization: str | None, records: list[str] | tuple[str, ...]) -> bool:
    """``key_matches`` against each record (all are tried, so the time does not say which one matched)."""
    results = [key_matches(authorization, r) for r in records]
    return any(results)


def needs_key(subpath: str, *, gallery: bool) -> bool:
    """Whether a route (the path below the app's prefix) is behind the key when the app has one."""
    if gallery:
        return subpath in GALLERY_KEYED
    return not (subpath in MODEL_APP_PUBLIC or subpath.startswith(MODEL_APP_PUBLIC_PREFIXES))
