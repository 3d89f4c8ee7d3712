"""The standard inference protocols beside Atoll's own ``/predict``: the Open Inference Protocol v2 (KServe V2,
Triton's HTTP/REST API, with its binary-tensor extension) and MLflow's scoring protocol (``/invocations``).

This module only translates. A protocol's request becomes the task's own request (``{"inputs": [...]}``),
which the replica checks exactly as it checks ``/predict`` (the same task validation, row and size limits,
API key and batching); the answer is put back into the protocol's shape. Nothing here runs a model, and
nothing from a request is unpickled or imported: tensors are read with numpy from declared dtypes.

Tensors, by task: tabular rows are one numeric ``[n, features]`` tensor; texts one ``BYTES [n]`` tensor;
images a numeric ``[n, height, width(, channels)]`` tensor of pixels 0–255, or ``BYTES [n]`` holding the
encoded files. The outputs are ``predictions`` (``[n]``: INT64 or BYTES labels, or FP32 values) and, for
classifiers, ``probabilities`` (``FP32 [n, classes]``).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atoll.errors import RequestError

#: the Open Inference Protocol's datatypes that numpy reads directly (BYTES is length-prefixed strings)
NUMPY_TYPES = {"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "i1",
               "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary-tensor extension's header


# ------------------------------------------------------------------------------------------------
# Open Inference Protocol v2


def _shape(schema: dict[str, Any]) -> tuple[str, list[int]]:
    """The one input tensor's datatype and shape (-1: any size) for a version's schema."""
    kind = schema.get("input_kind")
    if kind == "text":
        return "BYTES", [-1]
    if kind == "image":
        c, h, w = schema["image_shape"]
        return "UINT8", [-1, h, w] if c == 1 else [-1, h, w, c]
    return "FP32", [-1, int(schema["num_features"])]


def _prediction_type(schema: dict[str, Any]) -> str:
    classes = schema.get("classes") or []
    if schema.get("output_kind") == "number" or not classes:
        return "FP32"
    return "INT64" if all(isinstance(c, int) and not isinstance(c, bool) for c in classes) else "BYTES"


def metadata(name: str, version: int, schema: dict[str, Any]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's inputs and outputs, each with name, datatype and shape."""
    datatype, shape = _shape(schema)
    outputs = [{"name": "predictions", "datatype": _prediction_type(schema), "shape": [-1]}]
    if schema.get("output_kind") != "number":
        outputs.append({"name": "probabilities", "datatype": "FP32", "shape": [-1, len(schema.get("classes") or [])]})
    return {"name": name, "versions": [str(version)], "platform": "atoll_pytorch",
            "inputs": [{"name": "inputs", "datatype": datatype, "shape": shape}], "outputs": outputs}


@dataclass
class Outputs:
    """Which outputs a request asked for (None: all), and which of them in binary."""

    names: list[str] | None = None
    binary: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


def _bytes_elements(blob: bytes, count: int, where: str) -> list[bytes]:
    """The binary extension's BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    out, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(blob):
            raise RequestError(400, f"{where}: the binary BYTES data ends early.")
        (size,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + size > len(blob):
            raise RequestError(400, f"{where}: an element claims {size} bytes past the end of the data.")
        out.append(blob[offset:offset + size])
        offset += size
    if offset != len(blob):
        raise RequestError(400, f"{where}: {len(blob) - offset} bytes left over after {count} elements.")
    return out


def _tensor(spec: Any, binary: bytes, offset: int, where: str) -> tuple[np.ndarray | list, int]:
    """One request tensor as a numpy array (or a list of bytes/str for BYTES), and the binary bytes it used."""
    if not isinstance(spec, dict):
        raise RequestError(422, f"{where}: a tensor is an object with name, shape, datatype and data.")
    shape, datatype = spec.get("shape"), spec.get("datatype")
    if (not isinstance(shape, list) or not shape or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 2**31 for d in shape)):
        raise RequestError(422, f"{where}.shape: a list of 1 to 8 non-negative sizes, e.g. [2, 64].")
    if datatype != "BYTES" and datatype not in NUMPY_TYPES:
        raise RequestError(422, f"{where}.datatype: {datatype!r} is not one of BYTES, {', '.join(NUMPY_TYPES)}.")
    count = math.prod(shape)
    size = (spec.get("parameters") or {}).get("binary_data_size") if isinstance(spec.get("parameters"), dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise RequestError(400, f"{where}.parameters.binary_data_size: {size!r} bytes are not in the body.")
        blob = binary[offset:offset + size]
        if datatype == "BYTES":
            return _bytes_elements(blob, count, where), size
        itemsize = np.dtype(NUMPY_TYPES[datatype]).itemsize
        if size != count * itemsize:
            raise RequestError(400, f"{where}: {size} bytes do not hold {shape} {datatype} values ({count * itemsize}).")
        return np.frombuffer(blob, dtype=NUMPY_TYPES[datatype]).reshape(shape), size
    data = spec.get("data")
    if not isinstance(data, list):
        raise RequestError(422, f"{where}.data: a (flat or nested) list of {count} values, or the binary extension.")
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if len(flat) != count or not all(isinstance(v, str) for v in flat):
            raise RequestError(422, f"{where}.data: {count} strings for shape {shape}.")
        return flat, 0
    try:
        array = np.asarray(data, dtype=np.float64 if datatype.startswith("FP") else object)
        array = array.astype(NUMPY_TYPES[datatype]) if datatype.startswith("FP") else np.asarray(
            [_integer(v, datatype) for v in _flatten(data)], dtype=NUMPY_TYPES[datatype])
    except (TypeError, ValueError, OverflowError):
        raise RequestError(422, f"{where}.data: not all {datatype} numbers.") from None
    if array.size != count:
        raise RequestError(422, f"{where}.data: {array.size} values for shape {shape} ({count} expected).")
    return array.reshape(shape), 0


def _flatten(data: Any):
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def _integer(value: Any, datatype: str) -> int | bool:
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise ValueError(value)
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(value)
    return value


def oip_request(body: bytes, header_length: str | None, schema: dict[str, Any]) -> tuple[dict, Outputs, Any]:
    """An ``/infer`` body (JSON, or JSON then binary tensors) as the task's request, the outputs asked for,
    and the request's ``id``.

    Raises:
        RequestError: 400 (not JSON, bad binary framing), 422 (not the tensor this model takes).
    """
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, f"{HEADER_LENGTH}: {header_length!r} is not a length within the body.")
        head, binary = body[:int(header_length)], body[int(header_length):]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, f"the inference request is not valid JSON ({str(exc)[:120]}).") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or len(request["inputs"]) != 1:
        datatype, shape = _shape(schema)
        raise RequestError(422, f'inputs: this model takes one input tensor ({datatype}, shape {shape}), like '
                                f'{{"inputs": [{{"name": "inputs", "shape": [1, ...], "datatype": "{datatype}", '
                                f'"data": [...]}}]}}.')
    tensor, _ = _tensor(request["inputs"][0], binary, 0, "inputs.0")
    params = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
    wanted = Outputs(binary_default=bool(params.get("binary_data_output", False)))
    if isinstance(request.get("outputs"), list):
        wanted.names = []
        for out in request["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise RequestError(422, "outputs: a list of objects with a name (predictions, probabilities).")
            wanted.names.append(out["name"])
            out_params = out.get("parameters") if isinstance(out.get("parameters"), dict) else {}
            wanted.binary[out["name"]] = bool(out_params.get("binary_data", wanted.binary_default))
    return {"inputs": _task_inputs(tensor, schema)}, wanted, request.get("id")


def _task_inputs(tensor: np.ndarray | list, schema: dict[str, Any]) -> list:
    """A request tensor as the ``inputs`` list of the task's own request."""
    kind = schema.get("input_kind")
    if isinstance(tensor, list):  # BYTES: texts, or (for images) encoded files
        if kind == "image":
            return [{"b64": base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()} for v in tensor]
        if kind != "text":
            raise RequestError(422, "inputs.0.datatype: BYTES is for texts and encoded images; this model takes "
                                    f"{_shape(schema)[0]} numbers.")
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else v for v in tensor]
        except UnicodeDecodeError:
            raise RequestError(422, "inputs.0: a text is not valid UTF-8.") from None
    if kind == "text":
        raise RequestError(422, "inputs.0.datatype: this model takes texts, as a BYTES tensor of shape [n].")
    if tensor.ndim < 2:
        raise RequestError(422, f"inputs.0.shape: {list(tensor.shape)}; the first size is the batch, e.g. "
                                f"{[1, *(_shape(schema)[1][1:])]}.")
    if not np.isfinite(tensor.astype(np.float64)).all():
        raise RequestError(422, "inputs.0.data: values must be finite numbers.")
    return tensor.tolist()


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in (str(v).encode() for v in values))


def oip_response(predictions: list[Any], probabilities: list[list[float]] | None, *, name: str, version: int,
                 schema: dict[str, Any], wanted: Outputs, request_id: Any) -> tuple[bytes, dict[str, str]]:
    """The ``/infer`` answer (JSON, or JSON then binary tensors as asked), and its headers."""
    datatype = _prediction_type(schema)
    tensors = {"predictions": (datatype, [len(predictions)], predictions)}
    if probabilities is not None:
        width = len(probabilities[0]) if probabilities else len(schema.get("classes") or [])
        tensors["probabilities"] = ("FP32", [len(probabilities), width], [p for row in probabilities for p in row])
    names = wanted.names if wanted.names is not None else list(tensors)
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise RequestError(422, f"outputs: no output {unknown[0]!r}; this model has {', '.join(tensors)}.")
    outputs, blobs = [], []
    for out_name in names:
        dtype, shape, values = tensors[out_name]
        entry: dict[str, Any] = {"name": out_name, "datatype": dtype, "shape": shape}
        if wanted.binary.get(out_name, wanted.binary_default):
            blob = _bytes_tensor(values) if dtype == "BYTES" else np.asarray(values, dtype=NUMPY_TYPES[dtype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = [str(v) for v in values] if dtype == "BYTES" else values
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": name, "model_version": str(version), "outputs": outputs}
    if request_id is not None:
        answer["id"] = request_id
    head = json.dumps(answer).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


# ------------------------------------------------------------------------------------------------
# MLflow's scoring protocol


MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
MLFLOW_EXAMPLE = '{"dataframe_split": {"columns": [...], "data": [[...]]}}'


def mlflow_request(body: bytes, content_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An ``/invocations`` body (JSON with one of ``dataframe_split``, ``dataframe_records``, ``instances``,
    ``inputs``; or CSV with a header row) as the task's request.

    Raises:
        RequestError: 400 (not JSON or CSV), 415 (another content type), 422 (not what this model takes).
    """
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind == "text/csv":
        try:
            rows = list(csv.reader(io.StringIO(body.decode("utf-8"))))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise RequestError(400, f"the CSV body cannot be read ({exc}).") from None
        if len(rows) < 2:
            raise RequestError(422, "a CSV body is a header row of column names, then one row per input.")
        columns, data = rows[0], [[_csv_value(v) for v in row] for row in rows[1:] if row]
        return {"inputs": _frame_inputs(columns, data, schema)}
    if kind != "application/json":
        raise RequestError(415, f"Content-Type {content_type!r}: send application/json ({MLFLOW_EXAMPLE}) or text/csv.")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, f"the body is not valid JSON ({str(exc)[:120]}); send {MLFLOW_EXAMPLE}.") from None
    keys = [k for k in MLFLOW_KEYS if isinstance(payload, dict) and k in payload]
    if len(keys) != 1 or set(payload) - {keys[0], "params"}:
        raise RequestError(422, f"the body must hold exactly one of {', '.join(MLFLOW_KEYS)}, like {MLFLOW_EXAMPLE}.")
    value = payload[keys[0]]
    if keys[0] == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("columns"), list) \
                or not isinstance(value.get("data"), list):
            raise RequestError(422, f"dataframe_split: an object with columns and data, like {MLFLOW_EXAMPLE}.")
        return {"inputs": _frame_inputs(value["columns"], value["data"], schema)}
    if keys[0] == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise RequestError(422, 'dataframe_records: a list of objects, one per row, like [{"column": value}].')
        columns = list(dict.fromkeys(k for r in value for k in r))
        return {"inputs": _frame_inputs(columns, [[r.get(c) for c in columns] for r in value], schema)}
    return {"inputs": value}  # instances / inputs: the rows, texts or images themselves, as /predict takes them


def _csv_value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _frame_inputs(columns: list[Any], data: list[Any], schema: dict[str, Any]) -> list:
    """A data frame (column names, rows) as the task's inputs: rows by feature name, or the text/image column."""
    kind = schema.get("input_kind")
    if not all(isinstance(row, list) and len(row) == len(columns) for row in data):
        raise RequestError(422, f"data: every row must hold one value per column ({len(columns)}).")
    if kind in ("text", "image"):
        column = schema["features"][0]
        at = columns.index(column) if column in columns else 0 if len(columns) == 1 else None
        if at is None:
            raise RequestError(422, f"columns: this model reads the {kind} column {column!r}; found "
                                    f"{', '.join(map(str, columns))}.")
        return [row[at] for row in data]
    return [dict(zip(columns, row, strict=True)) for row in data]


def mlflow_error(status: int, message: str) -> tuple[dict[str, str], int]:
    """MLflow's error body: an error code and the message."""
    code = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 413: "REQUEST_LIMIT_EXCEEDED", 415: "BAD_REQUEST",
            422: "INVALID_PARAMETER_VALUE"}.get(status, "INTERNAL_ERROR")
    return {"error_code": code, "message": message}, status
