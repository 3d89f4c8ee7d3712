// Atoll playground: the model card, an input panel built from the input schema, and /predict.
// Everything from the API goes into the DOM as text (textContent), never as HTML.
"use strict";

(() => {
  const { $, el, storedKey, authHeaders, errorText, setStatus, facts } = window.AtollUI;

  // The app's prefix from the page's own path: /<app>/ui (or /<app>/ui/) -> /<app>
  const base = location.pathname.replace(/\/+$/, "").replace(/\/ui$/, "");
  const state = { card: null, panel: null, examples: [], values: [], truth: null, erase: false, keyNeeded: false };

  async function api(path, options = {}) {
    return fetch(base + path, Object.assign({}, options, { headers: authHeaders(options.headers), cache: "no-store" }));
  }

  // ---- API key -------------------------------------------------------------------------------

  const askForKey = window.AtollUI.keyPanel(() => load());

  function showKeyPrompt(reason) {
    state.keyNeeded = true;
    askForKey(reason);
  }

  // ---- The model card ------------------------------------------------------------------------

  function renderCard(card) {
    window.AtollUI.cardHead(card, base, "Atoll playground", state.keyNeeded);
    // Validation metrics first, then training, then the rest (throughput, timings).
    const rank = (k) => (k.startsWith("val_") ? 0 : /^train_(accuracy|loss)$/.test(k) ? 1 : 2);
    const metrics = Object.entries(card.metrics || {}).filter(([k]) => !["epoch", "timestamp"].includes(k))
      .sort((a, b) => rank(a[0]) - rank(b[0]));
    facts($("metrics"), metrics);
    const s = card.spec_summary || {};
    facts($("spec"), [
      ["model", s.model + (s.params ? " " + JSON.stringify(s.params) : "")],
      ["optimizer", s.optimizer ? `${s.optimizer}, lr ${s.lr}` : undefined],
      ["epochs", s.epochs], ["batch size", s.batch_size], ["workers", s.workers],
      ["dataset", s.dataset], ["validation", s.validation_fraction], ["seed", s.seed],
    ]);
    const lin = card.lineage || {};
    facts($("lineage"), [
      ["dataset fingerprint", lin.dataset_fingerprint], ["job id", lin.job_id],
      ["git commit", lin.git_commit ? String(lin.git_commit).slice(0, 12) : undefined],
      ["run", lin.run_name || lin.sweep], ["trial", lin.trial_id], ["copied from", lin.copied_from],
    ]);
    $("forget-key").hidden = !storedKey();
  }

  async function loadCurve() {
    try {
      const resp = await api("/curve.png");
      if (!resp.ok) return;
      const blob = await resp.blob();
      $("curve").src = URL.createObjectURL(blob);
      $("curve-figure").hidden = false;
    } catch (e) { /* the curve is a nicety: the card works without it */ }
  }

  // ---- The input panel -------------------------------------------------------------------------

  const canvas = $("grid");
  const ctx = canvas.getContext("2d");

  function range() { return state.panel.range || [0, 1]; }

  function drawGrid() {
    const [rows, cols] = state.panel.shape;
    const [lo, hi] = range();
    const cw = canvas.width / cols, ch = canvas.height / rows;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const t = Math.max(0, Math.min(1, (state.values[r * cols + c] - lo) / ((hi - lo) || 1)));
        const shade = Math.round(255 - t * 235);
        ctx.fillStyle = `rgb(${shade},${shade},${Math.min(255, shade + 8)})`;
        ctx.fillRect(c * cw, r * ch, cw, ch);
      }
    }
    ctx.strokeStyle = "rgba(15, 23, 32, 0.08)";
    ctx.lineWidth = 1;
    for (let c = 1; c < cols; c++) { ctx.beginPath(); ctx.moveTo(c * cw, 0); ctx.lineTo(c * cw, canvas.height); ctx.stroke(); }
    for (let r = 1; r < rows; r++) { ctx.beginPath(); ctx.moveTo(0, r * ch); ctx.lineTo(canvas.width, r * ch); ctx.stroke(); }
  }

  function paintAt(event) {
    const [rows, cols] = state.panel.shape;
    const [lo, hi] = range();
    const box = canvas.getBoundingClientRect();
    const c = Math.floor(((event.clientX - box.left) / box.width) * cols);
    const r = Math.floor(((event.clientY - box.top) / box.height) * rows);
    if (r < 0 || c < 0 || r >= rows || c >= cols) return;
    const whole = Number.isInteger(hi) && hi > 1;  // e.g. digits: integer pixels 0..16
    const brush = [[0, 0, 1], [-1, 0, 0.45], [1, 0, 0.45], [0, -1, 0.45], [0, 1, 0.45]];
    for (const [dr, dc, weight] of brush) {
      const rr = r + dr, cc = c + dc;
      if (rr < 0 || cc < 0 || rr >= rows || cc >= cols) continue;
      const i = rr * cols + cc;
      if (state.erase) {
        if (weight === 1) state.values[i] = lo;
      } else {
        let v = lo + (hi - lo) * weight;
        if (whole) v = Math.round(v);
        state.values[i] = Math.max(state.values[i], v);
      }
    }
    state.truth = null;
    markExample(null);
    drawGrid();
  }

  let drawing = false;
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    paintAt(event);
  });
  canvas.addEventListener("pointermove", (event) => { if (drawing) paintAt(event); });
  const stop = () => { drawing = false; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);

  $("clear").addEventListener("click", () => {
    state.values = state.values.map(() => range()[0]);
    state.truth = null;
    markExample(null);
    drawGrid();
  });
  $("erase").addEventListener("click", () => {
    state.erase = !state.erase;
    $("erase").setAttribute("aria-pressed", String(state.erase));
  });

  // A table's form: a number field per numeric feature (the training range as its hint; empty means missing),
  // and for a categorical one a dropdown of its known levels plus "missing" (null), or past many levels a text
  // box with the levels as suggestions. Versions from before column kinds get plain number fields.
  const MISSING = "";  // a dropdown's "missing" option: no level is the empty string (a blank cell is a gap)

  function columnOf(i) { return (state.panel.columns || [])[i] || { kind: "numeric", nullable: true }; }

  function hint(value) { return Number(Number(value).toPrecision(6)).toString(); }

  function numberField(column) {
    const input = el("input");
    input.type = "text";
    input.inputMode = "decimal";
    if (column.range) {
      const [lo, hi] = column.range;
      input.placeholder = `${hint(lo)} – ${hint(hi)}`;
      input.title = `training range ${hint(lo)} to ${hint(hi)}` + (column.nullable ? "; leave empty for missing" : "");
    } else if (column.nullable && state.panel.mixed) {
      input.placeholder = "empty: missing";
    }
    return input;
  }

  function levelField(column, i) {
    if (column.dropdown === false) {  // many levels: type one (the known ones are suggested)
      const input = el("input");
      input.type = "text";
      input.placeholder = "a level, or empty: missing";
      const list = el("datalist");
      list.id = `levels-${i}`;
      for (const level of column.levels) {
        const option = el("option");
        option.value = level;
        list.append(option);
      }
      input.setAttribute("list", list.id);
      $("form-input").append(list);
      return input;
    }
    const select = el("select");
    const missing = el("option", "missing", "missing");
    missing.value = MISSING;
    select.append(missing);
    for (const level of column.levels) {
      const option = el("option", "", level);
      option.value = level;
      select.append(option);
    }
    select.title = `${column.levels.length} levels seen in training; "missing" sends null`;
    return select;
  }

  function buildForm() {
    const form = $("form-input");
    form.replaceChildren();
    state.panel.features.forEach((name, i) => {
      const column = columnOf(i);
      const label = el("label", column.kind === "categorical" ? "categorical" : "", name);
      const field = column.kind === "categorical" ? levelField(column, i) : numberField(column);
      field.id = `f-${i}`;
      field.name = name;
      field.autocomplete = "off";
      // A value set from an example keeps its JSON type (2007, true) until the person changes the field;
      // changed by hand, the row is no longer the example's: its true label goes too.
      const forget = () => {
        delete field.dataset.raw;
        state.truth = null;
        markExample(null);
      };
      field.addEventListener("input", forget);
      field.addEventListener("change", forget);
      label.append(field);
      form.append(label);
    });
  }

  $("form-input").addEventListener("submit", (event) => { event.preventDefault(); predictPanel(); });

  function renderPanel(panel) {
    state.panel = panel;
    const n = panel.num_features || panel.features.length;
    $("text-input").hidden = panel.kind !== "text";
    $("csv-box").hidden = panel.kind === "text" || Boolean(panel.nested);
    $("upload").hidden = !panel.upload;
    if (panel.kind === "text") {
      $("image-input").hidden = true;
      $("form-input").hidden = true;
      $("panel-hint").textContent = `Type a message (cut to ${panel.max_length} tokens), or pick an example.`;
      return;
    }
    if (panel.kind === "image") {
      state.values = new Array(n).fill(range()[0]);
      $("image-input").hidden = false;
      $("form-input").hidden = true;
      $("panel-hint").textContent = `Draw on the ${panel.shape[0]}×${panel.shape[1]} grid (values ${range()[0]}–${range()[1]}), or pick an example.`;
      drawGrid();
    } else {
      $("image-input").hidden = true;
      $("form-input").hidden = false;
      $("panel-hint").textContent = panel.mixed
        ? `${n} features: pick a level or type a number (empty: missing), paste a CSV row, or pick an example.`
        : `${n} features: fill in the form, paste a CSV row, or pick an example.`;
      buildForm();
    }
    $("csv").placeholder = panel.mixed
      ? `${n} comma-separated values (words allowed, a blank is missing), in the order ${panel.features.slice(0, 3).join(", ")}, …`
      : `${n} comma-separated values, in the order ${panel.features.slice(0, 3).join(", ")}, …`;
  }

  function setValues(values) {
    if (state.panel.kind === "text") {
      $("text").value = String(values);
    } else if (state.panel.kind === "image") {
      state.values = values.flat();  // an image task's examples are pixel rows
      $("upload-preview").hidden = true;
      drawGrid();
    } else {
      values.forEach((v, i) => setField($(`f-${i}`), v));
    }
  }

  // A categorical value as the server compares it: true -> "true", 2007 -> "2007", null -> missing.
  function levelKey(v) {
    if (v === null || v === undefined) return MISSING;
    return String(v);
  }

  function setField(field, v) {
    if (!field) return;
    if (field.tagName === "SELECT") {
      const key = levelKey(v);
      if (![...field.options].some((o) => o.value === key)) {  // a level training pooled or never saw
        const option = el("option", "unseen", `${key} (not a known level)`);
        option.value = key;
        field.append(option);
      }
      field.value = key;
    } else {
      field.value = v === null || v === undefined ? "" : String(v);
    }
    if (state.panel.mixed) field.dataset.raw = JSON.stringify(v === undefined ? null : v);
    else delete field.dataset.raw;
  }

  function markExample(button) {
    for (const b of $("examples").children) b.classList.toggle("active", b === button);
  }

  function renderExamples(examples) {
    state.examples = examples || [];
    const box = $("examples");
    box.replaceChildren();
    state.examples.forEach((example, i) => {
      const button = el("button", "", `#${i + 1}`);
      button.type = "button";
      button.dataset.index = String(i);
      button.title = `held-out example ${i + 1} (true label ${example.label})`;
      button.setAttribute("aria-label", `Example ${i + 1}, true label ${example.label}`);
      button.addEventListener("click", () => {
        setValues(example.inputs);
        state.truth = example.label;
        markExample(button);
      });
      box.append(button);
    });
    $("examples-box").hidden = state.examples.length === 0;
  }

  // ---- Predictions -----------------------------------------------------------------------------

  function numberOrRaw(text) {
    const t = String(text).trim();
    if (t === "") return null;
    const n = Number(t);
    return Number.isFinite(n) && /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t) ? n : t;
  }

  function panelRow() {
    if (state.panel.kind === "text") return $("text").value;
    if (state.panel.kind === "image" && state.panel.nested) {  // an image task takes pixel rows
      const cols = state.panel.shape[1];
      return Array.from({ length: state.panel.shape[0] }, (_, r) => state.values.slice(r * cols, (r + 1) * cols));
    }
    if (state.panel.kind === "image") return state.values.slice();
    const row = {};
    state.panel.features.forEach((name, i) => { row[name] = fieldValue($(`f-${i}`), columnOf(i)); });
    return row;
  }

  function fieldValue(field, column) {
    if (field.dataset.raw !== undefined) return JSON.parse(field.dataset.raw);  // an example's value, untouched
    if (column.kind !== "categorical") return numberOrRaw(field.value);  // empty: null (a gap)
    const text = field.tagName === "SELECT" ? field.value : field.value.trim();
    return text === MISSING ? null : text;
  }

  // A pasted CSV row of a table with words: cells split at commas (else tabs or semicolons), quotes respected,
  // a blank or NA cell missing; numbers for numeric features, words kept as typed (the API names a bad one).
  const GAPS = new Set(["", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL"]);

  function csvCells(text) {
    const line = text.split(/\r?\n/).find((l) => l.trim() !== "") || "";
    const sep = line.includes(",") ? "," : line.includes("\t") ? "\t" : line.includes(";") ? ";" : ",";
    const cells = [];
    let cell = "", quoted = false;
    for (let i = 0; i < line.length; i++) {
      const ch = line[i];
      if (quoted) {
        if (ch === '"' && line[i + 1] === '"') { cell += '"'; i++; }
        else if (ch === '"') quoted = false;
        else cell += ch;
      } else if (ch === '"' && cell.trim() === "") { quoted = true; cell = ""; }
      else if (ch === sep) { cells.push(cell); cell = ""; }
      else cell += ch;
    }
    cells.push(cell);
    return cells.map((c) => c.trim());
  }

  function mixedCsvRow(text) {
    return csvCells(text).map((cell, i) => {
      if (GAPS.has(cell)) return null;
      return columnOf(i).kind === "categorical" ? cell : numberOrRaw(cell);
    });
  }

  function shellQuote(text) { return "'" + text.replace(/'/g, "'\\''") + "'"; }

  function showCurl(body) {
    const auth = state.keyNeeded || storedKey() ? ' -H "Authorization: Bearer $ATOLL_API_KEY"' : "";
    $("curl").textContent = `curl -s ${location.origin}${base}/predict -H 'Content-Type: application/json'${auth} -d ${shellQuote(JSON.stringify(body))}`;
    $("curl-box").hidden = false;
  }

  function showError(status, message) {
    const box = $("error");
    box.replaceChildren(el("strong", "", `${status}`), document.createTextNode(message));
    box.hidden = false;
    $("result").hidden = true;
  }

  function renderResult(answer, ms) {
    $("error").hidden = true;
    const predicted = answer.predictions[0];
    // A regressor answers a value and no probabilities: show the value (and how far it is from the truth).
    const probs = (answer.probabilities && answer.probabilities[0]) || [];
    const isValue = !answer.probabilities && typeof predicted === "number";
    const classes = state.panel.classes && state.panel.classes.length === probs.length
      ? state.panel.classes : probs.map((_, i) => i);
    $("predicted").textContent = isValue ? Number(predicted.toPrecision(4)).toString() : String(predicted);
    const truth = $("truth");
    if (state.truth === null || state.truth === undefined) {
      truth.textContent = "";
      truth.className = "truth";
    } else if (isValue) {
      const off = predicted - Number(state.truth);
      truth.textContent = `true value ${state.truth} (off by ${off >= 0 ? "+" : ""}${Number(off.toPrecision(3))})`;
      truth.className = "truth";
    } else {
      const right = String(state.truth) === String(predicted);
      truth.textContent = `true label ${state.truth} ${right ? "✓" : "✗"}`;
      truth.className = "truth " + (right ? "right" : "wrong");
    }
    const unseen = (answer.unseen && answer.unseen["0"]) || [];
    $("unseen").textContent = unseen.length
      ? `Not seen in training, answered as "other": ${unseen.join(", ")}` : "";
    $("unseen").hidden = unseen.length === 0;
    const cut = answer.truncated && answer.truncated[0] ? ` · text cut to ${answer.max_length} tokens` : "";
    $("latency").textContent = `${Math.round(ms)} ms${cut}`;
    const bars = $("bars");
    bars.replaceChildren();
    const top = probs.indexOf(Math.max(...probs));
    probs.forEach((p, i) => {
      const mark = i === top ? " bar-row-top" : "";
      const track = el("div", "bar-track" + mark);
      track.setAttribute("role", "img");
      track.setAttribute("aria-label", `class ${classes[i]}: ${(p * 100).toFixed(1)}%`);
      const fill = el("div", "bar-fill");
      fill.style.width = `${(p * 100).toFixed(2)}%`;
      track.append(fill);
      bars.append(el("div", "bar-label" + mark, classes[i]), track, el("div", "bar-value" + mark, `${(p * 100).toFixed(1)}%`));
    });
    $("result").hidden = false;
  }

  async function predict(row) {
    const body = { inputs: [row] };
    showCurl(body);
    const button = $("predict");
    button.disabled = true;
    const started = performance.now();
    try {
      const resp = await api("/predict", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const ms = performance.now() - started;
      let answer = null;
      try { answer = await resp.json(); } catch (e) { answer = null; }
      if (!resp.ok) {
        showError(resp.status, errorText(answer, resp));
        if (resp.status === 401) showKeyPrompt(errorText(answer, resp));
        return;
      }
      renderResult(answer, ms);
    } catch (e) {
      showError("network", `the endpoint did not answer (${e.message})`);
    } finally {
      button.disabled = false;
    }
  }

  function predictPanel() { predict(panelRow()); }

  $("predict").addEventListener("click", predictPanel);
  $("image-file").addEventListener("change", () => {
    const file = $("image-file").files[0];
    if (!file) return;
    const preview = $("upload-preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);  // a blob: URL, which the page's policy allows
    preview.hidden = false;
    state.truth = null;
    markExample(null);
    const reader = new FileReader();
    reader.onload = () => predict(String(reader.result));  // a data: URL, base64 of the file
    reader.onerror = () => showError("file", `cannot read ${file.name}`);
    reader.readAsDataURL(file);
  });
  $("csv-predict").addEventListener("click", () => {
    const n = state.panel.num_features || state.panel.features.length;
    state.truth = null;
    markExample(null);
    if (state.panel.mixed) {  // words and blanks: the form shows the row, sent by feature name
      const row = mixedCsvRow($("csv").value);
      if (row.length === n) setValues(row);
      predict(row.length !== n ? row : Object.fromEntries(state.panel.features.map((f, i) => [f, row[i]])));
      return;
    }
    const tokens = $("csv").value.split(/[,;\t\s]+/).filter((t) => t !== "");
    const row = tokens.map(numberOrRaw);
    if (row.length === n && row.every((v) => typeof v === "number")) setValues(row);
    predict(state.panel.kind === "image" || row.length !== n
      ? row : Object.fromEntries(state.panel.features.map((f, i) => [f, row[i]])));
  });
  window.AtollUI.copyButton("copy-curl", "curl");

  // ---- Start -----------------------------------------------------------------------------------

  async function load() {
    const loaded = await window.AtollUI.loadCard(base, showKeyPrompt);
    if (!loaded) return;
    const { card, examples } = loaded;
    if (card.task === "text-generation") {  // a language model: its playground is the chat page
      location.replace(base + "/ui/chat");
      return;
    }
    state.card = card;
    $("key-panel").hidden = true;
    renderCard(card);
    renderPanel(examples.panel);
    renderExamples(examples.examples);
    $("layout").hidden = false;
    setStatus("");
    if (card.has_curve) loadCurve();
    window.AtollTraffic.poll($("traffic"), () => api("/traffic"));  // req/s and p99, every 10 s
  }

  $("openapi-link").href = base + "/openapi.json";
  load();
})();
