"""Images in, one class out (``image-classification``): encoded images (PNG, JPEG, ...) resized to the model's
input shape and normalised per channel with means and spreads fitted on the training split.

The dataset holds one binary column of encoded images and a label column (how Parquet and Hugging Face
datasets store images). The input shape ``[channels, height, width]`` is ``model.params.image_shape``, or
else the first training image's own size and colour (1 channel for grey, 3 for colour); every image is
converted to those channels and resized to that size, in training and in every request alike. The model
receives ``[n, channels, height, width]`` float32 tensors and ``image_shape`` among its parameters.

A request holds images as arrays of pixel values 0–255 (``height × width`` or ``height × width ×
channels``, JSON numbers) or as encoded bytes in base64 (``{"b64": "..."}`` or a ``data:image/...;base64,``
string).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from typing import Any

import numpy as np

from atoll import data
from atoll.data import FittedState, encode_classes
from atoll.errors import ConfigError, DataError, RequestError
from atoll.tasks.classifier import Classifier

#: the largest image a request or a dataset row may hold, decoded (a decompression bomb is refused unread)
MAX_PIXELS = 4096 * 4096
#: the largest side of the model's input shape
MAX_SIDE = 1024
_MODES = {1: "L", 3: "RGB"}


def open_image(blob: bytes, where: str):
    """A PIL image from encoded bytes with only its header read: its size is known, its pixels not decoded.

    Raises:
        ValueError: not an image PIL reads, or larger than :data:`MAX_PIXELS`.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(blob))
    except Image.DecompressionBombError:  # PIL's own check, past 2 × its MAX_IMAGE_PIXELS (not an OSError)
        raise ValueError(f"{where}: the image is larger than the {MAX_PIXELS:,} pixels allowed") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ValueError(f"{where}: not an image (PNG, JPEG, GIF, BMP, WebP, ...)") from None
    if image.width * image.height > MAX_PIXELS:
        raise ValueError(f"{where}: {image.width}×{image.height} pixels is larger than the {MAX_PIXELS:,} allowed")
    return image


def load(image, where: str):
    """An opened image's pixels, decoded.

    Raises:
        ValueError: the image data is truncated or corrupt.
    """
    try:
        image.load()
    except (OSError, ValueError, SyntaxError):
        raise ValueError(f"{where}: the image data is truncated or corrupt") from None
    return image


def decode(blob: bytes, where: str):
    """A PIL image from encoded bytes, its size checked before its pixels are decoded.

    Raises:
        ValueError: not an image PIL reads, larger than :data:`MAX_PIXELS`, or corrupt.
    """
    return load(open_image(blob, where), where)


def pixels(image, shape: list[int]) -> np.ndarray:
    """``image`` in ``shape``'s channels, resized to its height and width: uint8 ``[channels, height, width]``."""
    from PIL import Image

    channels, height, width = shape
    converted = image.convert(_MODES[channels])
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _pixel_count(image) -> int:
    """Pixels of an opened (not decoded) PIL image or of a pixel array: what decoding it will hold."""
    return int(image.shape[0] * image.shape[1]) if isinstance(image, np.ndarray) else image.width * image.height


def shape_of(image) -> list[int]:
    """The input shape an image implies: grey → 1 channel, anything else → 3; its own height and width."""
    return [1 if image.mode in ("1", "L", "I", "I;16", "F") else 3, image.height, image.width]


@dataclasses.dataclass
class ImageState(FittedState):
    """The fitted state: the image and label columns, the classes, the input shape and per-channel moments
    of the pixels scaled to 0–1 (fitted on the training split)."""

    features: list[str]
    label: str
    classes: list[Any]
    image_shape: list[int]
    mean: list[float]
    std: list[float]

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.image_shape))

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """uint8 ``[n, c, h, w]`` → float32, standardised per channel."""
        mean = np.asarray(self.mean, dtype=np.float32)[None, :, None, None]
        std = np.asarray(self.std, dtype=np.float32)[None, :, None, None]
        return (raw.astype(np.float32) / 255.0 - mean) / std

    def __call__(self, batch) -> dict[str, np.ndarray]:
        """``map_batches`` transform: a pandas batch → ``{"x": float32 [n, c, h, w], "y": int64 [n]}``."""
        column = self.features[0]
        raw = np.stack([pixels(decode(blob, f"{column} row"), self.image_shape) for blob in batch[column]]) \
            if len(batch) else np.zeros((0, *self.image_shape), dtype=np.uint8)
        return {"x": self.normalise(raw), "y": encode_classes(self.classes, batch[self.label].to_numpy())}


class _Moments:
    """Per-batch pixel sums per channel and the labels seen: one streaming pass fits the state."""

    def __init__(self, column: str, label: str, shape: list[int]) -> None:
        self.column, self.label, self.shape = column, label, shape

    def __call__(self, batch):
        import pandas as pd

        raw = []
        for blob in batch[self.column]:
            try:
                raw.append(pixels(decode(blob, f"{self.column}"), self.shape))
            except (ValueError, TypeError) as exc:
                raise DataError(f"column {self.column!r}, a training row: {exc}; every row must be an "
                                f"encoded image.") from None
        x = np.stack(raw).astype(np.float64) / 255.0
        return pd.DataFrame({"n": [x.shape[0] * x.shape[2] * x.shape[3]],
                             "sum": [x.sum(axis=(0, 2, 3)).tolist()], "sumsq": [(x * x).sum(axis=(0, 2, 3)).tolist()],
                             "labels": [sorted(set(batch[self.label].tolist()), key=str)]})


def check_shape(shape: Any) -> list[int]:
    """``model.params.image_shape`` as ``[channels, height, width]``.

    Raises:
        ConfigError: naming the field and what it must be.
    """
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(isinstance(s, int) for s in shape)
            or shape[0] not in _MODES or not all(1 <= s <= MAX_SIDE for s in shape[1:])):
        raise ConfigError(f"model.params.image_shape: {shape!r} is not [channels, height, width] with 1 or 3 "
                          f"channels and sides of 1–{MAX_SIDE} pixels; e.g. image_shape: [1, 28, 28].")
    return list(shape)


class ImageClassification(Classifier):
    name = "image-classification"
    input_kind = "image"
    request_example = '{"inputs": [[[0, 255, ...], ...]]} or {"inputs": [{"b64": "<PNG or JPEG, base64>"}]}'
    builtin_models = ("cnn", "mlp")
    fitted_params = ("image_shape",)

    def plan(self, uri, fmt, features, label, overrides=None):
        return data.plan(uri, fmt, features, label, image=True)

    def fit(self, train_ds, plan, model_params=None) -> ImageState:
        params = model_params or {}
        column = plan.features[0]
        first = train_ds.take(1)
        if not first:
            raise DataError(f"dataset {plan.uri}: the training split is empty; add rows or lower "
                            f"dataset.validation_fraction.")
        if params.get("image_shape") is not None:
            shape = check_shape(params["image_shape"])
        else:
            try:
                shape = shape_of(decode(first[0][column], column))
            except ValueError as exc:
                raise DataError(f"dataset {plan.uri}: {exc}; column {column!r} must hold encoded images.") from None
            shape = check_shape(shape)
        parts = train_ds.map_batches(_Moments(column, plan.label, shape), batch_format="pandas").take_all()
        n = sum(p["n"] for p in parts)
        mean = np.sum([np.asarray(p["sum"]) for p in parts], axis=0) / n
        std = np.sqrt(np.maximum(np.sum([np.asarray(p["sumsq"]) for p in parts], axis=0) / n - mean * mean, 0))
        std[std < 1e-8] = 1.0
        classes = sorted({v for p in parts for v in p["labels"]}, key=lambda v: (str(type(v)), v))
        return ImageState(features=list(plan.features), label=plan.label,
                          classes=[v.item() if hasattr(v, "item") else v for v in classes], image_shape=shape,
                          mean=mean.tolist(), std=std.tolist())

    def row_bytes(self, state: ImageState) -> int:
        return 4 * state.input_dim + 8

    def state_from_dict(self, state: dict[str, Any]) -> ImageState:
        return ImageState.from_dict(state)

    def model_params(self, state: ImageState, params: dict[str, Any] | None) -> dict[str, Any]:
        return {**(params or {}), "image_shape": list(state.image_shape)}

    def input_schema(self, state: ImageState, model_spec: dict[str, Any]) -> dict[str, Any]:
        return {"task": self.name, "input_kind": self.input_kind, "output_kind": self.output_kind,
                "features": state.features, "num_features": 1, "dtype": "image", "image_shape": state.image_shape,
                "classes": state.classes, "label": state.label}

    def parse_inputs(self, payload: Any, schema: dict[str, Any], *,
                     max_request_pixels: int | None = None) -> list[np.ndarray]:
        """Each image as uint8 ``[channels, height, width]`` in the version's shape.

        Every image's size is read first (an encoded file's from its header), and a request whose images
        together hold more than ``max_request_pixels`` is refused before any of them is decoded.
        """
        if not isinstance(payload, dict) or set(payload) != {"inputs"}:
            raise RequestError(422, f"the body must be a JSON object like {self.request_example}.")
        images = payload["inputs"]
        if not isinstance(images, list) or not images:
            raise RequestError(422, f"inputs: a non-empty list of images, like {self.request_example}.")
        opened = [self._open(image, f"inputs.{i}") for i, image in enumerate(images)]
        total = sum(_pixel_count(image) for image in opened)
        if max_request_pixels is not None and total > max_request_pixels:
            raise RequestError(413, f"inputs: the {len(opened)} image(s) hold {total:,} pixels together; the limit "
                                    f"per request is {max_request_pixels:,} (max_request_pixels): send fewer or "
                                    f"smaller images per request.")
        parsed = []
        for i in range(len(opened)):
            image, opened[i] = opened[i], None  # let each decoded image go once resized: one at a time in memory
            parsed.append(self._pixels(image, f"inputs.{i}", schema["image_shape"]))
        return parsed

    def _open(self, image: Any, where: str):
        """A PIL image opened but not decoded (only its header read), or a pixel array as uint8."""
        if isinstance(image, dict) and set(image) == {"b64"} and isinstance(image["b64"], str):
            image = image["b64"]
        if isinstance(image, str):
            text = image.split(",", 1)[1] if image.startswith("data:") and "," in image else image
            try:
                blob = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(422, f"{where}: not valid base64; send the image file's bytes base64-encoded.") \
                    from None
            try:
                return open_image(blob, where)
            except ValueError as exc:
                raise RequestError(422, str(exc)) from None
        if not isinstance(image, list) or not image:
            raise RequestError(422, f"{where}: an image is an array of pixel rows (height × width [× channels]) "
                                    f'or {{"b64": "<PNG or JPEG, base64>"}}; got {type(image).__name__}.')
        try:
            array = np.asarray(image, dtype=np.float64)
        except (ValueError, TypeError):
            raise RequestError(422, f"{where}: the rows are not all the same length, or hold non-numbers.") from None
        if array.dtype == object or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise RequestError(422, f"{where}: an array image is height × width or height × width × channels "
                                    f"(1, 3 or 4); got shape {list(array.shape)}.")
        if array.shape[0] * array.shape[1] > MAX_PIXELS:
            raise RequestError(422, f"{where}: {array.shape[1]}×{array.shape[0]} pixels is larger than the "
                                    f"{MAX_PIXELS:,} allowed.")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise RequestError(422, f"{where}: pixel values must be numbers from 0 to 255.")
        array = array.round().astype(np.uint8)
        return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array

    def _pixels(self, image, where: str, shape: list[int]) -> np.ndarray:
        """An opened image or pixel array, decoded, in ``shape``'s channels and size."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            return pixels(Image.fromarray(image), shape)
        try:
            return pixels(load(image, where), shape)
        except ValueError as exc:
            raise RequestError(422, str(exc)) from None

    def frame_inputs(self, frame, schema: dict[str, Any]) -> list[np.ndarray]:
        column = schema["features"][0]
        try:
            return [pixels(decode(blob, column), schema["image_shape"]) for blob in frame[column]]
        except (ValueError, TypeError) as exc:
            raise DataError(f"column {column!r}: {exc}; every row must be an encoded image.") from None

    def encode(self, inputs: list[np.ndarray], state: ImageState) -> np.ndarray:
        return state.normalise(np.stack(inputs))

    def request_schema(self, schema: dict[str, Any], max_rows: int) -> dict[str, Any]:
        c, h, w = schema["image_shape"]
        value = {"type": "number", "minimum": 0, "maximum": 255}
        grey_row = {"type": "array", "minItems": 1, "items": value}
        colour_row = {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "maxItems": 4,
                                                                "items": value}}
        # One image is all grey rows or all rows of pixels (height × width × 1, 3 or 4 channels), never mixed.
        array = {"anyOf": [{"type": "array", "minItems": 1, "items": grey_row},
                           {"type": "array", "minItems": 1, "items": colour_row}],
                 "description": f"pixel rows, 0–255; resized to {h}×{w}, {c} channel(s)"}
        encoded = {"type": "object", "properties": {"b64": {"type": "string", "contentEncoding": "base64"}},
                   "required": ["b64"], "additionalProperties": False,
                   "description": "an encoded image (PNG, JPEG, ...) in base64"}
        data_url = {"type": "string", "description": "base64 of an image file, or a data:image/...;base64, URL"}
        images = {"type": "array", "minItems": 1, "maxItems": max_rows, "items": {"anyOf": [array, encoded, data_url]}}
        return {"type": "object", "properties": {"inputs": images}, "required": ["inputs"], "additionalProperties": False}
