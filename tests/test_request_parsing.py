"""How a replica turns an image or text request into the model's input, without a cluster: the replica's own
class is built in-process on a version registered in a temporary store, and its ``/predict`` route is
called with a real request body. Only Serve's ``@serve.batch`` is stood in for (it needs a live replica)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from atoll import models, registry, tasks
from atoll.errors import RequestError
from atoll.serving import replica
from atoll.serving.replica import parse_request
from atoll.specs import ServeSettings
from atoll.tasks.image import ImageState
from atoll.tasks.text import TextState, train_tokenizer
from safetensors.torch import save_file
from starlette.requests import Request
from starlette.responses import JSONResponse

IMAGE_SCHEMA = {"task": "image-classification", "input_kind": "image", "features": ["image"], "num_features": 1,
                "dtype": "image", "image_shape": [1, 8, 8], "classes": list(range(10)), "label": "label"}
TEXTS = ["free prize call now", "see you at lunch", "win cash today", "ok thanks"] * 5


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width × height`` grey pixels and whose pixel data is garbage: it can be
    sized without decoding, and decoding it fails."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"garbage, not zlib") + chunk(b"IEND", b"")


def _b64(blob: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(blob).decode()}


def _body(images: list[Any]) -> bytes:
    return json.dumps({"inputs": images}).encode()


def test_images_over_the_request_pixel_cap_are_refused_413_from_their_headers_before_any_is_decoded():
    three_mp = _b64(_png_header(2000, 1500))
    limits = {"max_rows": 64, "max_body_bytes": 1_000_000}
    with pytest.raises(RequestError) as one_corrupt:  # under the cap: it is decoded, and the garbage shows
        parse_request(_body([three_mp]), IMAGE_SCHEMA, **limits, max_request_pixels=5_000_000)
    assert one_corrupt.value.status == 422 and "inputs.0: the image data is truncated or corrupt" in one_corrupt.value.message
    with pytest.raises(RequestError) as too_many:  # over it together: refused from the headers, nothing decoded
        parse_request(_body([three_mp, three_mp]), IMAGE_SCHEMA, **limits, max_request_pixels=5_000_000)
    assert too_many.value.status == 413
    assert too_many.value.message == ("inputs: the 2 image(s) hold 6,000,000 pixels together; the limit per request "
                                      "is 5,000,000 (max_request_pixels): send fewer or smaller images per request.")
    # The default cap (ServeSettings' 64 MP) holds where no limit is named: five 16 MP headers are 80 MP.
    assert replica.DEFAULT_REQUEST_PIXELS == ServeSettings().max_request_pixels == 4 * 4096 * 4096
    with pytest.raises(RequestError, match=r"67,108,864 \(max_request_pixels\)") as bomb:
        parse_request(_body([_b64(_png_header(4096, 4096))] * 5), IMAGE_SCHEMA, **limits)
    assert bomb.value.status == 413
    # Pixel arrays count too, and a request within the cap is parsed as before.
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8).tolist()
    with pytest.raises(RequestError, match=re.escape("hold 128 pixels together; the limit per request is 100")):
        parse_request(_body([grey, grey]), IMAGE_SCHEMA, **limits, max_request_pixels=100)
    parsed = parse_request(_body([grey]), IMAGE_SCHEMA, **limits, max_request_pixels=100)
    assert len(parsed) == 1 and parsed[0].shape == (1, 8, 8) and parsed[0].dtype == np.uint8


def test_an_image_header_past_pils_own_bomb_check_is_a_422_not_a_500():
    """PIL refuses a header over 2 × its MAX_IMAGE_PIXELS itself, with an error that is no OSError."""
    with pytest.raises(RequestError, match="inputs.0: the image is larger than the 16,777,216 pixels allowed") as huge:
        parse_request(_body([_b64(_png_header(100_000, 100_000))]), IMAGE_SCHEMA, max_rows=4, max_body_bytes=10_000)
    assert huge.value.status == 422


def test_max_request_pixels_is_a_setting_each_app_may_override():
    assert "max_request_pixels" in ServeSettings.PER_APP
    assert ServeSettings.model_validate({"max_request_pixels": 1000}).max_request_pixels == 1000
    with pytest.raises(ValueError, match="max_request_pixels"):
        ServeSettings.model_validate({"max_request_pixels": 0})


# ---- The replica's /predict, in-process


def _register(tmp_path: Path, spec: dict[str, Any], state) -> tuple[str, str]:
    """A version of ``spec``'s model (random weights) registered without exports: (storage root, ref)."""
    task = tasks.get(spec["task"])
    torch.manual_seed(0)
    model = models.build(spec["model"]["type"], state.input_dim, task.out_dim(state),
                         task.model_params(state, spec["model"].get("params")))
    folder = tmp_path / "version"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    schema = task.input_schema(state, spec["model"])
    (folder / "atoll.json").write_text(json.dumps({"epoch": 0, "history": [], "spec": spec,
                                                   "preprocess": state.to_dict(), "input_schema": schema}))
    reg = registry.Registry(str(tmp_path / "store"))
    return reg.root, reg.register("m", str(folder), metrics={}, spec=spec, input_schema=schema).ref


def _text_version(tmp_path: Path) -> tuple[str, str]:
    from tokenizers import Tokenizer

    tokenizer = train_tokenizer(TEXTS, 200)
    state = TextState(features=["text"], label="label", classes=["ham", "spam"], tokenizer=tokenizer, max_length=12,
                      vocab_size=Tokenizer.from_str(tokenizer).get_vocab_size())
    return _register(tmp_path, {"name": "t", "task": "text-classification", "dataset": {"path": "x.parquet"},
                                "model": {"type": "hf-bert",
                                          "params": {"layers": 1, "hidden": 16, "heads": 2, "max_length": 12}}}, state)


def _image_version(tmp_path: Path) -> tuple[str, str]:
    state = ImageState(features=["image"], label="label", classes=list(range(10)), image_shape=[1, 8, 8],
                       mean=[0.3], std=[0.4])
    return _register(tmp_path, {"name": "i", "task": "image-classification", "dataset": {"path": "x.parquet"},
                                "model": {"type": "cnn", "params": {}}}, state)


class _Unbatched:
    """Serve's ``@serve.batch`` stood in for (it needs a live replica): each call is a batch of one, run by
    the replica's own undecorated batch method."""

    def __init__(self, server) -> None:
        self.server = server

    def set_batch_wait_timeout_s(self, timeout: float) -> None:
        pass

    def set_max_batch_size(self, size: int) -> None:
        pass

    async def __call__(self, rows):
        method = type(self.server).predict_batch.__wrapped__
        return (await method(self.server, [rows]))[0]


def _server(storage: str, ref: str, **settings: Any):
    """The replica's own class (the one ``@serve.ingress`` wraps in its ASGI adapter), on this version."""
    own_class = replica.ModelServer.func_or_class.__mro__[1]
    server = own_class({"model": ref, "storage": storage, "settings": {"runtime": "torch", **settings}})
    server.predict_batch = _Unbatched(server)
    return server


def _request(body: bytes) -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/predict", "root_path": "", "query_string": b"",
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
                   receive)


def _answer(result: Any) -> tuple[int, dict[str, Any]]:
    if isinstance(result, JSONResponse):
        return result.status_code, json.loads(result.body)
    return 200, result


class _CountingTokenizer:
    """The version's real tokenizer, counting its calls and noting the thread of each."""

    def __init__(self, real) -> None:
        self.real, self.threads = real, []

    def encode_batch(self, texts, *args, **kwargs):
        self.threads.append(threading.current_thread())
        return self.real.encode_batch(texts, *args, **kwargs)


def test_a_text_request_is_tokenized_once_and_its_truncated_flags_come_from_that_tokenization(tmp_path):
    server = _server(*_text_version(tmp_path))
    state = server.predictor.pre
    counting = _CountingTokenizer(state._tokenizer())
    state.__dict__["_built"] = counting  # where TextState keeps its built tokenizer
    texts = ["free prize", "word " * 40]
    status, body = _answer(asyncio.run(server.predict(_request(json.dumps({"inputs": texts}).encode()))))
    assert status == 200, body
    assert len(counting.threads) == 1, f"tokenized {len(counting.threads)} times"
    assert body["truncated"] == [False, True] and body["max_length"] == 12
    state.__dict__["_built"] = counting.real
    expected, probabilities = server.predictor.predict(texts)  # the same model, called directly
    assert body["predictions"] == expected and np.allclose(body["probabilities"], probabilities)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_the_replica_parses_text_and_image_bodies_off_its_event_loop(tmp_path, kind, monkeypatch):
    """The parse waits, inside, for a signal that only the event loop can give; on the loop it would wait in vain."""
    in_parse, loop_answered = threading.Event(), threading.Event()
    parse_threads: list[threading.Thread] = []

    def waiting_for_the_loop() -> None:
        parse_threads.append(threading.current_thread())
        in_parse.set()
        loop_answered.wait(timeout=5)

    if kind == "text":
        server = _server(*_text_version(tmp_path))
        state = server.predictor.pre
        real = state._tokenizer()

        class Waiting:
            def encode_batch(self, texts, *args, **kwargs):
                waiting_for_the_loop()
                return real.encode_batch(texts, *args, **kwargs)

        state.__dict__["_built"] = Waiting()
        body = json.dumps({"inputs": ["free prize call now"]}).encode()
    else:
        import PIL.Image

        server = _server(*_image_version(tmp_path))
        real_open = PIL.Image.open

        def waiting_open(*args, **kwargs):
            waiting_for_the_loop()
            return real_open(*args, **kwargs)

        monkeypatch.setattr(PIL.Image, "open", waiting_open)
        import io

        png = io.BytesIO()
        PIL.Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(png, "PNG")
        body = _body([_b64(png.getvalue())])

    async def scenario() -> tuple[Any, dict[str, Any]]:
        answer = asyncio.create_task(server.predict(_request(body)))
        while not in_parse.is_set() and not answer.done():
            await asyncio.sleep(0.001)
        health = server.healthz()  # the loop serves another route while the body is being parsed
        loop_answered.set()
        return await answer, health

    result, health = asyncio.run(scenario())
    status, answer = _answer(result)
    assert status == 200, answer
    assert health["status"] == "ok"
    assert parse_threads and all(t is not threading.main_thread() for t in parse_threads), parse_threads
    assert all(t.name.startswith("atoll-parse") for t in parse_threads), [t.name for t in parse_threads]


def test_the_replica_answers_413_for_images_over_its_app_setting_and_stays_usable(tmp_path):
    server = _server(*_image_version(tmp_path), max_request_pixels=100)
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8).tolist()
    status, answer = _answer(asyncio.run(server.predict(_request(_body([grey, grey])))))
    assert status == 413 and "(max_request_pixels)" in answer["error"], answer
    status, answer = _answer(asyncio.run(server.predict(_request(_body([_b64(_png_header(11, 11))])))))
    assert status == 413 and "121 pixels together" in answer["error"], answer
    status, answer = _answer(asyncio.run(server.predict(_request(_body([grey])))))
    assert status == 200 and len(answer["predictions"]) == 1, answer


def test_a_text_with_a_lone_surrogate_is_a_422_not_a_tokenizer_error(tmp_path):
    server = _server(*_text_version(tmp_path))
    status, answer = _answer(asyncio.run(server.predict(_request(b'{"inputs": ["ok", "a \\ud800 b"]}'))))
    assert status == 422 and answer["error"].startswith("inputs.1: the text holds a lone surrogate"), answer
    status, answer = _answer(asyncio.run(server.predict(_request(json.dumps({"inputs": ["\x00 \u202e 😀 ok"]}).encode()))))
    assert status == 200 and answer["truncated"] == [False], answer


def test_a_long_text_is_tokenized_a_prefix_at_a_time_with_the_same_ids_and_flags_as_the_whole():
    """A 1 MB text cost seconds of tokenizing and hundreds of MB of overflow encodings (the hostile-text fault
    test saw the replica grow 387 MiB); its first max_length tokens come from a prefix cut between words."""
    from tokenizers import Tokenizer

    tokenizer = train_tokenizer(TEXTS, 200)
    state = TextState(features=["text"], label="label", classes=["ham", "spam"], tokenizer=tokenizer, max_length=12,
                      vocab_size=Tokenizer.from_str(tokenizer).get_vocab_size())
    whole = Tokenizer.from_str(tokenizer)
    whole.enable_truncation(state.max_length)
    whole.enable_padding(pad_id=0, pad_token="[PAD]", length=state.max_length)
    texts = ["free prize " * 100_000, "a" * 50_000 + " win", " " * 10_000 + "ok thanks", "win\tcash\ntoday " * 3,
             "x" * 191 + " call now", "see you" + "\x1c" * 300 + "at lunch " * 40, "短" * 500 + " ok", "ok"]
    seen: list[int] = []

    class Recording:  # the state's own tokenizer, noting how long a text it is handed
        def __init__(self, inner):
            self.inner = inner

        def encode_batch(self, batch):
            seen.extend(len(t) for t in batch)
            return self.inner.encode_batch(batch)

    state.__dict__["_built"] = Recording(state._tokenizer())
    ids, cut = state.token_ids(texts)
    assert max(seen) < 100_000, max(seen)  # never the 1.1 MB text whole (a 50,000-letter word is one word)
    expected = whole.encode_batch(texts)
    assert ids.tolist() == [e.ids for e in expected]
    assert cut == [bool(e.overflowing) for e in expected] == [True, False, False, False, False, True, True, False]
