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
        raise ConfigError(f"model.params.pretrained: {directory!r} is not a local directory; name a folder "
                          f"holding config.json, the weights and tokenizer.json (Atoll never downloads a hub id).")
    if model.config.vocab_size < vocab:
        raise ConfigError(f"model.params.pretrained: the model's vocabulary ({model.config.vocab_size}) is smaller "
                          f"than its tokenizer's ({vocab}); the folder's model and tokenizer do not belong together.")
    return model


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": SmallCNN, "hf-bert": BertClassifier}


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
