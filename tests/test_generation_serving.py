"""A generative language model served with OpenAI's API: a tiny Llama and its byte-level BPE tokenizer, built and
trained here for a few seconds on six chats (so that its greedy replies are real sentences that end with the chat
template's end-of-turn token), registered as a text-generation version in Hugging Face's folder format, deployed
behind an API key with `atoll serve deploy`, and queried with the official ``openai`` client over real HTTP.

The tests without a cluster check the engine in-process (batched greedy equals one at a time, UTF-8 never split,
stop strings held back) and the request validation and stream shaping of atoll.serving.openai_api.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from conftest import APP_KEY as KEY
from conftest import SMALL_APP, run_cli

MODEL, APP = "tiny-chat", "tiny-chat"
CHATS = [
    ("Say hi", "Hello there! How are you today?"),
    ("What colour is the sky?", "The sky is blue on a clear day."),
    ("Comment ça va ?", "Ça va très bien, merci ! 🙂"),
    ("Count to five", "One, two, three, four, five."),
    ("Name a fruit", "A banana is a yellow fruit."),
    ("Write a haiku", "Quiet morning lake / a heron waits in the reeds / ripples carry light"),
]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CONTEXT = 128


def build_tiny_lm(folder: Path, *, steps: int = 150) -> Path:
    """A version folder as a text-generation training run leaves it: ``hf/`` (a 2-layer Llama, hidden 64, trained
    on :data:`CHATS`; a byte-level BPE tokenizer with a ChatML template; generation_config.json that stops at the
    end-of-turn token), ``atoll.json`` and ``examples.json``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([f"{q}\n{a}" for q, a in CHATS] * 20, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=CONTEXT, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None))
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in CHATS]
    rows = [tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False).input_ids for c in chats]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels, mask = torch.full((len(rows), width), -100), torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)], labels[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), torch.tensor(row), 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().generation_config = GenerationConfig(
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")], pad_token_id=tok.pad_token_id,
        max_new_tokens=32, do_sample=False)
    model.save_pretrained(folder / "hf")
    tok.save_pretrained(folder / "hf")
    schema = input_schema()
    (folder / "atoll.json").write_text(json.dumps({"input_schema": schema, "spec": spec()}))
    (folder / "examples.json").write_text(json.dumps({"format": "chat", "examples": [
        {"messages": [{"role": "user", "content": q}]} for q, _ in CHATS[:3]]}))
    return folder


def input_schema() -> dict:
    return {"task": "text-generation", "input_kind": "prompt", "output_kind": "text", "context_length": CONTEXT,
            "chat": True, "format": "chat", "features": ["messages"]}


def spec() -> dict:
    return {"name": MODEL, "task": "text-generation", "model": {"type": "hf-causal-lm", "params": {
        "arch": "llama", "layers": 2, "hidden": 64, "heads": 4, "context_length": CONTEXT}}}


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """The tiny chat model's version folder, built once per session."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def generator(tiny_lm):
    from atoll.serving.generation import Generator

    return Generator(tiny_lm, device="cpu")


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------------
# The engine in-process and the protocol's pure parts (no cluster)


def test_batched_greedy_equals_one_at_a_time_and_chats_end_at_the_end_of_turn(generator):
    prompts = [generator.chat_prompt(_chat(q)) for q, _ in CHATS[:4]]
    alone = [generator.complete([p], max_tokens=40)[0] for p in prompts]
    together = generator.complete(prompts, max_tokens=40)
    assert together == alone
    # Trained on these chats: the replies are the sentences, ended by <|im_end|> (finish "stop"), no special text.
    assert [a["text"] for a in alone] == [a for _, a in CHATS[:4]]
    assert {a["finish_reason"] for a in alone} == {"stop"}
    assert all(a["prompt_tokens"] == len(generator.chat_ids(_chat(q))) for a, (q, _) in zip(alone, CHATS, strict=False))
    # completion_tokens counts the end-of-turn token too: decoding all but it gives the text back
    tok = generator.tokenizer
    assert alone[0]["completion_tokens"] == len(tok(CHATS[0][1], add_special_tokens=False).input_ids) + 1


def test_a_row_stops_at_its_own_limit_and_at_its_stop_string(generator):
    prompt = generator.chat_prompt(_chat("Write a haiku"))
    short, full = generator.complete([prompt, prompt], max_tokens=3)[0], generator.complete([prompt], max_tokens=40)[0]
    assert (short["finish_reason"], short["completion_tokens"]) == ("length", 3)
    assert full["text"].startswith(short["text"]) and len(short["text"]) < len(full["text"])
    stopped = generator.complete([prompt], max_tokens=40, stop=["heron", "zzz"])[0]
    assert stopped == {**stopped, "text": "Quiet morning lake / a ", "finish_reason": "stop"}


def test_streamed_text_never_splits_a_utf8_character(generator):
    """Byte tokens fed one at a time: a 4-byte emoji arrives as 4 tokens, its text only with the last one."""
    from atoll.serving.generation import Row, _Rows

    vocab = generator.tokenizer.get_vocab()
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 byte characters of a byte-level BPE, in byte order
    byte_char = sorted(alphabet, key=lambda c: _byte_of(c))
    text = "é🙂日本!"
    tokens = [vocab[byte_char[b]] for b in text.encode()]
    emitted: list[list] = []
    rows = _Rows(generator, [Row([1], max_tokens=len(tokens))], [0], emitted.append, prompt_length=1)
    import torch

    for step, token in enumerate(tokens, start=1):
        rows.advance(step, torch.tensor([token]))
        rows.flush()
    pieces = [d.text for batch in emitted for d in batch if d.text]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[:2] == ["é", "🙂"]  # each character whole, as soon as its last byte came
    assert emitted[-1][-1].finish_reason == "length"


def _byte_of(char: str) -> int:
    """The byte a byte-level BPE alphabet character stands for (GPT-2's bytes_to_unicode, inverted)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(extra)}
    return table[char]


def test_stop_strings_are_held_back_until_they_cannot_match():
    from atoll.serving.generation import Row, Sampling, group_rows, held_back

    assert held_back("the end is ne", ["near", "x"]) == 2
    assert held_back("abc", ["zz"]) == 0 and held_back("ab", ["abc", "b"]) == 2
    rows = [Row([1], 4), Row([1], 4, Sampling(0.7)), Row([1], 4), Row([1], 4, Sampling(0.7, 1.0, 5), request=1),
            Row([1], 4, Sampling(0.7, 1.0, 5), request=2), Row([1], 4, Sampling(0.7))]
    assert group_rows(rows) == [[0, 2], [1, 5], [3], [4]]


def test_a_prompt_longer_than_the_context_is_a_400_that_says_so(generator):
    from atoll.serving.generation import GenerationRequestError

    with pytest.raises(GenerationRequestError) as caught:
        generator.complete(["word " * 200], max_tokens=10)
    assert caught.value.status == 400 and caught.value.code == "context_length_exceeded"
    assert f"maximum context length is {CONTEXT} tokens" in caught.value.message


@pytest.mark.parametrize("payload,param,code,words", [
    ({"model": "m"}, "messages", "missing_required_parameter", "Missing required parameter: 'messages'"),
    ({"model": "m", "messages": []}, "messages", "empty_array", "empty array"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature",
     "decimal_above_max_value", "Expected a value <= 2, but got 5"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens",
     "integer_below_min_value", "Expected a value >= 1, but got -1"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "invalid_value",
     "'wizard'"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop",
     "array_above_max_length", "maximum length 4"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, "frobnicate",
     "unknown_parameter", "Unrecognized request argument supplied: frobnicate"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs",
     "unsupported_parameter", "not supported"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}},
     "stream_options", "invalid_value", "only allowed when 'stream' is enabled"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0}, "n", "integer_below_min_value",
     ">= 1"),
])
def test_bad_chat_requests_get_openais_error_naming_the_parameter(payload, param, code, words):
    from atoll.serving import openai_api

    with pytest.raises(openai_api.OpenAIError) as caught:
        openai_api.parse_chat(payload)
    body = caught.value.body()["error"]
    assert caught.value.status == 400 and body["type"] == "invalid_request_error"
    assert (body["param"], body["code"]) == (param, code) and words in body["message"], body


def test_completion_requests_take_openais_prompt_shapes():
    from atoll.serving import openai_api

    assert openai_api.parse_completion({"model": "m", "prompt": "Hi"}).prompts() == ["Hi"]
    assert openai_api.parse_completion({"model": "m", "prompt": ["a", "b"]}).prompts() == ["a", "b"]
    assert openai_api.parse_completion({"model": "m", "prompt": [5, 6]}).prompts() == [[5, 6]]
    req = openai_api.parse_completion({"model": "m", "prompt": "x", "temperature": 0, "seed": 3, "stop": "\n"})
    assert req.sampling().greedy and req.sampling().seed is None and req.stops() == ("\n",)
    with pytest.raises(openai_api.OpenAIError, match="Missing required parameter: 'prompt'"):
        openai_api.parse_completion({"model": "m"})
    with pytest.raises(openai_api.OpenAIError, match="could not parse the JSON body"):
        openai_api.decode_body(b'{"model": ')


def test_a_chat_stream_has_openais_chunks_in_order():
    from atoll.serving import openai_api

    w = openai_api.ChunkWriter(chat=True, rid="chatcmpl-1", created=7, model="m", include_usage=True)
    raw = w.start(2) + w.text(0, "Hé") + w.text(1, "A") + w.finish(0, "stop") + w.finish(1, "length") + \
        w.usage(5, 3) + openai_api.DONE
    events = openai_api.parse_sse(raw)
    assert raw.count(b"\n\n") == len(events) == 8 and events[-1] == "[DONE]"
    assert [e["choices"][0]["delta"] for e in events[:2]] == [{"role": "assistant", "content": ""}] * 2
    assert events[2]["choices"][0] == {"index": 0, "delta": {"content": "Hé"}, "logprobs": None, "finish_reason": None}
    assert events[4]["choices"][0]["finish_reason"] == "stop" and events[4]["choices"][0]["delta"] == {}
    assert all(e["object"] == "chat.completion.chunk" and e["usage"] is None for e in events[:6])
    assert events[6]["choices"] == [] and events[6]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3,
                                                                 "total_tokens": 8}
    plain = openai_api.parse_sse(openai_api.ChunkWriter(chat=False, rid="c", created=1, model="m").text(0, "x"))
    assert plain[0]["object"] == "text_completion" and plain[0]["choices"][0]["text"] == "x" and "usage" not in plain[0]


# ------------------------------------------------------------------------------------------------
# Served on the cluster, behind a key, through the openai client


@pytest.fixture(scope="session")
def lm_app(ray_cluster, tiny_lm):
    """The tiny model registered as `tiny-chat` and deployed behind the API key KEY as app `tiny-chat`, once per
    session (the chat playground's browser test uses it too); removed at the end."""
    from atoll import registry
    from atoll.serving import endpoints

    version = registry.Registry(os.environ["ATOLL_STORAGE"]).register(
        MODEL, tiny_lm, metrics={"val_loss": 0.12, "val_perplexity": 1.13}, spec=spec(), lineage={},
        input_schema=input_schema())
    result = run_cli("serve", "deploy", f"{MODEL}:{version.version}", "--app", APP, *SMALL_APP, "--log-requests", "1",
                     "--json", env={"ATOLL_API_KEY": KEY}, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    assert (info["status"], info["keyed"]) == ("RUNNING", True)
    yield info
    if APP in {a["app"] for a in endpoints.status()}:
        endpoints.delete(APP)


@pytest.fixture(scope="module")
def client(lm_app):
    import openai

    return openai.OpenAI(base_url=f"{lm_app['url']}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.mark.cluster
def test_the_app_lists_its_model_and_shows_its_card(lm_app, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    card = httpx.get(f"{lm_app['url']}/", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert (card["model"], card["task"], card["context_length"], card["chat"]) == (MODEL, "text-generation",
                                                                                   CONTEXT, True)
    assert "POST /v1/chat/completions" in card["routes"] and card["num_examples"] == 3
    assert httpx.get(f"{lm_app['url']}/healthz", timeout=10).json()["status"] == "ok"  # public
    # The playground: /ui goes to the chat page, a public shell the proxy answers (no model data in it)
    page = httpx.get(f"{lm_app['url']}/ui/chat", timeout=10)
    assert page.status_code == 200 and "static/chat.js" in page.text and MODEL not in page.text
    assert page.headers.get("x-atoll-answered-by") == "proxy"
    assert httpx.get(f"{lm_app['url']}/ui/static/chat.js", timeout=10).status_code == 200
    # The gallery lists it (its list opens with the app's key)
    apps = httpx.get(lm_app["gallery"] + "_gallery/apps", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert APP in [a["app"] for a in apps.json()["apps"]]


@pytest.mark.cluster
def test_completion_and_chat_completion_with_usage(client, generator):
    chat = client.chat.completions.create(model=MODEL, messages=_chat("Say hi"), temperature=0, max_tokens=40)
    expected = generator.complete([generator.chat_prompt(_chat("Say hi"))], max_tokens=40)[0]
    assert chat.choices[0].message.content == expected["text"] == CHATS[0][1]
    assert (chat.choices[0].finish_reason, chat.choices[0].message.role) == ("stop", "assistant")
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (expected["prompt_tokens"],
                                                                        expected["completion_tokens"])
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    assert chat.id.startswith("chatcmpl-") and chat.model == MODEL

    done = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=5, temperature=0)
    assert done.object == "text_completion" and done.choices[0].finish_reason in ("stop", "length")
    assert done.choices[0].text == generator.complete(["The sky is"], max_tokens=5)[0]["text"]
    assert done.usage.prompt_tokens == len(generator.encode("The sky is")) and 1 <= done.usage.completion_tokens <= 5


@pytest.mark.cluster
def test_a_streamed_chat_assembles_to_the_same_answer(client, lm_app):
    messages = _chat("Comment ça va ?")
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content == CHATS[2][1]  # an emoji and accents, streamed whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 3  # token by token, not in one piece
    # The wire format itself: data: lines, [DONE] last, served as an event stream
    with httpx.stream("POST", f"{lm_app['url']}/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL, "prompt": "One, two", "max_tokens": 4, "temperature": 0, "stream": True},
                      timeout=30) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    assert raw.endswith("data: [DONE]\n\n") and all(b.startswith("data: ") for b in raw.strip().split("\n\n"))


@pytest.mark.cluster
def test_n_stop_and_seed(client):
    two = client.chat.completions.create(model=MODEL, messages=_chat("Name a fruit"), temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content == two.choices[1].message.content == CHATS[4][1]
    one = client.chat.completions.create(model=MODEL, messages=_chat("Name a fruit"), temperature=0)
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens

    stopped = client.chat.completions.create(model=MODEL, messages=_chat("Name a fruit"), temperature=0,
                                             stop=["yellow", "purple"])
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == ("A banana is a ", "stop")

    def sampled(seed: int) -> str:
        return client.completions.create(model=MODEL, prompt="Quiet", max_tokens=12, temperature=2.0,
                                         seed=seed).choices[0].text

    assert sampled(7) == sampled(7)
    assert len({sampled(s) for s in (1, 2, 3)}) > 1  # temperature 2 over 12 tokens: seeds that differ, texts that do


@pytest.mark.cluster
def test_bad_requests_are_openai_400s_and_unknown_models_404s(client, lm_app):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=_chat("hi"), temperature=5)
    assert caught.value.status_code == 400 and caught.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL, messages=_chat("hi"), max_tokens=-1)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="word " * 300, max_tokens=8)
    assert caught.value.body["code"] == "context_length_exceeded"
    resp = httpx.post(f"{lm_app['url']}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["message"] == "Missing required parameter: 'messages'."
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=_chat("hi"))
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.cluster
def test_the_api_key_guards_every_v1_route(lm_app):
    import openai

    wrong = openai.OpenAI(base_url=f"{lm_app['url']}/v1", api_key="not-the-key-at-all-0000", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=_chat("hi"))
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/examples", "/"):
        resp = httpx.request("GET" if path in ("/v1/models", "/examples", "/") else "POST", f"{lm_app['url']}{path}",
                             json={"model": MODEL, "prompt": "x"}, timeout=10)
        assert resp.status_code == 401, path
        assert resp.headers.get("x-atoll-refused-by") == "proxy", path  # refused before any replica's queue


@pytest.mark.cluster
def test_concurrent_streams_share_batches(lm_app):
    import openai

    async def one(client, i: int) -> tuple[str, str | None, float]:
        started, text, finish = time.perf_counter(), [], None
        stream = await client.chat.completions.create(model=MODEL, messages=_chat(CHATS[i % len(CHATS)][0]),
                                                      temperature=0, max_tokens=40, stream=True)
        async for chunk in stream:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        return "".join(text), finish, time.perf_counter() - started

    async def run() -> list[tuple[str, str | None, float]]:
        async with openai.AsyncOpenAI(base_url=f"{lm_app['url']}/v1", api_key=KEY, max_retries=0) as client:
            return await asyncio.gather(*(one(client, i) for i in range(8)))

    results = asyncio.run(run())
    assert [r[0] for r in results] == [CHATS[i % len(CHATS)][1] for i in range(8)]
    assert {r[1] for r in results} == {"stop"}
    card = httpx.get(f"{lm_app['url']}/", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert card["batching"]["largest_requests"] > 1 and card["batching"]["shared"] >= 1, card["batching"]


@pytest.mark.cluster
def test_callers_that_leave_mid_stream_or_while_queued_block_nobody(lm_app, client):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "messages": _chat("Write a haiku"), "temperature": 0, "stream": True}

    async def leave_early() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            async def first_chunk_then_leave() -> None:
                async with http.stream("POST", f"{lm_app['url']}/v1/chat/completions", headers=headers,
                                       json=body) as resp:
                    async for _ in resp.aiter_raw():
                        return

            async def gone_at_once() -> None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(http.post(f"{lm_app['url']}/v1/chat/completions", headers=headers,
                                                     json=body), 0.005)

            await asyncio.gather(*(first_chunk_then_leave() for _ in range(3)), *(gone_at_once() for _ in range(5)))

    asyncio.run(leave_early())
    started = time.perf_counter()
    after = client.chat.completions.create(model=MODEL, messages=_chat("Say hi"), temperature=0, timeout=20)
    assert after.choices[0].message.content == CHATS[0][1] and time.perf_counter() - started < 20


@pytest.mark.cluster
def test_the_request_log_keeps_prompts_and_completions_streamed_or_not_and_never_the_key(client, lm_app):
    from atoll import request_log

    whole = client.chat.completions.create(model=MODEL, messages=_chat("Say hi"), temperature=0, max_tokens=40)
    streamed = "".join(c.choices[0].text or "" for c in client.completions.create(
        model=MODEL, prompt="One, two", max_tokens=4, temperature=0, stream=True) if c.choices)
    def completions(route: str) -> list[str]:  # every completion the log holds for a route
        rows = logged[(logged["route"] == route) & (logged["status"] == 200)]["outputs"]
        return [text for o in rows for text in json.loads(o)["completions"]]

    deadline, logged = time.monotonic() + 30, None
    while time.monotonic() < deadline:  # the writer flushes every few seconds, off the request path
        logged = request_log.read(os.environ["ATOLL_STORAGE"], APP)
        if len(logged) and streamed in completions("/v1/completions"):
            break
        time.sleep(1)
    assert streamed in completions("/v1/completions")
    assert whole.choices[0].message.content in completions("/v1/chat/completions")
    chat = logged[logged["route"] == "/v1/chat/completions"]
    assert any(m["content"] == "Say hi" for i in chat["inputs"].dropna() for m in json.loads(i)["messages"])
    assert not any(KEY in str(v) for v in logged.astype(str).to_numpy().ravel())
