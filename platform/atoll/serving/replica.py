"""The Serve deployment: load a registered version, validate requests, batch them, predict.

One Serve application per deployed model (``atoll serve deploy`` / ``serve deploy serve/config.yaml``):
its import path is ``atoll.serving.replica:app``, an application builder that takes the arguments below, so it
runs wherever Atoll is installed (every node of a cluster.yaml cluster) without shipping files.

Routes under the app's prefix: ``POST /predict``, ``GET /`` (model card), ``GET /healthz``, and FastAPI's
``/openapi.json`` and ``/docs``; for the playground page (atoll.serving.playground): ``GET /ui`` and ``/ui/static/*``
(a public page shell with no model data, the same for every app) and ``GET /examples``, ``/curve.png`` and
``/traffic`` (model data, behind the API key like the card and ``/predict``: the page asks for the key). Request
bodies are parsed as JSON (never unpickled) and validated against the version's input schema; a bad
request is a 4xx that names the problem.
"""


import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ConfigDict, Field
from ray import serve

from atoll import apikeys, request_log
from atoll.errors import AtollError, RequestError
from atoll.serving import canary, metrics, playground, protocols
from atoll.serving.names import DEPLOYMENT_NAME
from atoll.serving.predictor import Predictor, Prepared
from atoll.specs import ServeSettings

log = logging.getLogger("ray.serve")



class AppArgs(pydantic.BaseModel):
    """The arguments of one model application (``args:`` in a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="Registered version: NAME, NAME:VERSION or NAME@ALIAS (resolved "
                       "once, when the app is built, so every replica serves the same version).")
    storage: str | None = Field(None, description="Storage root of the registry (default: cluster.yaml's).")
    requested: str | None = Field(None, description="What the user asked to deploy, e.g. digits@production.")
    api_key_hash: str | None = Field(None, description="Salted HMAC of the API key (atoll.apikeys.hash_key), "
                                     "never the key; unset: no key needed.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Overrides of cluster.yaml's Serve "
                                     "settings: " + ", ".join(ServeSettings.PER_APP) + ".")
    model_types: list[str] | None = Field(None, description="User model types the version may name (cluster.yaml's "
                                          "metadata.atoll.model_types at deploy time); unset: read it here.")

    def serve_settings(self) -> ServeSettings:
        from atoll import config

        try:
            base = config.load_spec().atoll.serve
        except AtollError:  # an unreadable cluster.yaml next to the replica: Atoll's defaults
            base = ServeSettings()
        return ServeSettings.model_validate({**base.model_dump(), **self.settings})

    def storage_root(self) -> str:
        from atoll import config

        return self.storage or config.load_spec().atoll.storage

    def pinned(self) -> "AppArgs":
        """These args with ``model`` resolved to ``NAME:VERSION`` (``requested`` keeps what was asked).

        Serve builds an app once per deploy of its config, and every replica (autoscaled, restarted, on a new
        node) starts from the built args: an alias resolved here cannot move under a live app, where one
        resolved by each replica would serve two versions side by side after a promote.
        """
        from atoll import registry

        version = registry.Registry(self.storage_root()).get(self.model)
        return self.model_copy(update={"model": version.ref, "requested": self.requested or self.model})


# ------------------------------------------------------------------------------------------------
# Requests


#: Pixels a request's images may hold together where the caller names no limit (ServeSettings' default).
DEFAULT_REQUEST_PIXELS: int = ServeSettings.model_fields["max_request_pixels"].default


def _app_name() -> str:
    """The Serve application this replica serves, as clients address it (a canary's app, ``APP.canary``, serves
    ``APP``); "" where the class is built outside Serve, as in tests of its request handling."""
    from ray.serve.exceptions import RayServeException

    try:
        return canary.public_app(serve.get_replica_context().app_name)
    except RayServeException:
        return ""


def _replica_id() -> str:
    """This replica's id in Serve (the request log's file names), or "" outside Serve."""
    from ray.serve.exceptions import RayServeException

    try:
        replica = serve.get_replica_context().replica_id
    except RayServeException:
        return ""
    return str(getattr(replica, "unique_id", replica))


def parse_request(body: bytes, schema: dict[str, Any], *, max_rows: int, max_body_bytes: int,
                  max_request_pixels: int = DEFAULT_REQUEST_PIXELS) -> Any:
    """Validate a ``/predict`` body: size and JSON here, what ``inputs`` must hold by the version's task
    (feature rows as float32 ``[n, d]``, texts, or images decoded and resized). Returns the task's parsed inputs.

    Raises:
        RequestError: 400 (not JSON), 413 (too large), 422 (wrong shape or values).
    """
    from atoll import tasks

    if len(body) > max_body_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_body_bytes} "
                                f"(max_body_bytes): send fewer rows per request.")
    task = tasks.get(schema.get("task"))
    if not body.strip():
        raise RequestError(400, f"empty body: send JSON like {task.request_example}.")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON ({exc}); send {task.request_example}.") from None
    except RecursionError:
        raise RequestError(400, f"body is nested too deeply; send {task.request_example}.") from None
    return parse_payload(payload, schema, max_rows=max_rows, max_request_pixels=max_request_pixels)


def parse_payload(payload: Any, schema: dict[str, Any], *, max_rows: int,
                  max_request_pixels: int = DEFAULT_REQUEST_PIXELS) -> Any:
    """A decoded request (``{"inputs": [...]}``, from ``/predict`` or translated from a standard protocol)
    checked against the row limit and the version's task. Returns the task's parsed inputs.

    Raises:
        RequestError: 413 (too many rows or pixels), 422 (wrong shape or values), 400 (nested too deeply).
    """
    from atoll import tasks

    task = tasks.get(schema.get("task"))
    if isinstance(payload, dict) and isinstance(payload.get("inputs"), list) and len(payload["inputs"]) > max_rows:
        raise RequestError(413, f"{len(payload['inputs'])} rows in one request; the limit is {max_rows} "
                                f"(max_rows): split the request.")
    try:
        return task.parse_inputs(payload, schema, max_request_pixels=max_request_pixels)
    except RecursionError:
        raise RequestError(400, f"body is nested too deeply; send {task.request_example}.") from None


# ------------------------------------------------------------------------------------------------
# The Serve deployment


# FastAPI's own /openapi.json and /docs would answer without the API key (and /docs loads its scripts from
# a CDN): the document is served by a route of the deployment instead, behind the key like the rest.
api = FastAPI(title="Atoll model endpoint", docs_url=None, redoc_url=None, openapi_url=None,
              description="Predictions from a registered Atoll model version. POST rows to /predict.")
# Every request counted by route and status and timed, into Ray's metrics (atoll.serving.metrics).
api.add_middleware(metrics.RequestMetrics)
# Outermost: the answering version's header, and a canary's share of the model calls (atoll.serving.canary).
api.add_middleware(canary.CanarySplit)
# /predict reads its body itself (size limit, one-line errors), so FastAPI cannot infer its schema: declare it.
_PREDICT_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"],
    "properties": {"inputs": {"type": "array", "minItems": 1, "description": "What the model takes: rows of feature "
                              "values, or texts; this version's own document (GET /openapi.json) says which."}}}}}}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read chunk by chunk and abandoned past ``limit`` bytes: a chunked upload without a
    Content-Length cannot make the replica buffer more than the limit (Serve's proxy sets none)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over {limit} bytes (max_body_bytes): send fewer rows "
                                    f"per request.")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


#: Threads per replica that parse request bodies. Few: each holds a request's decoded images (up to
#: max_request_pixels) or tokens while it works, and the rest wait holding only their bodies.
PARSE_THREADS = 2
#: A table body up to this size is parsed on the event loop: it takes less time (~0.3 ms) than the hop to
#: a thread and back. Images and texts always go to a thread (decoding and tokenizing take milliseconds).
INLINE_TABLE_BYTES = 16 * 1024


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class ModelServer(canary.Forwardable):
    """One replica: the model in memory, batched prediction, request validation and the API key."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = AppArgs.model_validate(args)
        self.settings = self.args.serve_settings()
        self.predictor = Predictor(self.args.storage_root(), self.args.model, model_types=self.args.model_types,
                                   runtime=self.settings.runtime)
        self.showcase = playground.Showcase(self.args.storage_root(), self.predictor.version)
        self.predict_batch.set_max_batch_size(self.settings.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self._in_flight = 0  # requests between parsing and their answer (the batch wait adapts to it)
        self._parser = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="atoll-parse")
        metrics.start_replica(_app_name(), self.predictor.version.ref)
        canary.split.serving(_app_name(), self.predictor.version.ref, self.args.storage_root())
        v = self.predictor.version
        self.request_log = request_log.start(self.args.storage_root(), _app_name(), v.name, v.version, _replica_id(),
                                             self.settings.log_requests, self.settings.log_retention_hours)
        log.info("serving %s on %s with %s", self.predictor.version.ref, self.predictor.device, self.predictor.runtime)

    def __del__(self) -> None:
        # Serve calls this when the replica shuts down: the request log writes what it still holds.
        if getattr(self, "request_log", None) is not None:
            self.request_log.close()

    def _logging(self) -> float | None:
        """The start time of a request the request log keeps (sampled), else None (logging off: one test)."""
        return time.perf_counter() if self.request_log is not None and self.request_log.sampled() else None

    def _log(self, started: float, route: str, status: int, inputs: Any, outputs: Any) -> None:
        self.request_log.record(route, status, (time.perf_counter() - started) * 1000.0, inputs, outputs)

    def _logged_inputs(self, prepared: Prepared) -> Any:
        """What the log keeps of a request's inputs: the parsed rows or texts; of an image its size and mean pixel
        (as the model sees it), not its pixels."""
        if self.predictor.task.input_kind != "image":
            return prepared.inputs
        return [{"shape": list(np.shape(image)), "mean": float(np.mean(image))} for image in prepared.inputs]

    def _refused(self, request: Request) -> JSONResponse | None:
        # The proxy's middleware (atoll.serving.proxy_auth) refuses these first; this check stays for a proxy without it.
        if self.args.api_key_hash and not apikeys.key_matches(request.headers.get("authorization"),
                                                              self.args.api_key_hash):
            return _error(401, apikeys.REFUSED)
        return None

    @api.get("/healthz")
    def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.predictor.version.name, "version": self.predictor.version.version}

    @api.get("/")
    def card(self, request: Request):
        return self._refused(request) or {**self.predictor.card(), "requested": self.args.requested,
                                          **self.showcase.card_extras(request.scope.get("root_path", ""))}

    @api.get("/ui", include_in_schema=False)
    def ui(self):
        return playground.html_response("playground.html")

    @api.get("/ui/", include_in_schema=False)
    def ui_slash(self, request: Request):
        return RedirectResponse(f"{request.scope.get('root_path', '')}/ui")

    @api.get("/ui/static/{name}", include_in_schema=False)
    def ui_static(self, name: str):
        return playground.static_response(name)

    @api.get("/examples")
    def examples(self, request: Request):
        return self._refused(request) or self.showcase.examples_body(self.predictor.schema)

    @api.get("/curve.png")
    def curve(self, request: Request):
        return self._refused(request) or self.showcase.curve_response()

    @api.get("/traffic")
    def traffic(self, request: Request):
        return self._refused(request) or playground.app_traffic(_app_name())

    @api.get("/openapi.json", include_in_schema=False)
    def openapi(self, request: Request):
        if refused := self._refused(request):
            return refused
        # The generic document, made exact for this version: its features, row width and row limit.
        doc = copy.deepcopy(api.openapi())
        doc["info"]["title"] = f"Atoll model endpoint: {self.predictor.version.ref}"
        body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        body["schema"] = self.predictor.request_schema(self.settings.max_rows)
        return doc

    async def _body(self, request: Request) -> bytes:
        """The request's body within ``max_body_bytes`` (a declared length over it is refused unread)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            raise RequestError(413, f"request body is {declared} bytes; the limit is {self.settings.max_body_bytes} "
                                    f"(max_body_bytes): send fewer rows per request.")
        return await _read_body(request, self.settings.max_body_bytes)

    def _prepare(self, body: bytes) -> Prepared:
        """A ``/predict`` body parsed, validated and encoded for the model (images decoded, texts tokenized)."""
        rows = parse_request(body, self.predictor.schema, max_rows=self.settings.max_rows,
                             max_body_bytes=self.settings.max_body_bytes,
                             max_request_pixels=self.settings.max_request_pixels)
        return self.predictor.prepare(rows)

    def _prepare_payload(self, payload: Any) -> Prepared:
        """A standard protocol's request, translated into ``/predict``'s shape, parsed and encoded as one."""
        rows = parse_payload(payload, self.predictor.schema, max_rows=self.settings.max_rows,
                             max_request_pixels=self.settings.max_request_pixels)
        return self.predictor.prepare(rows)

    async def _off_loop(self, parse: Callable[..., Any], *args: Any) -> Any:
        """``parse(*args)`` in one of the replica's parse threads: the event loop meanwhile goes on reading
        other requests and answering /healthz (four 4096×4096 images take a quarter of a second or more)."""
        return await asyncio.get_running_loop().run_in_executor(self._parser, parse, *args)

    async def _prepared(self, body: bytes) -> Prepared:
        """:meth:`_prepare` off the event loop; a small table body in place."""
        if self.predictor.task.input_kind == "table" and len(body) <= INLINE_TABLE_BYTES:
            return self._prepare(body)
        return await self._off_loop(self._prepare, body)

    async def _answer(self, rows: Any) -> tuple[list[Any], list[list[float]] | None]:
        """Parsed inputs (or :class:`Prepared` ones) through the batched model; rows whose answer is not
        finite are an error.

        The batch wait adapts: a request with no other in flight goes to the model at once (a lone client
        never waits batch_wait_timeout_s for company that is not coming); under load batches wait to fill.
        """
        self._in_flight += 1
        recorder = metrics.recorder()
        try:
            alone = self._in_flight == 1
            self.predict_batch.set_batch_wait_timeout_s(0.0 if alone else self.settings.batch_wait_timeout_s)
            recorder.queued(rows)  # its wait for a batch is recorded when the batch starts
            predictions, probabilities = await self.predict_batch(rows)
        finally:
            self._in_flight -= 1
            recorder.unqueued(rows)
        bad = self.predictor.non_finite_rows(predictions, probabilities)
        if bad:  # JSON has no NaN: say what happened instead of failing in the encoder
            raw = rows.inputs if isinstance(rows, Prepared) else rows
            raise RequestError(*self.predictor.explain_non_finite(raw, bad))
        return predictions, probabilities

    @api.post("/predict", openapi_extra={"requestBody": _PREDICT_BODY})
    async def predict(self, request: Request):
        if refused := self._refused(request):
            return refused
        logged = self._logging()
        try:
            prepared = await self._prepared(await self._body(request))
            predictions, probabilities = await self._answer(prepared)
        except RequestError as exc:
            if logged is not None:
                self._log(logged, "/predict", exc.status, None, {"error": exc.message})
            return _error(exc.status, exc.message)
        v = self.predictor.version
        answer = {"predictions": predictions, "probabilities": probabilities} if probabilities is not None \
            else {"predictions": predictions}
        if logged is not None:
            self._log(logged, "/predict", 200, self._logged_inputs(prepared), answer)
        return {**answer, **prepared.notes, "model": v.name, "version": v.version}

    # ---- The Open Inference Protocol v2 (KServe V2 / Triton REST), beside /predict

    def _oip_model(self, request: Request, name: str) -> JSONResponse | None:
        """Refused (401) or unknown (404) model name: the version's name, or this app's route name."""
        if refused := self._refused(request):
            return refused
        app = request.scope.get("root_path", "").strip("/")
        if name not in (self.predictor.version.name, app):
            return _error(404, f"no model {name!r} here; this endpoint serves {self.predictor.version.name!r}.")
        return None

    @api.get("/v2/health/live")
    def oip_live(self, request: Request):
        return self._refused(request) or {"live": True}

    @api.get("/v2/health/ready")
    def oip_ready(self, request: Request):
        return self._refused(request) or {"ready": True}

    @api.get("/v2/models/{name}")
    def oip_metadata(self, name: str, request: Request):
        v = self.predictor.version
        return self._oip_model(request, name) or protocols.metadata(name, v.version, self.predictor.schema)

    @api.get("/v2/models/{name}/ready")
    def oip_model_ready(self, name: str, request: Request):
        return self._oip_model(request, name) or {"name": name, "ready": True}

    # Like /predict, both read the raw body themselves (binary tensors, CSV): their schemas are declared.
    @api.post("/v2/models/{name}/infer", openapi_extra={"requestBody": protocols.OIP_REQUEST_BODY})
    async def oip_infer(self, name: str, request: Request):
        if problem := self._oip_model(request, name):
            return problem
        logged = self._logging()
        try:
            payload, wanted, request_id = await self._off_loop(
                protocols.oip_request, await self._body(request), request.headers.get(protocols.HEADER_LENGTH),
                self.predictor.schema)
            prepared = await self._off_loop(self._prepare_payload, payload)
            predictions, probabilities = await self._answer(prepared)
            body, headers = protocols.oip_response(predictions, probabilities, name=name,
                                                   version=self.predictor.version.version,
                                                   schema=self.predictor.schema, wanted=wanted, request_id=request_id,
                                                   notes=prepared.notes)
        except RequestError as exc:
            if logged is not None:
                self._log(logged, "/v2/models/{name}/infer", exc.status, None, {"error": exc.message})
            return _error(exc.status, exc.message)
        if logged is not None:
            self._log(logged, "/v2/models/{name}/infer", 200, self._logged_inputs(prepared),
                      {"predictions": predictions, "probabilities": probabilities})
        return Response(body, headers=headers)

    # ---- MLflow's scoring protocol

    @api.get("/ping")
    def mlflow_ping(self, request: Request):
        return self._refused(request) or Response("\n", media_type="application/json")

    @api.post("/invocations", openapi_extra={"requestBody": protocols.MLFLOW_REQUEST_BODY})
    async def mlflow_invocations(self, request: Request):
        if refused := self._refused(request):
            return refused
        logged = self._logging()
        try:
            payload = await self._off_loop(protocols.mlflow_request, await self._body(request),
                                           request.headers.get("content-type", ""), self.predictor.schema)
            prepared = await self._off_loop(self._prepare_payload, payload)
            predictions, _ = await self._answer(prepared)
        except RequestError as exc:
            if logged is not None:
                self._log(logged, "/invocations", exc.status, None, {"error": exc.message})
            body, status = protocols.mlflow_error(exc.status, exc.message)
            return JSONResponse(body, status_code=status)
        if logged is not None:
            self._log(logged, "/invocations", 200, self._logged_inputs(prepared), {"predictions": predictions})
        return {"predictions": predictions}

    def _predict_joined(self, requests: list[Any]) -> tuple[list[Any], list[list[float]] | None]:
        """Many requests' inputs, encoded where they are not yet (the protocol routes'), through the model at once."""
        encoded = [r.encoded if isinstance(r, Prepared) else self.predictor.prepare(r).encoded for r in requests]
        return self.predictor.predict_encoded(np.concatenate(encoded))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[Any]) -> list[tuple[list[Any], list[list[float]] | None]]:
        """Many requests' rows (parsed or :class:`Prepared`) through the model at once; each request gets its
        own slice back."""
        # Off the event loop (torch and ONNX Runtime release the GIL): the replica goes on reading and parsing
        # the next requests while a batch computes (bench/serve_load.py: +15-20% requests/s on the MLP).
        recorder = metrics.recorder()
        started = recorder.batch_started(requests)
        predictions, probabilities = await asyncio.to_thread(self._predict_joined, requests)
        recorder.batch_done(started)
        out, start = [], 0
        for rows in requests:
            end = start + len(rows)
            out.append((predictions[start:end], probabilities[start:end] if probabilities is not None else None))
            start = end
        return out


def replica_resources(settings: ServeSettings, cluster_gpus: float) -> dict[str, float]:
    """Ray resources of one replica: a GPU when the cluster has GPUs (unless set), CPUs as configured."""
    gpus = settings.num_gpus_per_replica
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    return {"num_cpus": settings.num_cpus_per_replica, "num_gpus": gpus}


def _deployment_for(args: AppArgs, settings: ServeSettings, version) -> tuple[Any, tuple[Any, ...]]:
    """The deployment that serves the pinned version and what it is bound with: OpenAI's API
    (atoll.serving.openai_api, given the storage root and Serve settings as resolved here) for a generative language
    model, else :class:`ModelServer`."""
    if _generates(version):
        from atoll.serving import openai_api

        resolved = args.model_copy(update={"storage": args.storage_root()})
        return openai_api.LanguageModelServer, (resolved.model_dump(), settings.model_dump())
    return ModelServer, (args.model_dump(),)


def _generates(version) -> bool:
    return (version.spec.get("task") or (version.input_schema or {}).get("task")) == "text-generation"


def _vllm_app(args: AppArgs, settings: ServeSettings, version, cluster_gpus: float):
    """Ray Serve LLM's OpenAI app for a language model where vLLM is the engine (atoll.serving.llm_engine), else None."""
    from atoll import registry
    from atoll.serving import llm_engine

    engine = llm_engine.choose_engine(settings.llm_engine, cluster_gpus=cluster_gpus,
                                      vllm_available=llm_engine.vllm_installed())
    if engine != "vllm":
        return None
    config = llm_engine.llm_config(model_id=version.name, version_uri=registry.Registry(args.storage_root()).location(version),
                                   context_length=(version.input_schema or {}).get("context_length"), settings=settings,
                                   gpus_per_replica=replica_resources(settings, cluster_gpus)["num_gpus"])
    log.info("serving %s with vLLM (Ray Serve LLM)", version.ref)
    return llm_engine.openai_app(config)


def app(args: dict[str, Any]):
    """Serve application builder (``import_path: atoll.serving.replica:app``): one model, autoscaled replicas."""
    import ray

    from atoll import registry

    parsed = AppArgs.model_validate(args).pinned()
    settings = parsed.serve_settings()
    version = registry.Registry(parsed.storage_root()).get(parsed.model)
    cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    if _generates(version) and (vllm := _vllm_app(parsed, settings, version, cluster_gpus)) is not None:
        return vllm
    deployment, bound = _deployment_for(parsed, settings, version)
    return deployment.options(
        autoscaling_config=settings.autoscaling_config(),
        # Serve caps a batch at max_ongoing_requests: it must be at least the batch size (checked in specs).
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        # Past the queue: a fast 503 that tells well-behaved clients when to come back.
        backpressure_config={"status_code": 503, "retry_after_s": settings.retry_after_s},
        ray_actor_options=replica_resources(settings, cluster_gpus),
    ).bind(*bound)
