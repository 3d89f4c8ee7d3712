"""Registering a language model (``task: text-generation``): the version holds it in Hugging Face's folder format.

``hf/`` inside the version is what ``save_pretrained`` writes (``config.json``, ``model.safetensors``,
``generation_config.json``) and the tokenizer's files (``tokenizer.json``, ``tokenizer_config.json``, the chat
template), a LoRA adapter already merged into the weights: Transformers, vLLM, TGI and llama.cpp's converters
take the folder as it is, and serving (:mod:`atoll.serving.generation`) loads nothing else. The training
checkpoint's own ``model.safetensors`` is not kept beside it (the same weights twice). The folder is checked at
registration: reloaded with ``from_pretrained``, its logits on held-out prompts must equal the trained model's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from atoll import models, tasks
from atoll.specs import TrainSpec
from atoll.tasks.generation import GenerationState, _messages

log = logging.getLogger(__name__)

HF_DIR = "hf"
#: largest |difference| between the reloaded folder's logits and the trained model's (float32, same kernels)
TOLERANCE = 1e-4
#: new tokens a generation takes where the request names none (generation_config.json's max_new_tokens)
DEFAULT_NEW_TOKENS = 64


def save_hf_folder(model, state: GenerationState, folder: Path) -> None:
    """``model`` (a :class:`atoll.models.CausalLM`) and its tokenizer as one Hugging Face folder."""
    from transformers import GenerationConfig

    lm = model.merged()
    lm.config.eos_token_id = state.eos_id
    lm.config.pad_token_id = state.pad_id
    lm.generation_config = GenerationConfig(
        eos_token_id=state.stop_ids or [state.eos_id], pad_token_id=state.pad_id, bos_token_id=state.bos_id,
        max_new_tokens=DEFAULT_NEW_TOKENS, do_sample=False)
    lm.save_pretrained(folder, max_shard_size="1000GB")  # one weights file, whatever the size
    state.tokenizer().save_pretrained(folder)


def example_prompts(state: GenerationState, examples: list[dict[str, Any]]) -> list[str]:
    """The held-out examples as the prompt texts a model is asked to continue (chats through their template)."""
    tok = state.tokenizer()
    out = []
    for ex in examples:
        if "messages" in ex:
            out.append(tok.apply_chat_template(ex["messages"], tokenize=False, add_generation_prompt=True))
        else:
            out.append(ex["prompt"])
    return out or ["The"]


def parity(model, folder: Path, state: GenerationState, prompts: list[str]) -> float:
    """Largest |difference| between the trained model's logits and the saved folder's, over ``prompts``."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tok, worst = state.tokenizer(), 0.0
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"][-state.context_length:] or
                                [state.eos_id]])
            worst = max(worst, float((model(ids) - reloaded(input_ids=ids).logits).abs().max()))
    return worst


def export_artefacts(version_dir: Path, spec: TrainSpec, meta: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Write ``hf/`` into a version being registered (and drop the checkpoint's raw weights); returns what the
    manifest records under ``exports``: ``{"hf": {"file", "max_abs_diff", "tolerance", "examples"}}``."""
    from atoll.train.checkpoints import MODEL_FILE, load_model_state

    task = tasks.get(spec.task)
    state = task.state_from_dict(meta["preprocess"])
    model = models.build(spec.model.type, state.input_dim, task.out_dim(state),
                         task.model_params(state, spec.model.params))
    model.load_state_dict(load_model_state(version_dir))
    model.eval()
    folder = version_dir / HF_DIR
    save_hf_folder(model, state, folder)
    examples_file = version_dir / "examples.json"
    examples = json.loads(examples_file.read_text()).get("examples", []) if examples_file.exists() else []
    diff = parity(model, folder, state, example_prompts(state, examples)[:4])
    (version_dir / MODEL_FILE).unlink()  # hf/model.safetensors holds the same weights (merged, for LoRA)
    if not diff <= TOLERANCE:
        log.warning("the saved folder's logits differ from the trained model's by %.3g", diff)
    return {"hf": {"file": f"{HF_DIR}/", "max_abs_diff": diff, "tolerance": TOLERANCE,
                   "examples": len(examples)}}


def pick_examples(spec: dict[str, Any], state: GenerationState, storage: str, n: int = 6) -> list[dict[str, Any]]:
    """Up to ``n`` rows of the validation split as prompts with their reference answers: a chat up to its last
    assistant turn, a prompt and its completion, or a document's first words and the rest."""
    import pyarrow.dataset as pads

    from atoll import data, filesystems
    from atoll.errors import DataError

    ds_spec = spec["dataset"]
    uri = data.resolve_path(ds_spec["path"], storage)
    fs, path = filesystems.resolve(uri, DataError)
    keep = data.SplitFilter(state.features, float(ds_spec.get("validation_fraction", 0.2)), "validation",
                            int(spec.get("seed", 0)))
    fmt = data.file_format(data.detect_format(uri, ds_spec.get("format", "auto")))
    picked: list[dict[str, Any]] = []
    for batch in pads.dataset(path, filesystem=fs, format=fmt).to_batches(columns=state.features):
        for i, row in enumerate(keep(batch.to_pandas()).to_dict("records")):
            if state.format == "chat":
                turns = _messages(row[state.features[0]], f"row {i}")
                last = max((j for j, t in enumerate(turns) if t["role"] == "assistant"), default=None)
                if last:
                    picked.append({"messages": turns[:last], "reference": turns[last]["content"]})
            elif state.format == "prompt-completion":
                picked.append({"prompt": str(row[state.features[0]]), "reference": str(row[state.features[1]])})
            else:
                words = str(row[state.features[0]]).split()
                if len(words) >= 4:
                    picked.append({"prompt": " ".join(words[:3]), "reference": " ".join(words[3:])})
            if len(picked) >= n:
                return picked
    return picked


def add_examples(version_dir: Path, meta: dict[str, Any], storage: str) -> dict[str, Any]:
    """``examples.json`` for the chat playground (never fails a registration); returns the input schema."""
    from atoll.serving.playground import EXAMPLES_FILE

    schema = dict(meta["input_schema"])
    try:
        if meta["spec"]["dataset"]["path"] is not None:
            state = GenerationState.from_dict(meta["preprocess"])
            examples = pick_examples(meta["spec"], state, storage)
            (version_dir / EXAMPLES_FILE).write_text(json.dumps({"format": state.format, "examples": examples}))
    except Exception as exc:  # noqa: BLE001 - a showcase nicety must never fail a registration
        log.warning("no held-out examples stored with the version: %s", exc)
    return schema
