"""Tables as they come: column kinds, gaps and levels, the statistics one streaming pass gathers, and the
profile a person reads before training (``atoll data profile``, and every training job's log).

A feature is ``numeric`` or ``categorical``. Numbers are numeric; strings, booleans and pandas/Arrow
categoricals (Arrow dictionaries) are categorical; ``dataset.categorical`` / ``dataset.numeric`` override
that per column. How each kind becomes the model's one float vector (:class:`atoll.data.Preprocessor`):

- numeric: standardised with the training split's mean and spread (moments merged batch by batch with
  Chan et al.'s parallel update, so a large offset such as an epoch timestamp does not cancel); a gap is
  imputed with the training **mean** (it standardises to exactly 0, needs no second pass or sketch, and the
  model sees a gap anyway through the indicator) and, for a column that had gaps in training, marked in
  one more input, ``COLUMN:missing`` (1 for a gap). A column with no gap in training gets no indicator (its
  width stays 1: numeric-only tables encode exactly as before); a gap there at serve time is imputed alone.
- categorical: levels seen in at least :data:`RARE_ROWS` training rows are kept; the rest pool into one
  ``other`` input, with any level first met at serve time. Up to :data:`MAX_ONE_HOT` kept levels are
  one-hot; more are hashed (CRC-32 of the level, stable across processes) into :data:`HASH_BUCKETS`
  inputs. A gap (null, NaN, empty string) is its own ``missing`` input. Width: levels (or buckets) + 2.

Levels are compared as strings (:func:`level_key`): ``2007``, ``2007.0`` and ``"2007"`` are one level;
booleans are ``true``/``false``.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import numpy as np

NUMERIC, CATEGORICAL = "numeric", "categorical"
#: Kept levels of a categorical column encoded one-hot; past this, hashed into HASH_BUCKETS inputs.
MAX_ONE_HOT = 32
HASH_BUCKETS = 32
#: A level seen in fewer training rows than this pools into "other" (too few rows to learn a weight from).
RARE_ROWS = 5
#: A label class with fewer rows than this is flagged by the profile.
SMALL_CLASS_ROWS = 5
#: Columns with fewer non-missing rows than this are never called id-like (small tables are unique by chance).
ID_LIKE_MIN_ROWS = 20

NUMERIC_TYPES = ("int", "uint", "float", "double", "halffloat", "decimal")
CATEGORICAL_TYPES = ("bool", "string", "large_string", "utf8", "large_utf8", "dictionary")


def arrow_kind(arrow_type: str) -> str | None:
    """The kind of a column from its Arrow type (as ``str(pyarrow type)``), or None for types no table
    feature takes (binary, lists, dates and times)."""
    if arrow_type.startswith(NUMERIC_TYPES) or arrow_type == "null":  # null: a column with no value at all
        return NUMERIC
    if arrow_type.startswith(CATEGORICAL_TYPES):
        return CATEGORICAL
    return None


def level_key(value: Any) -> str | None:
    """A categorical value as the string it is compared by; None for a gap (None, NaN, NA, empty string)."""
    if value is None or isinstance(value, str) and value == "":
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def keys_of(values, lower: bool = False) -> np.ndarray:
    """:func:`level_key` of every value (an object array; None for gaps), one call per distinct value.
    ``lower``: a boolean column's keys, so that ``"True"`` and ``true`` are one level."""
    import pandas as pd

    codes, uniques = pd.factorize(pd.Series(values).astype(object), use_na_sentinel=True)
    keys = [level_key(u) for u in np.asarray(uniques, dtype=object)]
    if lower:
        keys = [k.lower() if k is not None else None for k in keys]
    return np.asarray([*keys, None], dtype=object)[codes]


def numbers_of(values) -> np.ndarray:
    """A column as float64 with NaN for gaps; booleans are 0/1, numbers written as text are read, and any other
    text (only in a column forced numeric by ``dataset.numeric``) becomes a gap."""
    import pandas as pd

    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if series.dtype.kind in "fiub":
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(series.astype(object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def bucket(level: str) -> int:
    """The hashed input of a kept level (CRC-32: the same in every process, unlike Python's ``hash``)."""
    return zlib.crc32(level.encode("utf-8")) % HASH_BUCKETS


# ------------------------------------------------------------------------------------------------
# One pass of statistics: per batch, then merged


def _moments(x: np.ndarray) -> dict[str, Any]:
    """Count, mean and sum of squared deviations (M2) of the finite values, computed around the batch's own
    mean (two passes over the batch: no cancellation), with min, max and whether all are whole numbers."""
    x = x[~np.isnan(x)]
    if not len(x):
        return {"n": 0, "mean": 0.0, "m2": 0.0, "min": None, "max": None, "integral": True, "unique": True}
    mean = float(x.mean())
    return {"n": int(len(x)), "mean": mean, "m2": float(((x - mean) ** 2).sum()), "min": float(x.min()),
            "max": float(x.max()), "integral": bool(np.all(np.mod(x, 1) == 0)),
            "unique": bool(len(np.unique(x)) == len(x))}


def merge_moments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two batches' moments as one (Chan, Golub and LeVeque's parallel update of the mean and M2)."""
    if not b["n"]:
        return a
    if not a["n"]:
        return b
    n = a["n"] + b["n"]
    delta = b["mean"] - a["mean"]
    return {"n": n, "mean": a["mean"] + delta * b["n"] / n, "m2": a["m2"] + b["m2"] + delta * delta * a["n"] * b["n"] / n,
            "min": min(a["min"], b["min"]), "max": max(a["max"], b["max"]),
            "integral": a["integral"] and b["integral"], "unique": a["unique"] and b["unique"]}


def _scalar(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer():
        return int(value)  # an integer label read as float (a column with gaps) stays the integer it was
    return value


def batch_stats(frame, features: list[str], kinds: dict[str, str], label: str | None, *,
                regression: bool = False, bools: tuple[str, ...] = ()) -> dict[str, Any]:
    """A batch's statistics (JSON-able): per feature its gaps and moments (numeric) or level counts
    (categorical); the label's gaps and class counts (or moments, for ``regression``)."""
    out: dict[str, Any] = {"rows": int(len(frame)), "columns": {}}
    for f in features:
        if kinds.get(f, NUMERIC) == NUMERIC:
            x = numbers_of(frame[f])
            out["columns"][f] = {"missing": int(np.isnan(x).sum()), **_moments(x)}
        else:
            keys = keys_of(frame[f], lower=f in bools)
            present = keys[keys != None]  # noqa: E711 - elementwise on an object array
            levels, counts = np.unique(present.astype(str), return_counts=True) if len(present) else ([], [])
            out["columns"][f] = {"missing": int(len(keys) - len(present)),
                                 "counts": dict(zip(map(str, levels), map(int, counts), strict=True))}
    if label is not None and label in frame:
        y = frame[label]
        labelled = y[y.notna()]
        out["unlabelled"] = int(len(y) - len(labelled))
        if regression:
            out["label"] = _moments(numbers_of(labelled))
        else:
            counts = labelled.value_counts()
            out["label"] = [[_scalar(v), int(c)] for v, c in counts.items()]
    return out


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches' :func:`batch_stats` as one."""
    total: dict[str, Any] = {"rows": 0, "columns": {}, "unlabelled": 0, "label": None}
    for part in parts:
        total["rows"] += part["rows"]
        total["unlabelled"] += part.get("unlabelled", 0)
        for f, col in part["columns"].items():
            have = total["columns"].get(f)
            if have is None:
                total["columns"][f] = {**col, "counts": dict(col["counts"])} if "counts" in col else dict(col)
            elif "counts" in col:
                have["missing"] += col["missing"]
                for level, count in col["counts"].items():
                    have["counts"][level] = have["counts"].get(level, 0) + count
            else:
                total["columns"][f] = {"missing": have["missing"] + col["missing"], **merge_moments(have, col)}
        if "label" in part:
            if isinstance(part["label"], dict):
                total["label"] = merge_moments(total["label"], part["label"]) if total["label"] else part["label"]
            else:
                counts = {v: c for v, c in (total["label"] or [])}
                for v, c in part["label"]:
                    counts[v] = counts.get(v, 0) + c
                total["label"] = [[v, c] for v, c in counts.items()]
    return total


class BatchStats:
    """``map_batches`` callable: each batch's :func:`batch_stats` as one JSON cell (merged on the driver)."""

    def __init__(self, features: list[str], kinds: dict[str, str], label: str | None, regression: bool = False,
                 bools: tuple[str, ...] = ()):
        self.features, self.kinds, self.label, self.regression, self.bools = features, kinds, label, regression, bools

    def __call__(self, batch):
        import pandas as pd

        stats = batch_stats(batch, self.features, self.kinds, self.label, regression=self.regression, bools=self.bools)
        return pd.DataFrame({"part": [json.dumps(stats)]})


# ------------------------------------------------------------------------------------------------
# The profile: one line per column


def profile(stats: dict[str, Any], kinds: dict[str, str], label: str | None = None,
            types: dict[str, str] | None = None, regression: bool = False) -> list[dict[str, Any]]:
    """One entry per column (features in order, then the label): kind, missing share, levels or range, warnings."""
    rows = max(stats["rows"], 1)
    lines = []
    for f, col in stats["columns"].items():
        entry: dict[str, Any] = {"column": f, "kind": kinds.get(f, NUMERIC), "type": (types or {}).get(f),
                                 "missing": round(col["missing"] / rows, 4), "warnings": []}
        present = stats["rows"] - col["missing"]
        if "counts" in col:
            counts = sorted(col["counts"].items(), key=lambda kv: (-kv[1], kv[0]))
            entry["levels"] = len(counts)
            entry["top"] = [[k, c] for k, c in counts[:5]]
            entry["rare_levels"] = sum(1 for _, c in counts if c < RARE_ROWS)
            if len(counts) == 1:
                entry["warnings"].append("constant")
            if present >= ID_LIKE_MIN_ROWS and len(counts) == present:
                entry["warnings"].append("id-like: unique per row (exclude it)")
            kept = len(counts) - entry["rare_levels"]
            entry["encoding"] = "one-hot" if kept <= MAX_ONE_HOT else f"hashed into {HASH_BUCKETS}"
        else:
            entry["range"] = [col["min"], col["max"]] if col["n"] else None
            entry["mean"] = col["mean"] if col["n"] else None
            entry["std"] = math.sqrt(col["m2"] / col["n"]) if col["n"] else None
            if not col["n"]:
                entry["warnings"].append("no values")
            elif col["min"] == col["max"]:
                entry["warnings"].append("constant")
            elif col["integral"] and col["unique"] and present >= ID_LIKE_MIN_ROWS and col["max"] - col["min"] + 1 >= present:
                entry["warnings"].append("id-like: unique per row (exclude it)")
        if col["missing"] == stats["rows"] and "no values" not in entry["warnings"]:
            entry["warnings"].append("no values")
        lines.append(entry)
    if label is not None and stats.get("label") is not None:
        entry = {"column": label, "kind": "label", "type": (types or {}).get(label),
                 "missing": round(stats["unlabelled"] / rows, 4), "warnings": []}
        if stats["unlabelled"]:
            entry["warnings"].append(f"{stats['unlabelled']} rows without a label (dropped)")
        if isinstance(stats["label"], dict):
            moments = stats["label"]
            entry["range"] = [moments["min"], moments["max"]] if moments["n"] else None
        else:
            counts = sorted(stats["label"], key=lambda vc: (-vc[1], str(vc[0])))
            entry["levels"] = len(counts)
            entry["top"] = counts[:5]
            small = [f"{v!s} ({c})" for v, c in counts if c < SMALL_CLASS_ROWS]
            if small:
                entry["warnings"].append(f"class under {SMALL_CLASS_ROWS} rows: {', '.join(small[:5])}")
            if len(counts) == 1:
                entry["warnings"].append("one class only")
        lines.append(entry)
    return lines


def summary(entry: dict[str, Any]) -> str:
    """An entry's levels or range as a few words."""
    if "levels" in entry:
        top = ", ".join(f"{k} ({c})" for k, c in entry.get("top") or [])
        more = entry["levels"] - len(entry.get("top") or [])
        return f"{entry['levels']} levels: {top}{f', … +{more}' if more > 0 else ''}"
    if entry.get("range"):
        low, high = entry["range"]
        return f"{low:.10g} … {high:.10g}" + (f" (mean {entry['mean']:.6g})" if entry.get("mean") is not None else "")
    return "-"


def format_profile(lines: list[dict[str, Any]]) -> str:
    """The profile as plain text, one line per column (for a job's log)."""
    width = max([len(e["column"]) for e in lines] + [6])
    out = [f"{'column':<{width}}  {'kind':<11}  {'missing':>7}  levels / range"]
    for e in lines:
        warn = f"  [{'; '.join(e['warnings'])}]" if e["warnings"] else ""
        out.append(f"{e['column']:<{width}}  {e['kind']:<11}  {e['missing']:>7.1%}  {summary(e)}{warn}")
    return "\n".join(out)
