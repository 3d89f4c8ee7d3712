"""The API key, checked in Serve's HTTP proxy: a request without a valid key is refused before it reaches
a replica's queue, so a keyless flood takes no queue slot and drives no autoscaling.

Ray wraps each HTTP proxy's ASGI app in the middlewares that ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
names (read when the proxy starts: `atoll up` sets it in the environment of `ray start`, cluster.yaml's
start commands and the KubeRay manifests set it too). The middleware matches a request to its app by route
prefix and checks the key against the app's record (``api_key_hash`` in its args, see atoll.apikeys), which
it reads from the Serve controller's app configs about once a second. The public routes of a keyed app
(``/healthz``, the playground's page shell and its static files) are answered here, from the package's own
files, so that no keyless request of any kind takes a replica's queue slot or drives autoscaling. Serve's
``/-/routes`` (which names every app) needs one of the keyed apps' keys while there is one; ``/-/healthz``
passes untouched. Each replica checks the key again, so a proxy started without this middleware still
guards every app.

The middleware also counts, in Atoll's request metric (atoll.serving.metrics), what never reaches a replica:
its own 401s and Serve's 503s (a full queue), by app and version; the replicas count the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from atoll import apikeys
from atoll.serving import metrics
from atoll.serving.names import GALLERY_IMPORT_PATH, MODEL_IMPORT_PATH

log = logging.getLogger("ray.serve")

ENV_VAR = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
IMPORT_PATH = "atoll.serving.proxy_auth:middlewares"
REFRESH_S = 1.0
#: A refused key triggers a refresh (a key just deployed) at most this often, so a flood cannot make the
#: proxy hammer the controller.
RECHECK_S = 0.25
REFUSED_BY = (b"x-atoll-refused-by", b"proxy")  # tells a test (or an operator) where the 401 came from
ANSWERED_BY = ("x-atoll-answered-by", "proxy")  # a keyed app's public route, answered without a replica
ROUTES_PATH = "/-/routes"  # Serve's own list of every app and its route


@dataclass(frozen=True)
class Guard:
    """One keyed app: its route prefix, whether it is the gallery, and the key records that open it."""

    prefix: str
    gallery: bool
    records: tuple[str, ...]
    app: str = ""
    model: str = ""


def _conf(config: Any) -> dict[str, Any]:
    return config.model_dump() if hasattr(config, "model_dump") else dict(config)


def guards_from_configs(configs: dict[str, Any]) -> list[Guard]:
    """Keyed Atoll apps from the controller's app configs (pydantic objects or dicts), longest prefix first."""
    guards = []
    for name, config in configs.items():
        conf = _conf(config)
        args, path = conf.get("args") or {}, conf.get("import_path")
        if conf.get("route_prefix") is None and "route_prefix" in conf:
            continue  # no HTTP route (a canary: only its app's replicas reach it)
        if path == MODEL_IMPORT_PATH and args.get("api_key_hash"):
            records = (args["api_key_hash"],)
        elif path == GALLERY_IMPORT_PATH and args.get("api_key_hashes"):
            records = tuple(args["api_key_hashes"])
        else:
            continue
        prefix = (conf.get("route_prefix") or "/").rstrip("/") or "/"
        guards.append(Guard(prefix, path == GALLERY_IMPORT_PATH, records, name, str(args.get("model") or "")))
    return sorted(guards, key=lambda g: len(g.prefix), reverse=True)


def model_apps_from_configs(configs: dict[str, Any]) -> list[Guard]:
    """Every Atoll model app (keyed or not) as a record without keys, longest prefix first: what the metrics
    of a request that never reached a replica are tagged with (its app and version)."""
    apps = []
    for name, config in configs.items():
        conf = _conf(config)
        if conf.get("import_path") == MODEL_IMPORT_PATH and conf.get("route_prefix", "/") is not None:
            prefix = (conf.get("route_prefix") or "/").rstrip("/") or "/"
            apps.append(Guard(prefix, False, (), name, str((conf.get("args") or {}).get("model") or "")))
    return sorted(apps, key=lambda g: len(g.prefix), reverse=True)


def guard_for(path: str, guards: list[Guard]) -> tuple[Guard, str] | None:
    """The guard of the app that serves ``path`` (longest prefix, as Serve routes) and the path below it."""
    for guard in guards:
        if guard.prefix == "/":
            return guard, path
        if path == guard.prefix or path.startswith(guard.prefix + "/"):
            return guard, path[len(guard.prefix):]
    return None


class KeyTable:
    """The keyed apps, read from the Serve controller and kept for ``REFRESH_S``."""

    def __init__(self) -> None:
        self.guards: list[Guard] = []
        self.apps: list[Guard] = []  # every model app, for the metrics' tags
        self.read_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self.read_at < RECHECK_S:
                return  # another request refreshed meanwhile
            try:
                from atoll import ray_compat

                configs = await ray_compat.serve_app_configs()
                self.guards, self.apps = guards_from_configs(configs), model_apps_from_configs(configs)
            except Exception as exc:  # noqa: BLE001 - keep the last table; replicas still check every key
                log.warning("atoll.serving.proxy_auth: cannot read the app configs from the Serve controller (%s)", exc)
            self.read_at = time.monotonic()

    async def lookup(self, path: str, *, fresh: bool = False) -> tuple[Guard, str] | None:
        age = time.monotonic() - self.read_at
        if age > REFRESH_S or (fresh and age > RECHECK_S):
            await self.refresh()
        return guard_for(path, self.guards)

    def app_for(self, path: str) -> tuple[Guard, str] | None:
        """The model app that serves ``path`` and the path below it, as last read (no refresh)."""
        return guard_for(path, self.apps)


class APIKeyMiddleware:
    """Pure ASGI middleware: 401 for a keyed route without a valid ``Authorization: Bearer`` key."""

    def __init__(self, app: Any, table: KeyTable | None = None) -> None:
        self.app = app
        self.table = table or KeyTable()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path") or "/"
        header = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"authorization"), None)
        if path.startswith("/-/"):
            if path != ROUTES_PATH or await self._routes_open(header):
                return await self.app(scope, receive, send)
            return await self._refuse(send)
        found = await self.table.lookup(path)
        if found is not None and not found[0].gallery and (answer := public_answer(*found)) is not None:
            return await answer(scope, receive, send)
        model_app = self.table.app_for(path)
        if await self._allowed(path, header):
            if model_app is None:
                return await self.app(scope, receive, send)
            return await self.app(scope, receive, _counting_503(send, *model_app))
        if model_app is not None:
            metrics.proxy_recorder().record_refused(metrics.route_label(model_app[1]), 401, _tags(model_app[0]))
        return await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": apikeys.REFUSED}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer"), REFUSED_BY]})
        await send({"type": "http.response.body", "body": body})

    async def _routes_open(self, header: str | None) -> bool:
        """Serve's list of every app opens to anyone while no app is keyed, else with any keyed app's key."""
        await self.table.lookup("/")  # refreshes the table when it is old
        records = tuple(r for guard in self.table.guards for r in guard.records)
        return not records or apikeys.any_key_matches(header, records)

    async def _allowed(self, path: str, header: str | None) -> bool:
        for fresh in (False, True):  # a refusal is re-checked once against fresh configs (a key just deployed)
            found = await self.table.lookup(path, fresh=fresh)
            if found is None:
                return True
            guard, subpath = found
            if not apikeys.needs_key(subpath, gallery=guard.gallery):
                return True
            if apikeys.any_key_matches(header, guard.records):
                return True
        return False


def _tags(app: Guard) -> dict[str, str]:
    return {"application": app.app, "model": app.model}


def _counting_503(send: Any, app: Guard, subpath: str) -> Any:
    """``send``, counting a 503 answer (Serve's own, for a full queue: a replica never sends one)."""
    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 503:
            metrics.proxy_recorder().record_refused(metrics.route_label(subpath), 503, _tags(app))
        await send(message)

    return sending


def public_answer(guard: Guard, subpath: str) -> Any | None:
    """The proxy's own answer (an ASGI response) to a public route of the keyed model app ``guard``, or None
    for a route that needs the key. The page shell and its files are the package's, the same for every app;
    ``/healthz`` says the app is deployed and routed to (Serve's own health checks replace a replica that
    stops answering) and, keyless, names no model or version."""
    from starlette.responses import JSONResponse, RedirectResponse

    from atoll.serving import playground

    if subpath == "/healthz":
        response = JSONResponse({"status": "ok"})
    elif subpath == "/ui":
        response = playground.html_response("playground.html")
    elif subpath == "/ui/":
        response = RedirectResponse(f"{guard.prefix.rstrip('/')}/ui")
    elif subpath == "/ui/chat":  # a language model's playground (the page at /ui goes there once it reads the card)
        response = playground.html_response("chat.html")
    elif subpath.startswith("/ui/static/"):
        response = playground.static_response(subpath.removeprefix("/ui/static/"))
    else:
        return None
    response.headers[ANSWERED_BY[0]] = ANSWERED_BY[1]
    return response


def middlewares() -> list[Any]:
    """What Ray's proxy calls (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=atoll.serving.proxy_auth:middlewares``)."""
    from starlette.middleware import Middleware

    return [Middleware(APIKeyMiddleware)]
