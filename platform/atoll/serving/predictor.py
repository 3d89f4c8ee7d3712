"""A registered version ready to predict, in any process: a Serve replica, a batch-prediction actor, a
notebook, a benchmark. Nothing here imports Serve or FastAPI (a batch actor starts ~1.5 s sooner without them)."""

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

RUNTIMES = ("auto", "torch", "onnx")


def choose_runtime(requested: str, version, device_type: str) -> str:
    """``torch`` or ``onnx`` for a version: as asked, or (``auto``) ONNX Runtime on CPU when the version has
    its ``model.onnx`` (bench/serve_load.py: as fast or faster for every model measured) and torch on GPU.

    Raises:
        ConfigError: ``onnx`` asked for a version without its ONNX file (the reason recorded at registration).
    """
    from atoll import exports
    from atoll.errors import ConfigError

    has_onnx = exports.FILES["onnx"] in version.files
    if requested == "onnx" and not has_onnx:
        why = (version.exports.get("onnx") or {}).get("error") or "it was registered before Atoll exported models"
        raise ConfigError(f"runtime: onnx, but {version.ref} has no {exports.FILES['onnx']} ({why}); deploy it with "
                          f"--set runtime=torch.")
    if requested in ("torch", "onnx"):
        return requested
    return "onnx" if has_onnx and device_type == "cpu" else "torch"


def _default_device() -> str:
    """``cuda`` where this process sees a GPU, else ``cpu`` (imports torch: pass ``device`` to avoid it)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclasses.dataclass
class Prepared:
    """One request's inputs made ready for the model: the task's parsed inputs, the model's input array made
    from them, and the answer's extra fields from that same encoding (a text's ``truncated``)."""

    inputs: Any
    encoded: np.ndarray
    notes: dict[str, Any]

    def __len__(self) -> int:
        return len(self.encoded)


class Predictor:
    """A registered version ready to predict: weights (checksum-verified, ``weights_only``), preprocessing
    and input schema; run by torch or, from the version's exported ``model.onnx``, by ONNX Runtime
    (:func:`choose_runtime`). Used by the Serve replica, and in-process by tests and benchmarks."""

    def __init__(self, storage: str, ref: str, device: str | None = None,
                 model_types: list[str] | None = None, runtime: str = "torch") -> None:
        from atoll import registry, tasks
        from atoll.model_types import AllowList

        reg = registry.Registry(storage)
        self.registry = reg  # the card reads the version's evaluation records on every request (they come later)
        self.version = reg.get(ref)
        meta = json.loads(reg.read_file(self.version, "atoll.json"))
        self.schema = self.version.input_schema or meta["input_schema"]
        # By name from the catalogue, never an import path from the manifest; older versions name none.
        self.task = tasks.get(self.version.spec.get("task") or self.schema.get("task"))
        self.pre = self.task.state_from_dict(meta["preprocess"])
        model_spec = self.version.spec["model"]
        # registered=: a user model type imports only if cluster.yaml's metadata.atoll.model_types allows it
        # (as the deploy passed it in ``model_types``, else as the cluster.yaml next to this process says).
        allowed = AllowList(tuple(model_types), "metadata.atoll.model_types of the deploy's cluster.yaml") \
            if model_types is not None else None
        self.device = device or _default_device()
        self.runtime = choose_runtime(runtime, self.version, self.device.split(":")[0])
        self.model, self.session, self.booster = None, None, None
        if self.runtime == "onnx":  # the exported file alone (checksum-verified): no model code, no torch
            from atoll import exports

            self.session = exports.onnx_session(reg.read_file(self.version, exports.FILES["onnx"]),
                                                cuda=self.device.startswith("cuda"))
            return
        if model_spec["type"] == "xgboost":  # gradient-boosted trees: the booster in XGBoost's own format
            from atoll import trees

            self.runtime = "xgboost"
            threads = os.environ.get("OMP_NUM_THREADS", "")
            self.booster = trees.load_booster(reg.read_file(self.version, trees.booster_file(self.version.files)),
                                              threads=int(threads) if threads.isdigit() else None)
            return
        from atoll import models  # torch, and the model's code: only on this path

        model = models.build(model_spec["type"], self.pre.input_dim, self.task.out_dim(self.pre),
                             self.task.model_params(self.pre, model_spec["params"]), registered=self.version.ref, allowed=allowed)
        model.load_state_dict(reg.load_weights(self.version))
        self.model = model.to(self.device).eval()

    def predict(self, inputs: Any) -> tuple[list[Any], list[list[float]] | None]:
        """For the task's parsed inputs (raw feature rows ``[n, d]``, or texts): class labels and class
        probabilities, or (for regression) values and None."""
        return self.task.answer(self.outputs(inputs), self.pre)

    def predict_arrays(self, inputs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`predict` as arrays (``[n]`` and ``[n, classes]``): for whole batches, no Python lists."""
        return self.task.answer_arrays(self.outputs(inputs), self.pre)

    #: Model types whose outputs ignore the padding after a text (they mask token id 0): a large batch of
    #: them runs in buckets of similar lengths, each cut to its longest text (bench/batch_predict.py: the SMS
    #: texts, 26 of 64 tokens on average, 4.2x faster, outputs within 5e-7).
    PADDING_MASKED = frozenset({"hf-bert"})
    BUCKET_ROWS = 256

    def prepare(self, inputs: Any) -> Prepared:
        """The task's parsed inputs encoded for the model (a text tokenized, once) with the answer's notes."""
        encoded, notes = self.task.encode_with_notes(inputs, self.pre)
        return Prepared(inputs, np.ascontiguousarray(encoded), notes)

    def predict_encoded(self, encoded: np.ndarray) -> tuple[list[Any], list[list[float]] | None]:
        """:meth:`predict` for inputs already encoded (:meth:`prepare`'s ``encoded``, or several joined)."""
        return self.task.answer(self.encoded_outputs(encoded), self.pre)

    def outputs(self, inputs: Any) -> np.ndarray:
        """The model's raw float32 outputs for the task's parsed inputs, by torch or ONNX Runtime."""
        return self.encoded_outputs(self.task.encode(inputs, self.pre))

    def encoded_outputs(self, encoded: np.ndarray) -> np.ndarray:
        """The model's raw float32 outputs for encoded inputs."""
        encoded = np.ascontiguousarray(encoded)
        if (self.task.input_kind == "text" and len(encoded) > self.BUCKET_ROWS
                and self.version.spec["model"]["type"] in self.PADDING_MASKED):
            return self._by_length(encoded)
        return self._run(encoded)

    def _by_length(self, ids: np.ndarray) -> np.ndarray:
        """:meth:`_run` over buckets of ``BUCKET_ROWS`` texts sorted by length, each without its trailing
        padding, put back in the input's order."""
        present = ids != 0
        lengths = np.where(present.any(axis=1), ids.shape[1] - np.argmax(present[:, ::-1], axis=1), 1)
        order = np.argsort(lengths, kind="stable")
        out = None
        for start in range(0, len(order), self.BUCKET_ROWS):
            rows = order[start:start + self.BUCKET_ROWS]
            part = self._run(np.ascontiguousarray(ids[rows, :lengths[rows].max()]))
            if out is None:
                out = np.empty((len(ids), *part.shape[1:]), dtype=np.float32)
            out[rows] = part
        return out

    #: Rows per call into torch or ONNX Runtime: a large batch (a batch prediction's 65,536 table rows) runs in
    #: slices that keep the layers' activations in cache. Digits MLP, one thread, a million rows: ONNX Runtime
    #: 0.41 s in slices of 4,096 against 0.61 s in one call of 65,536; torch 0.49 s against 1.14 s.
    RUN_ROWS = 4096

    def _run(self, encoded: np.ndarray) -> np.ndarray:
        if len(encoded) <= self.RUN_ROWS:
            return self._call(encoded)
        parts = [self._call(encoded[start:start + self.RUN_ROWS]) for start in range(0, len(encoded), self.RUN_ROWS)]
        return np.concatenate(parts)

    def _call(self, encoded: np.ndarray) -> np.ndarray:
        if self.session is not None:
            from atoll import exports

            return self.session.run([exports.OUTPUT_NAME], {exports.INPUT_NAME: encoded})[0].astype(np.float32, copy=False)
        if self.booster is not None:
            from atoll import trees

            return trees.outputs(self.booster, encoded, classification=self.task.output_kind == "labels")
        import torch

        x = torch.from_numpy(encoded).to(self.device)
        with torch.inference_mode():
            return self.model(x).float().cpu().numpy()

    def non_finite_rows(self, predictions: list[Any], probabilities: list[list[float]] | None) -> list[int]:
        """Rows whose answer came out NaN/inf (JSON has no NaN)."""
        values = probabilities if probabilities is not None else [[p] for p in predictions]
        return [i for i, row in enumerate(values) if not all(math.isfinite(x) for x in row)]

    #: Standardised feature values beyond this many standard deviations are not data the model has seen.
    EXTREME_Z = 1e4

    def explain_non_finite(self, rows: np.ndarray, bad: list[int]) -> tuple[int, str]:
        """Status and message for rows whose class probabilities came out NaN/inf: the input's fault (422)
        when its values are extreme, else the model's (500: a broken version)."""
        where = ", ".join(f"inputs.{i}" for i in bad[:5])
        with np.errstate(all="ignore"):
            z = np.abs(self.pre.transform_features(rows[bad])) if self.task.input_kind == "table" else np.zeros(1)
        if not np.isfinite(z).all() or z.max() > self.EXTREME_Z:
            return 422, (f"{where}: values far outside the training data (over {self.EXTREME_Z:g} standard "
                         f"deviations) make the model's output NaN/inf; send values in the range it was trained on.")
        return 500, (f"model {self.version.ref} returned NaN/inf outputs for {where} although the input is "
                     f"ordinary: this version is broken; deploy another one (`atoll serve deploy NAME:VERSION`).")

    def request_schema(self, max_rows: int) -> dict[str, Any]:
        """The JSON Schema of a ``/predict`` body for this version, as its task says."""
        return self.task.request_schema(self.schema, max_rows)

    def card(self) -> dict[str, Any]:
        v = self.version
        return {"model": v.name, "version": v.version, "input_schema": self.schema, "metrics": v.metrics,
                "lineage": v.lineage, "created_at": v.created_at, "exports": v.exports, "runtime": self.runtime,
                "evaluations": evaluation_summaries(self.registry, v)}


def evaluation_summaries(reg, version) -> list[dict[str, Any]]:
    """A version's evaluation records for its card (`atoll models evaluate`): the data, its fingerprint, the metrics,
    when; none where they cannot be read (a card never fails for them)."""
    from atoll.errors import AtollError

    try:
        records = reg.evaluations(version.name, version.version)
    except (AtollError, OSError):
        return []
    keep = ("dataset", "rows", "metrics", "created_at")
    return [{k: r.get(k) for k in keep} for r in records]
