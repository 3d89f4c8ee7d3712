"""Built-in models (an MLP for flat inputs, a small CNN for images) and user models by import path.

A model is chosen by the training spec's ``model`` section: ``type: mlp | cnn`` or
``type: mypkg.models:build`` (a callable taking ``input_dim``, ``num_classes`` and the spec's params).

Training imports the type its spec names (the job runs its submitter's code anyway). A registered version
is different: its manifest, in the storage root, names the type a replica imports, so a user type is
imported for it only when cluster.yaml's ``metadata.atoll.model_types`` allows it (:class:`atoll.model_types.AllowList`);
otherwise anyone who can write to the storage could run code on the cluster.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atoll.errors import ConfigError
from atoll.model_types import AllowList
from atoll.specs import MODEL_TYPE_RE
from atoll.tasks.base import not_a_local_folder


class MLP(nn.Module):
    """Fully connected classifier: Linear → GELU → Dropout per hidden layer."""

    def __init__(self, input_dim: int, num_classes: int, hidden: list[int] = (128, 64), dropout: float = 0.1,
                 image_shape: list[int] | None = None):
        super().__init__()  # image_shape: an image task's; its pixels are flattened into one row
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head, for small images given as flat rows (e.g. 8×8 digits)."""

    def __init__(self, input_dim: int, num_classes: int, image_shape: list[int] | None = None,
                 channels: list[int] = (16, 32), dropout: float = 0.1):
        super().__init__()
        if image_shape is None:
            side = int(math.isqrt(input_dim))
            if side * side != input_dim:
                raise ConfigError(f"model.image_shape: {input_dim} features are not a square image; "
                                  f"set model.image_shape: [channels, height, width].")
            image_shape = [1, side, side]
        if math.prod(image_shape) != input_dim:
            raise ConfigError(f"model.image_shape: {image_shape} holds {math.prod(image_shape)} values, "
                              f"but the dataset has {input_dim} features.")
        self.image_shape = list(image_shape)
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(image_shape[0], c1, 3, padding=1), nn.GELU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(x.shape[0], *self.image_shape)))


class BertClassifier(nn.Module):
    """A BERT-style text classifier (``BertForSequenceClassification``) over token ids ``[n, max_length]``
    ([PAD] = 0 is masked out), built from a small ``BertConfig`` given in the spec: nothing is downloaded
    (``HF_HUB_OFFLINE=1``)."""

    def __init__(self, input_dim: int, num_classes: int, layers: int = 2, hidden: int = 64, heads: int = 2,
                 intermediate: int | None = None, max_length: int = 64, dropout: float = 0.1,
                 vocab_size: int | None = None, pretrained: str | None = None, config_json: str | None = None):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id must never reach the network at run time
        from transformers import BertConfig, BertForSequenceClassification

        if pretrained is not None or config_json is not None:
            self.bert = _pretrained_bert(pretrained, config_json, input_dim, num_classes)
            return
        if hidden % heads:
            raise ConfigError(f"model.params.hidden: {hidden} is not a multiple of heads ({heads}); "
                              f"choose e.g. hidden: {heads * max(1, hidden // heads)}.")
        # vocab_size is the tokenizer's (the task fits it); input_dim is that size, as the tokenizer came out.
        config = BertConfig(vocab_size=input_dim, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
                            max_position_embeddings=max_length, num_labels=num_classes,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=0)
        self.bert = BertForSequenceClassification(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=x, attention_mask=(x != 0).long()).logits


def _same_vocabulary(model, vocab: int):
    """``model``, whose vocabulary must hold its tokenizer's ``vocab`` tokens."""
    if model.config.vocab_size < vocab:
        raise ConfigError(f"model.params.pretrained: the model's vocabulary ({model.config.vocab_size}) is smaller "
                          f"than its tokenizer's ({vocab}); the folder's model and tokenizer do not belong together.")
    return model


def _pretrained_bert(directory: str | None, config_json: str | None, vocab: int, num_classes: int):
    """``BertForSequenceClassification.from_pretrained`` on a local directory (its weights, a new head of
    ``num_classes``), or, where the directory is not at hand (a replica, whose weights come from the
    registry), the same architecture from its recorded ``config.json``."""
    from transformers import BertConfig, BertForSequenceClassification

    if directory is not None and Path(directory).expanduser().is_dir():
        model = BertForSequenceClassification.from_pretrained(
            str(Path(directory).expanduser()), num_labels=num_classes, local_files_only=True,
            ignore_mismatched_sizes=True)  # the checkpoint's own head, if any, has other classes
    elif config_json is not None:
        config = BertConfig.from_dict(json.loads(config_json))
        config.num_labels = num_classes
        model = BertForSequenceClassification(config)
    else:
        raise not_a_local_folder(directory)
    return _same_vocabulary(model, vocab)


class CausalLM(nn.Module):
    """A causal language model (Transformers' ``AutoModelForCausalLM``) over token ids ``[n, context_length]`` →
    next-token logits ``[n, context_length, vocabulary]``.

    Built from a small config given in the spec (``arch: llama`` or ``gpt2``: layers, hidden, heads, ...), or
    ``from_pretrained`` on a local folder (``pretrained``; never a hub id); with ``lora`` (PEFT), an adapter trains
    on the pretrained model's frozen weights. Where the folder is not at hand (a version being registered on
    another node), ``config_json`` (the folder's config.json, recorded in the fitted state) builds the same
    architecture, and the checkpoint supplies every weight.
    """

    ARCHS = ("llama", "gpt2")

    def __init__(self, input_dim: int, num_classes: int, arch: str = "llama", layers: int = 2, hidden: int = 128,
                 heads: int = 4, kv_heads: int | None = None, intermediate: int | None = None,
                 context_length: int = 128, dropout: float = 0.0, tie_embeddings: bool = True,
                 pretrained: str | None = None, config_json: str | None = None, lora: dict[str, Any] | None = None,
                 special_ids: dict[str, int | None] | None = None, vocab_size: int | None = None):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id must never reach the network at run time
        ids = special_ids or {}
        if lora is not None and pretrained is None and config_json is None:
            raise ConfigError("model.params.lora trains an adapter on a pretrained model's frozen weights; set "
                              "model.params.pretrained to a local folder (save_pretrained output), or drop lora.")
        if pretrained is not None or config_json is not None:
            self.lm = _pretrained_causal_lm(pretrained, config_json, input_dim)
        else:
            self.lm = _causal_lm_from_config(arch, input_dim, layers=layers, hidden=hidden, heads=heads,
                                             kv_heads=kv_heads, intermediate=intermediate,
                                             context_length=context_length, dropout=dropout,
                                             tie_embeddings=tie_embeddings, ids=ids)
        if lora is not None:
            self.lm = _with_lora(self.lm, lora)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=x).logits

    def merged(self):
        """The Transformers model alone, an adapter merged into its weights (what the registry keeps)."""
        lm = self.lm
        return lm.merge_and_unload() if hasattr(lm, "merge_and_unload") else lm


def _causal_lm_from_config(arch: str, vocab: int, *, layers: int, hidden: int, heads: int, kv_heads: int | None,
                           intermediate: int | None, context_length: int, dropout: float, tie_embeddings: bool,
                           ids: dict[str, int | None]):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if arch not in CausalLM.ARCHS:
        raise ConfigError(f"model.params.arch: {arch!r} is not one of {', '.join(CausalLM.ARCHS)}; or load a "
                          f"local folder with model.params.pretrained.")
    if hidden % heads:
        raise ConfigError(f"model.params.hidden: {hidden} is not a multiple of heads ({heads}); "
                          f"choose e.g. hidden: {heads * max(1, hidden // heads)}.")
    special = {"bos_token_id": ids.get("bos") if ids.get("bos") is not None else ids.get("eos"),
               "eos_token_id": ids.get("eos"), "pad_token_id": ids.get("pad")}
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=context_length,
                            n_inner=intermediate, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                            tie_word_embeddings=tie_embeddings, **special)
    else:
        if heads % (kv_heads or heads):
            raise ConfigError(f"model.params.kv_heads: {kv_heads} does not divide heads ({heads}).")
        config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=kv_heads or heads, intermediate_size=intermediate or 4 * hidden,
                             max_position_embeddings=context_length, attention_dropout=dropout,
                             tie_word_embeddings=tie_embeddings, **special)
    return AutoModelForCausalLM.from_config(config)


def _pretrained_causal_lm(directory: str | None, config_json: str | None, vocab: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    if directory is not None and Path(directory).expanduser().is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(Path(directory).expanduser()), local_files_only=True)
    elif config_json is not None:
        raw = json.loads(config_json)
        config = AutoConfig.for_model(raw.pop("model_type"), **raw)
        model = AutoModelForCausalLM.from_config(config)
    else:
        raise not_a_local_folder(directory)
    return _same_vocabulary(model, vocab)


#: The attention projections LoRA adapts by default, per architecture (PEFT's own choice otherwise).
LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
                "gpt2": ["c_attn"]}


def _with_lora(model, lora: dict[str, Any]):
    """``model`` with a LoRA adapter (PEFT): the adapter's weights train, the model's own stay frozen."""
    from peft import LoraConfig, get_peft_model

    known = {"r", "alpha", "dropout", "target_modules"}
    if not isinstance(lora, dict) or set(lora) - known:
        extra = sorted(set(lora) - known) if isinstance(lora, dict) else lora
        raise ConfigError(f"model.params.lora: unknown key(s) {extra}; it takes {', '.join(sorted(known))}.")
    targets = lora.get("target_modules") or LORA_TARGETS.get(model.config.model_type, "all-linear")
    config = LoraConfig(r=int(lora.get("r", 8)), lora_alpha=int(lora.get("alpha", 16)),
                        lora_dropout=float(lora.get("dropout", 0.0)), target_modules=targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules the model does not have
        raise ConfigError(f"model.params.lora: {exc}") from None


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": SmallCNN, "hf-bert": BertClassifier,
                                                "hf-causal-lm": CausalLM}


def resolve(model_type: str, *, registered: str | None = None,
            allowed: AllowList | None = None) -> Callable[..., nn.Module]:
    """The model constructor for ``model_type`` (a built-in name or ``module.path:callable``).

    Args:
        model_type: ``mlp``, ``cnn`` or ``module.path:callable``.
        registered: The version (``name:N``) whose manifest names the type; then a user type must be on
            the allow-list, checked before anything is imported. None: the caller's own spec (training).
        allowed: The allow-list for ``registered`` (default: :meth:`AllowList.from_cluster`, read only
            for a user type).

    Raises:
        ConfigError: not a built-in nor an import path, refused by the allow-list, does not import, or
            names no callable.
    """
    if model_type in BUILTIN:
        return BUILTIN[model_type]
    shape = MODEL_TYPE_RE.fullmatch(model_type) if isinstance(model_type, str) else None
    if shape is None:
        raise ConfigError(f"model.type: {model_type!r} is neither a built-in model ({', '.join(BUILTIN)}) nor "
                          f"an import path like 'mypkg.models:build'.")
    if registered is not None:
        (allowed if allowed is not None else AllowList.from_cluster()).check(model_type, registered)
    module_name, attr = shape["module"], shape["attr"]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.type: cannot import {module_name!r} ({exc}). Is the module in the "
                          f"project folder that the job ships, or installed on the cluster?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"model.type: {module_name!r} has no callable {attr!r}.")
    return fn


def build(model_type: str, input_dim: int, num_classes: int, params: dict[str, Any] | None = None, *,
          registered: str | None = None, allowed: AllowList | None = None) -> nn.Module:
    """Build the model; it must return an ``nn.Module`` mapping ``[n, input_dim]`` → ``[n, num_classes]``.

    ``registered`` (the version's ``name:N``) and ``allowed``: as for :func:`resolve`.
    """
    fn = resolve(model_type, registered=registered, allowed=allowed)
    try:
        model = fn(input_dim=input_dim, num_classes=num_classes, **(params or {}))
    except TypeError as exc:
        raise ConfigError(f"model: {model_type} does not accept these parameters: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.type: {model_type} returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
