"""Rows of numeric features in: one class out (``tabular-classification``) or one value (``tabular-regression``).

Both standardise the features with means and spreads fitted on the training split
(:class:`atoll.data.Preprocessor`); regression standardises its target too and answers in the target's
own units. Classification reports loss, accuracy and macro-F1; regression loss (MSE of the standardised
target), RMSE, MAE and R², all in the target's units. A request holds rows of feature values, positional
or by feature name.
"""

from __future__ import annotations

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
    """``{"inputs": [[x0, x1, ...], ...]}`` or ``{"inputs": [{"feature": x, ...}, ...]}``."""

    # strict: no "1.5" strings or booleans taken for numbers; no NaN/inf (JSON's NaN literal included).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    inputs: list[list[float]] | list[dict[str, float]] = Field(
        ..., min_length=1, description="Rows of feature values, positional or by feature name.")


_ROW_KINDS = ("list[list[float]]", "list[dict[str,float]]")  # pydantic's names for the union's branches


def _validation_message(exc: pydantic.ValidationError, payload: Any) -> str:
    """pydantic's errors as one line; of the union's two branches, only the one the rows look like."""
    if not isinstance(payload, dict):
        return 'the body must be a JSON object like {"inputs": [[...feature values...]]}.'
    rows = payload.get("inputs")
    branch = _ROW_KINDS[1] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else _ROW_KINDS[0]
    parts = []
    for err in exc.errors():
        loc = err["loc"]
        if len(loc) > 1 and loc[1] in _ROW_KINDS and loc[1] != branch:
            continue
        parts.append(f"{'.'.join(str(p) for p in loc if p not in _ROW_KINDS) or 'body'}: {err['msg']}")
    return "; ".join(list(dict.fromkeys(parts))[:3])



class _Tabular(Task):
    input_kind = "table"
    # A row is a few hundred bytes and the model small: per-call costs (Ray Data's batching, one actor call, the
    # Arrow tables in and out) dominate. bench/batch_predict.py, 1M digits rows on 2 actors: 3.6 s at 4,096 rows
    # per call, 1.0-1.3 s at 65,536 (16 MiB of float32 inputs per call).
    batch_rows = 65_536
    request_example = '{"inputs": [[...feature values...]]}'

    def state_from_dict(self, state: dict[str, Any]) -> data.Preprocessor:
        return data.Preprocessor.from_dict(state)

    def input_schema(self, state: data.Preprocessor, model_spec: dict[str, Any]) -> dict[str, Any]:
        shape = (model_spec.get("params") or {}).get("image_shape")
        if shape is None and model_spec.get("type") == "cnn":
            side = math.isqrt(state.input_dim)
            shape = [1, side, side]
        return {"task": self.name, "input_kind": self.input_kind, "output_kind": self.output_kind,
                "features": state.features, "num_features": state.input_dim, "dtype": "float32",
                "image_shape": shape, "classes": state.classes, "label": state.label}

    def frame_inputs(self, frame, schema: dict[str, Any]) -> np.ndarray:
        return frame[schema["features"]].to_numpy(dtype=np.float32)

    def encode(self, inputs: np.ndarray, state: data.Preprocessor) -> np.ndarray:
        return state.transform_features(inputs)

    def request_schema(self, schema: dict[str, Any], max_rows: int) -> dict[str, Any]:
        """Rows of exactly this version's features, positional or by name."""
        features, width = schema["features"], schema["num_features"]
        positional = {"type": "array", "items": {"type": "number"}, "minItems": width, "maxItems": width}
        named = {"type": "object", "properties": {f: {"type": "number"} for f in features}, "required": features,
                 "additionalProperties": False}
        rows = {"type": "array", "minItems": 1, "maxItems": max_rows, "items": {"anyOf": [positional, named]}}
        return {"type": "object", "properties": {"inputs": rows}, "required": ["inputs"], "additionalProperties": False}

    def parse_inputs(self, payload: Any, schema: dict[str, Any], *,
                     max_request_pixels: int | None = None) -> np.ndarray:
        """The rows as float32 ``[n, d]``, in the order of the version's features."""
        try:
            request = PredictRequest.model_validate(payload)
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
                                            f"{', '.join(features[:4])}, …).")
                rows.append([row[f] for f in features])
        else:
            rows = request.inputs
            for i, row in enumerate(rows):
                if len(row) != width:
                    raise RequestError(422, f"inputs.{i} has {len(row)} values; this model takes {width} "
                                            f"({features[0]} … {features[-1]}).")
        array = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(array).all():  # finite JSON numbers beyond float32's range become inf
            row, col = map(int, np.argwhere(~np.isfinite(array))[0])
            raise RequestError(422, f"inputs.{row}.{features[col]}: {rows[row][col]:g} is out of range; feature values "
                                    f"must lie within ±3.4e38 (float32).")
        return array




class TabularClassification(Classifier, _Tabular):
    name = "tabular-classification"

    def plan(self, uri, fmt, features, label):
        return data.plan(uri, fmt, features, label)

    def fit(self, train_ds, plan, model_params=None) -> data.Preprocessor:
        return data.fit_preprocessor(train_ds, plan)


class TabularRegression(_Tabular):
    name = "tabular-regression"
    output_kind = "number"
    metric_names = ("loss", "rmse", "mae", "r2")
    minimized = ("loss", "rmse", "mae")
    objective = ("val_rmse", "min")
    target_dtype = "float32"

    def plan(self, uri, fmt, features, label):
        return data.plan(uri, fmt, features, label, numeric_label=True)

    def fit(self, train_ds, plan, model_params=None) -> data.Preprocessor:
        return data.fit_preprocessor(train_ds, plan, regression=True)

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
