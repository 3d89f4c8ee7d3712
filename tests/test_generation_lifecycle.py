"""A language model through the whole lifecycle on the real cluster: trained from a config on the shipped corpus,
registered as a Hugging Face folder, served with OpenAI's API to the official `openai` client (streamed and not),
exported and reloaded by Transformers alone, completing a file of prompts with `atoll predict`; and a LoRA
fine-tune of a local pretrained folder going the same way."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, SMALL_APP, run_cli

pytestmark = pytest.mark.cluster

SMS = REPO / "platform" / "atoll" / "datasets" / "sms_spam.csv.gz"
ASK = [{"role": "user", "content": "Write a text message to a friend."}]


def openai_client(app: dict):
    import openai

    return openai.OpenAI(base_url=f"{app['url']}/v1", api_key="none", max_retries=0, timeout=60)


def test_the_trained_model_records_its_perplexity_and_streams_a_chat_through_the_openai_client(trained_writer,
                                                                                                writer_app):
    metrics = trained_writer["registered"]["metrics"]
    # better than guessing among the vocabulary (800 tokens) by far: the model learnt the corpus
    assert 1 < metrics["val_perplexity"] < 200, metrics
    client = openai_client(writer_app)
    assert [m.id for m in client.models.list().data] == [trained_writer["registered"]["name"]]
    whole = client.chat.completions.create(model="sms-writer", messages=ASK, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="sms-writer", messages=ASK, max_tokens=16, temperature=0,
                                                 stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content and streamed == whole.choices[0].message.content
    assert whole.usage.completion_tokens <= 16 and whole.choices[0].finish_reason in ("stop", "length")


def test_the_exported_folder_gives_the_endpoints_greedy_reply_with_transformers_alone(trained_writer, writer_app,
                                                                                     tmp_path):
    ref = f"sms-writer:{trained_writer['registered']['version']}"
    done = run_cli("models", "export", ref, "--format", "hf", "-o", str(tmp_path / "hf"), "--json")
    assert done.returncode == 0, done.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= \
        set(json.loads(done.stdout)["files"])
    reply = openai_client(writer_app).chat.completions.create(model="sms-writer", messages=ASK, max_tokens=12,
                                                              temperature=0).choices[0].message.content
    script = ("import json, sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              "t = AutoTokenizer.from_pretrained(sys.argv[1]); m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
              "ids = t.apply_chat_template(json.loads(sys.argv[2]), add_generation_prompt=True, return_tensors='pt',"
              " return_dict=True)\n"
              "out = m.generate(**ids, max_new_tokens=12, do_sample=False)\n"
              "print(json.dumps(t.decode(out[0][ids['input_ids'].shape[1]:], skip_special_tokens=True)))")
    fresh = subprocess.run([sys.executable, "-c", script, str(tmp_path / "hf"), json.dumps(ASK)], capture_output=True,
                           text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin"})
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == reply


def test_atoll_predict_completes_a_file_of_prompts_in_its_order(trained_writer, tmp_path):
    prompts = pd.DataFrame({"id": [7, 3, 9], "messages": [ASK, [{"role": "user", "content": "Write a spam text "
                                                                 "message."}], ASK]})
    prompts.to_parquet(tmp_path / "prompts.parquet")
    out = tmp_path / "completions.parquet"
    done = run_cli("predict", "sms-writer", "-i", str(tmp_path / "prompts.parquet"), "-o", str(out),
                   "--max-tokens", "8", "--json", timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = pd.read_parquet(out)
    assert table["id"].tolist() == [7, 3, 9] and "messages" not in table.columns
    assert table["completion"].str.len().gt(0).all() and table["completion_tokens"].le(8).all()
    assert table["completion"][0] == table["completion"][2]  # greedy: the same prompt, the same completion


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory) -> str:
    """A small pretrained model as a team keeps one on disk: save_pretrained of a GPT-2-style model and its tokenizer."""
    from atoll import models, tasks
    from atoll.data import DatasetPlan
    from atoll.train.generation import save_hf_folder

    texts = pd.read_csv(SMS, dtype=str)["text"].head(400)

    class Rows:
        def iter_batches(self, batch_format, batch_size):
            yield pd.DataFrame({"text": texts})

    task = tasks.get("text-generation")
    plan = DatasetPlan(uri="mem", format="parquet", features=["text"], label="", rows=400, fingerprint="",
                       kinds={"shape": "text"})
    state = task.fit(Rows(), plan, {"vocab_size": 400, "context_length": 64})
    model = models.build("hf-causal-lm", state.input_dim, state.vocab_size,
                         task.model_params(state, {"arch": "gpt2", "layers": 1, "hidden": 32, "heads": 2}))
    folder = tmp_path_factory.mktemp("base-model")
    save_hf_folder(model, state, folder)
    return str(folder)


def test_a_lora_fine_tune_of_a_local_pretrained_folder_registers_a_merged_model_and_serves_it(pretrained_folder,
                                                                                             tmp_path):
    from atoll import cluster, registry
    from atoll.serving import endpoints
    from safetensors import safe_open

    sms = pd.read_csv(SMS, dtype=str).head(300)
    pairs = pd.DataFrame({"prompt": ["Spam: " if label == "spam" else "Text: " for label in sms["label"]],
                          "completion": sms["text"]})
    pairs.to_parquet(tmp_path / "pairs.parquet")
    spec = {"name": "sms-lora", "task": "text-generation",
            "dataset": {"path": str(tmp_path / "pairs.parquet"), "validation_fraction": 0.2},
            "model": {"type": "hf-causal-lm", "params": {"pretrained": pretrained_folder,
                                                          "lora": {"r": 4, "alpha": 8}}},
            "optimizer": {"name": "adamw", "lr": 0.01}, "epochs": 1, "batch_size": 8, "num_workers": 1}
    (tmp_path / "lora.yaml").write_text(json.dumps(spec))
    done = run_cli("train", str(tmp_path / "lora.yaml"), "--run-name", "t-lora", "--json", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    version = json.loads(done.stdout)["registered"]["version"]
    reg = registry.Registry(cluster.load_spec().atoll.storage)
    local = reg.local_copy(reg.get(f"sms-lora:{version}"), tmp_path / "v")
    with safe_open(f"{local}/hf/model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert names and not any("lora" in n for n in names)  # the adapter is merged: a plain GPT-2 folder
    deployed = run_cli("serve", "deploy", f"sms-lora:{version}", "--app", "lora", *SMALL_APP, "--json", timeout=400)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    try:
        app = json.loads(deployed.stdout)
        answer = openai_client(app).completions.create(model="sms-lora", prompt="Text: ", max_tokens=8, temperature=0)
        assert answer.choices[0].text and answer.usage.prompt_tokens > 0
    finally:
        endpoints.delete("lora")
