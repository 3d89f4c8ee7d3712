"""Profiles of a version's training inputs (``profile.json``, written at registration by :func:`write_profile`)
and their comparison with live inputs (:func:`live_values`, :func:`compare`): what ``atoll serve drift``
(:mod:`atoll.drift`) reports. Pure computations and the registration's read of the training split; nothing
client-side (the training driver imports this). Drift: does what a live app is asked still look like what its
version was trained on?

At registration a version keeps ``profile.json``, a profile of its training inputs (:func:`write_profile`), read
from the training split (the run's own split: the spec's fraction and seed), at most :data:`MAX_ROWS` rows of it
in file order (:data:`MAX_IMAGES` for images, which are decoded):

- a numeric feature: bins cut at the training deciles (equal values merged, so a column of mostly zeros has few
  bins), the training rows in each, and the gaps;
- a categorical feature: the :data:`TOP_LEVELS` most frequent levels with their counts, ``other`` for the rest,
  and the gaps;
- a text: its length in words (binned as a numeric feature) and ``vocabulary``: the :data:`TOP_WORDS` most
  frequent training words, and how many of the training words were among them (known) or not;
- an image: its width, height and mean intensity (0-255, in the model's channels and size), binned.

``atoll serve drift APP`` (:func:`atoll.drift.report`) reads the app's request log (:mod:`atoll.request_log`) for the version
it serves and compares each feature with the profile over the same bins or levels: the population stability
index, ``PSI = sum((live - train) * ln(live / train))`` over the shares (each share at least 0.0001), and a
chi-square test of homogeneity (scipy's ``chi2_contingency`` of the training and live counts): its statistic and
p-value. A feature is flagged when its PSI passes the threshold, 0.2 by default: the usual reading is < 0.1 no
shift, 0.1-0.2 a moderate one, > 0.2 a significant one. (With 50,000 training rows the chi-square test finds even
a slight shift significant: the PSI is the flag, the p-value a second opinion.) An image's width and height are
not compared: a replica logs images as the model sees them, resized.

A language model (``task: text-generation``) gets no profile.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PROFILE_FILE = "profile.json"
FORMAT = 1
MAX_ROWS = 50_000
MAX_IMAGES = 5_000
TOP_LEVELS = 50
TOP_WORDS = 2_000
DEFAULT_THRESHOLD = 0.2
#: The smallest share a bin is given in the PSI (an empty bin would make it infinite).
EPSILON = 1e-4
DECILES = [q / 10 for q in range(1, 10)]
OTHER, MISSING = "other", "missing"
_WORD = re.compile(r"\w+")


# ------------------------------------------------------------------------------------------------
# Profiles of values (pure)


def words(text: Any) -> list[str]:
    return _WORD.findall(str(text).lower()) if text is not None else []


def numeric_profile(name: str, values: Any) -> dict[str, Any]:
    """Bins at the deciles of ``values`` (floats; NaN or None a gap) and the counts in each."""
    x = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64) if not isinstance(
        values, np.ndarray) else values.astype(np.float64)
    present = x[np.isfinite(x)]
    edges = np.unique(np.quantile(present, DECILES)).tolist() if len(present) else []
    return {"name": name, "kind": "numeric", "edges": edges, "counts": bin_counts(edges, present).tolist(),
            "missing": int(len(x) - len(present)), "n": int(len(x)),
            "min": float(present.min()) if len(present) else None,
            "max": float(present.max()) if len(present) else None}


def bin_counts(edges: list[float], present: np.ndarray) -> np.ndarray:
    """Counts of finite values in the bins ``(-inf, e0), [e0, e1), ..., [ek, inf)``."""
    return np.bincount(np.searchsorted(np.asarray(edges, dtype=np.float64), present, side="right"),
                       minlength=len(edges) + 1)


def categorical_profile(name: str, values: Any) -> dict[str, Any]:
    """The :data:`TOP_LEVELS` most frequent levels (as :func:`atoll.tables.level_key` has them) and the rest."""
    from atoll import tables

    counts: dict[str, int] = {}
    missing = 0
    for v in values:
        key = tables.level_key(v)
        if key is None:
            missing += 1
        else:
            counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"name": name, "kind": "categorical", "levels": dict(ranked[:TOP_LEVELS]),
            "other": sum(c for _, c in ranked[TOP_LEVELS:]), "missing": missing, "n": len(values)}


def vocabulary_profile(texts: list[Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for text in texts:
        for w in words(text):
            counts[w] = counts.get(w, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = [w for w, _ in ranked[:TOP_WORDS]]
    known = sum(c for _, c in ranked[:TOP_WORDS])
    return {"name": "vocabulary", "kind": "coverage", "vocab": vocab, "known": known,
            "unknown": sum(counts.values()) - known, "n": len(texts)}


def table_profile(frame, features: list[str], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Each feature's profile, from a pandas frame of training rows."""
    from atoll import tables

    return [categorical_profile(f, frame[f].tolist()) if kinds.get(f) == "categorical"
            else numeric_profile(f, tables.numbers_of(frame[f])) for f in features]


def text_profile(texts: list[Any]) -> list[dict[str, Any]]:
    return [numeric_profile("length_words", [len(words(t)) for t in texts]), vocabulary_profile(texts)]


# ------------------------------------------------------------------------------------------------
# At registration


def _kinds(schema: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["kind"] for c in schema.get("columns") or []}


def build_profile(spec: dict[str, Any], schema: dict[str, Any], storage: str) -> dict[str, Any] | None:
    """The profile of a version's training inputs (None for a language model or a version without a dataset)."""
    import pyarrow.dataset as pads

    from atoll import data, filesystems
    from atoll.errors import DataError

    kind = schema.get("input_kind")
    ds_spec = spec.get("dataset") or {}
    if spec.get("task") == "text-generation" or kind not in ("table", "text", "image") or not ds_spec.get("path"):
        return None
    uri = data.resolve_path(ds_spec["path"], storage)
    fmt = data.detect_format(uri, ds_spec.get("format", "auto"))
    features, label = list(schema["features"]), schema.get("label")
    columns = features + ([label] if label else [])
    fs, path = filesystems.resolve(uri, DataError)
    keep = data.SplitFilter(columns, float(ds_spec.get("validation_fraction", 0.2)), "train", int(spec.get("seed", 0)))
    limit = MAX_IMAGES if kind == "image" else MAX_ROWS
    frames, rows, total = [], 0, 0
    for batch in pads.dataset(path, filesystem=fs, format=data.file_format(fmt)).to_batches(columns=columns):
        frame = keep(batch.to_pandas())
        total += len(frame)
        if rows < limit:
            frames.append(frame.iloc[: limit - rows])
            rows += len(frames[-1])
        else:
            break
    import pandas as pd

    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    if kind == "table":
        profiled = table_profile(frame, features, _kinds(schema))
    elif kind == "text":
        profiled = text_profile(frame[features[0]].fillna("").astype(str).tolist())
    else:
        profiled = _image_profile(frame[features[0]].tolist(), features[0], schema)
    return {"format": FORMAT, "input_kind": kind, "features": profiled, "rows": rows, "sampled": total > rows,
            "source": f"training split, first {rows} rows in file order" + (" (of more)" if total > rows else "")}


def _image_profile(blobs: list[Any], column: str, schema: dict[str, Any]) -> list[dict[str, Any]]:
    from atoll.tasks import image

    widths, heights, means = [], [], []
    for blob in blobs:
        try:
            picture = image.decode(blob, column)
        except ValueError:
            widths.append(None), heights.append(None), means.append(None)
            continue
        widths.append(picture.size[0])
        heights.append(picture.size[1])
        means.append(float(image.pixels(picture, schema["image_shape"]).mean()))
    return [numeric_profile("width", widths), numeric_profile("height", heights),
            numeric_profile("mean_intensity", means)]


def write_profile(version_dir: str | Path, spec: dict[str, Any], schema: dict[str, Any], storage: str) -> bool:
    """Write ``profile.json`` into a version being registered; never fails a registration (a problem is logged,
    and the version has no profile: `atoll serve drift` says so). Returns whether it was written."""
    try:
        profile = build_profile(spec, schema, storage)
        if profile is None:
            return False
        Path(version_dir, PROFILE_FILE).write_text(json.dumps(profile))
        return True
    except Exception as exc:  # noqa: BLE001 - a monitoring aid must never fail a registration
        log.warning("no input profile stored with the version: %s", exc)
        return False


# ------------------------------------------------------------------------------------------------
# Live values from the request log (pure)


def live_values(profile: dict[str, Any], schema: dict[str, Any], inputs: list[Any]) -> dict[str, list[Any]]:
    """Each profiled feature's live values, from the request log's ``inputs`` (JSON text, one per request)."""
    kind = profile["input_kind"]
    names = [f["name"] for f in profile["features"]]
    out: dict[str, list[Any]] = {n: [] for n in names}
    for text in inputs:
        if not isinstance(text, str) or not text:  # a request logged without inputs (null)
            continue
        items = json.loads(text)
        if not isinstance(items, list):
            continue
        if kind == "table":
            index = {f: i for i, f in enumerate(schema["features"])}
            for row in items:
                if isinstance(row, dict):
                    row = [row.get(f) for f in schema["features"]]
                for n in names:
                    out[n].append(row[index[n]] if n in index and index[n] < len(row) else None)
        elif kind == "text":
            for t in items:
                out["length_words"].append(len(words(t)))
                out["vocabulary"].append(t)
        else:
            for summary in items:
                out["mean_intensity"].append(summary.get("mean") if isinstance(summary, dict) else None)
    if kind == "image":  # logged as the model sees them (resized): sizes say nothing
        out.pop("width", None)
        out.pop("height", None)
    return out


# ------------------------------------------------------------------------------------------------
# The comparison (pure)


def psi(expected: Any, actual: Any) -> float:
    """The population stability index of two count vectors over the same bins (shares floored at EPSILON)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.maximum(e / e.sum(), EPSILON)
    a = np.maximum(a / a.sum(), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def chi_square(expected: Any, actual: Any) -> tuple[float, float]:
    """scipy's chi-square test of homogeneity of two count vectors (bins empty in both dropped): statistic,
    p-value; (0, 1) when fewer than two bins hold anything."""
    from scipy import stats

    table = np.asarray([expected, actual], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    statistic, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    return float(statistic), float(p_value)


def _bins(feature: dict[str, Any], values: list[Any]) -> tuple[list[str], list[int], list[int]]:
    """The bins' labels, the training counts and the live counts of one feature."""
    from atoll import tables

    kind = feature["kind"]
    if kind == "numeric":
        edges = feature["edges"]
        x = np.asarray([np.nan if v is None or isinstance(v, (str, bool)) else float(v) for v in values],
                       dtype=np.float64)
        present = x[np.isfinite(x)]
        bounds = ["-inf", *[f"{e:.4g}" for e in edges], "inf"]
        labels = [f"[{lo}, {hi})" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        return ([*labels, MISSING], [*feature["counts"], feature["missing"]],
                [*bin_counts(edges, present).tolist(), int(len(x) - len(present))])
    if kind == "categorical":
        levels = list(feature["levels"])
        live = dict.fromkeys([*levels, OTHER, MISSING], 0)
        for v in values:
            key = tables.level_key(v)
            live[MISSING if key is None else key if key in feature["levels"] else OTHER] += 1
        return ([*levels, OTHER, MISSING], [*feature["levels"].values(), feature["other"], feature["missing"]],
                list(live.values()))
    vocab = set(feature["vocab"])  # coverage: the words of the texts, known to the training vocabulary or not
    known = unknown = 0
    for text in values:
        for w in words(text):
            known += w in vocab
            unknown += w not in vocab
    return ["known words", "unknown words"], [feature["known"], feature["unknown"]], [known, unknown]


def compare(profile: dict[str, Any], live: dict[str, list[Any]], threshold: float = DEFAULT_THRESHOLD
            ) -> list[dict[str, Any]]:
    """Per profiled feature with live values: PSI, the chi-square test, whether it is flagged (PSI > threshold),
    and both distributions (shares per bin) for a plot."""
    rows = []
    for feature in profile["features"]:
        if feature["name"] not in live:
            continue
        labels, expected, actual = _bins(feature, live[feature["name"]])
        value = psi(expected, actual)
        statistic, p_value = chi_square(expected, actual)
        e_total, a_total = max(sum(expected), 1), max(sum(actual), 1)
        rows.append({"feature": feature["name"], "kind": feature["kind"], "psi": value, "statistic": statistic,
                     "p_value": p_value, "flagged": value > threshold, "live": int(sum(actual)), "bins": labels,
                     "training_share": [c / e_total for c in expected], "live_share": [c / a_total for c in actual]})
    return rows


