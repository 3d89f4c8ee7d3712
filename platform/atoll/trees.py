"""Gradient-boosted trees (``model.type: xgboost``) for the table tasks: the one adaptor to XGBoost.

Trees take the very vector the MLP takes: the table as :class:`atoll.data.Preprocessor` encodes it on the
training split (numbers standardised, a gap imputed and flagged in its ``:missing`` input, categories one-hot
or hashed, plus ``other`` and ``missing``). Standardising changes no split of a tree, and a one-hot block is
one categorical split per level; so serving, batch prediction and export encode a request exactly as for the
MLP, and the ONNX file takes the same input. (XGBoost's native categorical splits would need category codes,
a second encoding of every request, and ONNX converters do not take them.)

The model's raw output matches the MLP's contract: a classifier's is ``log p`` per class (softmax of it gives
back XGBoost's probabilities), a regressor's the standardised target ``[n, 1]``; the task turns both into
answers as it does for the MLP. A booster is saved in XGBoost's own format (``model.ubj``, UBJSON; ``.json``
loads too), never pickled. Boosting rounds are the spec's ``epochs``: one round is reported as one epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from atoll.errors import ConfigError
from atoll.specs import TreeParams, tree_params_problem

MODEL_TYPE = "xgboost"
#: The booster in a checkpoint and a version: UBJSON (XGBoost's binary JSON); ``model.json`` is read as well.
BOOSTER_FILE = "model.ubj"
BOOSTER_FILES = (BOOSTER_FILE, "model.json")
#: log(p) of a class whose probability underflows: finite, so parity checks and JSON answers hold.
LOG_FLOOR = 1e-30


def is_trees(model_type: str | None) -> bool:
    return model_type == MODEL_TYPE


def xgb():
    """The ``xgboost`` module, or one line saying how to install it."""
    try:
        import xgboost
    except ImportError:
        raise ConfigError("model.type: xgboost needs the xgboost package: pip install xgboost-cpu==3.2.0 (CPU), "
                          "or xgboost==3.2.0 for the CUDA build.") from None
    return xgboost


def check_params(params: dict[str, Any] | None) -> TreeParams:
    """``model.params`` for trees (:class:`atoll.specs.TreeParams`).

    Raises:
        ConfigError: one line naming the field, the bad value and the fix (a "did you mean" for an unknown key).
    """
    problem = tree_params_problem(params)
    if problem:
        raise ConfigError(problem)
    return TreeParams.model_validate(params or {})


def booster_params(params: TreeParams, *, num_classes: int, threads: int, use_gpu: bool = False,
                   seed: int = 0) -> dict[str, Any]:
    """XGBoost's ``params`` for a table task: ``multi:softprob`` over 3 or more classes, ``binary:logistic`` for
    2 (:func:`outputs` makes it ``[n, 2]``: onnxmltools converts a 2-class softprob booster wrongly, seen: its
    probabilities off by 0.96), else squared error on the standardised target."""
    out = {"max_depth": params.max_depth, "eta": params.eta, "min_child_weight": params.min_child_weight,
           "subsample": params.subsample, "colsample_bytree": params.colsample_bytree, "lambda": params.reg_lambda,
           "alpha": params.reg_alpha, "gamma": params.gamma, "max_bin": params.max_bin,
           "tree_method": params.tree_method, "nthread": max(1, threads), "seed": seed,
           "device": "cuda" if use_gpu else "cpu"}
    if num_classes == 2:
        out |= {"objective": "binary:logistic", "eval_metric": "logloss"}
    elif num_classes:
        out |= {"objective": "multi:softprob", "num_class": num_classes, "eval_metric": "mlogloss"}
    else:
        out |= {"objective": "reg:squarederror", "eval_metric": "rmse"}
    return out


def outputs(booster, x, *, classification: bool) -> np.ndarray:
    """The model's raw float32 outputs for encoded rows (an array or a ``DMatrix``): ``log p`` ``[n, classes]``,
    or the standardised value ``[n, 1]``."""
    xgboost = xgb()
    matrix = x if isinstance(x, xgboost.DMatrix) else xgboost.DMatrix(np.ascontiguousarray(x, dtype=np.float32))
    predicted = booster.predict(matrix)
    if classification:
        if predicted.ndim == 1:  # binary:logistic: p of the second class
            predicted = np.stack([1 - predicted, predicted], axis=1)
        return np.log(np.maximum(predicted, LOG_FLOOR)).astype(np.float32)
    return predicted.reshape(-1, 1).astype(np.float32)


def save_booster(booster, directory: str | Path, name: str = BOOSTER_FILE) -> Path:
    """Write the booster in XGBoost's own format (by the file's suffix: ``.ubj`` or ``.json``)."""
    path = Path(directory) / name
    booster.save_model(str(path))
    return path


def booster_file(files) -> str | None:
    """The booster file among a folder's or version's ``files``."""
    return next((f for f in BOOSTER_FILES if f in files), None)


def load_booster(source: str | Path | bytes, *, threads: int | None = None):
    """A booster from its file (a path, or the file's bytes as the registry reads them); no pickle involved."""
    xgboost = xgb()
    booster = xgboost.Booster()
    booster.load_model(bytearray(source) if isinstance(source, bytes) else str(source))
    if threads:
        booster.set_param({"nthread": threads})
    return booster


def load_dir(directory: str | Path):
    """The booster of a checkpoint or version folder."""
    directory = Path(directory)
    name = booster_file([p.name for p in directory.iterdir()])
    if name is None:
        raise ConfigError(f"{directory}: no {' or '.join(BOOSTER_FILES)} (an xgboost checkpoint holds one).")
    return load_booster(directory / name)


# ------------------------------------------------------------------------------------------------
# Export: ONNX where onnxmltools converts the booster, with parity checked as for the torch models


def to_onnx(booster, input_dim: int, *, classification: bool):
    """The booster as an ONNX model with the torch models' contract: input ``inputs`` float32 ``[n, input_dim]``,
    output ``outputs`` (``log p`` per class, or the standardised value ``[n, 1]``)."""
    import onnx
    from onnx import TensorProto, helper
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    from atoll import exports

    model = convert_xgboost(booster, initial_types=[(exports.INPUT_NAME, FloatTensorType([None, input_dim]))],
                            target_opset=15)
    graph = model.graph
    if not any(op.domain in ("", "ai.onnx") for op in model.opset_import):  # Max, Log, Identity: the standard ops
        model.opset_import.append(helper.make_opsetid("", 15))
    produced = [o.name for o in graph.output]
    source = produced[-1]  # classifier: [label, probabilities]; regressor: [variable]
    if classification:
        floor = helper.make_tensor("atoll_log_floor", TensorProto.FLOAT, [], [LOG_FLOOR])
        graph.initializer.append(floor)
        graph.node.extend([helper.make_node("Max", [source, "atoll_log_floor"], ["atoll_floored"]),
                           helper.make_node("Log", ["atoll_floored"], [exports.OUTPUT_NAME])])
    else:
        graph.node.append(helper.make_node("Identity", [source], [exports.OUTPUT_NAME]))
    width = None if classification else 1
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(exports.OUTPUT_NAME, TensorProto.FLOAT, [None, width]))
    onnx.checker.check_model(model)
    return model


def export_version(booster, examples: np.ndarray, out_dir: str | Path, *, classification: bool,
                   held_out: int | None = None) -> dict[str, dict[str, Any]]:
    """``model.onnx`` beside the booster when onnxmltools converts it and its outputs match the booster's on
    ``examples`` within the torch exports' tolerance; per format what the manifest records (never raises)."""
    from atoll import exports

    out_dir = Path(out_dir)
    x = np.ascontiguousarray(exports._as_batch(examples), dtype=np.float32)
    expected = outputs(booster, x, classification=classification)
    results: dict[str, dict[str, Any]] = {
        "pt2": {"error": "model.type xgboost is not a torch model: no torch.export program; the booster itself "
                         f"({BOOSTER_FILE}, XGBoost's UBJSON, loads with xgboost.Booster().load_model) is the "
                         "native format"},
        "xgboost": {"file": BOOSTER_FILE, "format": "XGBoost UBJSON"},
    }
    path = out_dir / exports.FILES["onnx"]
    try:
        model = to_onnx(booster, x.shape[1], classification=classification)
        path.write_bytes(model.SerializeToString())
        session = exports.onnx_session(str(path))
        got = session.run([exports.OUTPUT_NAME], {exports.INPUT_NAME: x})[0]
        diff = float(np.abs(np.asarray(got, dtype=np.float64) - expected).max())
    except Exception as exc:  # noqa: BLE001 - a converter's failure is recorded, never fatal to a registration
        path.unlink(missing_ok=True)
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        results["onnx"] = {"error": f"cannot export to onnx: {type(exc).__name__}: {reason}; the native booster "
                                    f"({BOOSTER_FILE}) is the version's model"}
        return results
    if not diff <= exports.TOLERANCE:
        path.unlink(missing_ok=True)
        results["onnx"] = {"error": f"onnx outputs differ from the booster's by {diff:.3g} (tolerance "
                                    f"{exports.TOLERANCE:g}); not kept", "max_abs_diff": diff}
        return results
    results["onnx"] = {"file": exports.FILES["onnx"], "max_abs_diff": diff, "tolerance": exports.TOLERANCE,
                       "examples": int(len(examples) if held_out is None else held_out), "converter": "onnxmltools"}
    return results
