"""Held-out examples for a version's playground, picked at registration: ~10 rows of the training run's own
validation split (raw values as the API takes them, with their true labels), written to ``examples.json`` in
the version being registered. The replica only reads that file (:class:`atoll.serving.playground.Showcase`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from atoll.serving.playground import EXAMPLES_FILE, NUM_EXAMPLES, image_shape

log = logging.getLogger(__name__)

def _scalar(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return float(value) if isinstance(value, float) else value


def _cell(value: Any) -> Any:
    """A table's cell as a request holds it: a number, a word, a boolean, or None for a gap."""
    from atoll import tables

    value = _scalar(value)
    if isinstance(value, (bool, int, float, str)) and tables.level_key(value) is not None:
        return value
    return None if tables.level_key(value) is None else str(value)


def pick_examples(spec: dict[str, Any], schema: dict[str, Any], storage: str, n: int = NUM_EXAMPLES
                  ) -> tuple[list[dict[str, Any]], list[float] | None]:
    """Up to ``n`` rows of the validation split (one per class first), and the min/max feature value seen.

    The split is the training run's own (:class:`atoll.data.SplitFilter` with the spec's fraction and
    seed), applied batch by batch while reading the files; reading stops once every class has an example.
    """
    import numpy as np
    import pyarrow.dataset as pads

    from atoll import data, filesystems
    from atoll.errors import DataError

    ds_spec = spec["dataset"]
    uri = data.resolve_path(ds_spec["path"], storage)
    fmt = data.detect_format(uri, ds_spec.get("format", "auto"))
    features, label = list(schema["features"]), schema["label"]
    fs, path = filesystems.resolve(uri, DataError)
    keep = data.SplitFilter(features + [label], float(ds_spec.get("validation_fraction", 0.2)), "validation",
                            int(spec.get("seed", 0)))
    classes = schema.get("classes") or []
    by_class: dict[Any, list[dict[str, Any]]] = {}
    low, high, scanned = math.inf, -math.inf, 0
    for batch in pads.dataset(path, filesystem=fs, format=data.file_format(fmt)).to_batches(columns=features + [label]):
        frame = keep(batch.to_pandas())
        frame = frame[frame[label].notna()]  # a row without a label shows nothing to compare with
        if len(frame) == 0:
            continue
        if schema.get("input_kind") == "text":  # one text per example, no value range
            values = frame[features[0]].astype(str).to_numpy()
        elif schema.get("input_kind") == "image":  # grey pixel rows 0–255 in the model's size, as a request
            from atoll.tasks import image

            grey = [1, *schema["image_shape"][1:]]
            values = np.stack([image.pixels(image.decode(blob, features[0]), grey)[0] for blob in frame[features[0]]])
        elif any(c.get("kind") == "categorical" for c in schema.get("columns") or []):  # words, numbers and gaps
            values = np.asarray([[_cell(v) for v in row] for row in frame[features].itertuples(index=False)],
                                dtype=object)
        else:
            values = frame[features].to_numpy(dtype="float64", na_value=np.nan)
            if np.isfinite(values).any():
                low, high = min(low, float(np.nanmin(values))), max(high, float(np.nanmax(values)))
            values = np.where(np.isnan(values), None, values).astype(object)  # JSON has no NaN: a gap is null
        for row, y in zip(values.tolist(), frame[label].tolist()):
            by_class.setdefault(_scalar(y), []).append({"inputs": row, "label": _scalar(y)})
        scanned += len(frame)
        if len(by_class) >= max(len(classes), 1) and scanned >= 20 * n:
            break
    order = [c for c in classes if c in by_class] + [c for c in by_class if c not in classes]
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < n and any(len(by_class[c]) > depth for c in order):
        picked += [by_class[c][depth] for c in order if len(by_class[c]) > depth][: n - len(picked)]
        depth += 1
    return picked, ([low, high] if scanned and low <= high else None)


def add_examples(version_dir: str | Path, meta: dict[str, Any], storage: str) -> dict[str, Any]:
    """Write ``examples.json`` into a version being registered; return its input schema, with ``image``
    (and ``value_range``) recorded when the inputs are an image. Never fails a registration: without
    examples (or without a dataset: ``spec.dataset.path`` None) the page simply has no example buttons."""
    schema = dict(meta["input_schema"])
    try:
        if meta["spec"]["dataset"]["path"] is None:  # no data to show: only the schema's image shape
            if shape := image_shape(schema):
                schema["image"] = shape
            return schema
        examples, value_range = pick_examples(meta["spec"], schema, storage)
        if str(meta["spec"]["dataset"]["path"]) == "demo:digits" and schema.get("num_features") == 64:
            schema.setdefault("image", [8, 8])  # scikit-learn's 8x8 digits, pixels 0..16
            value_range = [0.0, 16.0]
        shape = image_shape(schema)
        if shape:
            schema["image"] = shape
            if value_range:
                schema["value_range"] = value_range
        Path(version_dir, EXAMPLES_FILE).write_text(json.dumps(
            {"features": schema["features"], "label": schema["label"], "examples": examples}))
    except Exception as exc:  # noqa: BLE001 - a showcase nicety must never fail a registration
        log.warning("no held-out examples stored with the version: %s", exc)
    return schema


