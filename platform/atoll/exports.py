"""Models out of the platform: a ``torch.export`` program (``model.pt2``) and an ONNX file (``model.onnx``)
beside every registry version, each checked against the PyTorch model before it is kept.

At registration the version's model is exported both ways with a dynamic batch (and, for text, a dynamic
sequence length up to the model's ``max_length``), both artefacts are run on the version's held-out examples
(the playground's, from the validation split), and the largest absolute difference from the PyTorch
model's outputs is recorded in the manifest (``exports``). An artefact whose outputs differ by more than
:data:`TOLERANCE` is not kept; a model that cannot be exported is registered without that artefact, and the
manifest (so the card) says why. What an artefact needs besides itself, the task's fitted preprocessing
(standardisation, classes, the tokenizer), is written as plain JSON next to it (``preprocess.json``, and
``tokenizer.json`` for text), so another team's runtime needs neither Atoll nor the model's class.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: the largest absolute difference from the PyTorch model's raw outputs an artefact may show
TOLERANCE = 1e-4
FILES = {"pt2": "model.pt2", "onnx": "model.onnx"}
HF_FORMAT = "hf"  # a language model's Hugging Face folder (atoll.train.generation writes it as hf/)
PREPROCESS_FILE, TOKENIZER_FILE = "preprocess.json", "tokenizer.json"
INPUT_NAME, OUTPUT_NAME = "inputs", "outputs"


#: what exporting and its checks import the first time in a process: ~7 s on 2 cores, most of it ONNX's
#: operator library. A driver imports them while its workers train (:func:`warm_up`), not after.
_EXPORT_MODULES = ("torch.export", "torch.onnx", "onnxscript.function_libs.torch_lib.ops", "onnxruntime",
                   "matplotlib.figure", "matplotlib.backends.backend_agg")


def warm_up() -> None:
    """Import what registration will need, in a daemon thread; the caller goes on at once. A module that
    fails to import is left for the export itself to report."""
    import importlib
    import threading

    def load() -> None:
        for name in _EXPORT_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001,S112 - the export that needs it records the error
                continue

    threading.Thread(target=load, name="atoll-export-warm-up", daemon=True).start()


def onnx_session(model: bytes | str, *, cuda: bool = False):
    """An ONNX Runtime session over an exported ``model.onnx`` (its bytes or path), on CUDA when asked and
    available. Its thread pool is the process's CPU share where Ray set one (``OMP_NUM_THREADS``, which torch
    follows too), not every core: two one-CPU actors on two cores would otherwise each run two threads."""
    import os

    import onnxruntime

    options = onnxruntime.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    options.intra_op_num_threads = int(threads) if threads.isdigit() else 0  # 0: ONNX Runtime's default
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in onnxruntime.get_available_providers() and (p != "CUDAExecutionProvider" or cuda)]
    return onnxruntime.InferenceSession(model, sess_options=options, providers=providers)


def _forward(model):
    """The model behind one positional tensor in and one tensor out (Keras models and DDP wrappers differ)."""
    import torch

    class Forward(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    return Forward(model).eval()


def _dims(x: np.ndarray, text_max: int | None):
    """Dynamic dims of the one input: the batch always; for token ids also the sequence (≤ max_length)."""
    import torch

    dims = {0: torch.export.Dim("batch", min=1, max=65536)}
    if text_max is not None and x.ndim == 2:
        dims[1] = torch.export.Dim("sequence", min=2, max=text_max)
    return dims


def _as_batch(x: np.ndarray) -> np.ndarray:
    """At least 2 rows: an example batch of 1 would make the exporter fix the batch size at 1."""
    return np.concatenate([x, x]) if len(x) < 2 else x


def _pt2(module, x, dims, path: Path) -> np.ndarray:
    import torch

    program = torch.export.export(module, (x,), dynamic_shapes=(dims,))
    torch.export.save(program, str(path))
    with torch.inference_mode():
        return torch.export.load(str(path)).module()(x).detach().float().numpy()


def _onnx(module, x, dims, path: Path) -> np.ndarray:
    import onnxruntime
    import torch

    program = torch.onnx.export(module, (x,), dynamic_shapes=(dims,), input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamo=True, external_data=False, verbose=False)
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]


def export_version(model, examples: np.ndarray, out_dir: str | Path, *, text_max: int | None = None,
                   held_out: int | None = None) -> dict[str, dict[str, Any]]:
    """Export ``model`` as ``model.pt2`` and ``model.onnx`` into ``out_dir`` and check each on ``examples``
    (the model's input array, as the task encodes requests; ``held_out``: how many of them are real examples).
    Returns, per format, ``{"file",
    "max_abs_diff", "tolerance", "examples"}`` or ``{"error"}``; never raises (a model that cannot be
    exported is still registered)."""
    import torch

    out_dir = Path(out_dir)
    module = _forward(model)
    x = torch.from_numpy(np.ascontiguousarray(_as_batch(examples)))
    with torch.inference_mode():
        expected = module(x).detach().float().numpy()
    dims = _dims(examples, text_max)
    results: dict[str, dict[str, Any]] = {}
    for fmt, run in (("pt2", _pt2), ("onnx", _onnx)):
        path = out_dir / FILES[fmt]
        try:
            got = run(module, x, dims, path)
            diff = float(np.abs(np.asarray(got, dtype=np.float64) - expected).max())
        except Exception as exc:  # noqa: BLE001 - an exporter's failure is recorded, never fatal to a registration
            path.unlink(missing_ok=True)
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            results[fmt] = {"error": f"cannot export to {fmt}: {type(exc).__name__}: {reason}"}
            log.warning("%s", results[fmt]["error"])
            continue
        if not diff <= TOLERANCE:  # also NaN
            path.unlink(missing_ok=True)
            results[fmt] = {"error": f"{fmt} outputs differ from the PyTorch model's by {diff:.3g} (tolerance "
                                     f"{TOLERANCE:g}); not kept", "max_abs_diff": diff}
            continue
        results[fmt] = {"file": FILES[fmt], "max_abs_diff": diff, "tolerance": TOLERANCE,
                         "examples": int(len(examples) if held_out is None else held_out)}
    shutil.rmtree(out_dir / "__pycache__", ignore_errors=True)
    return results


def write_preprocess(out_dir: str | Path, *, task: str, state: dict[str, Any], schema: dict[str, Any],
                     exports: dict[str, dict[str, Any]]) -> None:
    """``preprocess.json`` (what turns a request into the artefact's input, and its output into answers) and,
    for text, the tokenizer as its own ``tokenizer.json`` (Hugging Face ``tokenizers`` loads it directly)."""
    out_dir = Path(out_dir)
    doc = {"task": task, "input_schema": schema, "state": state, "input": INPUT_NAME, "output": OUTPUT_NAME,
           "artefacts": {fmt: r.get("file") for fmt, r in exports.items()}}
    (out_dir / PREPROCESS_FILE).write_text(json.dumps(doc, indent=2, default=str))
    if isinstance(state.get("tokenizer"), str):
        (out_dir / TOKENIZER_FILE).write_text(state["tokenizer"])


def example_inputs(task, state, schema: dict[str, Any], examples: list[dict[str, Any]]) -> np.ndarray:
    """The version's held-out examples as the model's input array (as the task encodes a request); without
    examples, zeros of the input's shape (the check then says 0 examples)."""
    if examples:
        try:
            return task.encode(task.parse_inputs({"inputs": [e["inputs"] for e in examples]}, schema), state)
        except Exception as exc:  # noqa: BLE001 - examples are a nicety; fall back to a shape-only check
            log.warning("examples do not parse for the export check (%s); using zeros", exc)
    if task.input_kind == "text":  # [UNK] everywhere: all-padding rows would mask every position
        return np.ones((2, state.max_length), dtype=np.int64)
    if task.input_kind == "image":
        return np.zeros((2, *state.image_shape), dtype=np.float32)
    return np.zeros((2, state.input_dim), dtype=np.float32)


_STEPS = {
    "table": "rows of the features in `input_schema.features` order, standardised: (x - state.mean) / state.std, "
             "float32 [n, {features}]",
    # A table with categories or gaps: the model takes the encoded vector, not the raw row.
    "mixed": "the encoded row, float32 [n, {input_dim}], in `state.columns` order: a number standardised, (x - "
             "state.mean[i]) / state.std[i], a gap taking the mean, then (where `indicator`) 1 for a gap; a category one-"
             "hot over `levels` (or, where `hashed`, at CRC-32(level) mod 32), then an `other` input (rare or unseen "
             "levels) and a `missing` input. `input_schema.encoded` names every input",
    "text": "texts tokenized with tokenizer.json (Hugging Face `tokenizers`: Tokenizer.from_file), cut and padded "
            "to state.max_length = {max_length} with [PAD] = 0: int64 [n, up to {max_length}]",
    "image": "images converted to {channels} channel(s), resized to {height}x{width}, scaled to 0-1 and "
             "standardised per channel: (x / 255 - state.mean[c]) / state.std[c], float32 [n, {channels}, {height}, "
             "{width}]",
}


def hand_over(reg, mv, fmt: str, dest: str | Path) -> Path:
    """A folder for another team: the ``fmt`` artefact of version ``mv``, its ``preprocess.json`` (and
    ``tokenizer.json``), and a README of its inputs and outputs. Files are checked against their sha256.

    Raises:
        ConfigError: an unknown format, a non-empty ``dest``, or a version without that artefact (with the
            reason recorded at registration).
    """
    from atoll.errors import ConfigError

    if fmt == HF_FORMAT or HF_FORMAT in mv.exports:
        return _hand_over_hf(reg, mv, fmt, Path(dest))
    if fmt not in FILES:
        raise ConfigError(f"--format {fmt!r}: choose {' or '.join(FILES)} (or hf, for a language model).")
    recorded = mv.exports.get(fmt) or {}
    if FILES[fmt] not in mv.files:
        why = recorded.get("error") or "it was registered before Atoll exported models"
        raise ConfigError(f"{mv.ref} has no {FILES[fmt]}: {why}.")
    dest = Path(dest)
    _empty_folder(dest)
    names = [FILES[fmt], PREPROCESS_FILE] + ([TOKENIZER_FILE] if TOKENIZER_FILE in mv.files else [])
    for name in names:
        (dest / name).write_bytes(reg.read_file(mv, name))
    pre = json.loads((dest / PREPROCESS_FILE).read_text())
    (dest / "README.md").write_text(_readme(mv, fmt, pre, recorded))
    return dest


def _empty_folder(dest: Path) -> None:
    from atoll.errors import ConfigError

    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(f"--output {dest}: exists and is not an empty folder; choose a new one.")
    dest.mkdir(parents=True, exist_ok=True)


def _hand_over_hf(reg, mv, fmt: str, dest: Path) -> Path:
    """A language model's Hugging Face folder (``hf/`` of the version) as it is: Transformers' ``from_pretrained``,
    vLLM, TGI and llama.cpp's converters take it without Atoll.

    Raises:
        ConfigError: a format other than hf for a language model, hf for another model, or a non-empty ``dest``.
    """
    from atoll.errors import ConfigError

    prefix = f"{HF_FORMAT}/"
    files = [f for f in sorted(mv.files) if f.startswith(prefix)]
    if fmt != HF_FORMAT:
        raise ConfigError(f"--format {fmt!r}: {mv.ref} is a language model; export it with --format hf "
                          f"(a Hugging Face folder).")
    if not files:
        raise ConfigError(f"--format hf: {mv.ref} is not a language model (it has no Hugging Face folder); "
                          f"choose {' or '.join(FILES)}.")
    _empty_folder(dest)
    for name in files:  # names from a checked manifest; read_file verifies each one's sha256
        (dest / name[len(prefix):]).write_bytes(reg.read_file(mv, name))
    return dest


def _readme(mv, fmt: str, pre: dict[str, Any], recorded: dict[str, Any]) -> str:
    schema, state = pre["input_schema"], pre["state"]
    kind = schema.get("input_kind", "table")
    channels, height, width = (schema.get("image_shape") or [1, 0, 0])
    if kind == "table" and schema.get("dtype") == "mixed":
        kind = "mixed"
    steps = _STEPS.get(kind, _STEPS["table"]).format(features=schema.get("num_features"), width=width,
                                                     input_dim=schema.get("input_dim"),
                                                     max_length=state.get("max_length"), channels=channels, height=height)
    classes = state.get("classes") or []
    if classes:
        output = (f"`{OUTPUT_NAME}`: float32 [n, {len(classes)}] logits; the predicted class is `state.classes[argmax]` "
                  f"({', '.join(map(str, classes[:12]))}{' …' if len(classes) > 12 else ''}); softmax gives probabilities")
    else:
        output = (f"`{OUTPUT_NAME}`: float32 [n, 1], the standardised value; the prediction is "
                  f"`output * state.target_std + state.target_mean`")
    run = ("```python\nimport json, numpy as np, onnxruntime\npre = json.load(open('preprocess.json'))\n"
           "session = onnxruntime.InferenceSession('model.onnx')\nlogits = session.run(['outputs'], {'inputs': x})[0]\n```"
           if fmt == "onnx" else
           "```python\nimport torch\nprogram = torch.export.load('model.pt2').module()\nlogits = program(x)\n```")
    return (f"# {mv.ref} ({pre['task']}) as {FILES[fmt]}\n\n"
            f"Exported by Atoll from registry version {mv.ref}; it needs neither Atoll nor the model's code"
            f" ({'onnxruntime and numpy' if fmt == 'onnx' else 'torch'} only"
            f"{', and `tokenizers` for the tokenizer' if kind == 'text' else ''}).\n\n"
            f"- Input `{INPUT_NAME}`: {steps}. The batch size (and for text the sequence length) is dynamic.\n"
            f"- Output {output}.\n"
            f"- Parity at registration: largest absolute difference from the PyTorch model "
            f"{recorded.get('max_abs_diff', float('nan')):.3g} on {recorded.get('examples', 0)} held-out examples "
            f"(tolerance {recorded.get('tolerance', TOLERANCE):g}).\n"
            f"- `preprocess.json` holds the fitted state (`state`) and the request schema (`input_schema`).\n\n{run}\n")
