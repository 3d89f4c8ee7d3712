"""Language models (``task: text-generation``): the data's three shapes, what is learnt, packing, the model from a
config or a pretrained folder with LoRA, and the Hugging Face folder a version keeps. No cluster here; the
lifecycle on the real cluster is in test_generation_lifecycle.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from atoll import models, tasks
from atoll.data import DatasetPlan, _row_bucket
from atoll.errors import ConfigError, DataError
from atoll.tasks.generation import IGNORE, _shape

TASK = tasks.get("text-generation")
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "call me when you get home", "see you at the station",
         "win a free prize now", "the train is late again"] * 5


class Batches:
    """What a task's fit reads: a Ray Dataset's ``iter_batches`` (here over a pandas frame)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def iter_batches(self, batch_format: str, batch_size: int):
        for start in range(0, len(self.frame), batch_size):
            yield self.frame.iloc[start:start + batch_size]


def fitted(frame: pd.DataFrame, features: list[str], shape: str, **params):
    plan = DatasetPlan(uri="mem", format="parquet", features=features, label="", rows=len(frame), fingerprint="",
                       kinds={"shape": shape})
    return TASK.fit(Batches(frame), plan, {"vocab_size": 300, "context_length": 32, **params})


@pytest.fixture(scope="module")
def chats() -> pd.DataFrame:
    return pd.DataFrame({"messages": [[{"role": "user", "content": f"say {t.split()[1]}"},
                                       {"role": "assistant", "content": t}] for t in TEXTS]})


def test_the_shape_is_found_from_the_columns_and_an_ambiguous_table_is_refused_with_the_fix():
    assert _shape({"messages": "list<element: struct<role: string>>"}, None, "label", "u") == ("chat", ["messages"])
    assert _shape({"prompt": "string", "completion": "string", "id": "int64"}, None, "label", "u") == \
        ("prompt-completion", ["prompt", "completion"])
    assert _shape({"text": "string", "label": "string"}, None, "label", "u") == ("text", ["text"])
    with pytest.raises(DataError, match="Set dataset.features"):
        _shape({"title": "string", "body": "string"}, None, "label", "u")
    with pytest.raises(DataError, match="not text"):
        _shape({"n": "int64"}, ["n"], "label", "u")
    with pytest.raises(DataError, match="do not exist"):
        _shape({"text": "string"}, ["txt"], "label", "u")


def test_a_chat_learns_only_the_assistants_turns_and_the_end(chats):
    state = fitted(chats, ["messages"], "chat")
    tok = state.tokenizer()
    ids, targets = state.chat_tokens(chats["messages"][0], "row 0")
    learnt = tok.decode([t for t in targets if t != IGNORE])
    assert learnt == TEXTS[0] + "<|im_end|>\n<|endoftext|>"
    assert "say" not in learnt and tok.decode(ids).startswith("<|im_start|>user\nsay cat")
    assert state.stop_ids == [state.eos_id, tok.convert_tokens_to_ids("<|im_end|>")]


def test_prompt_completion_learns_the_completion_and_rows_pack_into_full_blocks():
    frame = pd.DataFrame({"prompt": [f"Q{i}: " for i in range(len(TEXTS))], "completion": TEXTS})
    state = fitted(frame, ["prompt", "completion"], "prompt-completion")
    ids, targets = state.row_tokens(frame.iloc[0].to_dict(), "row 0")
    tok = state.tokenizer()
    assert tok.decode([t for t in targets if t != IGNORE]) == TEXTS[0] + "<|endoftext|>"
    packed = state(frame)
    total = sum(len(state.row_tokens(r, "r")[0]) for r in frame.to_dict("records"))
    assert packed["x"].shape == (math.ceil(total / 32), 32)
    assert (packed["x"].reshape(-1)[:total] != state.pad_id).sum() >= total - len(frame)  # only the tail pads
    assert (packed["y"].reshape(-1)[total:] == IGNORE).all()


def test_a_chat_column_splits_the_same_way_every_time(chats):
    buckets = _row_bucket(chats)
    assert (buckets == _row_bucket(chats.copy())).all() and len(set(buckets.tolist())) > 1


def test_loss_and_perplexity_are_per_learnt_token_and_the_model_learns():
    frame = pd.DataFrame({"text": TEXTS})
    state = fitted(frame, ["text"], "text")
    params = TASK.model_params(state, {"layers": 1, "hidden": 32, "heads": 2})
    torch.manual_seed(0)
    model = models.build("hf-causal-lm", state.input_dim, TASK.out_dim(state), params)
    batch = state(frame)
    x, y = torch.as_tensor(batch["x"]), torch.as_tensor(batch["y"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = TASK.loss(model(x), y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(x)
        figures = TASK.metrics(TASK.batch_sums(out, y, TASK.loss(out, y), state).tolist(), state)
    assert figures["perplexity"] == pytest.approx(math.exp(figures["loss"]), rel=1e-4)
    assert figures["loss"] < first / 2 and figures["token_accuracy"] > 0.5
    empty = TASK.batch_sums(torch.zeros((0, state.vocab_size)), torch.zeros(0, dtype=torch.int64), None, state)
    assert empty.tolist() == [0.0, 0.0, 0.0]


def test_a_wrong_model_config_is_one_line_naming_the_field():
    with pytest.raises(ConfigError, match="model.params.hidden"):
        models.build("hf-causal-lm", 100, 100, {"hidden": 30, "heads": 4})
    with pytest.raises(ConfigError, match="model.params.arch"):
        models.build("hf-causal-lm", 100, 100, {"arch": "bert"})
    with pytest.raises(ConfigError, match="set model.params.pretrained"):
        models.build("hf-causal-lm", 100, 100, {"lora": {"r": 4}})
    with pytest.raises(ConfigError, match="not a local directory"):
        models.build("hf-causal-lm", 100, 100, {"pretrained": "/nope/model"})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A small "pretrained" model folder as a team keeps one (save_pretrained of a model and its tokenizer)."""
    from atoll.tasks.generation import load_tokenizer
    from atoll.train.generation import save_hf_folder

    frame = pd.DataFrame({"text": TEXTS})
    state = fitted(frame, ["text"], "text")
    model = models.build("hf-causal-lm", state.input_dim, state.vocab_size,
                         TASK.model_params(state, {"layers": 1, "hidden": 32, "heads": 2, "arch": "gpt2"}))
    folder = tmp_path_factory.mktemp("pretrained")
    save_hf_folder(model, state, folder)
    assert load_tokenizer(state.tokenizer_files).eos_token == "<|endoftext|>"
    return str(folder)


def test_lora_trains_an_adapter_on_frozen_weights_and_merges_into_the_same_function(pretrained):
    frame = pd.DataFrame({"prompt": ["Q: "] * 6, "completion": TEXTS[:6]})
    state = fitted(frame, ["prompt", "completion"], "prompt-completion", pretrained=pretrained)
    assert json.loads(state.model_config)["model_type"] == "gpt2"
    params = TASK.model_params(state, {"pretrained": pretrained, "lora": {"r": 4, "alpha": 8}})
    model = models.build("hf-causal-lm", state.input_dim, state.vocab_size, params)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = state(frame)
    x, y = torch.as_tensor(batch["x"]), torch.as_tensor(batch["y"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = TASK.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    with torch.no_grad():
        before = model(x)
        # a replica or registration elsewhere: the architecture from the recorded config, every weight from the state
        rebuilt = models.build("hf-causal-lm", state.input_dim, state.vocab_size,
                               {**params, "pretrained": "/not/on/this/node"})
        rebuilt.load_state_dict(model.state_dict())
        merged = rebuilt.merged()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        assert torch.allclose(merged(input_ids=x).logits, before, atol=1e-5)
    with pytest.raises(ConfigError, match="model.params.lora"):
        models.build("hf-causal-lm", state.input_dim, state.vocab_size, {**params, "lora": {"rank": 4}})


def test_the_saved_folder_loads_with_transformers_alone_in_a_fresh_interpreter(pretrained):
    """What `atoll models export --format hf` hands over: config, safetensors weights, tokenizer, generation config."""
    script = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig\n"
              "t = AutoTokenizer.from_pretrained(sys.argv[1]); m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
              "g = GenerationConfig.from_pretrained(sys.argv[1])\n"
              "out = m.generate(**t('the cat', return_tensors='pt'), max_new_tokens=5, do_sample=False)\n"
              "print(g.eos_token_id, out.shape[1], 'atoll' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, pretrained], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    eos, length, atoll_loaded = done.stdout.split()[-3:]
    assert int(length) > 2 and atoll_loaded == "False" and eos.strip("[],").isdigit()


def test_a_generation_spec_validates_and_refuses_table_options():
    from atoll.specs import TrainSpec

    spec = TrainSpec.model_validate({"name": "w", "task": "text-generation", "dataset": {"path": "demo:sms_chat"},
                                     "model": {"type": "hf-causal-lm"}})
    assert spec.task == "text-generation" and "val_perplexity" in TASK.reported_metrics()
    assert TASK.mode_of("val_perplexity") == "min" and "tokens_per_s" in TASK.reported_metrics()
    with pytest.raises(ConfigError, match="hf-causal-lm"):
        TASK.check_model("mlp")
    np.testing.assert_array_equal(TASK.objective, ("val_loss", "min"))


def test_the_engine_is_vllm_only_on_gpus_with_vllm_and_its_config_comes_from_the_version():
    from atoll.serving import llm_engine
    from atoll.specs import ServeSettings

    choose = llm_engine.choose_engine
    assert choose("auto", cluster_gpus=1, vllm_available=True) == "vllm"
    assert choose("auto", cluster_gpus=0, vllm_available=True) == "transformers"
    assert choose("auto", cluster_gpus=8, vllm_available=False) == "transformers"
    assert choose("transformers", cluster_gpus=8, vllm_available=True) == "transformers"
    with pytest.raises(ConfigError, match="vLLM is not installed"):
        choose("vllm", cluster_gpus=1, vllm_available=False)
    assert llm_engine.vllm_installed() is False  # this machine: the CPU path is Transformers' generate

    settings = ServeSettings(min_replicas=1, max_replicas=3)
    local = llm_engine.llm_config(model_id="writer", version_uri="/data/registry/writer/versions/2",
                                  context_length=256, settings=settings, gpus_per_replica=1)
    assert local["model_loading_config"] == {"model_id": "writer", "model_source": "/data/registry/writer/versions/2/hf"}
    assert local["engine_kwargs"]["max_model_len"] == 256 and local["accelerator_config"] == {"kind": "gpu"}
    assert local["deployment_config"]["autoscaling_config"]["max_replicas"] == 3
    assert local["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    remote = llm_engine.llm_config(model_id="w", version_uri="s3://bucket/atoll/registry/w/versions/1",
                                   context_length=None, settings=settings, gpus_per_replica=0)
    assert remote["model_loading_config"]["model_source"] == {"bucket_uri": "s3://bucket/atoll/registry/w/versions/1/hf"}
    assert "max_model_len" not in remote["engine_kwargs"] and remote["accelerator_config"] == {"kind": "cpu"}
