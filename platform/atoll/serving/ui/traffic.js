// Atoll live traffic: a small chart of an app's requests/s and p99 latency over the last 10 minutes, one line per
// version, drawn as inline SVG from the app's GET /traffic (or the gallery's GET /_gallery/traffic). Shared by the
// playground, the chat playground and the gallery (after common.js). No inline style (the pages' policy forbids it): the look is in
// playground.css; text from the API goes in as text.
"use strict";

window.AtollTraffic = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 300, H = 60, TOP = 6, BOTTOM = 2;  // the drawing box (viewBox units; CSS scales it)
  const EVERY_MS = 10000;
  const timers = new Map();

  const { el } = window.AtollUI;

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function fmt(value, unit) {
    if (value === null || value === undefined) return "–";
    const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
    return `${value.toFixed(digits)}${unit ? " " + unit : ""}`;
  }

  function latest(values) {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
    return null;
  }

  // Versions newest first ("digits:12" before "digits:9"): the live one is the first line, in the accent colour.
  function newestFirst(versions) {
    return Object.keys(versions).sort((a, b) => b.localeCompare(a, undefined, { numeric: true }));
  }

  // One figure (rps or p99_ms) of every version: lines on a shared scale; a gap where Prometheus had no value.
  // The figure shown is the newest version's latest value.
  function panel(title, unit, versions, name) {
    const names = newestFirst(versions);
    const all = names.flatMap((v) => versions[v][name] || []).filter((x) => x !== null);
    const top = Math.max(...all, 0) || 1;
    const box = el("div", "traffic-panel");
    const head = el("div", "traffic-head");
    const now = names.length ? latest(versions[names[0]][name] || []) : null;
    head.append(el("span", "", all.length ? `${title} · max ${fmt(top, unit)}` : title),
      el("span", "traffic-now", fmt(now, unit)));
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: `traffic-chart traffic-${name}`, role: "img",
      preserveAspectRatio: "none", "aria-label": `${title} over the last 10 minutes` });
    chart.append(svg("line", { x1: 0, x2: W, y1: TOP, y2: TOP, class: "traffic-grid" }),
      svg("line", { x1: 0, x2: W, y1: H - BOTTOM, y2: H - BOTTOM, class: "traffic-grid" }));
    names.forEach((version, n) => {
      const values = versions[version][name] || [];
      const x = (i) => ((i / Math.max(values.length - 1, 1)) * W).toFixed(1);
      const y = (v) => (H - BOTTOM - (v / top) * (H - TOP - BOTTOM)).toFixed(1);
      let d = "", pen = false;
      values.forEach((v, i) => {
        if (v === null) { pen = false; return; }
        d += `${pen ? "L" : "M"}${x(i)},${y(v)} `;
        pen = true;
      });
      if (d) chart.append(svg("path", { d: d.trim(), class: `traffic-line traffic-v${Math.min(n, 2)}` }));
    });
    box.append(head, chart);
    return box;
  }

  // Draw ``versions`` ({version: {rps, p50_ms, p99_ms}}) from a /traffic answer into ``container``, or its note.
  function render(container, body, versions) {
    container.classList.add("traffic");
    if (!body || !body.available) {
      container.replaceChildren(el("p", "traffic-note", (body && body.why) || "no live traffic"));
      return;
    }
    const minutes = Math.round((body.window_s || 600) / 60);
    const names = Object.keys(versions || {});
    const legend = el("p", "traffic-legend", names.length ? `last ${minutes} min, every ${body.step_s} s`
      : `no requests in the last ${minutes} min`);
    if (names.length > 1) {  // a rollover: which line is which version
      newestFirst(versions).forEach((v, n) => legend.append(" ", el("span", `traffic-key traffic-v${Math.min(n, 2)}`, v)));
    }
    container.replaceChildren(panel("req/s", "", versions || {}, "rps"), panel("p99", "ms", versions || {}, "p99_ms"),
      legend);
  }

  // Fetch (``fetcher()``: a Promise of the Response of an app's /traffic) and draw now and every 10 s.
  function poll(container, fetcher) {
    clearInterval(timers.get(container));
    const tick = async () => {
      try {
        const resp = await fetcher();
        if (resp.status === 401) { render(container, { available: false, why: "live traffic needs the API key" }); return; }
        const body = await resp.json();
        render(container, resp.ok ? body : { available: false, why: `live traffic: the app answered ${resp.status}` },
          body.series);
      } catch (e) {
        render(container, { available: false, why: `live traffic: no answer (${e.message})` });
      }
    };
    tick();
    timers.set(container, setInterval(tick, EVERY_MS));
  }

  return { render, poll };
})();
