"""OpenAI's API for a generative model: ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``, streamed
or not, and the Serve deployment that answers them.

What a request may hold is checked here (:func:`parse_completion`, :func:`parse_chat`) against OpenAI's own rules
(``temperature`` 0..2, ``top_p`` 0..1, ``n``, up to 4 ``stop`` strings, ...); a bad request is a 400 with OpenAI's
error body (:class:`OpenAIError`: ``{"error": {"message", "type", "param", "code"}}``) that the official clients
raise as ``BadRequestError``, an unknown model a 404 ``model_not_found``. Parameters OpenAI has and this endpoint
cannot honour (``logprobs``, penalties, tools, ...) are refused by name rather than silently ignored. Answers and
stream chunks (:class:`ChunkWriter`: ``data: {chunk}\\n\\n`` … ``data: [DONE]\\n\\n``, with
``stream_options.include_usage``) have OpenAI's fields, so its clients and SDKs work unchanged.

The deployment (:class:`LanguageModelServer`, what ``atoll.serving.replica:app`` builds for a version whose task is
``text-generation``): the version's files copied locally (checksums verified), one :class:`~atoll.serving.generation.
Generator`, requests gathered by ``@serve.batch`` into batches of rows (an async generator that yields each step's
new text per request; Serve ends a request's stream when its slot yields ``StopIteration``), ``generate`` run in a
thread so that the event loop goes on reading requests and streaming tokens. The same API key, metrics, model card,
``/examples`` and showcase as every model app; the playground is the chat page (``/ui`` → ``/ui/chat``).
"""


# No `from __future__ import annotations`: Serve's ingress re-signs the routes, and FastAPI must find `Request`
# in real annotations (a string one is taken for a query parameter: every route a 422).
import asyncio
import dataclasses
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from atoll import apikeys, request_log
from atoll.errors import RequestError
from atoll.serving import canary, metrics, playground
from atoll.serving.generation import Delta, GenerationRequestError, Generator, Row, Sampling
from atoll.serving.names import DEPLOYMENT_NAME
from atoll.specs import ServeSettings

log = logging.getLogger("ray.serve")

TASK = "text-generation"
#: Choices one request may ask for (``n`` × prompts); Serve's batch also caps rows at ``max_batch_size``.
MAX_N = 16
MAX_STOP = 4
#: New tokens where a request names none and the version's generation config neither: OpenAI's default for a
#: (legacy) completion; a chat completion may then fill the context.
COMPLETION_MAX_TOKENS = 16
ERROR_TYPE = "invalid_request_error"


# ------------------------------------------------------------------------------------------------
# Errors


class OpenAIError(RequestError):
    """A request refused with OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type_: str = ERROR_TYPE) -> None:
        super().__init__(status, message)
        self.param, self.code, self.type = param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def from_generation(exc: GenerationRequestError) -> OpenAIError:
    return OpenAIError(exc.message, exc.param, exc.code, exc.status)


def model_not_found(name: str) -> OpenAIError:
    return OpenAIError(f"The model `{name}` does not exist or you do not have access to it.", "model",
                       "model_not_found", 404)


# ------------------------------------------------------------------------------------------------
# Requests


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Common(BaseModel):
    """What both completion routes take."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # OpenAI's, accepted only at the value that changes nothing (see UNSUPPORTED)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None

    def sampling(self) -> Sampling:
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if top_p == 0.0:  # only the most likely token: greedy
            temperature = 0.0
        return Sampling(temperature, top_p, self.seed if temperature > 0 else None)

    def stops(self) -> tuple[str, ...]:
        return tuple([self.stop] if isinstance(self.stop, str) else self.stop or ())

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Common):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def conversation(self) -> list[dict[str, str]]:
        """The messages as a chat template takes them (``developer`` is the newer name of ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


#: Parameters of OpenAI's API that this endpoint cannot honour: accepted only where they change nothing.
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "frequency_penalty": (lambda v: not v, "penalties are not supported: leave frequency_penalty at 0"),
    "presence_penalty": (lambda v: not v, "penalties are not supported: leave presence_penalty at 0"),
    "logit_bias": (lambda v: not v, "logit_bias is not supported: leave it out"),
    "logprobs": (lambda v: not v, "logprobs are not supported: leave logprobs out"),
    "top_logprobs": (lambda v: not v, "logprobs are not supported: leave top_logprobs out"),
    "echo": (lambda v: not v, "echo is not supported: prepend the prompt yourself"),
    "best_of": (lambda v: v in (None, 1), "best_of is not supported: use n and pick yourself"),
    "suffix": (lambda v: v is None, "suffix (insertion) is not supported by this model"),
    "tools": (lambda v: not v, "tools (function calling) are not supported by this model"),
    "tool_choice": (lambda v: v in (None, "none"), "tools (function calling) are not supported by this model"),
    "response_format": (lambda v: not v or v.get("type") == "text",
                        "only response_format {\"type\": \"text\"} is supported"),
}


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "list[int]", "list[list[int]]", "list[TextPart]", "int", "float"):
            continue  # pydantic's union branch names: not part of the request's path
        else:
            out += f".{part}" if out else str(part)
    return out


def _validation_error(exc: pydantic.ValidationError) -> OpenAIError:
    """OpenAI's wording for the first problem pydantic found."""
    errors = exc.errors(include_url=False)
    err = next((e for e in errors if e["type"] == "missing"), errors[0])
    param, kind, ctx, value = _param(err["loc"]), err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return OpenAIError(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return OpenAIError(f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        limit = next(ctx[k] for k in ("ge", "gt", "le", "lt") if k in ctx)
        what = "decimal" if isinstance(limit, float) else "integer"  # the field's type, whatever was sent
        side, word = ("below", "minimum") if kind.startswith("greater") else ("above", "maximum")
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        shown = int(limit) if float(limit).is_integer() else limit
        return OpenAIError(f"Invalid '{param}': {what} {side} {word} value. Expected a value {sign} {shown}, but got "
                           f"{value!r} instead.", param, f"{what}_{side}_{'min' if side == 'below' else 'max'}_value")
    if kind == "too_short":
        return OpenAIError(f"Invalid '{param}': empty array. Expected an array with minimum length "
                           f"{ctx.get('min_length', 1)}, but got an empty array instead.", param, "empty_array")
    if kind == "literal_error":
        return OpenAIError(f"Invalid value: {value!r}. Supported values are: {ctx.get('expected')} ('{param}').",
                           param, "invalid_value")
    return OpenAIError(f"Invalid type for '{param}': {err['msg'].lower()} (got {type(value).__name__}).", param,
                       "invalid_type")


def _checked(model: type[BaseModel], payload: Any) -> Any:
    if not isinstance(payload, dict):
        raise OpenAIError("The request body must be a JSON object, e.g. "
                          '{"model": "...", "messages": [{"role": "user", "content": "Hi"}]}.', None, "invalid_type")
    try:
        req = model.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise _validation_error(exc) from None
    for name, (fine, why) in UNSUPPORTED.items():
        if name in payload and not fine(payload[name]):
            raise OpenAIError(f"Unsupported parameter: '{name}': {why}.", name, "unsupported_parameter")
    stops = req.stops()
    if len(stops) > MAX_STOP:
        raise OpenAIError(f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}, "
                          f"but got an array with length {len(stops)} instead.", "stop", "array_above_max_length")
    if any(not s for s in stops):
        raise OpenAIError("Invalid 'stop': a stop sequence may not be empty.", "stop", "invalid_value")
    if req.stream_options is not None and not req.stream:
        raise OpenAIError("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                          "stream_options", "invalid_value")
    return req


def parse_completion(payload: Any) -> CompletionRequest:
    """A decoded ``/v1/completions`` body, checked.

    Raises:
        OpenAIError: 400 naming the parameter.
    """
    req = _checked(CompletionRequest, payload)
    prompts = req.prompts()
    if not prompts:
        raise OpenAIError("Invalid 'prompt': empty array. Send a string or a non-empty array.", "prompt",
                          "empty_array")
    return req


def parse_chat(payload: Any) -> ChatRequest:
    """A decoded ``/v1/chat/completions`` body, checked.

    Raises:
        OpenAIError: 400 naming the parameter.
    """
    return _checked(ChatRequest, payload)


def decode_body(body: bytes) -> Any:
    """A request body as JSON.

    Raises:
        OpenAIError: 400 when it is empty or not JSON.
    """
    if not body.strip():
        raise OpenAIError("We could not parse the JSON body of your request: the body is empty. Send a JSON object "
                          "with model and messages (or prompt).", None, "invalid_json")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise OpenAIError(f"We could not parse the JSON body of your request ({str(exc)[:100]}). The OpenAI API "
                          f"expects a JSON payload.", None, "invalid_json") from None


# ------------------------------------------------------------------------------------------------
# Answers and stream chunks


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


@dataclasses.dataclass
class Choice:
    """One finished choice: its text, why it ended, how many tokens it took."""

    text: str
    finish_reason: str
    completion_tokens: int


def completion_body(rid: str, created: int, model: str, choices: list[Choice], prompt_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                        for i, c in enumerate(choices)],
            "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices))}


def chat_body(rid: str, created: int, model: str, choices: list[Choice], prompt_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                         "logprobs": None, "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
            "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices))}


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event of OpenAI's stream."""
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    """The chunks of one streamed answer, as OpenAI writes them: for a chat, a first chunk per choice with the
    assistant's role, then content deltas, then a chunk with the choice's ``finish_reason`` and an empty delta;
    with ``include_usage`` every chunk has ``"usage": null`` and a last chunk with no choices holds the usage."""

    def __init__(self, *, chat: bool, rid: str, created: int, model: str, include_usage: bool = False) -> None:
        self.chat, self.include_usage = chat, include_usage
        self.head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                     "model": model, "system_fingerprint": None}

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        data: dict[str, Any] = {**self.head, "choices": choices}
        if self.include_usage:
            data["usage"] = None
        return sse(data)

    def _choice(self, index: int, text: str | None, finish_reason: str | None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def start(self, choices: int) -> bytes:
        """The chat's role announcements (nothing for a completion)."""
        if not self.chat:
            return b""
        return b"".join(self._chunk([self._choice(i, "", None, role=True)]) for i in range(choices))

    def text(self, index: int, text: str) -> bytes:
        return self._chunk([self._choice(index, text, None)])

    def finish(self, index: int, reason: str) -> bytes:
        return self._chunk([self._choice(index, None if self.chat else "", reason)])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return sse({**self.head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})

    def error(self, exc: BaseException) -> bytes:
        """An error after the stream began (the status is sent already): OpenAI's body as an event."""
        if isinstance(exc, OpenAIError):
            return sse(exc.body())
        return sse({"error": {"message": f"generation failed: {exc}", "type": "server_error", "param": None,
                              "code": None}})


def parse_sse(raw: bytes | str) -> list[Any]:
    """The events of an OpenAI stream (``[DONE]`` as the string ``"[DONE]"``): for tests and clients."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    events = []
    for block in text.split("\n\n"):
        data = "\n".join(line[6:] if line.startswith("data: ") else line[5:] for line in block.splitlines()
                         if line.startswith("data:"))
        if data:
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ------------------------------------------------------------------------------------------------
# The Serve deployment


@dataclasses.dataclass
class Job:
    """One request's rows (``n`` choices of each prompt) on their way through the batch; ``cancelled`` is set
    when the caller has gone (its rows stop at the next step)."""

    rows: list[Row]
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    started: bool = False  # its batch began


def rows_in(jobs: list[Job]) -> int:
    """A batch's size for ``@serve.batch``: the rows it will generate, not the requests."""
    return sum(len(job.rows) for job in jobs)


api = FastAPI(title="Atoll language model endpoint", docs_url=None, redoc_url=None, openapi_url=None,
              description="OpenAI's completions and chat completions API over a registered Atoll model version.")
api.add_middleware(metrics.RequestMetrics)
api.add_middleware(canary.CanarySplit)  # outermost: the version header, a canary's share (atoll.serving.canary)

ROUTES = ["GET /healthz", "GET /", "GET /ui", "GET /examples", "GET /traffic", "GET /v1/models", "POST /v1/completions",
          "POST /v1/chat/completions"]
#: The threads of a replica that run ``generate``: one (a batch at a time; a seeded group sets torch's seed).
GENERATE_THREADS = 1
#: After a request's first text, its new text goes out at most this often (each hand-over from the generating
#: thread, and each HTTP chunk, costs the replica's event loop and Serve's proxy CPU and the GIL: one per token took
#: as long as a small model's step). The events in a chunk are still one per token.
STREAM_INTERVAL_S = 0.02
#: After a batch ends, how long the next one waits at most for that batch's callers to come back: a client that
#: streams back to back sends again soon after its last token, but through Serve's proxy with 8 streams on 2 busy
#: cores that took 30-60 ms. A quarter of the batch's own time at most, so waiting never costs more than a fraction
#: of the work it groups; only a caller that does not come back makes the others wait.
REJOIN_S = 0.1
REJOIN_SHARE = 0.25


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class LanguageModelServer(canary.Forwardable):
    """One replica: the model in memory, requests batched by rows and streamed token by token."""

    def __init__(self, args: dict[str, Any], settings: dict[str, Any]) -> None:
        """``args``: the app's arguments as ``atoll.serving.replica:app`` validated and pinned them (the storage root
        resolved); ``settings``: its Serve settings, resolved there too."""
        from atoll import registry

        self.args = args
        self.settings = ServeSettings.model_validate(settings)
        reg = registry.Registry(args["storage"])
        self.version = reg.get(args["model"])
        self.schema = self.version.input_schema or {}
        self._folder = tempfile.mkdtemp(prefix="atoll-llm-")
        reg.local_copy(self.version, self._folder)  # checksums verified; s3:// roots too
        self.generator = Generator(self._folder, context_length=self.schema.get("context_length"))
        self.showcase = playground.Showcase(args["storage"], self.version)
        self.generate_batch.set_max_batch_size(self.settings.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self._pool = ThreadPoolExecutor(GENERATE_THREADS, thread_name_prefix="atoll-generate")
        self._in_flight = 0
        self._busy = False  # a batch is on its way, generating or forming: new requests wait for their turn
        self._generating = False
        self._turn = asyncio.Event()  # set when the next batch has formed: every request that waited goes at once
        self._waiting = 0  # requests waiting for the turn
        self._peak = 0  # the most requests in flight since the running batch started: the callers that come back
        self._batch_began = 0.0
        self._forming = False  # the model is free and the last batch's callers are expected back (up to REJOIN_S)
        self.batches = {"batches": 0, "shared": 0, "largest_requests": 0, "largest_rows": 0, "tokens": 0,
                        "generate_s": 0.0, "sizes": {}}
        context = serve.get_replica_context()
        app_name = canary.public_app(context.app_name)  # a canary's replicas count under the app it serves
        metrics.start_replica(app_name, self.version.ref)
        canary.split.serving(app_name, self.version.ref, args["storage"])
        self.request_log = request_log.start(args["storage"], app_name, self.version.name, self.version.version,
                                             str(getattr(context.replica_id, "unique_id", context.replica_id)),
                                             self.settings.log_requests, self.settings.log_retention_hours)
        log.info("serving %s (%s, context %d) on %s", self.version.ref, TASK, self.generator.context_length,
                 self.generator.device)

    def __del__(self) -> None:
        if getattr(self, "request_log", None) is not None:  # what the request log still holds is written now
            self.request_log.close()
        shutil.rmtree(getattr(self, "_folder", ""), ignore_errors=True)

    def _logging(self) -> float | None:
        """The start time of a request the request log keeps (sampled), else None (logging off: one test)."""
        return time.perf_counter() if self.request_log is not None and self.request_log.sampled() else None

    def _log(self, logged: tuple[float, str, Any] | None, status: int, outputs: Any) -> None:
        if logged is not None:
            started, route, inputs = logged
            self.request_log.record(route, status, (time.perf_counter() - started) * 1000.0, inputs, outputs)

    # ---- Keys, names, bodies

    def _refused(self, request: Request, openai: bool = False) -> JSONResponse | None:
        # The proxy's middleware (atoll.serving.proxy_auth) refuses these first; this check stays for a proxy without it.
        record = self.args.get("api_key_hash")
        if record and not apikeys.key_matches(request.headers.get("authorization"), record):
            if openai:
                return OpenAIError(apikeys.REFUSED, None, "invalid_api_key", 401).response()
            return JSONResponse({"error": apikeys.REFUSED}, status_code=401)
        return None

    def _names(self, request: Request) -> set[str]:
        """What a request's ``model`` may say: the version's name or ref, what was deployed, the app's name."""
        app = request.scope.get("root_path", "").strip("/")
        return {n for n in (self.version.name, self.version.ref, self.args.get("requested"), app) if n}

    def _check_model(self, request: Request, name: str) -> None:
        if name not in self._names(request):
            raise model_not_found(name)

    async def _payload(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        limit = self.settings.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise OpenAIError(f"request body is {declared} bytes; the limit is {limit} (max_body_bytes).", None,
                              "request_too_large", 413)
        chunks, size = [], 0
        async for chunk in request.stream():  # a chunked upload without a length stops at the limit too
            size += len(chunk)
            if size > limit:
                raise OpenAIError(f"request body is over {limit} bytes (max_body_bytes).", None, "request_too_large",
                                  413)
            chunks.append(chunk)
        return decode_body(b"".join(chunks))

    # ---- Routes: the app's own

    @api.get("/healthz")
    def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.version.name, "version": self.version.version}

    @api.get("/")
    def card(self, request: Request):
        v, g = self.version, self.generator
        return self._refused(request) or {
            "model": v.name, "version": v.version, "task": TASK, "requested": self.args.get("requested"),
            "input_schema": self.schema, "metrics": v.metrics, "lineage": v.lineage, "created_at": v.created_at,
            "exports": v.exports, "runtime": "transformers", "device": g.device, "threads": g.threads,
            "context_length": g.context_length,
            "chat": g.chat, "routes": ROUTES, "openai_base_url": f"{request.scope.get('root_path', '')}/v1",
            "batching": dict(self.batches), **self.showcase.card_extras(request.scope.get("root_path", ""))}

    @api.get("/ui", include_in_schema=False)
    def ui(self, request: Request):
        return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/chat")

    @api.get("/ui/", include_in_schema=False)
    def ui_slash(self, request: Request):
        return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/chat")

    @api.get("/ui/chat", include_in_schema=False)
    def ui_chat(self):
        return playground.html_response("chat.html")

    @api.get("/ui/static/{name}", include_in_schema=False)
    def ui_static(self, name: str):
        return playground.static_response(name)

    @api.get("/examples")
    def examples(self, request: Request):
        g = self.generator
        return self._refused(request) or {
            "panel": {"kind": "chat" if g.chat else "prompt", "chat": g.chat, "context_length": g.context_length,
                      "max_tokens": min(COMPLETION_MAX_TOKENS * 4, g.context_length // 2),
                      "format": self.schema.get("format")},
            "examples": self.showcase.examples}

    @api.get("/traffic")
    def traffic(self, request: Request):
        return self._refused(request) or playground.app_traffic(canary.public_app(serve.get_replica_context().app_name))

    # ---- Routes: OpenAI's

    @api.get("/v1/models")
    def models(self, request: Request):
        return self._refused(request, openai=True) or {"object": "list", "data": [self._model_object()]}

    @api.get("/v1/models/{name:path}")
    def model(self, name: str, request: Request):
        if refused := self._refused(request, openai=True):
            return refused
        if name not in self._names(request):
            return model_not_found(name).response()
        return {**self._model_object(), "id": name}

    def _model_object(self) -> dict[str, Any]:
        from datetime import datetime

        try:
            created = int(datetime.fromisoformat(str(self.version.created_at).replace("Z", "+00:00")).timestamp())
        except ValueError:
            created = 0
        return {"id": self.version.name, "object": "model", "created": created, "owned_by": "atoll",
                "version": self.version.version, "context_length": self.generator.context_length}

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        if refused := self._refused(request, openai=True):
            return refused
        started = self._logging()
        try:
            req = parse_completion(await self._payload(request))
            self._check_model(request, req.model)
            max_tokens = req.max_tokens or self.generator.default_max_tokens or COMPLETION_MAX_TOKENS
            prompts = []
            for i, prompt in enumerate(req.prompts()):
                ids = self._token_prompt(prompt, i) if isinstance(prompt, list) else self.generator.encode(prompt)
                self.generator.check_fits(len(ids), max_tokens, "prompt")
                prompts.append(ids)
            job = self._job(prompts, req, max_tokens)
        except (GenerationRequestError, OpenAIError) as exc:
            error = from_generation(exc) if isinstance(exc, GenerationRequestError) else exc
            self._log(started and (started, "/v1/completions", None), error.status, {"error": error.message})
            return error.response()
        logged = started and (started, "/v1/completions", {"prompt": req.prompt})
        return await self._answer(job, req, chat=False, prompt_tokens=sum(len(p) for p in prompts), logged=logged)

    def _token_prompt(self, ids: list[int], index: int) -> list[int]:
        vocab = len(self.generator.tokenizer)
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None or not ids:
            raise OpenAIError(f"Invalid 'prompt[{index}]': token ids must be 0..{vocab - 1} (got {bad}) and an "
                              f"array of them non-empty.", "prompt", "invalid_value")
        return list(ids)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        if refused := self._refused(request, openai=True):
            return refused
        started = self._logging()
        try:
            req = parse_chat(await self._payload(request))
            self._check_model(request, req.model)
            ids = self.generator.chat_ids(req.conversation())
            max_tokens = req.limit() or min(self.generator.default_max_tokens or self.generator.context_length,
                                            max(self.generator.room(len(ids)), 1))
            self.generator.check_fits(len(ids), max_tokens, "messages")
            job = self._job([ids], req, max_tokens)
        except (GenerationRequestError, OpenAIError) as exc:
            error = from_generation(exc) if isinstance(exc, GenerationRequestError) else exc
            self._log(started and (started, "/v1/chat/completions", None), error.status, {"error": error.message})
            return error.response()
        logged = started and (started, "/v1/chat/completions", {"messages": req.conversation()})
        return await self._answer(job, req, chat=True, prompt_tokens=len(ids), logged=logged)

    def _job(self, prompts: list[list[int]], req: _Common, max_tokens: int) -> Job:
        rows = len(prompts) * req.choices_per_prompt
        if rows > self.settings.max_batch_size:
            raise OpenAIError(f"{rows} choices in one request (n × prompts); this endpoint takes at most "
                              f"{self.settings.max_batch_size} (max_batch_size): lower n or send fewer prompts.",
                              "n", "invalid_value")
        job = Job([])
        request_id = id(job)
        for ids in prompts:
            for _ in range(req.choices_per_prompt):
                job.rows.append(Row(ids, max_tokens, req.sampling(), req.stops(), request_id, job.cancelled))
        return job

    async def _answer(self, job: Job, req: _Common, *, chat: bool, prompt_tokens: int,
                      logged: tuple[float, str, Any] | None = None):
        """``logged``: (start, route, inputs) of a request the request log keeps, else None."""
        rid, created, model = new_id(chat), int(time.time()), req.model
        if req.stream:
            writer = ChunkWriter(chat=chat, rid=rid, created=created, model=model, include_usage=req.include_usage)
            return StreamingResponse(self._stream(job, writer, prompt_tokens, logged), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts: list[list[str]] = [[] for _ in job.rows]
        ends: list[Delta | None] = [None] * len(job.rows)
        async for deltas in self._deltas(job):
            for d in deltas:
                texts[d.row].append(d.text)
                if d.finish_reason:
                    ends[d.row] = d
        choices = [Choice("".join(t), e.finish_reason if e else "length", e.completion_tokens if e else 0)
                   for t, e in zip(texts, ends, strict=True)]
        self._log(logged, 200, {"completions": [c.text for c in choices]})
        shape = chat_body if chat else completion_body
        return shape(rid, created, model, choices, prompt_tokens)

    async def _stream(self, job: Job, writer: ChunkWriter, prompt_tokens: int,
                      logged: tuple[float, str, Any] | None = None) -> AsyncIterator[bytes]:
        completion_tokens = 0
        texts: list[list[str]] = [[] for _ in job.rows]  # for the request log only
        yield writer.start(len(job.rows))
        try:
            async for deltas in self._deltas(job):
                out = []
                for d in deltas:
                    if logged is not None:
                        texts[d.row].append(d.text)
                    if d.text:
                        out.append(writer.text(d.row, d.text))
                    if d.finish_reason:
                        out.append(writer.finish(d.row, d.finish_reason))
                        completion_tokens += d.completion_tokens
                if out:
                    yield b"".join(out)
        except Exception as exc:  # noqa: BLE001 - the 200 is sent: say what happened in the stream
            log.exception("generation failed mid-stream")
            yield writer.error(exc)
        self._log(logged, 200, {"completions": ["".join(t) for t in texts]})
        if writer.include_usage:
            yield writer.usage(prompt_tokens, completion_tokens)
        yield DONE

    async def _deltas(self, job: Job) -> AsyncIterator[list[Delta]]:
        """The job's deltas as the batch hands them over (its rows renumbered 0..n-1 by the batch).

        Batches form around the model's work: a request that comes while a batch is on its way or generating waits
        for that batch to end, and then for the batch's callers to come back (a client that streams back to back
        sends its next request a few milliseconds after its last token): the turn goes when as many requests wait
        as were in flight during the batch, or REJOIN_S after it ended, whichever is first, and they all go to the
        queue together as one batch. (Serve forms batches as requests come, and a static batch takes no rows in
        once ``generate`` runs: without this gate, requests a few milliseconds apart queue as many small batches,
        and clients settle into groups that take turns.) A request with none other in flight goes to the model at
        once, and so does one stream's next request (its batch had one caller, and it is back).
        """
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)
        recorder = metrics.recorder()
        waiting = False
        try:
            waited = self._busy
            if waited:  # (released together: none of them waits again for the others' batch)
                waiting, turn = True, self._turn
                self._waiting += 1
                if self._forming and self._waiting >= self._peak:
                    self._next_turn()
                await turn.wait()
                waiting = False
            self._busy = True
            alone = self._in_flight == 1
            self.generate_batch.set_batch_wait_timeout_s(
                0.0 if alone or waited else self.settings.batch_wait_timeout_s)
            recorder.queued(job)
            async for deltas in self.generate_batch(job):
                if deltas:
                    yield deltas
        finally:
            job.cancelled.set()  # a caller gone mid-stream: its rows stop at the next step
            self._in_flight -= 1
            if waiting:
                self._waiting = max(0, self._waiting - 1)
            recorder.unqueued(job)
            if not job.started and not self._generating:
                self._next_turn()  # gone before its batch began (Serve drops it): the requests behind it go on

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=rows_in)
    async def generate_batch(self, jobs: list[Job]):
        """Many requests' rows through one :meth:`Generator.run` (in a thread); yields, per step, each request's
        new deltas (an empty list where it has none), and ``StopIteration`` once a request's rows all finished."""
        recorder = metrics.recorder()
        started = recorder.batch_started(jobs)
        self._count(jobs)
        self._generating = True
        self._batch_began = time.perf_counter()
        self._peak = self._in_flight
        for job in jobs:
            job.started = True
        owners: list[tuple[int, int]] = []  # batch row -> (job, the job's own row)
        rows: list[Row] = []
        for j, job in enumerate(jobs):
            for k, row in enumerate(job.rows):
                owners.append((j, k))
                rows.append(row)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            began = time.perf_counter()
            try:
                self.generator.run(rows, emit, interval=STREAM_INTERVAL_S)
                self.batches["generate_s"] += time.perf_counter() - began
            except BaseException as exc:  # noqa: BLE001 - handed to every request of the batch
                emit(exc)
            finally:
                emit(None)

        self._running = loop.run_in_executor(self._pool, work)  # (held: the thread ends with the batch)
        left = [len(job.rows) for job in jobs]
        ended = [False] * len(jobs)
        finished = False
        try:
            while not finished:
                items = [await queue.get()]
                while not queue.empty():  # steps that came meanwhile go out together
                    items.append(queue.get_nowait())
                out: list[Any] = [[] for _ in jobs]
                for item in items:
                    if item is None:
                        finished = True
                        self._rejoin()  # the model is free: the next batch forms from who waits and who comes back
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        for d in item:
                            j, k = owners[d.row]
                            out[j].append(Delta(k, d.text, d.finish_reason, d.completion_tokens))
                            if d.finish_reason:
                                left[j] -= 1
                                self.batches["tokens"] += d.completion_tokens
                yield out
                closing = [not ended[j] and left[j] == 0 for j in range(len(jobs))]
                if any(closing):  # their streams end now, not when the whole batch does
                    yield [StopIteration if c else [] for c in closing]
                    ended = [e or c for e, c in zip(ended, closing, strict=True)]
        finally:  # (a batch whose callers all left ends at the next step: their rows are cancelled)
            if not finished:
                self._next_turn()
            recorder.batch_done(started)

    def _rejoin(self) -> None:
        """The batch ended: the next turn goes once as many requests wait as were in flight during it, or after
        REJOIN_S or REJOIN_SHARE of the batch's time, whichever is shorter (a caller that does not come back costs
        the others that much, once)."""
        self._generating = False
        if self._waiting >= self._peak:
            self._next_turn()
            return
        self._forming = True
        turn = self._turn
        wait = min(REJOIN_S, REJOIN_SHARE * (time.perf_counter() - self._batch_began))
        asyncio.get_running_loop().call_later(wait, lambda: turn is self._turn and self._next_turn())

    def _next_turn(self) -> None:
        turn, self._turn = self._turn, asyncio.Event()
        self._busy = self._generating = self._forming = False
        self._waiting = 0
        turn.set()

    def _count(self, jobs: list[Job]) -> None:
        b = self.batches
        b["batches"] += 1
        b["shared"] += len(jobs) > 1
        b["largest_requests"] = max(b["largest_requests"], len(jobs))
        b["largest_rows"] = max(b["largest_rows"], rows_in(jobs))
        b["sizes"][len(jobs)] = b["sizes"].get(len(jobs), 0) + 1
