// Atoll showcase: one card per live model app, from Serve's status; each card from its app's own API.
"use strict";

(() => {
  const { KEY_STORE, $, el, authHeaders } = window.AtollUI;

  function headline(metrics) {
    for (const name of ["val_accuracy", "accuracy", "val_loss"]) {
      if (typeof metrics[name] === "number") return [name, metrics[name]];
    }
    const first = Object.entries(metrics || {}).find(([k, v]) => typeof v === "number" && k !== "epoch");
    return first || null;
  }

  async function card(app) {
    const prefix = (app.route_prefix || `/${app.app}`).replace(/\/+$/, "");
    const node = el("article", "panel app-card");
    node.dataset.app = app.app;
    const head = el("div", "head");
    head.append(el("h2", "", app.app), el("span", "badge" + (app.status === "RUNNING" ? " accent" : " warn"), app.status));
    node.append(head);
    const model = el("div", "muted");
    const metric = el("div", "metric");
    const metricName = el("div", "muted small");
    node.append(model, metric, metricName);
    try {
      const resp = await fetch(`${prefix}/`, { headers: authHeaders(), cache: "no-store" });
      if (resp.status === 401) {
        model.textContent = "API key required: the playground asks for it.";
      } else if (resp.ok) {
        const c = await resp.json();
        model.textContent = `${c.model} · version ${c.version}` + ((c.aliases || []).length ? ` · @${c.aliases.join(", @")}` : "");
        const best = headline(c.metrics || {});
        if (best) {
          metric.textContent = best[0].includes("accuracy") ? `${(best[1] * 100).toFixed(1)}%` : best[1].toFixed(4);
          metricName.textContent = best[0];
        }
      } else {
        model.textContent = `the app answered ${resp.status}`;
      }
    } catch (e) {
      model.textContent = "the app did not answer";
    }
    node.append(el("div", "traffic"));  // filled from the gallery's one /_gallery/traffic answer
    const link = el("a", "open", "Open playground →");
    link.href = `${prefix}/ui`;
    node.append(link);
    return node;
  }

  // Every card's live chart (req/s and p99 of the last 10 minutes) from one answer for all apps.
  async function traffic(cards) {
    let body;
    try {
      const resp = await fetch("/_gallery/traffic", { headers: authHeaders(), cache: "no-store" });
      body = resp.ok ? await resp.json() : { available: false, why: `live traffic: the gallery answered ${resp.status}` };
    } catch (e) {
      body = { available: false, why: `live traffic: no answer (${e.message})` };
    }
    for (const node of cards) {
      window.AtollTraffic.render(node.querySelector(".traffic"), body, (body.series || {})[node.dataset.app] || {});
    }
  }

  async function refresh() {
    try {
      const resp = await fetch("/_gallery/apps", { headers: authHeaders(), cache: "no-store" });
      if (resp.status === 401) {  // keyed apps on this cluster: their list needs one of their keys
        $("status").textContent = "The models on this cluster need an API key; the list opens with any of them.";
        $("key-form").hidden = false;
        return;
      }
      $("key-form").hidden = true;
      const body = await resp.json();
      const cards = await Promise.all(body.apps.map(card));
      $("gallery").replaceChildren(...cards);
      $("status").textContent = cards.length ? "" : "No model is deployed. Deploy one with `atoll serve deploy NAME`.";
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      if (cards.length) traffic(cards);
    } catch (e) {
      $("status").textContent = `Could not read Serve's status (${e.message}); retrying.`;
    }
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    try { sessionStorage.setItem(KEY_STORE, key); } catch (e) { /* private mode: this refresh only */ }
    refresh();
  });

  refresh();
  setInterval(refresh, 10000);
})();
