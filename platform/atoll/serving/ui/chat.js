// Atoll chat playground: a language model's card, and a chat whose replies stream in token by token through the
// very OpenAI API every client uses (POST /v1/chat/completions, or /v1/completions for a model without a chat
// template, with stream: true), read with fetch + ReadableStream. Everything from the API goes into the DOM as
// text (textContent), never as HTML.
"use strict";

(() => {
  const { $, el, storedKey, authHeaders, ApiError, errorText, setStatus, facts } = window.AtollUI;

  // The app's prefix from the page's own path: /<app>/ui/chat -> /<app>
  const base = location.pathname.replace(/\/+$/, "").replace(/\/ui\/chat$/, "");
  const state = { card: null, panel: null, messages: [], controller: null, keyNeeded: false };


  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = !text;
  }

  // ---- API key -------------------------------------------------------------------------------

  const askForKey = window.AtollUI.keyPanel(() => load());

  function showKeyPrompt(reason) {
    state.keyNeeded = true;
    askForKey(reason);
  }

  // ---- The model card ------------------------------------------------------------------------

  function renderCard(card) {
    window.AtollUI.cardHead(card, base, "Atoll chat", state.keyNeeded);
    facts($("model-facts"), [
      ["task", card.task], ["context", card.context_length ? `${card.context_length} tokens` : undefined],
      ["chat template", card.chat ? "yes" : "no (plain completions)"], ["device", card.device],
      ["OpenAI base URL", location.origin + (card.openai_base_url || base + "/v1")],
    ]);
    const metrics = Object.entries(card.metrics || {}).filter(([k]) => !["epoch", "timestamp"].includes(k));
    facts($("metrics"), metrics);
    const s = card.spec_summary || {};
    facts($("spec"), [
      ["model", s.model + (s.params ? " " + JSON.stringify(s.params) : "")],
      ["optimizer", s.optimizer ? `${s.optimizer}, lr ${s.lr}` : undefined],
      ["epochs", s.epochs], ["batch size", s.batch_size], ["dataset", s.dataset], ["seed", s.seed],
    ]);
    $("forget-key").hidden = !storedKey();
  }

  // ---- The conversation ----------------------------------------------------------------------

  function bubble(role, text) {
    const node = el("div", `chat-msg ${role}`);
    node.append(el("div", "chat-role muted small", role === "user" ? "You" : (state.card ? state.card.model : "model")));
    const body = el("div", "chat-text", text);
    node.append(body);
    $("chat-log").append(node);
    node.scrollIntoView({ block: "end" });
    return body;
  }

  function exampleText(example) {
    if (typeof example.prompt === "string") return example.prompt;
    const users = (example.messages || []).filter((m) => m.role === "user");
    return users.length ? String(users[users.length - 1].content) : "";
  }

  function renderExamples(examples) {
    const box = $("examples");
    box.replaceChildren();
    for (const example of examples || []) {
      const text = exampleText(example);
      if (!text) continue;
      const button = el("button", "", text.length > 40 ? text.slice(0, 39) + "…" : text);
      button.type = "button";
      button.title = text;
      button.addEventListener("click", () => { $("message").value = text; $("message").focus(); });
      box.append(button);
    }
    $("examples-box").hidden = !box.children.length;
  }

  function shellQuote(text) { return "'" + text.replace(/'/g, "'\\''") + "'"; }

  function pyValue(value) {  // JSON of strings and numbers, written as Python
    return JSON.stringify(value).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False");
  }

  function renderSnippets(route, body) {
    const keyed = state.keyNeeded || !!storedKey();
    const auth = keyed ? ` -H "Authorization: Bearer $ATOLL_API_KEY"` : "";
    $("curl").textContent = `curl -sN ${location.origin}${base}${route} -H 'Content-Type: application/json'${auth} ` +
      `-d ${shellQuote(JSON.stringify(body))}`;
    const chat = route.endsWith("/chat/completions");
    const args = Object.entries(body).filter(([k]) => k !== "stream_options")
      .map(([k, v]) => `    ${k}=${pyValue(v)},`).join("\n");
    $("python").textContent = [
      "import os",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${location.origin}${base}/v1", api_key=${keyed ? 'os.environ["ATOLL_API_KEY"]' : '"none"'})`,
      `stream = client.${chat ? "chat.completions" : "completions"}.create(`,
      args,
      ")",
      "for chunk in stream:",
      chat ? '    print(chunk.choices[0].delta.content or "", end="", flush=True)'
        : '    print(chunk.choices[0].text, end="", flush=True)',
      "print()",
    ].join("\n");
    $("snippets").hidden = false;
  }

  // Server-sent events from a fetch body: calls onEvent(data) for each `data:` event, "[DONE]" included.
  async function readEvents(resp, onEvent) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (data) onEvent(data);
      }
      if (done) return;
    }
  }

  function busy(on) {
    $("send").disabled = on;
    $("stop").hidden = !on;
  }

  async function send() {
    const text = $("message").value.trim();
    if (!text || state.controller) return;
    showError("");
    const chat = state.card.chat;
    const maxTokens = Math.max(1, parseInt($("max-tokens").value, 10) || 1);
    const temperature = Number($("temperature").value);
    let route, body;
    if (chat) {
      state.messages.push({ role: "user", content: text });
      route = "/v1/chat/completions";
      body = { model: state.card.model, messages: state.messages.slice(), max_tokens: maxTokens, temperature,
               stream: true, stream_options: { include_usage: true } };
    } else {
      route = "/v1/completions";
      body = { model: state.card.model, prompt: text, max_tokens: maxTokens, temperature, stream: true,
               stream_options: { include_usage: true } };
    }
    bubble("user", text);
    const out = bubble("assistant", "");
    out.classList.add("streaming");
    $("message").value = "";
    renderSnippets(route, body);
    state.controller = new AbortController();
    busy(true);
    const started = performance.now();
    let first = null, reply = "", finish = null, usage = null;
    try {
      const resp = await fetch(base + route, { method: "POST", cache: "no-store", signal: state.controller.signal,
        headers: authHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
      if (!resp.ok) {
        let err = null;
        try { err = await resp.json(); } catch (e) { err = null; }
        throw new ApiError(resp.status, errorText(err, resp));
      }
      await readEvents(resp, (data) => {
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new ApiError(500, errorText(event, resp));
        if (event.usage) usage = event.usage;
        for (const choice of event.choices || []) {
          const piece = chat ? (choice.delta && choice.delta.content) : choice.text;
          if (piece) {
            if (first === null) first = performance.now() - started;
            reply += piece;
            out.textContent = reply;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      });
      if (chat) state.messages.push({ role: "assistant", content: reply });
      const total = performance.now() - started;
      $("timing").textContent = [
        first !== null ? `first token after ${first.toFixed(0)} ms` : "no text",
        `done in ${total.toFixed(0)} ms`,
        usage ? `${usage.completion_tokens} tokens (${usage.prompt_tokens} in the prompt)` : null,
        finish ? `finish: ${finish}` : null,
      ].filter(Boolean).join(" · ");
      if (!reply) out.textContent = "(no text)";
    } catch (e) {
      if (e.name === "AbortError") {
        if (chat && reply) state.messages.push({ role: "assistant", content: reply });
        $("timing").textContent = "stopped";
      } else {
        if (chat) state.messages.pop();  // the message that failed is not part of the conversation
        if (e.status === 401) { showKeyPrompt(`The key was refused: ${e.message}`); return; }
        showError(e.status ? `${e.status}: ${e.message}` : `the request failed: ${e.message}`);
      }
    } finally {
      out.classList.remove("streaming");
      state.controller = null;
      busy(false);
    }
  }

  $("chat-form").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); send(); }
  });
  $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
  $("clear-chat").addEventListener("click", () => {
    state.messages = [];
    $("chat-log").replaceChildren();
    $("timing").textContent = "";
    showError("");
  });
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });

  window.AtollUI.copyButton("copy-curl", "curl");
  window.AtollUI.copyButton("copy-python", "python");

  async function load() {
    const loaded = await window.AtollUI.loadCard(base, showKeyPrompt);
    if (!loaded) return;
    const { card, examples } = loaded;
    if (card.task !== "text-generation") {  // a model that answers /predict: the classic playground
      location.replace(base + "/ui");
      return;
    }
    state.card = card;
    state.panel = examples.panel || {};
    $("key-panel").hidden = true;
    renderCard(card);
    renderExamples(examples.examples);
    if (state.panel.max_tokens) $("max-tokens").value = state.panel.max_tokens;
    $("max-tokens").max = card.context_length || "";
    $("chat-title").textContent = card.chat ? "Chat" : "Complete a prompt";
    $("message-label").textContent = card.chat ? "Your message" : "Your prompt";
    $("chat-hint").textContent = card.chat ? "replies stream in as the model writes them"
      : "this model has no chat template: the text continues your prompt";
    $("layout").hidden = false;
    setStatus("");
    window.AtollTraffic.poll($("traffic"), () => fetch(base + "/traffic", { headers: authHeaders(), cache: "no-store" }));
  }

  load();
})();
