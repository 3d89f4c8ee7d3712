// Atoll pages' shared parts: DOM helpers, the API key (kept in this tab's sessionStorage, sent as a Bearer token),
// errors from the API as one line, the model card's fact lists, and the key panel. Loaded first by the
// playground, the chat playground and the gallery. Everything from the API goes into the DOM as text
// (textContent), never as HTML.
"use strict";

window.AtollUI = (() => {
  const KEY_STORE = "atoll-api-key";  // one key for every playground and the gallery
  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function storedKey() {
    try { return sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; }
  }

  // ``extra`` headers plus the stored key's Authorization, when there is one
  function authHeaders(extra) {
    const out = Object.assign({}, extra || {});
    const key = storedKey();
    if (key) out.Authorization = "Bearer " + key;
    return out;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // One line from an error body: OpenAI's shape, Atoll's {"error": "..."}, FastAPI's detail (text or a list)
  function errorText(body, resp) {
    if (body && body.error && typeof body.error.message === "string") return body.error.message;
    if (body && typeof body.error === "string") return body.error;
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return resp.statusText || "request failed";
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: authHeaders(), cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) throw new ApiError(resp.status, errorText(body, resp));
    return body;
  }

  function setStatus(text) { $("status").textContent = text || ""; }

  function fmt(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(4)));
    if (value === null || value === undefined) return "–";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // A <dl> of [name, value] rows, the empty ones left out
  function facts(dl, rows) {
    dl.replaceChildren();
    for (const [name, value] of rows) {
      if (value === undefined || value === null || value === "") continue;
      dl.append(el("dt", "", name), el("dd", "", fmt(value)));
    }
    if (!dl.children.length) dl.append(el("dt", "", "–"), el("dd", "", "none recorded"));
  }

  // A "Copy" button for a code block: to the clipboard, else the text selected for the user to copy
  function copyButton(buttonId, codeId) {
    const button = $(buttonId), code = $(codeId);
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(code.textContent);
        button.textContent = "Copied";
      } catch (e) {
        const range = document.createRange();
        range.selectNodeContents(code);
        const selection = getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }

  // The app's card and examples (GET <base>/ and <base>/examples); null when a key is needed (``askKey`` asks
  // for it) or the card could not be read (the status line says why)
  async function loadCard(base, askKey) {
    setStatus("Loading the model card …");
    try {
      return { card: await getJSON(base + "/"), examples: await getJSON(base + "/examples") };
    } catch (e) {
      if (e.status === 401) askKey(storedKey() ? `The key was refused: ${e.message}` : e.message);
      else setStatus(`Could not load the model card (${e.status || "network"}): ${e.message}`);
      return null;
    }
  }

  // The model card's head: the page's title, the app, the model, its badges and when it was registered
  function cardHead(card, base, page, keyNeeded) {
    document.title = `${card.model}:${card.version} · ${page}`;
    $("app-name").textContent = base.replace(/^\//, "") || card.model;
    $("card-title").textContent = card.model;
    const badges = $("badges");
    badges.replaceChildren(el("span", "badge accent", `version ${card.version}`));
    for (const alias of card.aliases || []) badges.append(el("span", "badge", `@${alias}`));
    if (card.requested && card.requested !== `${card.model}:${card.version}`) {
      badges.append(el("span", "badge", `deployed as ${card.requested}`));
    }
    if (keyNeeded || storedKey()) badges.append(el("span", "badge warn", "API key"));
    $("created").textContent = card.created_at ? `registered ${card.created_at.replace("T", " ").slice(0, 19)} UTC` : "";
  }

  // The page's key panel (an empty <section id="key-panel">), built here, and its "Forget API key" button.
  // ``onKey`` runs once a key is entered; returns the function that asks for one (with the reason).
  function keyPanel(onKey) {
    const panel = $("key-panel");
    const input = el("input");
    Object.assign(input, { id: "key-input", name: "key", type: "password", autocomplete: "off", spellcheck: false,
                           required: true });
    const label = el("label", "", "API key");
    label.htmlFor = "key-input";
    const submit = el("button", "primary", "Unlock");
    Object.assign(submit, { type: "submit", id: "key-submit" });
    const form = el("form", "key-form");
    form.id = "key-form";
    form.append(label, input, submit);
    const note = el("p", "muted small", "The key stays in this browser tab (sessionStorage) and is sent as ");
    note.append(el("code", "", "Authorization: Bearer …"), "; it is never part of the page.");
    const title = el("h2", "", "This endpoint needs an API key");
    title.id = "key-title";
    const reason = el("p", "muted");
    reason.id = "key-reason";
    panel.replaceChildren(title, reason, form, note);

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      panel.hidden = true;
      onKey();
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      location.reload();
    });
    return (why) => {
      $("layout").hidden = true;
      panel.hidden = false;
      reason.textContent = why;
      setStatus("");
      input.value = "";
      input.focus();
    };
  }

  return { KEY_STORE, $, el, storedKey, authHeaders, ApiError, errorText, getJSON, setStatus, fmt, facts, cardHead,
           copyButton, loadCard, keyPanel };
})();
