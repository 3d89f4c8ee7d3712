"""Rows of a table in: one class out (``tabular-classification``) or one value (``tabular-regression``).

Features are numbers or categories (words, booleans, codes), any of them possibly missing; both tasks encode
them into one float vector with what was fitted on the training split (:class:`atoll.data.Preprocessor`,
:mod:`atoll.tables`); regression standardises its target too and answers in the target's own units.
Classification reports loss, accuracy and macro-F1; regression loss (MSE of the standardised target), RMSE,
MAE and R², all in the target's units. A request holds rows of feature values, positional
or by feature name: numbers, words for categorical features, null for a gap.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pydantic
from pydantic import ConfigDict, Field

from atoll import data
from atoll.errors import RequestError
from atoll.tasks.base import Task
from atoll.tasks.classifier import Classifier


class PredictRequest(pydantic.BaseModel):
    """``{"inputs": [[x0, x1, ...], ...]}`` or ``{"inputs": [{"feature": x, ...}, ...]}``: numbers, or null for a gap."""

    # strict: no "1.5" strings or booleans taken for numbers; no NaN/inf (JSON's NaN literal included).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    inputs: list[list[float | None]] | list[dict[str, float | None]] = Field(
        ..., min_length=1, description="Rows of feature values, positional or by feature name; null for a gap.")


class MixedRequest(PredictRequest):
    """A row of a table with categorical features: numbers, words (or true/false) and nulls; which feature takes
    what is checked against the version's schema after this."""

    inputs: list[list[float | str | bool | None]] | list[dict[str, float | str | bool | None]] = Field(
        ..., min_length=1, description="Rows of feature values, positional or by feature name: numbers, words for "
                                       "categorical features, null for a gap.")


_MEMBERS = ("float", "str", "bool")  # pydantic's names for the members of a value's union


def _validation_message(exc: pydantic.ValidationError, payload: Any) -> str:
    """pydantic's errors as one line; of the union's two branches, only the one the rows look like."""
    if not isinstance(payload, dict):
        return 'the body must be a JSON object like {"inputs": [[...feature values...]]}.'
    rows = payload.get("inputs")
    named = isinstance(rows, list) and bool(rows) and isinstance(rows[0], dict)
    parts, finite = [], {tuple(e["loc"][:-1]) for e in exc.errors() if "finite" in e["msg"]}
    for err in exc.errors():
        loc = list(err["loc"])
        msg = err["msg"]
        if loc and loc[-1] in _MEMBERS and len(loc) > 4:  # a value none of number, word, boolean or null
            msg = f"must be a {'finite ' if tuple(loc[:-1]) in finite else ''}number, a word or null"
            loc = loc[:-1]
        if len(loc) > 1 and isinstance(loc[1], str) and loc[1].startswith("list["):
            if loc[1].startswith("list[dict") != named:
                continue
            del loc[1]
        parts.append(f"{'.'.join(str(p) for p in loc) or 'body'}: {msg}")
    return "; ".join(list(dict.fromkeys(parts))[:3])


def _kinds(schema: dict[str, Any]) -> list[str]:
    """Each feature's kind as the version's schema records it (versions before mixed tables: all numeric)."""
    columns = schema.get("columns")
    return [c["kind"] for c in columns] if columns else ["numeric"] * len(schema["features"])


class _Tabular(Task):
    input_kind = "table"
    builtin_models = ("mlp", "cnn", "xgboost")  # xgboost: gradient-boosted trees on the encoded rows (atoll.trees)
    # A row is a few hundred bytes and the model small: per-call costs (Ray Data's batching, one actor call, the
    # Arrow tables in and out) dominate. bench/batch_predict.py, 1M digits rows on 2 actors: 3.6 s at 4,096 rows
    # per call, 1.0-1.3 s at 65,536 (16 MiB of float32 inputs per call).
    batch_rows = 65_536
    request_example = '{"inputs": [[...feature values...]]}'

    def plan(self, uri, fmt, features, label, overrides=None):
        return data.plan(uri, fmt, features, label, numeric_label=self.output_kind == "number", **(overrides or {}))

    def fit(self, train_ds, plan, model_params=None) -> data.Preprocessor:
        return data.fit_preprocessor(train_ds, plan, regression=self.output_kind == "number")

    def state_from_dict(self, state: dict[str, Any]) -> data.Preprocessor:
        return data.Preprocessor.from_dict(state)

    def input_schema(self, state: data.Preprocessor, model_spec: dict[str, Any]) -> dict[str, Any]:
        """The features (in a request's order) with their kinds, levels and training ranges; ``input_dim``: the
        width of the encoded vector the model (and an exported ONNX file) takes."""
        shape = (model_spec.get("params") or {}).get("image_shape")
        if shape is None and model_spec.get("type") == "cnn":
            side = math.isqrt(state.input_dim)
            shape = [1, side, side]
        columns = []
        for f, column in zip(state.features, state.columns or [None] * len(state.features), strict=True):
            if column is None or column["kind"] == "numeric":
                entry = {"name": f, "kind": "numeric", "nullable": True}
                if column is not None:
                    entry |= {"range": [column.get("min"), column.get("max")],
                              "missing_indicator": bool(column.get("indicator"))}
            else:
                entry = {"name": f, "kind": "categorical", "nullable": True, "levels": column["levels"],
                         "encoding": "hashed" if column.get("hashed") else "one-hot"}
            columns.append(entry)
        schema = {"task": self.name, "input_kind": self.input_kind, "output_kind": self.output_kind,
                  "features": state.features, "num_features": len(state.features), "input_dim": state.input_dim,
                  "dtype": "float32" if state.plain else "mixed", "image_shape": shape, "classes": state.classes,
                  "label": state.label, "columns": columns}
        if not state.plain:
            schema["encoded"] = state.encoded_names()
        if state.report:
            schema["data"] = state.report
        return schema

    def frame_inputs(self, frame, schema: dict[str, Any]):
        """A batch's feature columns: a float32 array for an all-numeric table (NaN for gaps), else the frame."""
        if all(k == "numeric" for k in _kinds(schema)):
            from atoll import tables

            features = schema["features"]
            if all(frame[f].dtype.kind in "fiu" for f in features):
                return frame[features].to_numpy(dtype=np.float32, na_value=np.nan)
            return np.stack([tables.numbers_of(frame[f]) for f in features], axis=1).astype(np.float32)
        return frame[schema["features"]]

    def encode(self, inputs, state: data.Preprocessor) -> np.ndarray:
        return state.transform_features(inputs)

    def encode_with_notes(self, inputs, state: data.Preprocessor) -> tuple[np.ndarray, dict[str, Any]]:
        """The encoding, and ``unseen``: for each row (by index, as a string) that held a level training never kept,
        the features answered as ``other`` (left out when no row did)."""
        encoded, unseen = state.transform_with_unseen(inputs)
        if unseen is None or not unseen.any():
            return encoded, {}
        return encoded, {"unseen": {str(i): [state.features[j] for j in np.flatnonzero(row)]
                                    for i, row in enumerate(unseen) if row.any()}}

    def request_schema(self, schema: dict[str, Any], max_rows: int) -> dict[str, Any]:
        """Rows of exactly this version's features, positional or by name: each a number or (categorical) one of
        its known levels, or null. A level outside the list is answered as ``other``, and the answer says so."""
        features, width = schema["features"], schema["num_features"]
        values = []
        for f, kind, column in zip(features, _kinds(schema), schema.get("columns") or [None] * width, strict=True):
            if kind == "numeric":
                values.append({"type": ["number", "null"], "title": f})
            else:
                values.append({"title": f, "description": "one of the known levels (any other word is answered as "
                                                         "'other'), or null for a gap",
                               "anyOf": [{"type": "string", "enum": column["levels"]}, {"type": "string"},
                                         {"type": ["number", "boolean"]}, {"type": "null"}]})
        positional = {"type": "array", "prefixItems": values, "items": False, "minItems": width, "maxItems": width}
        named = {"type": "object", "properties": dict(zip(features, values, strict=True)), "required": features,
                 "additionalProperties": False}
        rows = {"type": "array", "minItems": 1, "maxItems": max_rows, "items": {"anyOf": [positional, named]}}
        return {"type": "object", "properties": {"inputs": rows}, "required": ["inputs"], "additionalProperties": False}

    def parse_inputs(self, payload: Any, schema: dict[str, Any], *, max_request_pixels: int | None = None):
        """The rows in the order of the version's features: float32 ``[n, d]`` (NaN for a gap) when every feature
        is numeric, else an object array of numbers (NaN for a gap), words and None.

        Raises:
            RequestError: 422 naming the row and feature (a word or a boolean for a numeric feature, a missing or
                unknown feature, a row of the wrong length, a value out of float32's range).
        """
        kinds = _kinds(schema)
        mixed = any(k != "numeric" for k in kinds)
        try:
            request = (MixedRequest if mixed else PredictRequest).model_validate(payload)
        except pydantic.ValidationError as exc:
            raise RequestError(422, _validation_message(exc, payload)) from None

        features, width = schema["features"], schema["num_features"]
        if isinstance(request.inputs[0], dict):
            rows = []
            for i, row in enumerate(request.inputs):
                missing = [f for f in features if f not in row]
                unknown = [k for k in row if k not in set(features)]
                if missing or unknown:
                    what = "; ".join(filter(None, [
                        f"missing {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}" if missing else "",
                        f"unknown {', '.join(unknown[:5])}" if unknown else ""]))
                    raise RequestError(422, f"inputs.{i}: {what} (this model takes {width} features: "
                                            f"{', '.join(features[:4])}, …; send null for a value you do not have).")
                rows.append([row[f] for f in features])
        else:
            rows = request.inputs
            for i, row in enumerate(rows):
                if len(row) != width:
                    raise RequestError(422, f"inputs.{i} has {len(row)} values; this model takes {width} "
                                            f"({features[0]} … {features[-1]}).")
        if not mixed:
            array = np.asarray([[np.nan if v is None else v for v in row] for row in rows]
                               if any(v is None for row in rows for v in row) else rows, dtype=np.float32)
            self._check_range(array, rows, features)
            return array
        numeric = [j for j, k in enumerate(kinds) if k == "numeric"]
        for i, row in enumerate(rows):
            for j in numeric:
                value = row[j]
                if isinstance(value, (str, bool)):
                    raise RequestError(422, f"inputs.{i}.{features[j]}: {json.dumps(value)[:40]} is not a valid number; "
                                            f"{features[j]} is a numeric feature (send a number, or null for a gap).")
        array = np.empty((len(rows), width), dtype=object)
        array[:] = rows
        if numeric:
            values = np.asarray(array[:, numeric], dtype=np.float64)  # None → NaN
            with np.errstate(over="ignore"):
                self._check_range(values.astype(np.float32), [[row[j] for j in numeric] for row in rows],
                                  [features[j] for j in numeric])
            array[:, numeric] = values
        return array

    @staticmethod
    def _check_range(array: np.ndarray, rows: list, features: list[str]) -> None:
        if np.isinf(array).any():  # finite JSON numbers beyond float32's range become inf
            row, col = map(int, np.argwhere(np.isinf(array))[0])
            raise RequestError(422, f"inputs.{row}.{features[col]}: {rows[row][col]:g} is out of range; feature values "
                                    f"must lie within ±3.4e38 (float32).")


class TabularClassification(Classifier, _Tabular):
    name = "tabular-classification"


class TabularRegression(_Tabular):
    name = "tabular-regression"
    output_kind = "number"
    metric_names = ("loss", "rmse", "mae", "r2")
    minimized = ("loss", "rmse", "mae")
    objective = ("val_rmse", "min")
    target_dtype = "float32"

    def out_dim(self, state) -> int:
        return 1

    def loss(self, outputs, target):
        import torch.nn.functional as F

        return F.mse_loss(outputs.float().reshape(-1), target.float())

    def batch_sums(self, outputs, target, loss, state):
        """[loss·n, n, squared error, absolute error, Σy, Σy²], errors and y in the target's own units."""
        import torch

        std, mean = state.target_std, state.target_mean
        predicted = outputs.detach().double().reshape(-1) * std + mean
        actual = target.double() * std + mean
        err = predicted - actual
        n = float(target.shape[0])
        return torch.stack([loss.detach().double() * n, torch.tensor(n, dtype=torch.float64, device=target.device),
                            (err * err).sum(), err.abs().sum(), actual.sum(), (actual * actual).sum()])

    def metrics(self, sums: list[float], state) -> dict[str, float]:
        loss, n, sse, sae, y_sum, y_sumsq = sums
        n = max(n, 1)
        sst = y_sumsq - y_sum * y_sum / n
        return {"loss": loss / n, "rmse": math.sqrt(sse / n), "mae": sae / n,
                "r2": 1.0 - sse / sst if sst > 0 else 0.0}

    def answer_arrays(self, outputs: np.ndarray, state) -> tuple[np.ndarray, None]:
        values = outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64) * state.target_std + state.target_mean
        return values.round(6), None
