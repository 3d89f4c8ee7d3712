"""API keys without a cluster: their length, their salted HMAC record, the constant-work check, and the
proxy middleware (atoll.serving.proxy_auth) in front of a real ASGI app."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from atoll import apikeys
from atoll.errors import ConfigError
from atoll.serving import proxy_auth
from fastapi import FastAPI

KEY = "a-long-enough-api-key-0123"


def test_a_key_shorter_than_16_characters_is_refused_with_how_to_make_one():
    with pytest.raises(ConfigError) as err:
        apikeys.check_key("x" * 15, "$ATOLL_API_KEY")
    assert "$ATOLL_API_KEY" in str(err.value) and "15 characters" in str(err.value) and "at least 16" in str(err.value)
    assert "x" * 15 not in str(err.value)  # the message never repeats the key
    assert apikeys.check_key(" " + "y" * 16 + "\n", "env") == "y" * 16


def test_the_record_is_a_salted_hmac_that_differs_per_deploy_and_never_holds_the_key():
    first, second = apikeys.hash_key(KEY), apikeys.hash_key(KEY)
    assert first != second  # a new salt per deploy
    assert first.startswith("hmac-sha256$") and KEY not in first
    for record in (first, second):
        assert apikeys.key_matches(f"Bearer {KEY}", record)


def test_only_a_bearer_header_with_the_right_key_matches():
    record = apikeys.hash_key(KEY)
    refused = [None, "", "Bearer", "Bearer ", f"Bearer {KEY}x", f"Basic {KEY}", KEY, f"bearer {KEY[:-1]}"]
    assert [apikeys.key_matches(h, record) for h in refused] == [False] * len(refused)
    assert apikeys.key_matches(f"bearer {KEY}", record)  # the scheme is case-insensitive
    assert not apikeys.key_matches(f"Bearer {KEY}", "sha256-of-something")  # a malformed record opens nothing
    assert apikeys.any_key_matches(f"Bearer {KEY}", ["junk", record]) and not apikeys.any_key_matches(None, [record])


def test_the_key_check_does_the_same_work_for_missing_wrong_and_right_keys(monkeypatch):
    """Constant time by construction: one HMAC and one compare_digest of 64 hex digits whatever the header."""
    calls = []
    real = apikeys.hmac.compare_digest
    monkeypatch.setattr(apikeys.hmac, "compare_digest", lambda a, b: calls.append((len(a), len(b))) or real(a, b))
    record = apikeys.hash_key(KEY)
    headers = [None, "", "Bearer", f"Bearer {KEY}x", f"Basic {KEY}", KEY, f"Bearer {KEY}"]
    results = [apikeys.key_matches(h, record) for h in headers]
    assert results == [False] * 6 + [True]
    assert calls == [(64, 64)] * len(headers)


def test_which_routes_need_the_key():
    assert [apikeys.needs_key(p, gallery=False) for p in ("/healthz", "/ui", "/ui/", "/ui/static/app.js")] == [False] * 4
    assert all(apikeys.needs_key(p, gallery=False) for p in ("", "/", "/predict", "/examples", "/openapi.json",
                                                             "/curve.png", "/uix", "/healthz/x"))
    assert apikeys.needs_key("/_gallery/apps", gallery=True)
    assert not any(apikeys.needs_key(p, gallery=True) for p in ("/", "/_gallery/static/gallery.js", "/_gallery/healthz"))


def _configs(record: str) -> dict:
    return {
        "digits": {"name": "digits", "route_prefix": "/digits", "import_path": "atoll.serving.replica:app",
                   "args": {"model": "digits:1", "api_key_hash": record}},
        "open": {"name": "open", "route_prefix": "/open", "import_path": "atoll.serving.replica:app", "args": {"model": "m:1"}},
        "_gallery": {"name": "_gallery", "route_prefix": "/", "import_path": "atoll.serving.playground:gallery_app",
                     "args": {"api_key_hashes": [record]}},
        "theirs": {"name": "theirs", "route_prefix": "/theirs", "import_path": "their.app:app",
                   "args": {"api_key_hash": record}},
    }


def test_the_proxy_finds_the_keyed_app_of_a_path_by_its_longest_prefix():
    guards = proxy_auth.guards_from_configs(_configs(apikeys.hash_key(KEY)))
    assert [g.prefix for g in guards] == ["/digits", "/"]  # unkeyed and foreign apps are not guarded
    assert proxy_auth.guard_for("/digits/predict", guards)[1] == "/predict"
    assert proxy_auth.guard_for("/digits", guards)[1] == ""
    digits_two = proxy_auth.guard_for("/digits2/predict", guards)  # not /digits: the gallery's prefix
    assert digits_two[0].gallery and digits_two[1] == "/digits2/predict"


def _client(record: str) -> httpx.AsyncClient:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    def anything(path: str):
        return {"reached": path}

    table = proxy_auth.KeyTable()
    table.guards, table.read_at = proxy_auth.guards_from_configs(_configs(record)), time.monotonic() + 3600
    transport = httpx.ASGITransport(app=proxy_auth.APIKeyMiddleware(app, table))
    return httpx.AsyncClient(transport=transport, base_url="http://proxy")


def test_the_proxy_middleware_refuses_keyless_requests_to_keyed_routes_and_passes_the_rest():
    record = apikeys.hash_key(KEY)

    async def run() -> dict[str, tuple[int, str | None]]:
        async with _client(record) as http:
            cases = {
                "keyless predict": ("POST", "/digits/predict", {}),
                "wrong key": ("POST", "/digits/predict", {"Authorization": "Bearer wrong-key-wrong-key"}),
                "right key": ("POST", "/digits/predict", {"Authorization": f"Bearer {KEY}"}),
                "healthz": ("GET", "/digits/healthz", {}),
                "page shell": ("GET", "/digits/ui", {}),
                "page script": ("GET", "/digits/ui/static/playground.js", {}),
                "unkeyed app": ("POST", "/open/predict", {}),
                "unkeyed healthz": ("GET", "/open/healthz", {}),
                "serve's health": ("GET", "/-/healthz", {}),
                "serve's routes": ("GET", "/-/routes", {}),
                "serve's routes keyed": ("GET", "/-/routes", {"Authorization": f"Bearer {KEY}"}),
                "gallery page": ("GET", "/", {}),
                "gallery list": ("GET", "/_gallery/apps", {}),
                "gallery list keyed": ("GET", "/_gallery/apps", {"Authorization": f"Bearer {KEY}"}),
            }
            out = {}
            for name, (method, path, headers) in cases.items():
                resp = await http.request(method, path, headers=headers)
                out[name] = (resp.status_code, resp.headers.get("x-atoll-refused-by"),
                             resp.headers.get("x-atoll-answered-by"), resp.text)
            return out

    got = asyncio.run(run())
    refused = {name for name, (code, *_) in got.items() if code == 401}
    assert refused == {"keyless predict", "wrong key", "gallery list", "serve's routes"}, got  # 32.7: the app list
    assert all(got[name][1] == "proxy" for name in refused)
    assert all(code == 200 for name, (code, *_) in got.items() if name not in refused), got
    # Issue 32.7: a keyed app's public routes never reach a replica (no queue slot, no autoscaling), and its
    # keyless /healthz names no model or version; an unkeyed app's go to its replica as before.
    answered = {name for name, (_, _, by, _) in got.items() if by == "proxy"}
    assert answered == {"healthz", "page shell", "page script"}, got
    assert got["healthz"][3] == '{"status":"ok"}' and "digits" not in got["healthz"][3]
    assert "<html" in got["page shell"][3].lower() and "reached" in got["unkeyed healthz"][3]
