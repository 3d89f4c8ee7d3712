"""A Keras 3 CNN for the digits as 8×8×1 images, trained by Atoll like any PyTorch model.

Keras 3 on its torch backend builds ``torch.nn.Module`` objects, so Atoll's DDP loop trains this model and
its weights save and load as a plain ``state_dict`` (safetensors, no pickle). The layers are named
explicitly: Keras numbers unnamed layers per process, and the names are the keys of the saved weights.

    atoll train jobs/configs/keras.yaml          # model.type: examples.keras_cnn:build

Atoll's image tasks hand the model ``[n, channels, height, width]`` tensors, hence ``channels_first``.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported; the only backend Atoll trains

import keras  # noqa: E402
from keras import layers  # noqa: E402


def build(input_dim: int, num_classes: int, image_shape: list[int], filters: int = 32, hidden: int = 64):
    """Conv2D → MaxPooling2D → Flatten → Dense → Dense (logits), for ``image_shape`` = [channels, h, w]."""
    if keras.backend.backend() != "torch":
        raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}; Atoll trains Keras on 'torch'.")
    inputs = keras.Input(shape=tuple(image_shape), name="pixels")
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", data_format="channels_first", name="conv")(inputs)
    x = layers.MaxPooling2D(2, data_format="channels_first", name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hidden, activation="relu", name="dense")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="keras_cnn")
