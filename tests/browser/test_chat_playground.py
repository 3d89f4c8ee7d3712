"""The chat playground of a language model in a real browser (Debian's Chromium, headless, Playwright): the tiny chat
model of tests/test_generation_serving.py, deployed behind an API key, found through its `/ui` like any app, its reply
streamed into the page token by token, and the curl and Python snippets the page shows run for real."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from atoll.serving import openai_api
from conftest import APP_KEY as KEY
from test_generation_serving import CHATS, lm_app, tiny_lm  # noqa: F401 - the session's language model app
from test_playground import artifacts, browser  # noqa: F401 - the same Chromium and artefact folder

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

# Each SSE event's text lands in the reply as it is read: record every text the reply node is given.
WATCH = """() => {
  window.__replies = [];
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes)
      if (n.nodeType === 3 && r.target.closest(".chat-msg.assistant")) window.__replies.push(n.data);
  }).observe(document.getElementById("chat-log"), { childList: true, subtree: true });
}"""


def test_the_chat_page_streams_a_reply_and_its_snippets_run(lm_app, browser, artifacts):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{lm_app['url']}/ui")  # the proxy's page shell: it asks for the key, reads the card, goes to chat
        page.wait_for_selector("#key-panel:not([hidden])", timeout=20_000)
        page.fill("#key-input", KEY)
        page.click("#key-submit")
        page.wait_for_url(f"{lm_app['url']}/ui/chat", timeout=20_000)
        page.wait_for_selector("#layout:not([hidden])", timeout=20_000)
        assert page.text_content("#card-title") == "tiny-chat"
        assert "text-generation" in page.text_content("#model-facts")
        assert page.locator("#examples button").count() == 3

        page.evaluate(WATCH)
        page.locator("#temperature").evaluate("(el) => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
        page.fill("#max-tokens", "40")
        page.click("#examples button >> nth=2")  # "Comment ça va ?"
        with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answer:
            page.click("#send")
        assert answer.value.status == 200 and answer.value.headers["content-type"].startswith("text/event-stream")
        sent = answer.value.request.post_data_json
        assert (sent["messages"], sent["max_tokens"], sent["temperature"], sent["stream"]) == (
            [{"role": "user", "content": CHATS[2][0]}], 40, 0, True)
        page.wait_for_function("() => document.getElementById('timing').textContent.includes('finish')",
                               timeout=30_000)
        reply = page.locator(".chat-msg.assistant .chat-text").last.text_content()
        assert reply == CHATS[2][1]
        seen = [t for t in page.evaluate("window.__replies") if t]
        assert len(seen) >= 3 and seen[-1] == reply, seen  # grew piece by piece, never a broken character
        assert all(reply.startswith(t) and "\ufffd" not in t for t in seen), seen
        assert "finish: stop" in page.text_content("#timing")
        page.screenshot(path=str(artifacts / "chat_playground.png"))

        # The snippets are this very request: both print the same reply.
        env = {**os.environ, "ATOLL_API_KEY": KEY}
        curl = page.text_content("#curl")
        assert curl.startswith(f"curl -sN {lm_app['url']}/v1/chat/completions") and KEY not in curl
        streamed = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60, env=env, check=True)
        events = openai_api.parse_sse(streamed.stdout)
        assert events[-1] == "[DONE]"
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]) == reply
        python = page.text_content("#python")
        assert f'base_url="{lm_app["url"]}/v1"' in python and KEY not in python
        ran = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, timeout=60, env=env)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == reply

        # The conversation goes on: the second request carries the first exchange.
        page.fill("#message", "Say hi")
        with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as second:
            page.click("#send")
        assert [m["role"] for m in second.value.request.post_data_json["messages"]] == ["user", "assistant", "user"]
        page.wait_for_function("() => document.querySelectorAll('.chat-msg.assistant').length === 2 && "
                               "!document.querySelector('.chat-text.streaming')", timeout=30_000)
        assert errors == []
    finally:
        context.close()

