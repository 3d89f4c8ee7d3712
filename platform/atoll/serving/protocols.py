"""The standard inference protocols beside Atoll's own ``/predict``: the Open Inference Protocol v2 (KServe V2,
Triton's HTTP/REST API, with its binary-tensor extension) and MLflow's scoring protocol (``/invocations``).

This module only translates. A protocol's request becomes the task's own request (``{"inputs": [...]}``),
which the replica checks exactly as it checks ``/predict`` (the same task validation, row and size limits,
API key and batching); the answer is put back into the protocol's shape. Nothing here runs a model, and
nothing from a request is unpickled or imported: tensors are read with numpy from declared dtypes.

Tensors, by task: tabular rows are one numeric ``[n, features]`` tensor; a table with categorical features
(words) takes one tensor per feature column instead, named by the feature, shape ``[n]`` (or ``[n, 1]``):
``BYTES`` for a categorical column (numbers and ``BOOL`` are read as levels too), a numeric datatype for a
numeric one, and a gap as JSON ``null``, a float ``NaN`` or (``BYTES``) an empty string; numeric tables take the
per-column shape too. Texts are one ``BYTES [n]`` tensor; images a numeric ``[n, height, width(, channels)]``
tensor of pixels 0–255, or ``BYTES [n]`` holding the encoded files. The outputs are ``predictions`` (``[n]``: INT64 or BYTES labels, or FP32 values) and, for
classifiers, ``probabilities`` (``FP32 [n, classes]``).
"""

from __future__ import annotations

import base64
import csv
import difflib
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


def _per_column(schema: dict[str, Any]) -> bool:
    """A table with a categorical feature: its inputs are one tensor per feature column (words need BYTES)."""
    return schema.get("input_kind") == "table" and any(
        isinstance(c, dict) and c.get("kind") == "categorical" for c in schema.get("columns") or [])


def _column_kinds(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each feature's column record (kind, levels or range), in the version's feature order."""
    features = list(schema.get("features") or [])
    columns = schema.get("columns") or []
    if len(columns) != len(features):
        columns = [{"kind": "numeric"}] * len(features)
    return dict(zip(features, columns, strict=True))


def _column_inputs(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The metadata's inputs of a per-column table: one ``[-1]`` tensor per feature, BYTES for a categorical one
    (its ``parameters`` list the known levels) and FP32 for a numeric one (with its training range)."""
    inputs = []
    for name, column in _column_kinds(schema).items():
        if column.get("kind") == "categorical":
            params: dict[str, Any] = {"kind": "categorical", "levels": list(column.get("levels") or [])}
            inputs.append({"name": name, "datatype": "BYTES", "shape": [-1], "parameters": params})
        else:
            params = {"kind": "numeric"}
            if column.get("range"):
                params["range"] = column["range"]
            inputs.append({"name": name, "datatype": "FP32", "shape": [-1], "parameters": params})
    for entry in inputs:
        entry["parameters"]["nullable"] = True  # every feature takes a gap: null, NaN, or an empty string
    return inputs


def _prediction_type(schema: dict[str, Any]) -> str:
    classes = schema.get("classes") or []
    if schema.get("output_kind") == "number" or not classes:
        return "FP32"
    return "INT64" if all(isinstance(c, int) and not isinstance(c, bool) for c in classes) else "BYTES"


def metadata(name: str, version: int, schema: dict[str, Any]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's inputs and outputs, each with name, datatype and shape (a table
    with categorical features: one input per feature column)."""
    datatype, shape = _shape(schema)
    inputs = _column_inputs(schema) if _per_column(schema) else [{"name": "inputs", "datatype": datatype,
                                                                   "shape": shape}]
    outputs = [{"name": "predictions", "datatype": _prediction_type(schema), "shape": [-1]}]
    if schema.get("output_kind") != "number":
        outputs.append({"name": "probabilities", "datatype": "FP32", "shape": [-1, len(schema.get("classes") or [])]})
    return {"name": name, "versions": [str(version)], "platform": "atoll_pytorch",
            "inputs": inputs, "outputs": outputs}


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


@dataclass
class Tensor:
    """A request tensor: its datatype and shape, and its values as the task should see them.

    ``values`` is a numpy array (binary data, and integer/BOOL data checked against their datatype), a flat
    list of ``bytes``/``str`` (BYTES), or, for floating-point data sent as JSON, the values exactly as sent,
    nested to the tensor's shape: the task's own parsing then judges them as it judges a ``/predict`` row
    (strict numbers, no numeric strings), rather than numpy converting "1.5" behind its back.
    """

    datatype: str
    shape: list[int]
    values: np.ndarray | list[Any]


def _tensor(spec: Any, binary: bytes, offset: int, where: str, *, nullable: bool = False) -> tuple[Tensor, int]:
    """One request tensor, and the binary bytes it used; ``nullable``: JSON data may hold nulls (a table's
    feature column), kept as None."""
    if not isinstance(spec, dict):
        raise RequestError(422, f"{where}: a tensor is an object with name, shape, datatype and data.")
    shape, datatype = spec.get("shape"), spec.get("datatype")
    if (not isinstance(shape, list) or not shape or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 2**31 for d in shape)):
        # No size 0: an empty tensor asks nothing, and [10**9, 0] holds no values yet would be walked dimension
        # by dimension (seen: a replica busy for minutes). With every size >= 1, each is at most the values sent.
        raise RequestError(422, f"{where}.shape: a list of 1 to 8 sizes of at least 1, e.g. [2, 64].")
    if not isinstance(datatype, str) or (datatype != "BYTES" and datatype not in NUMPY_TYPES):
        raise RequestError(422, f"{where}.datatype: {repr(datatype)[:40]} is not one of BYTES, "
                                f"{', '.join(NUMPY_TYPES)}.")
    count = math.prod(shape)
    params = spec.get("parameters") if isinstance(spec.get("parameters"), dict) else {}
    size = params.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise RequestError(400, f"{where}.parameters.binary_data_size: {repr(size)[:40]} bytes are not in "
                                    f"the body.")
        blob = binary[offset:offset + size]
        if datatype == "BYTES":
            return Tensor(datatype, shape, _bytes_elements(blob, count, where)), size
        itemsize = np.dtype(NUMPY_TYPES[datatype]).itemsize
        if size != count * itemsize:
            raise RequestError(400, f"{where}: {size} bytes do not hold {shape} {datatype} values ({count * itemsize}).")
        return Tensor(datatype, shape, np.frombuffer(blob, dtype=NUMPY_TYPES[datatype]).reshape(shape)), size
    data = spec.get("data")
    if not isinstance(data, list):
        raise RequestError(422, f"{where}.data: a (flat or nested) list of {count} values, or the binary extension.")
    flat = _flatten(data, len(shape), where)
    if len(flat) != count:
        raise RequestError(422, f"{where}.data: {len(flat)} values for shape {shape} ({count} expected).")
    if datatype == "BYTES":
        if not all(isinstance(v, str) or (nullable and v is None) for v in flat):
            raise RequestError(422, f"{where}.data: {count} strings{' (or nulls)' if nullable else ''} for shape "
                                    f"{shape}.")
        return Tensor(datatype, shape, flat), 0
    if datatype.startswith("FP"):
        return Tensor(datatype, shape, _nested(flat, shape)), 0
    gaps = nullable and any(v is None for v in flat)
    try:
        array = np.asarray([_integer(v, datatype) for v in flat if not (gaps and v is None)],
                           dtype=NUMPY_TYPES[datatype])
    except (TypeError, ValueError, OverflowError):
        raise RequestError(422, f"{where}.data: not all {datatype} numbers (integers within its range"
                                f"{', or nulls' if nullable else ''}).") from None
    if gaps:  # numbers and nulls: a flat list (numpy has no integer gap)
        found = iter(array.tolist())
        return Tensor(datatype, shape, [None if v is None else next(found) for v in flat]), 0
    return Tensor(datatype, shape, array.reshape(shape)), 0


def _flatten(data: list[Any], depth: int, where: str) -> list[Any]:
    """Row-major values of flat or nested ``data``, at most ``depth`` lists deep (the tensor's dimensions):
    iterative, so that no nesting a JSON parser accepts can exhaust the stack."""
    flat: list[Any] = []
    stack = [(iter(data), 1)]
    while stack:
        items, level = stack[-1]
        item = next(items, stack)
        if item is stack:
            stack.pop()
        elif isinstance(item, list):
            if level >= depth:
                raise RequestError(422, f"{where}.data: nested deeper than its shape has dimensions ({depth}); "
                                        f"send the values flat, in row-major order.")
            stack.append((iter(item), level + 1))
        else:
            flat.append(item)
    return flat


def _nested(flat: list[Any], shape: list[int]) -> list[Any]:
    """A flat row-major list as nested lists of ``shape`` (the values themselves untouched)."""
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nested(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _integer(value: Any, datatype: str) -> int | bool:
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise ValueError(value)
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(value)
    return value


#: ``POST /v2/models/{name}/infer``'s body in the OpenAPI document (the route reads the raw body itself, for the
#: binary extension): one input tensor, the outputs wanted, and whether they come back binary.
OIP_REQUEST_BODY = {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "description": "one tensor named inputs; for a table with "
                       "categorical features, one tensor per feature column, named by the feature (GET "
                       "/v2/models/{name} lists them)", "items": {
                "type": "object", "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "minItems": 1, "maxItems": 8, "items": {"type": "integer", "minimum": 1}},
                    "datatype": {"type": "string", "enum": ["BYTES", *NUMPY_TYPES]},
                    "data": {"type": "array", "description": "the values in row-major order, flat or nested to the "
                             "shape: numbers, or strings for BYTES; null for a gap in a table's feature column",
                             "items": {"anyOf": [
                                 {"type": "number"}, {"type": "string"}, {"type": "boolean"}, {"type": "null"},
                                 {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "string"},
                                                                       {"type": "null"}]}}]}},
                    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
                }}},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string", "enum": ["predictions", "probabilities"]},
                               "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        }}},
    "application/octet-stream": {"schema": {
        "type": "string", "format": "binary", "description": f"the binary-tensor extension: the JSON request in the "
        f"first {HEADER_LENGTH} bytes, then each tensor's bytes (its parameters.binary_data_size)"}},
}}


def oip_request(body: bytes, header_length: str | None, schema: dict[str, Any]) -> tuple[dict, Outputs, Any]:
    """An ``/infer`` body (JSON, or JSON then binary tensors) as the task's request, the outputs asked for,
    and the request's ``id``.

    Raises:
        RequestError: 400 (not JSON, bad binary framing), 422 (not the tensor this model takes).
    """
    if header_length is not None:
        # isascii: "²".isdigit() is true, and int() refuses it
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise RequestError(400, f"{HEADER_LENGTH}: {header_length!r} is not a length within the body.")
        head, binary = body[:int(header_length)], body[int(header_length):]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, f"the inference request is not valid JSON ({str(exc)[:120]}).") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if _by_column(schema, inputs):
        payload = {"inputs": _column_rows(inputs, binary, schema)}
    else:
        if not isinstance(inputs, list) or len(inputs) != 1:
            datatype, shape = _shape(schema)
            raise RequestError(422, f'inputs: this model takes one input tensor ({datatype}, shape {shape}), like '
                                    f'{{"inputs": [{{"name": "inputs", "shape": [1, ...], "datatype": "{datatype}", '
                                    f'"data": [...]}}]}}.')
        tensor, _ = _tensor(inputs[0], binary, 0, "inputs.0")
        payload = {"inputs": _task_inputs(tensor, schema)}
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
    return payload, wanted, request.get("id")


def _by_column(schema: dict[str, Any], inputs: Any) -> bool:
    """Whether a request's inputs are a table's feature columns: always for a table with categorical features;
    for a numeric table, when every tensor is named by a feature (not the one tensor named ``inputs``)."""
    if schema.get("input_kind") != "table":
        return False
    if _per_column(schema):
        return True
    features = set(schema.get("features") or [])
    return (isinstance(inputs, list) and bool(inputs) and not (len(inputs) == 1 and isinstance(inputs[0], dict)
                                                                and inputs[0].get("name") == "inputs")
            and all(isinstance(t, dict) and isinstance(t.get("name"), str) and t["name"] in features for t in inputs))


def _columns_example(schema: dict[str, Any]) -> str:
    """What a per-column request looks like for this model, in a few words."""
    described = [f"{i['name']} {i['datatype']}" for i in _column_inputs(schema)]
    first = _column_inputs(schema)[0] if described else {"name": "feature", "datatype": "FP32"}
    data = '["word"]' if first["datatype"] == "BYTES" else "[1.5]"
    return (f"one tensor per feature column ({', '.join(described[:4])}{', …' if len(described) > 4 else ''}), each "
            f'of shape [n], like {{"inputs": [{{"name": "{first["name"]}", "shape": [1], "datatype": '
            f'"{first["datatype"]}", "data": {data}}}, …]}}')


def _column_rows(inputs: Any, binary: bytes, schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A table's feature-column tensors as the task's rows by feature name (None for a gap).

    Raises:
        RequestError: 422 naming the tensor (not a feature, twice, missing, a datatype its kind does not take,
            not one value per row, a value that is no number or word), 400 (bad binary framing).
    """
    columns = _column_kinds(schema)
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(422, f"inputs: this model takes {_columns_example(schema)}.")
    found: dict[str, list[Any]] = {}
    offset = 0
    for k, spec in enumerate(inputs):
        where = f"inputs.{k}"
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise RequestError(422, f"{where}: a tensor is an object with name (a feature), shape, datatype and data; "
                                    f"this model takes {_columns_example(schema)}.")
        if name == "inputs" and name not in columns:
            raise RequestError(422, f"{where}.name: 'inputs'; a table with categorical features takes "
                                    f"{_columns_example(schema)}.")
        if name not in columns:
            close = difflib.get_close_matches(name, list(columns), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RequestError(422, f"{where}.name: {name[:60]!r} is not a feature of this model{hint}; it takes "
                                    f"{_columns_example(schema)}.")
        if name in found:
            raise RequestError(422, f"{where}.name: {name[:60]!r} appears twice; send each feature column once.")
        tensor, used = _tensor(spec, binary, offset, where, nullable=True)
        offset += used
        if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
            raise RequestError(422, f"{where}.shape: {tensor.shape}; a feature column is [n] (or [n, 1]), n the "
                                    f"batch size.")
        categorical = columns[name].get("kind") == "categorical"
        if not categorical and tensor.datatype in ("BYTES", "BOOL"):
            raise RequestError(422, f"{where}.datatype: {tensor.datatype}; {name[:60]} is a numeric feature: send "
                                    f"FP32, FP64 or INT numbers (null or NaN for a gap).")
        found[name] = _column_values(tensor, where)
    missing = [f for f in columns if f not in found]
    if missing:
        raise RequestError(422, f"inputs: no tensor for {', '.join(m[:40] for m in missing[:5])}"
                                f"{' …' if len(missing) > 5 else ''}; this model takes {_columns_example(schema)} "
                                f"(null for a gap).")
    sizes = {name: len(values) for name, values in found.items()}
    if len(set(sizes.values())) > 1:
        counts = ", ".join(f"{n[:30]} {c}" for n, c in list(sizes.items())[:4])
        raise RequestError(422, f"inputs: the feature columns hold different numbers of rows ({counts}); send one "
                                f"value per row in each.")
    rows = next(iter(sizes.values()))
    return [{name: found[name][i] for name in columns} for i in range(rows)]


def _column_values(tensor: Tensor, where: str) -> list[Any]:
    """A feature column's values, flat: words (str), numbers, booleans, or None for a gap (a JSON null, a float
    NaN, an empty string)."""
    if isinstance(tensor.values, np.ndarray):
        flat = tensor.values.reshape(-1)
        if flat.dtype.kind == "f":
            if np.isinf(flat).any():
                raise RequestError(422, f"{where}.data: values must be finite numbers (NaN or null for a gap).")
            return [None if math.isnan(v) else v for v in flat.tolist()]
        return flat.tolist()
    values = _flatten(tensor.values, len(tensor.shape), where)  # JSON data, or binary BYTES elements
    if tensor.datatype == "BYTES":
        try:
            words = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
            for v in words:
                if v is not None:
                    v.encode("utf-8")  # a JSON string with a lone surrogate is no text
        except UnicodeError:
            raise RequestError(422, f"{where}: an element is not valid UTF-8; send words as UTF-8.") from None
        return [None if v == "" else v for v in words]
    if tensor.datatype.startswith("FP"):
        for v in values:
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise RequestError(422, f"{where}.data: {json.dumps(v)[:40]} is not a number; a {tensor.datatype} "
                                        f"column holds numbers, or null for a gap.")
        return [None if isinstance(v, float) and math.isnan(v) else v for v in values]  # NaN (as Triton writes it)
    return values


def _task_inputs(tensor: Tensor, schema: dict[str, Any]) -> list:
    """A request tensor as the ``inputs`` list of the task's own request."""
    kind, (datatype, shape) = schema.get("input_kind"), _shape(schema)
    if tensor.datatype == "BYTES":  # texts, or (for images) encoded files
        if kind not in ("text", "image"):
            raise RequestError(422, f"inputs.0.datatype: BYTES is for texts and encoded images; this model takes "
                                    f"{datatype} numbers, shape {shape}.")
        try:
            if kind == "image":
                return [{"b64": base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()}
                        for v in tensor.values]
            return [v.decode("utf-8") if isinstance(v, bytes) else v for v in tensor.values]
        except UnicodeError:  # bytes that are no UTF-8, or a JSON string with a lone surrogate
            raise RequestError(422, "inputs.0: an element is not valid UTF-8; send texts as UTF-8.") from None
    if kind == "text":
        raise RequestError(422, "inputs.0.datatype: this model takes texts, as a BYTES tensor of shape [n].")
    if len(tensor.shape) < 2 or (kind != "image" and len(tensor.shape) != len(shape)):
        expected = ", ".join(["n", *map(str, shape[1:])])
        raise RequestError(422, f"inputs.0.shape: {tensor.shape}; this model takes [{expected}] ({datatype}), "
                                f"n the batch size.")
    if isinstance(tensor.values, list):  # floating-point JSON data: the task judges the values as sent
        return tensor.values
    if not np.isfinite(tensor.values.astype(np.float64)).all():
        raise RequestError(422, "inputs.0.data: values must be finite numbers.")
    return tensor.values.tolist()


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in (str(v).encode() for v in values))


def oip_response(predictions: list[Any], probabilities: list[list[float]] | None, *, name: str, version: int,
                 schema: dict[str, Any], wanted: Outputs, request_id: Any,
                 notes: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    """The ``/infer`` answer (JSON, or JSON then binary tensors as asked), and its headers. ``notes``: what
    ``/predict`` adds beside its answer (``unseen``: the fields of each row answered as ``other``); the protocol's
    parameters hold scalars only, so each goes as JSON text."""
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
    if notes:
        answer["parameters"] = {key: json.dumps(value) for key, value in notes.items()}
    head = json.dumps(answer).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


# ------------------------------------------------------------------------------------------------
# MLflow's scoring protocol


MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
MLFLOW_EXAMPLE = '{"dataframe_split": {"columns": [...], "data": [[...]]}}'
_INPUTS = {"type": "array", "minItems": 1, "description": "rows of feature values, texts or images, as /predict's "
           "inputs", "items": {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"},
                                         {"type": "object", "additionalProperties": {"type": "number"}}]}}
_PARAMS = {"type": "object", "description": "accepted, and ignored"}


def _one_of_mlflow(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": [key], "additionalProperties": False,
            "properties": {key: value, "params": _PARAMS}}


#: ``POST /invocations``'s body in the OpenAPI document (the route reads the raw body itself, for CSV).
MLFLOW_REQUEST_BODY = {"required": True, "content": {
    "application/json": {"schema": {"oneOf": [
        _one_of_mlflow("dataframe_split", {
            "type": "object", "required": ["columns", "data"],
            "properties": {"columns": {"type": "array", "items": {"type": "string"}},
                           "data": {"type": "array", "minItems": 1, "items": {"type": "array", "items": {
                               "anyOf": [{"type": "number"}, {"type": "string"}]}}},
                           "index": {"type": "array", "items": {"type": "integer"}}}}),
        _one_of_mlflow("dataframe_records", {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": {"anyOf": [{"type": "number"}, {"type": "string"}]}}}),
        _one_of_mlflow("instances", _INPUTS),
        _one_of_mlflow("inputs", _INPUTS),
    ]}},
    "text/csv": {"schema": {"type": "string", "description": "a header row of column names, then one row per input"}},
}}


def mlflow_request(body: bytes, content_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An ``/invocations`` body (JSON with one of ``dataframe_split``, ``dataframe_records``, ``instances``,
    ``inputs``; or CSV with a header row) as the task's request.

    Raises:
        RequestError: 400 (not JSON or CSV), 415 (another content type), 422 (not what this model takes).
    """
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind == "text/csv":
        try:  # utf-8-sig: a spreadsheet's byte order mark is not part of the first column's name
            rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise RequestError(400, f"the CSV body cannot be read ({str(exc)[:120]}).") from None
        if len(rows) < 2:
            raise RequestError(422, "a CSV body is a header row of column names, then one row per input.")
        # CSV has no types: a table's cells are numbers, a text model's cells stay texts (and images base64)
        number = _csv_value if schema.get("input_kind") == "table" else str
        data = [[number(v) for v in row] for row in rows[1:] if row]
        return {"inputs": _frame_inputs(_columns(rows[0], "columns"), data, schema)}
    if kind != "application/json":
        raise RequestError(415, f"Content-Type {str(content_type)[:60]!r}: send application/json ({MLFLOW_EXAMPLE}) "
                                f"or text/csv.")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, f"the body is not valid JSON ({str(exc)[:120]}); send {MLFLOW_EXAMPLE}.") from None
    keys = [k for k in MLFLOW_KEYS if isinstance(payload, dict) and k in payload]
    if len(keys) != 1 or set(payload) - {keys[0], "params"}:
        raise RequestError(422, f"the body must hold exactly one of {', '.join(MLFLOW_KEYS)}, like {MLFLOW_EXAMPLE}.")
    key, value = keys[0], payload[keys[0]]
    if key == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("columns"), list) \
                or not isinstance(value.get("data"), list):
            raise RequestError(422, f"dataframe_split: an object with columns and data, like {MLFLOW_EXAMPLE}.")
        return {"inputs": _frame_inputs(_columns(value["columns"], "dataframe_split.columns"), value["data"], schema)}
    if key == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise RequestError(422, 'dataframe_records: a list of objects, one per row, like [{"column": value}].')
        if schema.get("input_kind") == "table":
            return {"inputs": value}  # rows by feature name, as /predict takes them (it names what is missing)
        columns = list(dict.fromkeys(k for r in value for k in r))
        return {"inputs": _frame_inputs(columns, [[r.get(c) for c in columns] for r in value], schema)}
    if not isinstance(value, list):  # MLflow's dict of named tensors or columns has no counterpart here
        raise RequestError(422, f"{key}: a list of rows (or texts, or images), one per input, as /predict takes "
                                f"them; for named columns send {MLFLOW_EXAMPLE}.")
    return {"inputs": value}  # instances / inputs: the rows, texts or images themselves, as /predict takes them


def _columns(columns: list[Any], where: str) -> list[str]:
    """A data frame's column names: strings, each once (a row becomes an object keyed by them)."""
    for i, column in enumerate(columns):
        if not isinstance(column, str):
            raise RequestError(422, f"{where}.{i}: column names are strings, not {type(column).__name__}.")
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise RequestError(422, f"{where}: {column[:60]!r} appears twice; name each column once.")
        seen.add(column)
    return columns


_CSV_GAPS = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL"})


def _csv_value(text: str) -> Any:
    """A CSV cell of a table: a number, a word, or null (an empty cell, or NA as pandas and pyarrow read it)."""
    if text.strip() in _CSV_GAPS:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _frame_inputs(columns: list[str], data: list[Any], schema: dict[str, Any]) -> list:
    """A data frame (column names, rows) as the task's inputs: rows by feature name, or the text/image column."""
    kind = schema.get("input_kind")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise RequestError(422, f"data.{i}: every row must hold one value per column ({len(columns)}).")
    if kind in ("text", "image"):
        column = schema["features"][0]
        at = columns.index(column) if column in columns else 0 if len(columns) == 1 else None
        if at is None:
            found = ", ".join(c[:40] for c in columns[:5]) + (" …" if len(columns) > 5 else "")
            raise RequestError(422, f"columns: this model reads the {kind} column {column!r}; found {found or 'none'}.")
        return [row[at] for row in data]
    return [dict(zip(columns, row, strict=True)) for row in data]


def mlflow_error(status: int, message: str) -> tuple[dict[str, str], int]:
    """MLflow's error body: an error code and the message."""
    code = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 413: "REQUEST_LIMIT_EXCEEDED", 415: "BAD_REQUEST",
            422: "INVALID_PARAMETER_VALUE"}.get(status, "INTERNAL_ERROR")
    return {"error_code": code, "message": message}, status
