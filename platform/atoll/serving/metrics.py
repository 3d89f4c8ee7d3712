"""Atoll's serving metrics: their names, tags and buckets (one home), and the recorder a replica and the HTTP
proxy write them with.

They go through Ray's own metrics system (``ray.util.metrics``): each node's metrics agent exports them on the
node's Prometheus endpoint, beside Ray Serve's own (``ray_serve_*``), and any Prometheus that scrapes the
cluster (``atoll metrics up``, or one of your own through Ray's service-discovery file) has them. No second
exporter. Ray prefixes every name with ``ray_`` and gives a counter the suffix ``_total``: what Prometheus sees
is :data:`EXPORTED`.

Tags, on every Atoll metric: ``application`` (the Serve app, as Serve's own metrics name it) and ``model`` (the
version that answered, ``NAME:VERSION``). The request counter and the request latency also carry ``route`` (the
route's template, e.g. ``/predict`` or ``/v2/models/{name}/infer``: a few values, never a raw path) and
``status`` (:func:`status_class`). Ray adds ``WorkerId``, ``NodeAddress``, ``SessionName`` and ``Version`` (its
own version; ``model`` is ours): sum over them (``sum by (application, model)``). Replicas are Serve's own
``ray_serve_deployment_replica_healthy``.

Who records what: a replica (:class:`RequestMetrics`, an ASGI middleware on its FastAPI app) counts and times
every request it answers, as it sees it; its batch method records the model call, the batch size and each
request's wait for its batch. The proxy's API-key middleware (atoll.serving.proxy_auth) counts what never
reaches a replica: its own 401s and Serve's 503s (a full queue). A replica that dies mid-request is in Serve's
``ray_serve_num_http_error_requests_total``. Metric objects are made once per process (:func:`start_replica`,
:func:`proxy_recorder`); recording one value costs a few microseconds (bench: ~3 µs).

This module is imported by replicas and the proxy: it imports Ray lazily and nothing of the client side.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

# ---- Names (what the code records) and what Prometheus sees (what queries and the dashboard read)

REQUESTS = "atoll_requests"
REQUEST_LATENCY = "atoll_request_latency_ms"
MODEL_LATENCY = "atoll_model_latency_ms"
BATCH_SIZE = "atoll_batch_size"
BATCH_WAIT = "atoll_batch_wait_ms"

#: The names as Prometheus has them (Ray's ``ray_`` prefix; ``_total`` on a counter).
EXPORTED = {REQUESTS: "ray_atoll_requests_total", REQUEST_LATENCY: "ray_atoll_request_latency_ms",
            MODEL_LATENCY: "ray_atoll_model_latency_ms", BATCH_SIZE: "ray_atoll_batch_size",
            BATCH_WAIT: "ray_atoll_batch_wait_ms"}
#: Serve's own gauge of healthy replicas (tags application, deployment, replica).
SERVE_REPLICAS = "ray_serve_deployment_replica_healthy"

APP_TAGS = ("application", "model")
REQUEST_TAGS = (*APP_TAGS, "route", "status")

#: Milliseconds: from a table row on a CPU (~1 ms) to a large image batch on a slow node.
LATENCY_BUCKETS_MS = [0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
WAIT_BUCKETS_MS = [0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000]
#: Bounds between whole sizes: Ray exports a histogram's ``_sum`` from bucket midpoints (an approximation), and
#: these make it exact for batches of 1 and 2 (a bucket [0.5, 1.5] has midpoint 1). Read ``_count`` and quantiles.
BATCH_BUCKETS = [0.5, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5, 128.5, 256.5]

#: The status classes of the request counter.
STATUS_CLASSES = ("2xx", "4xx", "401", "503", "5xx")
#: The routes that ask the model for an answer (the status table's latency reads only these).
PREDICT_ROUTES = ("/predict", "/v2/models/{name}/infer", "/invocations", "/v1/completions", "/v1/chat/completions")
OTHER_ROUTE = "other"


def status_class(code: int) -> str:
    """The counter's ``status`` tag: ``401`` and ``503`` on their own (a refused key, a full queue), else the
    class (``2xx``: any answer below 400, redirects included; ``4xx``; ``5xx``)."""
    if code in (401, 503):
        return str(code)
    if code >= 500:
        return "5xx"
    return "4xx" if code >= 400 else "2xx"


# Routes of a model app (atoll.serving.replica), for the proxy, which sees raw paths, not FastAPI's templates.
_ROUTES = [(re.compile(r"^/v2/models/[^/]+/infer$"), "/v2/models/{name}/infer"),
           (re.compile(r"^/v2/models/[^/]+/ready$"), "/v2/models/{name}/ready"),
           (re.compile(r"^/v2/models/[^/]+$"), "/v2/models/{name}"),
           (re.compile(r"^/ui/static/.+$"), "/ui/static/{name}")]
_PLAIN_ROUTES = {"/", "/predict", "/healthz", "/ui", "/examples", "/curve.png", "/openapi.json", "/ping",
                 "/invocations", "/v2/health/live", "/v2/health/ready", "/ui/chat", "/v1/models", "/v1/completions",
                 "/v1/chat/completions", "/traffic"}


def route_label(subpath: str) -> str:
    """The ``route`` tag of a path below an app's prefix: the route's template, or ``other`` (bounded values:
    a scanner's random paths make no new series)."""
    path = subpath or "/"
    if path in _PLAIN_ROUTES:
        return path
    return next((label for pattern, label in _ROUTES if pattern.match(path)), OTHER_ROUTE)


# ---- Recording


class Recorder:
    """The metric objects of one process, made once; the ``record_*`` methods run in the request path."""

    def __init__(self, *, batching: bool = True) -> None:
        from ray.util import metrics

        self._requests = metrics.Counter(REQUESTS, "Requests answered, by app, model version, route and status "
                                         "class (2xx, 4xx, 401, 503, 5xx).", tag_keys=REQUEST_TAGS)
        self._latency = metrics.Histogram(REQUEST_LATENCY, "The whole request as the replica sees it, from its "
                                          "first byte to its answer (ms).", boundaries=LATENCY_BUCKETS_MS,
                                          tag_keys=REQUEST_TAGS)
        if batching:
            self._model = metrics.Histogram(MODEL_LATENCY, "The model call alone, per batch (ms).",
                                            boundaries=LATENCY_BUCKETS_MS, tag_keys=APP_TAGS)
            self._batch = metrics.Histogram(BATCH_SIZE, "Requests per batch the model ran.",
                                            boundaries=BATCH_BUCKETS, tag_keys=APP_TAGS)
            self._wait = metrics.Histogram(BATCH_WAIT, "Time a request waited for its batch to start (ms).",
                                           boundaries=WAIT_BUCKETS_MS, tag_keys=APP_TAGS)
        self._queued: dict[int, float] = {}
        self._tags: dict[str, str] = {}

    def set_app(self, application: str, model: str) -> Recorder:
        """The tags of a replica's every record (one app, one version per replica)."""
        self._tags = {"application": application, "model": model}
        return self

    def record_request(self, route: str, status: int, seconds: float, tags: dict[str, str] | None = None) -> None:
        full = {**(tags or self._tags), "route": route, "status": status_class(status)}
        self._requests.inc(1, full)
        self._latency.observe(seconds * 1000.0, full)

    def record_refused(self, route: str, status: int, tags: dict[str, str]) -> None:
        """A request the proxy answered without a replica (no latency: it never reached the model's side)."""
        self._requests.inc(1, {**tags, "route": route, "status": status_class(status)})

    def queued(self, item: Any) -> None:
        """``item`` was handed to the batch queue now."""
        self._queued[id(item)] = time.perf_counter()

    def unqueued(self, item: Any) -> None:
        """``item``'s answer came back (or it was cancelled): forget it if its batch never started."""
        self._queued.pop(id(item), None)

    def batch_started(self, items: Iterable[Any]) -> float:
        """A batch of ``items`` starts now: record its size and each item's wait. Returns the start time."""
        now = time.perf_counter()
        items = list(items)
        for item in items:
            since = self._queued.pop(id(item), None)
            if since is not None:
                self._wait.observe((now - since) * 1000.0, self._tags)
        self._batch.observe(len(items), self._tags)
        return now

    def batch_done(self, started: float) -> None:
        self._model.observe((time.perf_counter() - started) * 1000.0, self._tags)


class NullRecorder(Recorder):
    """What a process records with before :func:`start_replica` (tests that build a replica's parts by hand)."""

    def __init__(self) -> None:  # noqa: D107 - no metric objects
        self._queued, self._tags = {}, {}

    def record_request(self, route: str, status: int, seconds: float, tags: dict[str, str] | None = None) -> None:
        pass

    def record_refused(self, route: str, status: int, tags: dict[str, str]) -> None:
        pass

    def queued(self, item: Any) -> None:
        pass

    def batch_started(self, items: Iterable[Any]) -> float:
        return time.perf_counter()

    def batch_done(self, started: float) -> None:
        pass


_recorder: Recorder = NullRecorder()


def recorder() -> Recorder:
    """This process's recorder (a no-op one until :func:`start_replica`)."""
    return _recorder


def start_replica(application: str, model: str) -> Recorder:
    """Make this replica's metric objects, once per process, tagged with its app and version."""
    global _recorder
    if isinstance(_recorder, NullRecorder):
        _recorder = Recorder()
    return _recorder.set_app(application, model)


_proxy: Recorder | None = None


def proxy_recorder() -> Recorder:
    """The HTTP proxy's recorder (the request counter only), made on first use."""
    global _proxy
    if _proxy is None:
        _proxy = Recorder(batching=False)
    return _proxy


class RequestMetrics:
    """Pure ASGI middleware of a replica's FastAPI app: every HTTP request it answers, counted by route and
    status class and timed whole. The route is the template FastAPI matched (after the call), else ``other``.
    A request whose client went away before its answer (cancelled) is not counted."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]  # an exception before the answer: Starlette sends a 500

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException as exc:
            if not _cancelled(exc):
                _record_scope(scope, status[0], start)
            raise
        _record_scope(scope, status[0], start)


def _cancelled(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError)


def _record_scope(scope: dict[str, Any], status: int, start: float) -> None:
    route = scope.get("route")
    _recorder.record_request(getattr(route, "path", None) or OTHER_ROUTE, status, time.perf_counter() - start)
