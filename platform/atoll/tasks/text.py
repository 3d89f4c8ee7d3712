"""Text in, one class out (``text-classification``): a WordPiece tokenizer fitted on the training split, and
messages as token ids for a BERT-style model (``model.type: hf-bert``).

The tokenizer is trained with Hugging Face ``tokenizers`` on the training split's texts only (no download),
and saved as its own JSON inside the fitted state, so every checkpoint and registry version carries it and
a replica rebuilds it from data alone. A request holds texts (``{"inputs": ["...", ...]}``); a text longer
than the model's ``max_length`` tokens is cut there, and the answer says which were (``truncated``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from atoll import data
from atoll.data import FittedState, encode_classes
from atoll.errors import DataError, RequestError
from atoll.tasks.base import pretrained_folder
from atoll.tasks.classifier import Classifier

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # [PAD] is id 0: the model masks it out
DEFAULT_VOCAB, DEFAULT_MAX_LENGTH = 4000, 64
#: the most training texts the tokenizer is fitted on (a sample of the first ones for larger corpora)
TOKENIZER_SAMPLE = 200_000


#: Characters of a text tokenized first per token the model takes (a text is cut only between words, and only
#: where BERT's normalizer keeps the break: a space, tab or newline).
PREFIX_CHARS_PER_TOKEN = 16
_WORD_BREAKS = " \t\n\r"


def _prefix(text: str, chars: int) -> str:
    """``text`` up to a word break at or before ``chars`` characters (or the first one after, for a first word
    that long; the whole text when it has none): its words are the text's first words, unsplit."""
    if len(text) <= chars:
        return text
    before = max(text.rfind(ch, 0, chars + 1) for ch in _WORD_BREAKS)
    if before > 0:
        return text[:before]
    after = [at for at in (text.find(ch, chars) for ch in _WORD_BREAKS) if at >= 0]
    return text[:min(after)] if after else text


@dataclasses.dataclass
class TextState(FittedState):
    """The fitted state: the text and label columns, the classes, the tokenizer (JSON) and the max length."""

    features: list[str]
    label: str
    classes: list[Any]
    tokenizer: str
    max_length: int
    vocab_size: int
    #: a pretrained model's config.json (``model.params.pretrained``), so a replica builds it without the folder
    model_config: str | None = None

    @property
    def input_dim(self) -> int:  # what the model builder receives: the vocabulary's size
        return self.vocab_size

    def __getstate__(self) -> dict[str, Any]:  # Ray ships the state to its map tasks: not the built tokenizer
        return self.to_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _tokenizer(self):
        cached = self.__dict__.get("_built")
        if cached is None:
            from tokenizers import Tokenizer

            cached = Tokenizer.from_str(self.tokenizer)
            cached.enable_truncation(self.max_length)
            cached.enable_padding(pad_id=0, pad_token="[PAD]", length=self.max_length)
            self.__dict__["_built"] = cached
        return cached

    def token_ids(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """Token ids ``[n, max_length]`` (int64, [PAD] = 0) and whether each text was cut to fit.

        A long text is tokenized a prefix at a time, cut between words, until the prefix alone overflows or
        is the whole text: the first ``max_length`` tokens of a prefix that overflows are the text's own, and
        the model keeps no more. A 1 MB text otherwise took seconds and hundreds of MB of overflow encodings.
        """
        texts, tokenizer = list(texts), self._tokenizer()
        ids, cut = np.zeros((len(texts), self.max_length), dtype=np.int64), [False] * len(texts)
        pending, budget = list(range(len(texts))), self.max_length * PREFIX_CHARS_PER_TOKEN
        while pending:
            parts = [_prefix(texts[i], budget) for i in pending]
            again = []
            for i, part, encoded in zip(pending, parts, tokenizer.encode_batch(parts)):
                if encoded.overflowing or len(part) == len(texts[i]):
                    ids[i], cut[i] = encoded.ids, bool(encoded.overflowing)
                else:  # the prefix fits: the rest of the text may still hold tokens
                    again.append(i)
            pending, budget = again, budget * 4
        return ids, cut

    def __call__(self, batch) -> dict[str, np.ndarray]:
        """``map_batches`` transform: a pandas batch → ``{"x": int64 [n, max_length], "y": int64 [n]}``."""
        texts = batch[self.features[0]].fillna("").astype(str).tolist()
        return {"x": self.token_ids(texts)[0], "y": encode_classes(self.classes, batch[self.label].to_numpy())}


def train_tokenizer(texts: list[str], vocab_size: int) -> str:
    """A BERT-style WordPiece tokenizer (lower-cased, [CLS] text [SEP]) trained on ``texts``, as JSON."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer=trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                     special_tokens=list(SPECIAL_TOKENS)))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return tok.to_str()


def pretrained_parts(directory: str) -> tuple[str, str, int]:
    """(tokenizer JSON, config.json text, the longest input it takes) of a local pretrained model folder.

    Raises:
        ConfigError: not a folder, or no fast tokenizer (tokenizer.json) or config.json in it, or a
            tokenizer whose [PAD] is not id 0 (the model masks id 0 out).
    """
    import json

    from tokenizers import Tokenizer

    from atoll.errors import ConfigError

    folder = pretrained_folder(directory)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    if tokenizer.token_to_id("[PAD]") not in (0, None):
        raise ConfigError(f"model.params.pretrained: {directory}'s tokenizer pads with id "
                          f"{tokenizer.token_to_id('[PAD]')}, not 0; Atoll's BERT path masks id 0.")
    tokenizer.no_padding()
    tokenizer.no_truncation()  # the state sets both to its own max_length
    config_text = (folder / "config.json").read_text()
    most = int(json.loads(config_text).get("max_position_embeddings") or DEFAULT_MAX_LENGTH)
    return tokenizer.to_str(), config_text, most


class TextClassification(Classifier):
    name = "text-classification"
    input_kind = "text"
    input_dtype = "int64"
    request_example = '{"inputs": ["some text", ...]}'
    builtin_models = ("hf-bert",)
    fitted_params = ("max_length", "vocab_size", "pretrained")

    def plan(self, uri, fmt, features, label, overrides=None):
        return data.plan(uri, fmt, features, label, text=True)

    def fit(self, train_ds, plan, model_params=None) -> TextState:
        """Read the training split's texts and labels once (up to TOKENIZER_SAMPLE texts for the tokenizer),
        train the tokenizer, collect the classes."""
        params = model_params or {}
        texts: list[str] = []
        classes: set[Any] = set()
        for batch in train_ds.iter_batches(batch_format="pandas", batch_size=4096):
            if len(texts) < TOKENIZER_SAMPLE:
                texts += batch[plan.features[0]].fillna("").astype(str).tolist()[: TOKENIZER_SAMPLE - len(texts)]
            classes |= set(batch[plan.label].tolist())
        if not texts:
            raise DataError(f"dataset {plan.uri}: the training split is empty; add rows or lower "
                            f"dataset.validation_fraction.")
        from tokenizers import Tokenizer

        max_length, model_config = int(params.get("max_length", DEFAULT_MAX_LENGTH)), None
        if params.get("pretrained") is not None:  # the pretrained model's own tokenizer and architecture
            tokenizer, model_config, most = pretrained_parts(params["pretrained"])
            max_length = min(int(params.get("max_length", min(DEFAULT_MAX_LENGTH, most))), most)
        else:
            tokenizer = train_tokenizer(texts, int(params.get("vocab_size", DEFAULT_VOCAB)))
        size = Tokenizer.from_str(tokenizer).get_vocab_size()  # a small corpus can give fewer than asked
        ordered = sorted(classes, key=lambda v: (str(type(v)), v))
        return TextState(features=list(plan.features), label=plan.label,
                         classes=[v.item() if hasattr(v, "item") else v for v in ordered], tokenizer=tokenizer,
                         max_length=max_length, vocab_size=size, model_config=model_config)

    def model_params(self, state: TextState, params: dict[str, Any] | None) -> dict[str, Any]:
        out = dict(params or {})
        if state.model_config is not None:
            out["config_json"] = state.model_config
        return out

    def row_bytes(self, state: TextState) -> int:
        return 8 * (state.max_length + 1)

    def state_from_dict(self, state: dict[str, Any]) -> TextState:
        return TextState.from_dict(state)

    def input_schema(self, state: TextState, model_spec: dict[str, Any]) -> dict[str, Any]:
        return {"task": self.name, "input_kind": self.input_kind, "output_kind": self.output_kind,
                "features": state.features, "num_features": 1, "dtype": "string", "max_length": state.max_length,
                "image_shape": None, "classes": state.classes, "label": state.label}

    def parse_inputs(self, payload: Any, schema: dict[str, Any], *,
                     max_request_pixels: int | None = None) -> list[str]:
        if not isinstance(payload, dict) or set(payload) != {"inputs"}:
            raise RequestError(422, f"the body must be a JSON object like {self.request_example}.")
        texts = payload["inputs"]
        if not isinstance(texts, list) or not texts:
            raise RequestError(422, f"inputs: a non-empty list of texts, like {self.request_example}.")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise RequestError(422, f"inputs.{i}: expected a text (a JSON string), got {type(text).__name__}.")
            if not text.strip():
                raise RequestError(422, f"inputs.{i}: the text is empty; send at least one word.")
            try:  # JSON's "\ud800" escapes make strings the tokenizer cannot take (a TypeError there)
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(422, f"inputs.{i}: the text holds a lone surrogate (an escape from \\ud800 to "
                                        f"\\udfff that is no character); send valid Unicode.") from None
        return texts

    def frame_inputs(self, frame, schema: dict[str, Any]) -> list[str]:
        return frame[schema["features"][0]].fillna("").astype(str).tolist()

    def encode(self, inputs: list[str], state: TextState) -> np.ndarray:
        return state.token_ids(inputs)[0]

    def encode_with_notes(self, inputs: list[str], state: TextState) -> tuple[np.ndarray, dict[str, Any]]:
        ids, cut = state.token_ids(inputs)  # one tokenization gives both the model's input and the answer's flags
        return ids, {"truncated": cut, "max_length": state.max_length}

    def request_schema(self, schema: dict[str, Any], max_rows: int) -> dict[str, Any]:
        texts = {"type": "array", "minItems": 1, "maxItems": max_rows,
                 "items": {"type": "string", "minLength": 1,
                           "description": f"cut to {schema.get('max_length')} tokens (the answer says so)"}}
        return {"type": "object", "properties": {"inputs": texts}, "required": ["inputs"], "additionalProperties": False}
