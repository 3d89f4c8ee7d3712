"""Text in, more text out (``text-generation``): a causal language model (``model.type: hf-causal-lm``) trained on
documents, prompt/completion pairs or chats, its tokenizer fitted on the training split (or a pretrained folder's).

Three shapes of data, found from the columns (or ``dataset.features``):

- ``text``: one string column of documents; every token is learnt.
- ``prompt-completion``: ``prompt`` and ``completion`` columns; the loss is on the completion's tokens only.
- ``chat``: a ``messages`` column of turns (``{"role", "content"}``; a list, or its JSON text in a CSV); the
  tokenizer's chat template renders it, and the loss is on the assistant's turns only.

Rows are tokenized, each ended by the end-of-text token, and packed back to back into blocks of
``context_length`` tokens, so a batch holds no padding but a pass's last block (the usual GPT-style packing;
attention may look across a row's end into the previous row, as in GPT-2's training). A block's target is
its own ids with the positions that are not learnt set to -100; the loss shifts them by one.

The tokenizer travels as its files' text (``tokenizer.json``, ``tokenizer_config.json`` with the chat template)
in the fitted state, so a checkpoint or a version rebuilds it from data alone, and registration writes the same
files into the version's Hugging Face folder (:mod:`atoll.train.generation`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from atoll import data
from atoll.data import DatasetPlan, FittedState
from atoll.errors import ConfigError, DataError, RequestError
from atoll.tasks.base import Task, pretrained_folder

IGNORE = -100  # a target position the loss skips (PyTorch's cross_entropy default ignore_index)
EOS, CHAT_START, CHAT_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
#: ChatML, the template most open chat models use; the prefix of a rendered chat is the rendering of its first
#: turns, which is how the assistant's turns are found in any template that keeps that property.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
DEFAULT_VOCAB, DEFAULT_CONTEXT = 2000, 128
#: the most training rows the tokenizer is fitted on
TOKENIZER_SAMPLE = 100_000
FORMATS = ("text", "prompt-completion", "chat")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    """A chat cell (a list of ``{"role", "content"}``, as Parquet's list<struct> or its JSON text) as plain dicts."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(f"{where}: not JSON; a messages cell holds a list of {{\"role\", \"content\"}} turns.") \
                from None
    if value is None or not hasattr(value, "__iter__") or isinstance(value, dict):
        raise DataError(f"{where}: expected a list of {{\"role\", \"content\"}} turns, got {type(value).__name__}.")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) \
                or not isinstance(turn.get("content"), str):
            raise DataError(f"{where}.{i}: a turn is {{\"role\": str, \"content\": str}}; got {turn!r:.80}.")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def train_tokenizer(texts: list[str], vocab_size: int) -> dict[str, str]:
    """A byte-level BPE tokenizer (GPT-2's scheme: any text, no unknown token) trained on ``texts``, with the
    end-of-text and ChatML tokens, as the files ``save_pretrained`` writes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, CHAT_START, CHAT_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=None,
                                      unk_token=None, chat_template=CHATML, model_max_length=10**6)
    return tokenizer_files(wrapped)


def tokenizer_files(tokenizer) -> dict[str, str]:
    """A Hugging Face tokenizer as the text of its saved files (what the fitted state carries)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {name: (Path(tmp) / name).read_text() for name in TOKENIZER_FILES if (Path(tmp) / name).is_file()}


def load_tokenizer(files: dict[str, str]):
    """The tokenizer saved as :func:`tokenizer_files`, from those files alone (no network)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            if name in TOKENIZER_FILES:  # the state's own names only: nothing else is written
                (Path(tmp) / name).write_text(text)
        return AutoTokenizer.from_pretrained(tmp, local_files_only=True)


def pretrained_parts(directory: str) -> tuple[dict[str, str], str]:
    """(tokenizer files, config.json text) of a local pretrained folder (``save_pretrained`` output).

    Raises:
        ConfigError: not a folder, or no config.json or fast tokenizer (tokenizer.json) in it.
    """
    folder = pretrained_folder(directory)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return tokenizer_files(AutoTokenizer.from_pretrained(str(folder), local_files_only=True)), \
        (folder / "config.json").read_text()


@dataclasses.dataclass
class GenerationState(FittedState):
    """The fitted state: the columns and their shape, the tokenizer's files, the special ids, the block length."""

    features: list[str]
    format: str
    tokenizer_files: dict[str, str]
    context_length: int
    vocab_size: int
    eos_id: int
    pad_id: int
    bos_id: int | None = None
    #: the ids that end a reply (end-of-text, and the chat template's end of turn when it has one)
    stop_ids: list[int] = dataclasses.field(default_factory=list)
    #: a pretrained model's config.json (``model.params.pretrained``), so its architecture builds without the folder
    model_config: str | None = None
    classes: list[Any] = dataclasses.field(default_factory=list)  # (FittedState's; a generator has none)

    @property
    def input_dim(self) -> int:  # the model builder's input_dim and num_classes: the vocabulary
        return self.vocab_size

    @property
    def has_chat_template(self) -> bool:
        return bool(json.loads(self.tokenizer_files.get("tokenizer_config.json", "{}")).get("chat_template")) \
            or "chat_template.jinja" in self.tokenizer_files

    def __getstate__(self) -> dict[str, Any]:  # Ray ships the state to its map tasks: not the built tokenizer
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def tokenizer(self):
        cached = self.__dict__.get("_built")
        if cached is None:
            cached = self.__dict__["_built"] = load_tokenizer(self.tokenizer_files)
        return cached

    # ---- rows → (ids, targets)
    def row_tokens(self, row: dict[str, Any], where: str) -> tuple[list[int], list[int]]:
        """One row's token ids and targets (IGNORE where it is not learnt), ended by the end-of-text token."""
        tok = self.tokenizer()
        if self.format == "text":
            ids = tok(str(row[self.features[0]]))["input_ids"] + [self.eos_id]
            return ids, list(ids)
        if self.format == "prompt-completion":
            prompt = tok(str(row[self.features[0]]))["input_ids"]
            completion = tok(str(row[self.features[1]]), add_special_tokens=False)["input_ids"] + [self.eos_id]
            return prompt + completion, [IGNORE] * len(prompt) + completion
        return self.chat_tokens(_messages(row[self.features[0]], where), where)

    def chat_tokens(self, messages: list[dict[str, str]], where: str) -> tuple[list[int], list[int]]:
        """A chat rendered by the template; the targets are the assistant turns' characters (found as the
        difference between renderings of the chat up to and after each assistant turn) and the end-of-text."""
        tok = self.tokenizer()
        full = tok.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, turn in enumerate(messages):
            if turn["role"] != "assistant":
                continue
            before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            after = tok.apply_chat_template(messages[:i + 1], tokenize=False)
            if not (full.startswith(after) and after.startswith(before)):
                raise DataError(f"{where}: the tokenizer's chat template does not render a chat's first turns as the "
                                f"beginning of the whole chat, so the assistant's turns cannot be found; use a "
                                f"template that does (ChatML, Llama's, ...), or prompt/completion columns.")
            spans.append((len(before), len(after)))
        encoded = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"]) + [self.eos_id]
        targets = [t if any(lo <= start < hi for lo, hi in spans) else IGNORE
                   for t, (start, _end) in zip(encoded["input_ids"], encoded["offset_mapping"])]
        return ids, targets + [self.eos_id if spans else IGNORE]

    def __call__(self, batch) -> dict[str, np.ndarray]:
        """``map_batches`` transform: a pandas batch of rows → packed blocks ``{"x": int64 [b, L], "y": int64 [b, L]}``
        (the last block padded with the pad id, its padding not learnt)."""
        ids: list[int] = []
        targets: list[int] = []
        for i, row in enumerate(batch[self.features].to_dict("records")):
            if any(row[c] is None or (isinstance(row[c], float) and np.isnan(row[c])) for c in self.features):
                continue  # a row with a gap in any of its columns holds nothing to learn
            row_ids, row_targets = self.row_tokens(row, f"row {i} of a batch")
            ids += row_ids
            targets += row_targets
        length = self.context_length
        blocks = -(-len(ids) // length)
        x = np.full((blocks, length), self.pad_id, dtype=np.int64)
        y = np.full((blocks, length), IGNORE, dtype=np.int64)
        x.reshape(-1)[:len(ids)] = ids
        y.reshape(-1)[:len(targets)] = targets
        return {"x": x, "y": y}


def _shape(columns: dict[str, str], features: list[str] | None, label: str, uri: str) -> tuple[str, list[str]]:
    """The data's shape (:data:`FORMATS`) and the columns read, from ``dataset.features`` or the column names."""
    strings = [c for c, t in columns.items() if t.startswith(data.STRING_PREFIXES)]
    chosen = features
    if chosen is None:
        if "messages" in columns:
            chosen = ["messages"]
        elif "prompt" in columns and "completion" in columns:
            chosen = ["prompt", "completion"]
        else:
            texts = [c for c in strings if c != label]
            if len(texts) != 1:
                found = ", ".join(f"{c} ({t})" for c, t in columns.items())
                raise DataError(f"dataset {uri}: a text-generation task reads one text column, prompt + completion "
                                f"columns, or a messages column; found {found}. Set dataset.features.")
            chosen = texts
    missing = [c for c in chosen if c not in columns]
    if missing:
        raise DataError(f"dataset {uri}: column(s) {', '.join(missing)} do not exist; columns are "
                        f"{', '.join(columns)}. Fix dataset.features.")
    if len(chosen) == 2:
        return "prompt-completion", list(chosen)
    if len(chosen) != 1:
        raise DataError(f"dataset {uri}: dataset.features names {len(chosen)} columns; a text-generation task reads "
                        f"one (the text, or messages) or two (the prompt, then the completion).")
    kind = columns[chosen[0]]
    if kind.startswith(("list", "large_list")) or chosen[0] == "messages":
        return "chat", list(chosen)
    if not kind.startswith(data.STRING_PREFIXES):
        raise DataError(f"dataset {uri}: column {chosen[0]!r} is {kind}, not text; name the text column in "
                        f"dataset.features.")
    return "text", list(chosen)


class TextGeneration(Task):
    name = "text-generation"
    input_kind = "prompt"
    output_kind = "text"
    metric_names = ("loss", "perplexity", "token_accuracy")
    minimized = ("loss", "perplexity")
    objective = ("val_loss", "min")
    target_dtype = "int64"
    input_dtype = "int64"
    request_example = '{"inputs": ["a prompt", ...]}'
    fitted_params = ("context_length", "vocab_size", "pretrained")
    builtin_models = ("hf-causal-lm",)
    batch_rows = 64
    #: logits are [rows, tokens, vocabulary]: the loop sums figures batch by batch rather than holding 64 of them
    sums_every = 1
    #: what the loop's samples are: tokens learnt (its samples_per_s is tokens per second)
    sample_unit = "tokens"

    def plan(self, uri, fmt, features, label, overrides=None) -> DatasetPlan:
        data._files(uri)  # a missing path fails here, with the fix
        fmt = data.detect_format(uri, fmt)
        columns, rows = data.read_schema(uri, fmt)
        shape, chosen = _shape(columns, features, label, uri)
        if rows == 0:
            raise DataError(f"dataset {uri}: it is empty (0 rows).")
        return DatasetPlan(uri=uri, format=fmt, features=chosen, label="", rows=rows,
                           fingerprint=data.fingerprint(uri), kinds={"shape": shape},
                           types={c: columns[c] for c in chosen})

    def fit(self, train_ds, plan, model_params=None) -> GenerationState:
        """Train the tokenizer on the training split's text (or take the pretrained folder's) and fix the
        special ids; every row is checked here (a malformed chat fails before any worker starts)."""
        params = model_params or {}
        shape = plan.kinds.get("shape", "text")
        texts: list[str] = []
        rows = 0
        for batch in train_ds.iter_batches(batch_format="pandas", batch_size=4096):
            for i, row in enumerate(batch[plan.features].to_dict("records")):
                rows += 1
                if len(texts) >= TOKENIZER_SAMPLE:
                    continue
                if shape == "chat":
                    if row[plan.features[0]] is not None:
                        texts += [t["content"] for t in _messages(row[plan.features[0]], f"messages of row {i}")]
                else:
                    texts += [str(row[c]) for c in plan.features if isinstance(row[c], str)]
        if not rows:
            raise DataError(f"dataset {plan.uri}: the training split is empty; add rows or lower "
                            f"dataset.validation_fraction.")
        model_config = None
        if params.get("pretrained") is not None:
            files, model_config = pretrained_parts(params["pretrained"])
        else:
            files = train_tokenizer(texts, int(params.get("vocab_size", DEFAULT_VOCAB)))
        tok = load_tokenizer(files)
        eos = tok.eos_token_id
        if eos is None:
            raise ConfigError("model.params.pretrained: its tokenizer has no end-of-text token (eos_token); set one "
                              "and save it again.")
        stop = [eos] + [i for i in [tok.convert_tokens_to_ids(CHAT_END)] if isinstance(i, int) and i != eos
                        and i != tok.unk_token_id]
        context = int(params.get("context_length", DEFAULT_CONTEXT))
        if model_config is not None:
            most = json.loads(model_config).get("max_position_embeddings") or json.loads(model_config).get("n_positions")
            context = min(context, int(most or context))
        state = GenerationState(features=list(plan.features), format=shape, tokenizer_files=files,
                                context_length=context, vocab_size=len(tok), eos_id=int(eos),
                                pad_id=int(tok.pad_token_id if tok.pad_token_id is not None else eos),
                                bos_id=tok.bos_token_id, stop_ids=stop, model_config=model_config)
        if shape == "chat" and not state.has_chat_template:
            raise ConfigError("model.params.pretrained: its tokenizer has no chat template, which a messages column "
                              "needs; add one (tokenizer.chat_template) or use prompt/completion columns.")
        return state

    def state_from_dict(self, state: dict[str, Any]) -> GenerationState:
        return GenerationState.from_dict(state)

    def model_params(self, state: GenerationState, params: dict[str, Any] | None) -> dict[str, Any]:
        out = {k: v for k, v in (params or {}).items() if k != "vocab_size"}
        out["context_length"] = state.context_length
        out["special_ids"] = {"eos": state.eos_id, "pad": state.pad_id, "bos": state.bos_id}
        if state.model_config is not None:
            out["config_json"] = state.model_config
        return out

    def row_bytes(self, state: GenerationState) -> int:
        return 16 * state.context_length  # a block's ids and targets (rows of text are shorter: an upper bound)

    def out_dim(self, state: GenerationState) -> int:
        return state.vocab_size

    # ---- the training step
    def loss(self, outputs, target):
        """Mean cross-entropy of each position's prediction of the next token, over the learnt positions."""
        import torch.nn.functional as F

        logits, labels = outputs[:, :-1], target[:, 1:]
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                ignore_index=IGNORE, reduction="sum")
        return total / (labels != IGNORE).sum().clamp(min=1)

    def batch_sums(self, outputs, target, loss, state):
        """[loss·tokens, tokens, correct next-token guesses], over the learnt positions."""
        import torch
        import torch.nn.functional as F

        if target.numel() == 0 or target.dim() < 2:
            return torch.zeros(3, dtype=torch.float64, device=target.device)
        logits, labels = outputs[:, :-1], target[:, 1:]
        mask = labels != IGNORE
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                              ignore_index=IGNORE, reduction="sum")
        correct = ((logits.argmax(-1) == labels) & mask).sum()
        return torch.stack([nll.double(), mask.sum().double(), correct.double()])

    def metrics(self, sums: list[float], state) -> dict[str, float]:
        import math

        loss_sum, tokens, correct = sums[:3]
        if not tokens:
            return {"loss": float("nan"), "perplexity": float("nan"), "token_accuracy": float("nan")}
        loss = loss_sum / tokens
        return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4),
                "token_accuracy": round(correct / tokens, 6)}

    # ---- the registry and serving (generation is answered by atoll.serving.generation, not /predict)
    def input_schema(self, state: GenerationState, model_spec: dict[str, Any]) -> dict[str, Any]:
        return {"task": self.name, "input_kind": self.input_kind, "output_kind": self.output_kind,
                "features": state.features, "format": state.format, "context_length": state.context_length,
                "chat": state.has_chat_template, "vocab_size": state.vocab_size, "label": None, "classes": []}

    def answer_arrays(self, outputs, state):
        raise NotImplementedError("a text-generation model answers with text (atoll.serving.generation)")

    def parse_inputs(self, payload: Any, schema: dict[str, Any], *, max_request_pixels: int | None = None) -> list[str]:
        if not isinstance(payload, dict) or set(payload) != {"inputs"}:
            raise RequestError(422, f"the body must be a JSON object like {self.request_example}.")
        prompts = payload["inputs"]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError(422, f"inputs: a non-empty list of prompts (strings), like {self.request_example}.")
        return prompts

    def frame_inputs(self, frame, schema: dict[str, Any]) -> list[Any]:
        """A batch's prompts: its ``prompt`` column (or the one text column); chats from a ``messages`` column."""
        column = "messages" if "messages" in frame.columns else "prompt" if "prompt" in frame.columns else None
        if column is None:
            texts = [c for c in frame.columns if frame[c].dtype == object]
            if len(texts) != 1:
                raise DataError(f"the prompts file needs a prompt (or messages) column; it has {', '.join(frame.columns)}.")
            column = texts[0]
        if column == "messages":
            return [_messages(v, f"messages of row {i}") for i, v in enumerate(frame[column].tolist())]
        return frame[column].fillna("").astype(str).tolist()

    def encode(self, inputs: Any, state) -> np.ndarray:
        raise NotImplementedError("a text-generation model's prompts are tokenized by its generator")

    def request_schema(self, schema: dict[str, Any], max_rows: int) -> dict[str, Any]:
        return {"type": "object", "required": ["inputs"], "additionalProperties": False,
                "properties": {"inputs": {"type": "array", "minItems": 1, "maxItems": max_rows,
                                          "items": {"type": "string"}}}}
