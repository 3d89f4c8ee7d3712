"""Canary rollouts, on the replica's side: a share of an app's model calls goes to a second version.

``atoll serve deploy NAME:V --app APP --canary 10`` runs V as a second Serve application, ``APP.canary`` (no HTTP
route: only a handle reaches it, through Serve's own routing to its replicas), and sets the live app's
``user_config`` to ``{"canary": {"app": "APP.canary", "model": "NAME:V", "percent": 10, ...}}`` — a lightweight
update: Serve calls each live replica's ``reconfigure`` and restarts none. From then on :class:`CanarySplit`, the
outermost middleware of the live replica's FastAPI app, sends that share of the app's model calls (POST requests;
pages, cards and health checks stay with the live version) to the canary through its app handle
(``forward``, a streamed call), and the canary's own app answers them whole, with its key check, validation,
batching and metrics; its answer goes back to the client unchanged. Every answer carries ``x-atoll-version``,
the version that gave it. With no canary the middleware costs one attribute read per request.

Auto-rollback (``--auto-rollback``): each live replica compares the canary's answers with its own over the last
:data:`WINDOW_S` seconds and stops sending it traffic at once when, with at least :data:`MIN_REQUESTS` canary
answers, its error rate (any status of 400 or more but a refused key's 401, or no answer: over the same mix of
requests, a client's own bad requests cost both sides alike) exceeds the live version's by :data:`ERROR_MARGIN` (5 percentage
points), or its p99 latency exceeds :data:`P99_FACTOR` × the live p99 plus :data:`P99_SLACK_MS`. The verdict is
written to the storage root (``serving/<app>/canary-verdict.json``) where every replica of the app, a new one
too, and ``atoll serve status`` read it; ``atoll serve rollback APP`` then removes the idle canary.

A canary that cannot be reached (being removed, or its replica died) before it answers costs nothing: the live
version answers that request itself (counted as a canary failure).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from atoll.serving.names import CANARY_SUFFIX, VERSION_HEADER

log = logging.getLogger("ray.serve")

WINDOW_S = 60.0
MIN_REQUESTS = 20
ERROR_MARGIN = 0.05
P99_FACTOR = 1.5
P99_SLACK_MS = 50.0
#: How often a replica looks for a verdict another replica of its app wrote.
VERDICT_POLL_S = 2.0


def canary_app(app: str) -> str:
    """The Serve application that runs ``app``'s canary."""
    return f"{app}{CANARY_SUFFIX}"


def public_app(app: str) -> str:
    """The app a request was sent to: ``APP`` for ``APP.canary`` (metrics, logs and the card name it)."""
    return app[: -len(CANARY_SUFFIX)] if app.endswith(CANARY_SUFFIX) else app


def verdict_path(storage: str, app: str) -> str:
    from atoll.filesystems import join

    return join(storage, "serving", app, "canary-verdict.json")


def read_verdict(storage: str, app: str) -> dict[str, Any] | None:
    """The auto-rollback verdict on ``app``'s canary, or None."""
    from atoll.filesystems import resolve

    fs, path = resolve(verdict_path(storage, app))
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        return None


def clear_verdict(storage: str, app: str) -> None:
    from atoll.filesystems import resolve

    fs, path = resolve(verdict_path(storage, app))
    try:
        fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass


def _write_verdict(storage: str, app: str, verdict: dict[str, Any]) -> None:
    from atoll.filesystems import resolve, write_whole

    fs, path = resolve(verdict_path(storage, app))
    write_whole(fs, path, json.dumps(verdict).encode())


class Judge:
    """The canary's answers against the live version's over a sliding window: :meth:`verdict` says whether the
    canary is worse by the documented margins (a reason), or None."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.sides: dict[str, collections.deque[tuple[float, bool, float]]] = {
            "canary": collections.deque(), "live": collections.deque()}

    def record(self, side: str, ok: bool, latency_ms: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        queue = self.sides[side]
        queue.append((now, ok, latency_ms))
        while queue and queue[0][0] < now - self.window_s:
            queue.popleft()

    @staticmethod
    def _figures(queue: collections.deque[tuple[float, bool, float]]) -> tuple[int, float, float]:
        n = len(queue)
        if not n:
            return 0, 0.0, 0.0
        errors = sum(1 for _, ok, _ in queue if not ok) / n
        latencies = sorted(latency for _, _, latency in queue)
        return n, errors, latencies[min(n - 1, int(0.99 * n))]

    def verdict(self) -> str | None:
        n_c, err_c, p99_c = self._figures(self.sides["canary"])
        n_l, err_l, p99_l = self._figures(self.sides["live"])
        if n_c < MIN_REQUESTS:
            return None
        if err_c > err_l + ERROR_MARGIN:
            return (f"error rate {err_c:.1%} over its last {n_c} requests vs {err_l:.1%} for the live version "
                    f"(margin {ERROR_MARGIN:.0%})")
        if n_l >= MIN_REQUESTS and p99_c > P99_FACTOR * p99_l + P99_SLACK_MS:
            return (f"p99 {p99_c:.0f} ms over its last {n_c} requests vs {p99_l:.0f} ms for the live version "
                    f"(limit {P99_FACTOR}× + {P99_SLACK_MS:.0f} ms)")
        return None


class Split:
    """This replica's canary settings (one replica per process): set by the deployment's ``reconfigure``."""

    def __init__(self) -> None:
        self.version = ""  # NAME:VERSION this replica serves (the answer header)
        self.header = (VERSION_HEADER.encode(), b"")
        self.app = ""
        self.storage = ""
        self.route: dict[str, Any] | None = None  # {"app", "model", "percent", "auto_rollback"}; None: no canary
        self.judge = Judge()
        self.stopped: str | None = None  # why this replica sends the canary nothing any more
        self._handle: Any = None
        self._poller: asyncio.Task[None] | None = None

    def serving(self, app: str, version: str, storage: str) -> None:
        self.app, self.version, self.storage = public_app(app), version, storage
        self.header = (VERSION_HEADER.encode(), version.encode())

    def configure(self, user_config: dict[str, Any] | None) -> None:
        route = (user_config or {}).get("canary") or None
        if route == self.route:
            return
        self.route, self._handle, self.judge, self.stopped = route, None, Judge(), None
        if route:
            try:  # here, not on the request path (finding the app asks the controller)
                self.handle()
            except Exception as exc:  # noqa: BLE001 - retried on the first request that goes to the canary
                log.warning("no handle to the canary app %s yet (%s)", route.get("app"), exc)
        if route and route.get("auto_rollback"):
            verdict = read_verdict(self.storage, self.app)
            if verdict and verdict.get("canary") == route.get("model"):
                self.stopped = verdict.get("reason") or "rolled back"
        log.info("canary for %s: %s", self.app, route or "none")

    def chooses_canary(self) -> bool:
        route = self.route
        return bool(route) and self.stopped is None and random.random() * 100.0 < float(route.get("percent", 0))

    def handle(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_app_handle(self.route["app"]).options(stream=True, method_name="forward")
        return self._handle

    def observe(self, side: str, ok: bool, latency_ms: float) -> None:
        route = self.route
        if not route or not route.get("auto_rollback") or self.stopped is not None:
            return
        self.judge.record(side, ok, latency_ms)
        if side == "canary" and (reason := self.judge.verdict()):
            self.stop(reason, route)

    def stop(self, reason: str, route: dict[str, Any]) -> None:
        self.stopped = reason
        log.warning("canary %s of app %s rolled back: %s", route.get("model"), self.app, reason)
        verdict = {"app": self.app, "canary": route.get("model"), "live": self.version, "reason": reason,
                   "at": time.time()}
        try:
            _write_verdict(self.storage, self.app, verdict)
        except Exception:  # noqa: BLE001 - this replica has stopped already; the others judge for themselves
            log.exception("could not write the canary verdict")

    def watch_verdicts(self) -> None:
        """Poll the storage root for another replica's verdict (started from the replica's event loop)."""
        if self._poller is not None:
            return

        async def poll() -> None:
            while True:
                await asyncio.sleep(VERDICT_POLL_S)
                route = self.route
                if route and route.get("auto_rollback") and self.stopped is None:
                    verdict = await asyncio.get_running_loop().run_in_executor(
                        None, read_verdict, self.storage, self.app)
                    if verdict and verdict.get("canary") == route.get("model"):
                        self.stopped = verdict.get("reason") or "rolled back"

        self._poller = asyncio.get_running_loop().create_task(poll())


split = Split()


async def _read_body(receive: Any) -> tuple[bytes, bool]:
    """The request's whole body, and whether the client left meanwhile."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), False


def _replay(body: bytes, then: Any) -> Any:
    """An ASGI ``receive`` that gives the whole body, then whatever ``then`` gives (the client's disconnect)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return replayed


def forwarded_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """What of a request's ASGI scope goes to the canary: plain values only (no server state, no app)."""
    keep = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "root_path", "query_string",
            "headers", "client", "server")
    return {k: scope[k] for k in keep if k in scope}


def succeeded(status: int) -> bool:
    """An answer that counts for its version (see the module docstring): below 400, or a refused key."""
    return status < 400 or status == 401


class CanarySplit:
    """Pure ASGI middleware, the outermost of a model replica's app: the version header on every answer, and a
    canary's share of the model calls sent to it (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        header = split.header
        status = [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        if split.route is None:
            return await self.app(scope, receive, sending)
        started = time.perf_counter()
        if scope.get("method") == "POST" and split.chooses_canary():
            body, gone = await _read_body(receive)
            if gone:
                return
            if await self._to_canary(scope, body, send):
                return
            split.observe("canary", False, (time.perf_counter() - started) * 1000)
            receive = _replay(body, receive)
            started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            if scope.get("method") == "POST":
                split.observe("live", succeeded(status[0]), (time.perf_counter() - started) * 1000)

    async def _to_canary(self, scope: dict[str, Any], body: bytes, send: Any) -> bool:
        """Send the request to the canary and its answer to the client; False when the canary never answered
        (nothing was sent: the live version answers instead)."""
        split.watch_verdicts()
        started, status, answered = time.perf_counter(), 500, False
        try:
            async for message in split.handle().remote(forwarded_scope(scope), body):
                if message["type"] == "http.response.start":
                    status, answered = message["status"], True
                await send(message)
        except Exception as exc:  # noqa: BLE001 - the canary's failure is the canary's, never the client's
            if not answered:
                log.warning("canary %s did not answer (%s); the live version answers", split.route, exc)
                return False
            raise
        split.observe("canary", succeeded(status), (time.perf_counter() - started) * 1000)
        return True


class Forwardable:
    """What a model replica needs to be a canary: ``forward``, called through its app handle by the live app's
    :class:`CanarySplit`, runs one HTTP request through this replica's own app and streams back its ASGI messages;
    and ``reconfigure``, which takes the live app's canary settings (its ``user_config``)."""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        split.configure(user_config)

    async def forward(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        done = asyncio.Event()

        async def disconnected() -> dict[str, Any]:
            await done.wait()
            return {"type": "http.disconnect"}

        receive = _replay(body, disconnected)

        async def send(message: dict[str, Any]) -> None:
            await queue.put(message)

        async def run() -> None:
            try:
                await self.app(dict(scope), receive, send)  # (ray.serve's ASGI wrapper: this replica's own app)
            finally:
                await queue.put(None)

        task = asyncio.get_running_loop().create_task(run())
        try:
            while (message := await queue.get()) is not None:
                yield message
            await task  # its exception, if it raised before answering
        finally:
            done.set()
            if not task.done():
                task.cancel()
