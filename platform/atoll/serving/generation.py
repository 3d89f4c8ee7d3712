"""Generative language models: a registered ``text-generation`` version's weights and tokenizer, run by
Transformers' own ``generate`` (its KV cache, its greedy and sampling decoders) over batches of prompts.

A batch is one ``generate`` call per group of rows that sample alike (:func:`group_rows`: greedy rows together,
sampled rows by temperature and top-p, a seeded request on its own so that the same seed gives the same text
whatever else is in flight), the prompts left-padded. Each row keeps its own limits: :class:`_Rows` is both the
``StoppingCriteria`` (a per-row bool tensor: the row's ``max_tokens``, an end-of-sequence token, one of its
``stop`` strings, or its caller gone) and the ``BaseStreamer`` that receives every step's tokens for the whole
batch and hands each row's new text on (:class:`Delta`), decoded incrementally so that a half-written UTF-8
character is held back until its last byte arrives, and text that may begin a stop string is held back until it
is known not to.

Used by the Serve replica (atoll.serving.openai_api, which streams the deltas), and through
:meth:`Generator.complete` by batch prediction and benchmarks. Nothing here imports Serve or FastAPI.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from atoll.errors import RequestError

#: The folder of a version that holds the Transformers model and tokenizer (``save_pretrained``).
HF_DIR = "hf"
#: End-of-turn tokens of common chat templates: generation stops at them as at the tokenizer's own EOS.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
#: Prompt tokens kept in front of a row's generated ones while decoding: a tokenizer that drops a leading
#: space at the start of a text (SentencePiece) decodes the first generated token as it reads in context.
DECODE_CONTEXT = 4
FINISH_STOP, FINISH_LENGTH = "stop", "length"


class GenerationRequestError(RequestError):
    """A request the model cannot serve as asked (a prompt too long for its context): a 4xx with the request's
    parameter it concerns and a machine-readable code, as OpenAI's API reports them."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(status, message)
        self.param, self.code = param, code

    def __reduce__(self):  # survives pickling across Ray (a batch prediction actor)
        return type(self), (self.message, self.param, self.code, self.status)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a row picks its tokens: greedy (temperature 0), or sampled with temperature and nucleus top-p, seeded
    or not."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclasses.dataclass
class Row:
    """One sequence to generate: its prompt's token ids, its own limit and stop strings, how it samples, the
    request it belongs to (seeded rows of different requests never share a ``generate`` call) and an event its
    caller sets when it goes away (the row then stops at the next step)."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    request: int = 0
    cancelled: threading.Event | None = None


@dataclasses.dataclass
class Delta:
    """New text of one row (``row``: its index in the rows given to :meth:`Generator.run`); ``finish_reason`` set
    on the row's last delta (``stop`` or ``length``), with the number of tokens it generated."""

    row: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


def group_rows(rows: Sequence[Row]) -> list[list[int]]:
    """Indexes of ``rows`` grouped so that one ``generate`` call serves a group: greedy rows together, sampled
    rows by (temperature, top_p), and seeded rows by (temperature, top_p, seed, request). Groups keep the order
    of their first row."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, row in enumerate(rows):
        s = row.sampling
        if s.greedy:
            key: tuple[Any, ...] = ("greedy",)
        elif s.seed is None:
            key = ("sample", s.temperature, s.top_p)
        else:
            key = ("seeded", s.temperature, s.top_p, s.seed, row.request)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def held_back(text: str, stops: Iterable[str]) -> int:
    """How many characters at the end of ``text`` may be the beginning of a stop string (held back until the
    next tokens say whether they are)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class _Rows:
    """The rows of one ``generate`` call: each step's tokens in, per-row text and stops out.

    Transformers calls the stopping criteria (:meth:`criteria`) and the streamer (:meth:`put`) once a step each,
    in an order that has changed between versions; whichever comes first does the step's work and the other finds
    it done. The deltas of a step go to ``emit`` (from the generating thread) when the streamer receives it.
    """

    def __init__(self, generator: Generator, rows: list[Row], indexes: list[int],
                 emit: Callable[[list[Delta]], None], prompt_length: int, interval: float = 0.0) -> None:
        self.gen, self.rows, self.indexes, self.emit = generator, rows, indexes, emit
        self.prompt_length, self.interval = prompt_length, interval
        self.emitted_at = 0.0
        self.urgent = False  # a row's first text or its end is pending: it goes out without waiting
        self.ids = [list(r.prompt_ids[-DECODE_CONTEXT:]) for r in rows]  # decode context + generated tokens
        self.prefix = [0] * len(rows)  # incremental decoding: ids[prefix:read] gave the text already read
        self.read = [len(ids) for ids in self.ids]
        self.text = [""] * len(rows)
        self.sent = [0] * len(rows)  # characters of text handed on
        self.count = [0] * len(rows)
        self.finish: list[str | None] = [None] * len(rows)
        self.heard = [False] * len(rows)
        self.steps_done = 0
        self.puts = 0
        self.pending: list[Delta] = []
        self.lock = threading.Lock()

    # ---- Transformers' two hooks

    def criteria(self, input_ids: Any, scores: Any = None, **_: Any) -> Any:
        import torch

        self.advance(input_ids.shape[1] - self.prompt_length, input_ids[:, -1])
        return torch.tensor([f is not None for f in self.finish], dtype=torch.bool, device=input_ids.device)

    def put(self, value: Any) -> None:
        if value.dim() > 1 and self.puts == 0 and value.shape[-1] == self.prompt_length:
            self.puts = -1  # the prompt, which generate hands over first
            return
        self.puts = max(self.puts, 0) + 1
        self.advance(self.puts, value.reshape(-1))
        self.flush()

    def end(self) -> None:
        for i, finish in enumerate(self.finish):
            if finish is None:  # generate stopped for a reason of its own (its max_new_tokens): the row's limit
                self._finish(i, FINISH_LENGTH)
        self.flush(force=True)

    # ---- The work

    def advance(self, step: int, tokens: Any) -> None:
        """Step ``step``'s tokens (one per row) read, once."""
        with self.lock:
            if step <= self.steps_done:
                return
            self.steps_done = step
            values = tokens.tolist()
            for i, token in enumerate(values):
                if self.finish[i] is None:
                    self._token(i, int(token))

    def _token(self, i: int, token: int) -> None:
        row = self.rows[i]
        if row.cancelled is not None and row.cancelled.is_set():
            self.finish[i] = FINISH_STOP  # nobody reads it: no delta
            return
        self.count[i] += 1
        if token in self.gen.stop_ids:
            self._finish(i, FINISH_STOP)
            return
        self.ids[i].append(token)
        self._decode(i)
        if row.stop:
            found = [p for p in (self.text[i].find(s, self.sent[i]) for s in row.stop) if p >= 0]
            if found:
                self._send(i, min(found))
                self._finish(i, FINISH_STOP, flush=False)
                return
        if self.count[i] >= row.max_tokens:
            self._finish(i, FINISH_LENGTH)
            return
        self._send(i, len(self.text[i]) - held_back(self.text[i][self.sent[i]:], row.stop))

    def _decode(self, i: int, final: bool = False) -> None:
        """Text of the row's new tokens, unless they end inside a UTF-8 character (then they wait for the rest;
        ``final``: take it as it is)."""
        ids, prefix, read = self.ids[i], self.prefix[i], self.read[i]
        decode = self.gen.decode
        before = decode(ids[prefix:read])
        now = decode(ids[prefix:])
        if len(now) > len(before) and (final or not now.endswith("\ufffd")):
            self.text[i] += now[len(before):]
            self.prefix[i], self.read[i] = read, len(ids)

    def _send(self, i: int, upto: int) -> None:
        if upto > self.sent[i]:
            self.pending.append(Delta(self.indexes[i], self.text[i][self.sent[i]:upto]))
            self.sent[i] = upto
            self.urgent |= not self.heard[i]
            self.heard[i] = True

    def _finish(self, i: int, reason: str, flush: bool = True) -> None:
        if flush:
            self._decode(i, final=True)
            self._send(i, len(self.text[i]))
        self.finish[i] = reason
        self.pending.append(Delta(self.indexes[i], "", reason, self.count[i]))
        self.urgent = True

    def flush(self, force: bool = False) -> None:
        """Hand the pending deltas on: a row's first text and a row's end at once, the rest at most every
        ``interval`` seconds (fewer, larger hand-overs cost the consumer less; each delta stays one step's text)."""
        now = time.perf_counter()
        if not (force or self.urgent or now - self.emitted_at >= self.interval):
            return
        with self.lock:
            pending, self.pending, self.urgent = self.pending, [], False
        if pending:
            self.emitted_at = now
            self.emit(pending)


def _streamer_class():
    from transformers.generation.stopping_criteria import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    class RowStreamer(BaseStreamer):
        """Transformers' streamer interface over :class:`_Rows` (each step's tokens, the whole batch)."""

        def __init__(self, rows: _Rows) -> None:
            self.rows = rows

        def put(self, value: Any) -> None:
            self.rows.put(value)

        def end(self) -> None:
            self.rows.end()

    class RowStops(StoppingCriteria):
        """Transformers' per-row stopping criteria over :class:`_Rows`."""

        def __init__(self, rows: _Rows) -> None:
            self.rows = rows

        def __call__(self, input_ids: Any, scores: Any = None, **kwargs: Any) -> Any:
            return self.rows.criteria(input_ids, scores)

    return RowStreamer, RowStops


def _default_device() -> str:
    from atoll.serving.predictor import _default_device as device

    return device()


class Generator:
    """A generative model ready to serve: the version folder's ``hf/`` model and tokenizer, on ``device``
    (a GPU where this process sees one, else the CPU).

    Args:
        folder: A local copy of the version (:meth:`atoll.registry.Registry.local_copy`), or its ``hf`` folder.
        device: ``cpu``, ``cuda``, ``cuda:1``; default: a GPU where there is one.
        context_length: Tokens of prompt and completion together (default: the model's position embeddings).
    """

    def __init__(self, folder: str | Path, *, device: str | None = None, context_length: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        hf = folder / HF_DIR if (folder / HF_DIR).is_dir() else folder
        self.device = device or _default_device()
        self.tokenizer = AutoTokenizer.from_pretrained(hf, local_files_only=True)
        dtype = torch.float32 if self.device == "cpu" else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True, dtype=dtype).to(self.device).eval()
        positions = getattr(self.model.config, "max_position_embeddings", None)
        self.context_length = int(context_length or positions or 2048)
        if positions:
            self.context_length = min(self.context_length, int(positions))
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.pad_id = self._pad_id()
        self.stop_ids = self._stop_ids()
        self._lock = threading.Lock()  # one generate at a time: a seeded group sets torch's global seed
        self.threads = torch.get_num_threads()
        self._streamer, self._stops = _streamer_class()

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, getattr(self.model.generation_config, "pad_token_id", None)):
            if isinstance(candidate, int):
                return candidate
        return 0

    def _stop_ids(self) -> frozenset[int]:
        """The tokens that end a row: the generation config's and the tokenizer's EOS, and a chat template's
        end-of-turn token where the vocabulary has one."""
        ids: set[int] = set()
        for source in (getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(int(s) for s in source)
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
        return frozenset(ids)

    # ---- Prompts

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode(self, prompt: str) -> list[int]:
        """A completion prompt's token ids, encoded as training encodes text (no special tokens added)."""
        return list(self.tokenizer(prompt, add_special_tokens=False).input_ids)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The conversation as the model's chat template writes it, ending where the assistant's reply begins.

        Raises:
            GenerationRequestError: the version has no chat template, or the template refuses the messages.
        """
        if not self.chat:
            raise GenerationRequestError("this model has no chat template: send a prompt to /v1/completions "
                                         "instead of messages.", param="messages", code="chat_not_supported")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - a template's own check (e.g. roles must alternate) is the caller's fault
            raise GenerationRequestError(f"the model's chat template refused these messages: {exc}",
                                         param="messages") from None

    def chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """A conversation's token ids (the template writes the special tokens itself)."""
        return list(self.tokenizer(self.chat_prompt(messages), add_special_tokens=False).input_ids)

    def check_fits(self, prompt_tokens: int, max_tokens: int, param: str = "prompt") -> None:
        """Refuse a request whose prompt and completion do not fit the context (OpenAI's message and code).

        Raises:
            GenerationRequestError: 400 ``context_length_exceeded``.
        """
        if prompt_tokens + max_tokens > self.context_length:
            where = "messages" if param == "messages" else "prompt"
            raise GenerationRequestError(
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {where}, {max_tokens} in the "
                f"completion). Please reduce the length of the {where} or the completion (max_tokens).",
                param=param, code="context_length_exceeded")

    @property
    def default_max_tokens(self) -> int | None:
        """New tokens a request that names none gets: the version's ``generation_config.json`` ``max_new_tokens``."""
        value = getattr(self.model.generation_config, "max_new_tokens", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    def room(self, prompt_tokens: int) -> int:
        """Tokens left for a completion after a prompt of ``prompt_tokens``."""
        return max(self.context_length - prompt_tokens, 0)

    # ---- Generating

    def run(self, rows: list[Row], emit: Callable[[list[Delta]], None], interval: float = 0.0) -> None:
        """Generate every row, its new text handed to ``emit`` (called in this thread) step by step, or at most
        every ``interval`` seconds (a row's first text and its end at once). Blocks until all rows finished; a
        group after another (one ``generate`` call per :func:`group_rows` group)."""
        with self._lock:
            for group in group_rows(rows):
                self._generate([rows[i] for i in group], group, emit, interval)

    def _generate(self, rows: list[Row], indexes: list[int], emit: Callable[[list[Delta]], None],
                  interval: float) -> None:
        import torch
        from transformers import GenerationConfig
        from transformers.generation.stopping_criteria import StoppingCriteriaList

        length = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding: every row's next token is at the same position
            input_ids[i, length - len(row.prompt_ids):] = torch.tensor(row.prompt_ids, dtype=torch.long)
            attention[i, length - len(row.prompt_ids):] = 1
        tracker = _Rows(self, rows, indexes, emit, length, interval)
        sampling = rows[0].sampling
        options: dict[str, Any] = {"max_new_tokens": max(r.max_tokens for r in rows), "num_beams": 1,
                                   "eos_token_id": sorted(self.stop_ids) or None, "pad_token_id": self.pad_id,
                                   "use_cache": True, "do_sample": not sampling.greedy}
        if not sampling.greedy:  # OpenAI's parameters: no top-k
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        config = GenerationConfig(**options)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                generation_config=config, streamer=self._streamer(tracker),
                                stopping_criteria=StoppingCriteriaList([self._stops(tracker)]))

    def complete(self, prompts: list[str], max_tokens: int = 16, temperature: float = 0.0, top_p: float = 1.0,
                 stop: str | list[str] | None = None, seed: int | None = None) -> list[dict[str, Any]]:
        """Completions of ``prompts``, batched, not streamed: for each, ``text``, ``prompt_tokens``,
        ``completion_tokens`` and ``finish_reason`` (``stop`` or ``length``).

        Raises:
            GenerationRequestError: a prompt does not leave ``max_tokens`` in the context.
        """
        stops = tuple([stop] if isinstance(stop, str) else stop or ())
        rows = []
        for i, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            try:
                self.check_fits(len(ids), max_tokens)
            except GenerationRequestError as exc:
                raise GenerationRequestError(f"prompts[{i}]: {exc.message}", param="prompt", code=exc.code) from None
            rows.append(Row(ids, max_tokens, Sampling(temperature, top_p, seed), stops, request=i))
        texts: list[list[str]] = [[] for _ in rows]
        ends: list[Delta | None] = [None] * len(rows)

        def collect(deltas: list[Delta]) -> None:
            for d in deltas:
                texts[d.row].append(d.text)
                if d.finish_reason:
                    ends[d.row] = d

        self.run(rows, collect, interval=float("inf"))
        return [{"text": "".join(texts[i]), "prompt_tokens": len(row.prompt_ids),
                 "completion_tokens": ends[i].completion_tokens if ends[i] else 0,
                 "finish_reason": ends[i].finish_reason if ends[i] else FINISH_LENGTH} for i, row in enumerate(rows)]
