"""Checkpoints: a directory with ``model.safetensors``, ``optim.pt`` and ``atoll.json``, written and read here.

The model's weights are safetensors (plain tensors, no pickle: what the registry keeps and replicas load);
the optimiser's state, a nested structure only training reads back, is ``torch.save``'d and read with
``weights_only=True``. Checkpoints of older Atoll (``model.pt``) still load.

The file names, the request schema recorded in ``atoll.json``, and the save/restore of model and optimiser
state for any model (plain, DDP or FSDP). The training loop writes checkpoints with these functions; the
registry, ``atoll runs`` and serving read the same files, so the layout lives in one place.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from atoll import data, tasks
from atoll.specs import TrainSpec

MODEL_FILE, OPTIM_FILE, META_FILE = "model.safetensors", "optim.pt", "atoll.json"
LEGACY_MODEL_FILE = "model.pt"


def input_schema(spec: TrainSpec, pre: data.Preprocessor) -> dict[str, Any]:
    """What a request must look like (named features, their shape and dtype, the classes), as the spec's task
    says; recorded in ``atoll.json`` and with the version."""
    return tasks.get(spec.task).input_schema(pre, spec.model.model_dump(mode="json"))


def load_model_state(path: str | Path) -> dict[str, Any]:
    """The model's state dict of a checkpoint directory: ``model.safetensors``, else an older ``model.pt``."""
    path = Path(path)
    if (path / MODEL_FILE).exists():
        from safetensors.torch import load_file

        return load_file(path / MODEL_FILE)
    import torch

    return torch.load(path / LEGACY_MODEL_FILE, map_location="cpu", weights_only=True)


def load_checkpoint_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """(model state, optimiser state or None, metadata) from a checkpoint directory (weights only)."""
    import torch

    path = Path(path)
    model_state = load_model_state(path)
    optim_state = None
    if (path / OPTIM_FILE).exists():
        optim_state = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=True)
    return model_state, optim_state, json.loads((path / META_FILE).read_text())


def save_training_state(model, optimizer, directory: str | Path, *, rank: int) -> None:
    """Write ``model.safetensors`` (the unwrapped model's full state dict, what serving loads) and ``optim.pt``
    (the optimiser's, keyed by parameter name) to ``directory`` on rank 0.

    Any model: plain, DDP or FSDP. Collective under FSDP: every rank must call it.
    """
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # Offload gathers to host memory on rank 0 only; on a CPU device FSDP's offload frees the very storage
    # it copies from (empty tensors, or a segfault with use_orig_params), and the tensors are in host
    # memory already, so there every rank gathers the full state and only rank 0 writes it.
    on_cpu = next(model.parameters()).device.type == "cpu"
    options = StateDictOptions(full_state_dict=True, cpu_offload=not on_cpu)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if rank == 0:
        from safetensors.torch import save_file

        # Own, contiguous storage per tensor: safetensors refuses views and tensors that share memory.
        save_file({k: v.detach().contiguous().clone() for k, v in model_state.items()}, Path(directory) / MODEL_FILE)
        torch.save(optim_state, Path(directory) / OPTIM_FILE)


def load_training_state(model, optimizer, directory: str | Path) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote into the (wrapped) model and its optimiser, on every
    rank (collective under FSDP). Returns the checkpoint's metadata."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    model_state, optim_state, meta = load_checkpoint_dir(directory)
    options = StateDictOptions(full_state_dict=True)  # every rank holds the full files; each keeps its shard
    if optim_state is None:
        # Older Atoll wrote no optimiser state for FSDP runs: say so rather than continue as if restored.
        set_model_state_dict(model, model_state, options=options)
        print(f"atoll: warning: checkpoint {directory} has no optimiser state; the optimiser starts afresh.",
              file=sys.stderr, flush=True)
    elif any(isinstance(p, int) for group in optim_state["param_groups"] for p in group["params"]):
        # Older Atoll saved optimizer.state_dict() (parameter ids, not names) for unsharded models.
        set_model_state_dict(model, model_state, options=options)
        optimizer.load_state_dict(optim_state)
    else:
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=options)
    return meta
