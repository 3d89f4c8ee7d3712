"""Built-in models (an MLP for flat inputs, a small CNN for images) and user models by import path.

A model is chosen by the training spec's ``model`` section: ``type: mlp | cnn`` or
``type: mypkg.models:build`` (a callable taking ``input_dim``, ``num_classes`` and the spec's params).
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import torch
from torch import nn

from atoll.errors import ConfigError


class MLP(nn.Module):
    """Fully connected classifier: Linear → GELU → Dropout per hidden layer."""

    def __init__(self, input_dim: int, num_classes: int, hidden: list[int] = (128, 64), dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


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


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": SmallCNN}


def resolve(model_type: str) -> Callable[..., nn.Module]:
    """The model constructor for ``model_type`` (a built-in name or ``module.path:callable``).

    Raises:
        ConfigError: when the import path does not import or names no callable.
    """
    if model_type in BUILTIN:
        return BUILTIN[model_type]
    module_name, sep, attr = model_type.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model.type: {model_type!r} is neither a built-in model ({', '.join(BUILTIN)}) nor "
                          f"an import path like 'mypkg.models:build'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.type: cannot import {module_name!r} ({exc}). Is the module in the "
                          f"project folder that the job ships, or installed on the cluster?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"model.type: {module_name!r} has no callable {attr!r}.")
    return fn


def build(model_type: str, input_dim: int, num_classes: int, params: dict[str, Any] | None = None) -> nn.Module:
    """Build the model; it must return an ``nn.Module`` mapping ``[n, input_dim]`` → ``[n, num_classes]``."""
    fn = resolve(model_type)
    try:
        model = fn(input_dim=input_dim, num_classes=num_classes, **(params or {}))
    except TypeError as exc:
        raise ConfigError(f"model: {model_type} does not accept these parameters: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.type: {model_type} returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
