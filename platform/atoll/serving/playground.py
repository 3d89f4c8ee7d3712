"""The showcase: a playground page for every model app, and a gallery of them all at the HTTP root.

* **Playground** (``GET /<app>/ui``): one static page shell, the same bytes for every app and shipped in
  ``atoll/serving/ui/`` (no CDN, no external fonts: it works on an offline cluster). It holds no model data; its
  script fetches the model card (``GET /<app>/``), the held-out examples and input-panel layout
  (``GET /<app>/examples``) and the training curve (``GET /<app>/curve.png``) from routes that the API
  key guards like every other route, and predicts through the very ``POST /<app>/predict`` that every
  client uses. With a key set it asks for it, keeps it in the tab's ``sessionStorage`` and sends it as
  ``Authorization: Bearer``.
* **Held-out examples**: at registration (:func:`atoll.train.examples.add_examples`), ~10 validation rows of
  the training dataset (raw feature values as the API takes them, with their true labels) are written to
  ``examples.json`` in the version, which the page offers; versions without it get a page without them.
* **A table's form** (:func:`form_columns`): a number field per numeric feature with its training range as
  the hint (empty: null), and per categorical feature a dropdown of its known levels plus "missing" (null); a
  pasted CSV row may hold words and blanks, and the answer shows which levels were unseen.
* **Gallery** (``GET /``): a tiny Serve app of its own (:data:`GALLERY_APP`, route prefix ``/``, no CPU)
  that lists the live model apps from ``serve.status()``; the page fetches each app's card itself.
* **Live charts**: each app's ``GET /<app>/traffic`` (behind its key) and the gallery's ``GET /_gallery/traffic``
  (every app the caller's key may read) answer req/s and p50/p99 latency of the last 10 minutes per version, from
  the Prometheus of ``atoll metrics up`` (atoll.prometheus.live_traffic); without one, a line with the fix.

Everything a page shows from the API is put in the DOM as text (never ``innerHTML``), and the HTML is
served with a Content-Security-Policy that allows nothing but this origin.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from functools import cache
from pathlib import Path
from typing import Any

from atoll import ingress
from atoll.errors import AtollError
from atoll.serving.names import DEPLOYMENT_NAME, GALLERY_APP, GALLERY_IMPORT_PATH, is_model_app

log = logging.getLogger("ray.serve")

UI_DIR = Path(__file__).with_name("ui")
EXAMPLES_FILE = "examples.json"
CURVE_FILE = "training_curve.png"
NUM_EXAMPLES = 10
GALLERY_STATIC = "/_gallery/static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
# The pages load nothing but this origin's scripts, styles, images (and blob: URLs of fetched images).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PIXEL_NAME = re.compile(r"^(px|pix|pixel|pixels|p)[_-]?\d+$", re.IGNORECASE)


# ------------------------------------------------------------------------------------------------
# Static assets (public: the same bytes for every app, no model data)


def static_asset(name: str) -> tuple[bytes, str] | None:
    """(bytes, media type) of a file of ``atoll/serving/ui/`` by bare name, or None (no paths, no dotfiles)."""
    suffix = Path(name).suffix
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        return None
    path = UI_DIR / name
    return (path.read_bytes(), STATIC_TYPES[suffix]) if path.is_file() else None


def html_response(page: str):
    """``playground.html`` or ``gallery.html`` with the page's security headers."""
    from fastapi.responses import HTMLResponse

    return HTMLResponse((UI_DIR / page).read_text(), headers={
        "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache"})


def static_response(name: str):
    from fastapi.responses import JSONResponse, Response

    found = static_asset(name)
    if found is None:
        return JSONResponse({"error": f"no static file {name!r}"}, status_code=404)
    body, media_type = found
    return Response(body, media_type=media_type, headers={"X-Content-Type-Options": "nosniff",
                                                         "Cache-Control": "no-cache"})


# ------------------------------------------------------------------------------------------------
# The input panel: an image grid or a form, from the version's input schema


def image_shape(schema: dict[str, Any]) -> list[int] | None:
    """``[rows, cols]`` when the inputs are an image: recorded (``image``, ``image_shape``) or a perfect
    square number (16+) of pixel-like feature names (``px0``, ``pixel_12``, ...)."""
    width = int(schema.get("num_features") or len(schema.get("features") or []))
    for key in ("image", "image_shape"):
        shape = schema.get(key)
        if isinstance(shape, list) and len(shape) >= 2 and all(isinstance(s, int) for s in shape):
            rows, cols = shape[-2], shape[-1]
            if rows * cols == width:
                return [rows, cols]
    side = math.isqrt(width)
    features = schema.get("features") or []
    if width >= 16 and side * side == width and features and all(PIXEL_NAME.match(str(f)) for f in features):
        return [side, side]
    return None


#: past this many levels a categorical field is a text box with suggestions, not a dropdown
MAX_DROPDOWN_LEVELS = 100


def form_columns(schema: dict[str, Any]) -> dict[str, Any]:
    """``{"columns": [...], "mixed": bool}`` for a table's form: each feature's kind, its levels (categorical)
    or training range (numeric), and whether a gap is allowed; ``mixed`` when a feature is categorical (then the
    form has dropdowns and a pasted CSV row may hold words and blanks). Empty for versions from before column
    kinds (the form is plain number fields, as it always was)."""
    columns = schema.get("columns")
    if (not isinstance(columns, list) or len(columns) != len(schema.get("features") or [])
            or not all(isinstance(c, dict) for c in columns)):
        return {}
    out = []
    for column in columns:
        entry: dict[str, Any] = {"name": column.get("name"), "kind": column.get("kind", "numeric"),
                                 "nullable": bool(column.get("nullable", True))}
        if entry["kind"] == "categorical":
            levels = [str(level) for level in column.get("levels") or []]
            entry |= {"levels": levels, "dropdown": len(levels) <= MAX_DROPDOWN_LEVELS}
        else:
            low, high = (column.get("range") or [None, None])[:2]
            if isinstance(low, (int, float)) and isinstance(high, (int, float)):
                entry["range"] = [low, high]
        out.append(entry)
    return {"columns": out, "mixed": any(c["kind"] == "categorical" for c in out)}


def panel(schema: dict[str, Any], examples: list[dict[str, Any]], spec: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    """How the page lays out the inputs: ``{"kind": "image", "shape", "range"}`` or ``{"kind": "form"}`` (with
    :func:`form_columns` for a table that records its column kinds), with the feature names and the classes.
    The drawing range is the one recorded at registration, else the demo's 0..16, else the largest value of
    the examples (else 0..1)."""
    out: dict[str, Any] = {"features": list(schema.get("features") or []), "classes": schema.get("classes") or [],
                           "num_features": schema.get("num_features")}
    if schema.get("input_kind") == "text":
        return {**out, "kind": "text", "max_length": schema.get("max_length")}
    if schema.get("input_kind") == "image":  # an image task: pixel rows 0–255, or an uploaded file
        _, rows, cols = schema["image_shape"]
        return {**out, "kind": "image", "shape": [rows, cols], "range": [0, 255], "nested": True, "upload": True,
                "num_features": rows * cols}
    shape = image_shape(schema)
    if shape is None:
        return {**out, "kind": "form", **form_columns(schema)}
    value_range = schema.get("value_range")
    if not (isinstance(value_range, list) and len(value_range) == 2):
        seen = [v for e in examples for v in e.get("inputs", []) if isinstance(v, (int, float))]
        if ((spec or {}).get("dataset") or {}).get("path") == "demo:digits":
            value_range = [0.0, 16.0]
        else:
            value_range = [min(0.0, *seen), max(seen)] if seen and max(seen) > 0 else [0.0, 1.0]
    return {**out, "kind": "image", "shape": shape, "range": value_range}


# ------------------------------------------------------------------------------------------------
# What one model app's page needs (loaded once per replica)


def spec_summary(spec: dict[str, Any]) -> dict[str, Any]:
    """The training spec in a few lines: model, optimiser, schedule, data."""
    model, opt, dataset = spec.get("model") or {}, spec.get("optimizer") or {}, spec.get("dataset") or {}
    summary = {"model": model.get("type"), "params": model.get("params"), "optimizer": opt.get("name"),
               "lr": opt.get("lr"), "epochs": spec.get("epochs"), "batch_size": spec.get("batch_size"),
               "workers": spec.get("num_workers"), "dataset": dataset.get("path"),
               "validation_fraction": dataset.get("validation_fraction"), "seed": spec.get("seed")}
    return {k: v for k, v in summary.items() if v is not None}


class Showcase:
    """The playground's data for one served version: examples, training curve, spec summary, aliases."""

    def __init__(self, storage: str, version) -> None:
        from atoll import registry

        reg = registry.Registry(storage)
        self.version = version
        self.examples: list[dict[str, Any]] = []
        self.curve: bytes | None = None
        if EXAMPLES_FILE in version.files:
            try:
                self.examples = list(json.loads(reg.read_file(version, EXAMPLES_FILE)).get("examples") or [])
            except (ValueError, AtollError) as exc:
                log.warning("%s: unreadable %s: %s", version.ref, EXAMPLES_FILE, exc)
        if CURVE_FILE in version.files:
            try:
                self.curve = reg.read_file(version, CURVE_FILE)
            except AtollError as exc:
                log.warning("%s: unreadable %s: %s", version.ref, CURVE_FILE, exc)
        try:
            self.aliases = sorted(a for a, v in reg.aliases(version.name).items() if v == version.version)
        except AtollError:
            self.aliases = []

    def card_extras(self, root_path: str) -> dict[str, Any]:
        return {"playground": f"{root_path.rstrip('/')}/ui", "aliases": self.aliases,
                "spec_summary": spec_summary(self.version.spec), "has_curve": self.curve is not None,
                "num_examples": len(self.examples), "ingress": ingress.here()}

    def examples_body(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {"panel": panel(schema, self.examples, self.version.spec), "examples": self.examples}

    def curve_response(self):
        from fastapi.responses import JSONResponse, Response

        if self.curve is None:
            return JSONResponse({"error": f"{self.version.ref} has no {CURVE_FILE}."}, status_code=404)
        return Response(self.curve, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


# ------------------------------------------------------------------------------------------------
# The gallery: a Serve app at the HTTP root listing the live model apps


def _serve_apps() -> dict[str, dict[str, Any]]:
    """Serve's details of each app (route prefix, deployed config), or {} where its private API fails."""
    try:
        from atoll import ray_compat

        return dict(ray_compat.serve_details().get("applications") or {})
    except Exception as exc:  # noqa: BLE001 - a private API: callers fall back
        log.debug("no details from Serve (%s)", exc)
        return {}


def live_apps() -> list[dict[str, Any]]:
    """Model apps from Serve's status: name, status, route prefix (no registry data: the page asks each
    app for its card, with the API key the app may need)."""
    from ray import serve

    # route prefixes are in the controller's details; Atoll's apps are at /<app> anyway
    prefixes = {n: a.get("route_prefix") for n, a in _serve_apps().items()}
    apps = []
    for name, state in sorted(serve.status().applications.items()):
        if not is_model_app(name) or DEPLOYMENT_NAME not in (state.deployments or {}):
            continue  # (a canary has no route: its app's card names both versions' traffic)
        apps.append({"app": name, "status": str(getattr(state.status, "value", state.status)),
                     "route_prefix": prefixes.get(name) or f"/{name}"})
    return apps


def app_traffic(app: str) -> dict[str, Any]:
    """``GET /<app>/traffic`` of a model app (ModelServer and LanguageModelServer alike): its live chart's figures
    per version (atoll.prometheus.live_traffic), ``available: false`` and the fix where no Prometheus answers."""
    from atoll import prometheus

    return prometheus.live_traffic(app)


def gallery_traffic(authorization: str | None) -> dict[str, Any]:
    """The gallery's live charts: every app's req/s and latency (atoll.prometheus.live_traffic, one set of queries
    for all apps), keeping only the apps the caller may read: those without a key, and those whose own key the
    caller sent (any keyed app's key opens the gallery's list, not another app's figures). Where Serve's details
    (which name each app's key record) are unreadable, no figures, and ``why`` says so."""
    from atoll import apikeys, prometheus

    body = prometheus.live_traffic(None)
    if not body["available"]:
        return body
    records = {name: ((app.get("deployed_app_config") or {}).get("args") or {}).get("api_key_hash")
               for name, app in _serve_apps().items()}
    if not records:
        return {**body, "available": False, "series": {},
                "why": "no live traffic: Serve's details are unreadable here, so whose figures you may see is unknown."}
    series = {app: versions for app, versions in body["series"].items() if app in records
              and (not records[app] or apikeys.key_matches(authorization, records[app]))}
    return {**body, "series": series}


@cache
def _gallery_deployment():
    """The gallery's Serve deployment (built on first use: registering a model needs no Serve)."""
    from fastapi import FastAPI
    from ray import serve

    gallery_api = FastAPI(title="Atoll showcase", description="The live model apps of this cluster.",
                          docs_url=None, redoc_url=None, openapi_url=None)

    from fastapi import Header
    from fastapi.responses import JSONResponse

    from atoll import apikeys

    @serve.deployment(name="Gallery", ray_actor_options={"num_cpus": 0})
    @serve.ingress(gallery_api)
    class Gallery:
        """The gallery page, its assets and the list of live model apps (cached for 2 s); with keyed apps
        on the cluster, the list needs one of their keys."""

        def __init__(self, api_key_hashes: list[str] | None = None) -> None:
            self._cache: tuple[float, list[dict[str, Any]]] = (0.0, [])
            self._hashes = list(api_key_hashes or [])

        @gallery_api.get("/")
        def page(self):
            return html_response("gallery.html")

        @gallery_api.get(GALLERY_STATIC + "/{name}")
        def static(self, name: str):
            return static_response(name)

        @gallery_api.get("/_gallery/apps")
        def apps(self, authorization: str | None = Header(default=None)):  # noqa: B008 - FastAPI's idiom
            if self._hashes and not apikeys.any_key_matches(authorization, self._hashes):
                return JSONResponse({"error": apikeys.REFUSED}, status_code=401)
            at, apps = self._cache
            if time.monotonic() - at > 2:
                apps = live_apps()
                self._cache = (time.monotonic(), apps)
            return {"apps": apps}

        @gallery_api.get("/_gallery/traffic")
        def traffic(self, authorization: str | None = Header(default=None)):  # noqa: B008 - FastAPI's idiom
            if self._hashes and not apikeys.any_key_matches(authorization, self._hashes):
                return JSONResponse({"error": apikeys.REFUSED}, status_code=401)
            return gallery_traffic(authorization)

        @gallery_api.get("/_gallery/healthz")
        def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

    return Gallery


def gallery_app(args: dict[str, Any] | None = None):
    """Serve application builder (``import_path: atoll.serving.playground:gallery_app``), route prefix ``/``."""
    return _gallery_deployment().bind((args or {}).get("api_key_hashes"))


def gallery_config(api_key_hashes: list[str] | None = None) -> dict[str, Any]:
    """The gallery's entry in the cluster's declarative Serve config; ``api_key_hashes``: the key records of
    the cluster's keyed model apps, any of whose keys opens the list of apps."""
    args = {"api_key_hashes": sorted(api_key_hashes)} if api_key_hashes else {}
    return {"name": GALLERY_APP, "route_prefix": "/", "import_path": GALLERY_IMPORT_PATH, "args": args}


def gallery_url(endpoint_url: str) -> str:
    """``http://host:port/`` from an app's URL ``http://host:port/<app>``."""
    return endpoint_url.rsplit("/", 1)[0] + "/"
