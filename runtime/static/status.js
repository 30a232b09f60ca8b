// The admin status page: fetches /status.json every few seconds and draws it.
// No libraries, no inline code (the page's Content-Security-Policy forbids both);
// every value from the server goes into the page as text, never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh")) || 2000;

function $(id) { return document.getElementById(id); }

function setText(id, value) {
  const el = $(id);
  if (el) { el.textContent = String(value); el.dataset.value = String(value); }
}

function ms(value) {
  if (value === null || value === undefined) return "-";
  if (value >= 1000) return (value / 1000).toFixed(2) + " s";
  if (value >= 10) return value.toFixed(0) + " ms";
  if (value >= 1) return value.toFixed(1) + " ms";
  return value.toFixed(2) + " ms";
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
  const m = Math.floor(s % 3600 / 60), r = s % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${r}s`;
  return `${r}s`;
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= value) return m * p;
  return 10 * p;
}

// A line chart of several series over the same x values (epoch seconds).
function chart(svg, xs, series, format) {
  svg.replaceChildren();
  const W = 560, H = 150, L = 44, R = 8, T = 8, B = 18;
  const values = series.flatMap(s => s.values).filter(v => v !== null);
  const top = niceMax(Math.max(0, ...values));
  const x0 = xs.length ? xs[0] : 0, x1 = xs.length ? xs[xs.length - 1] : 1;
  const sx = x => L + (x1 > x0 ? (x - x0) / (x1 - x0) : 1) * (W - L - R);
  const sy = y => T + (1 - y / top) * (H - T - B);
  for (let i = 0; i <= 2; i++) {
    const v = top * i / 2, y = sy(v);
    svg.append(el("svg:line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
    svg.append(el("svg:text", { x: L - 4, y: y + 3, "text-anchor": "end" }, format(v)));
  }
  if (xs.length) {
    svg.append(el("svg:text", { x: L, y: H - 4 }, "-" + duration(x1 - x0)));
    svg.append(el("svg:text", { x: W - R, y: H - 4, "text-anchor": "end" }, "now"));
  }
  for (const s of series) {
    let d = "", pen = "M";
    s.values.forEach((v, i) => {
      if (v === null) { pen = "M"; return; }
      d += `${pen}${sx(xs[i]).toFixed(1)},${sy(v).toFixed(1)} `;
      pen = "L";
    });
    const path = el("svg:path", { class: "line " + s.cls, d: d.trim() || "M0,0" });
    path.dataset.points = String(s.values.filter(v => v !== null).length);
    svg.append(path);
  }
}

// A waterfall of the request's hooks, from taking the request to its end: hooks
// that enclose others (finish_request around setup/handle/finish) are drawn pale
// underneath; the text names the three longest innermost hooks.
function hookCell(hooks, total) {
  const td = el("td");
  const bar = el("svg:svg", { class: "hookbar", viewBox: "0 0 160 8", preserveAspectRatio: "none" });
  const scale = total > 0 ? 160 / total : 0;
  const encloses = (h, g) => g !== h && g.start_ms >= h.start_ms && g.start_ms + g.ms <= h.start_ms + h.ms;
  const leaves = hooks.filter(h => !hooks.some(g => encloses(h, g)));
  const ordered = [...hooks].sort((a, b) => b.ms - a.ms);
  for (const h of ordered) {
    const cls = !leaves.includes(h) ? "outer" : h.hook === "handle" ? "handle" : "other";
    const width = Math.max(h.ms * scale, 0.5);
    bar.append(el("svg:rect", { class: cls, x: h.start_ms * scale, y: 0, width: width, height: 8 }));
  }
  td.append(bar);
  const top = [...leaves].sort((a, b) => b.ms - a.ms).slice(0, 3);
  td.append(el("span", { class: "hooks" }, top.map(h => `${h.hook} ${ms(h.ms)}`).join(" · ")));
  return td;
}

// Only the server's own failures are drawn as errors: a client that left
// (client_closed) or a time limit (timed_out) ended the request early, and a
// rejected one was refused on purpose.
function outcomeClass(outcome) {
  if (outcome === "ok") return "";
  return outcome === "error" ? "err" : "early";
}

function rows(tbody, items, columns, emptyText) {
  tbody.replaceChildren();
  if (!items.length) {
    const tr = el("tr");
    tr.append(el("td", { colspan: columns, class: "empty" }, emptyText));
    tbody.append(tr);
  }
  return tbody;
}

function render(doc) {
  const good = doc.state === "serving";
  const state = $("state");
  state.textContent = doc.state;
  state.className = "badge " + (good ? "good" : doc.state === "draining" ? "warn" : "bad");
  const ready = $("ready");
  ready.textContent = doc.ready ? "ready" : "not ready";
  ready.className = "badge " + (doc.ready ? "good" : "bad");
  setText("uptime", duration(doc.uptime_seconds));
  $("build").textContent = `v${doc.version} · Python ${doc.python} · pid ${doc.pid}`;
  $("servers").textContent = doc.servers.map(s => `${s.name} ${s.transport}://${s.address}`).join(", ");

  const sum = key => doc.servers.reduce((n, s) => n + s[key], 0);
  setText("in-flight", sum("in_flight"));
  setText("queue-depth", sum("queue_depth"));
  setText("workers-busy", sum("workers_busy"));
  setText("workers-idle", sum("workers_idle"));
  setText("workers-max", sum("workers_max"));
  setText("mode", doc.servers.map(s => s.mode).join(", ") + " mode");

  if (doc.workers) {
    $("workers-section").hidden = false;
    const tbody = rows($("workers").tBodies[0], doc.workers, 8, "no worker processes");
    for (const w of doc.workers) {
      const tr = el("tr", { "data-worker": w.worker });
      tr.append(el("td", { class: "num" }, w.worker));
      tr.append(el("td", { class: "num mono" }, w.pid));
      tr.append(el("td", { class: "num" }, w.generation));
      tr.append(el("td", { class: w.state === "ready" ? "" : "warn" }, w.state));
      tr.append(el("td", { class: "num" }, duration(w.uptime_seconds)));
      tr.append(el("td", { class: "num" }, w.heartbeat_age_seconds.toFixed(1) + " s"));
      tr.append(el("td", { class: "num" }, w.in_flight));
      tr.append(el("td", { class: "num" }, w.handled));
      tbody.append(tr);
    }
  }

  if (!doc.telemetry) {
    $("fetch-error").textContent = "no telemetry configured: totals, charts and recent requests are off";
    return;
  }
  const totals = ["requests", "ok", "error", "rejected", "client_closed", "timed_out", "slow", "watchdog_timed_out"];
  for (const key of totals) setText("total-" + key, doc.totals[key]);
  const minutes = Math.round(doc.window_seconds / 60);
  setText("window-minutes", minutes);
  for (const span of document.querySelectorAll(".window-minutes")) span.textContent = String(minutes);
  setText("window-p50", ms(doc.window.p50_ms));
  setText("window-p90", ms(doc.window.p90_ms));
  setText("window-p99", ms(doc.window.p99_ms));

  const xs = doc.history.map(p => p.t);
  chart($("chart-rate"), xs, [
    { cls: "ok", values: doc.history.map(p => p.rate) },
    { cls: "err", values: doc.history.map(p => p.error_rate) },
  ], v => v >= 100 ? v.toFixed(0) : v.toFixed(1));
  chart($("chart-latency"), xs, [
    { cls: "p50", values: doc.history.map(p => p.p50_ms) },
    { cls: "p90", values: doc.history.map(p => p.p90_ms) },
    { cls: "p99", values: doc.history.map(p => p.p99_ms) },
  ], v => ms(v));

  const perWorker = "kept by each worker process: not shown in pre-fork mode";
  const slow = rows($("slowest").tBodies[0], doc.slowest, 6, doc.recent ? "no requests in the window" : perWorker);
  for (const r of doc.slowest) {
    const tr = el("tr", { "data-trace-id": r.trace_id });
    tr.append(el("td", { class: "num" }, clock(r.started)));
    tr.append(el("td", { class: "num duration" }, ms(r.duration_ms)));
    tr.append(el("td", { class: "mono" }, r.client));
    tr.append(el("td", { class: outcomeClass(r.outcome) }, r.outcome));
    tr.append(hookCell(r.hooks, r.duration_ms));
    tr.append(el("td", { class: "mono trace" }, r.trace_id || "not sampled"));
    slow.append(tr);
  }
  // HTTP requests (and operations handlers mark) by route and status; the route is the
  // low-cardinality one (runtime.set_route), "" when the handler named none.
  const routes = doc.routes || [];
  $("routes-section").hidden = !routes.length;
  const routeBody = rows($("routes").tBodies[0], routes, 6, "");
  for (const r of routes) {
    const tr = el("tr");
    tr.append(el("td", {}, r.server));
    tr.append(el("td", { class: "mono" }, r.method));
    tr.append(el("td", { class: "mono route" }, r.route || "(no route)"));
    tr.append(el("td", { class: r.status >= 500 ? "num err status" : "num status" }, r.status ? String(r.status) : "none"));
    tr.append(el("td", { class: "num" }, String(r.count)));
    tr.append(el("td", { class: "num" }, ms(r.mean_ms)));
    routeBody.append(tr);
  }
  const errors = rows($("errors").tBodies[0], doc.errors, 7, doc.recent ? "no errors" : perWorker);
  for (const e of doc.errors) {
    const tr = el("tr", { "data-trace-id": e.trace_id });
    tr.append(el("td", { class: "num" }, clock(e.started)));
    tr.append(el("td", { class: "err error-type" }, e.error_type));
    tr.append(el("td", { class: "mono" }, e.hook));
    tr.append(el("td", {}, e.message));
    tr.append(el("td", { class: "mono" }, e.where));
    tr.append(el("td", { class: "mono" }, e.client));
    tr.append(el("td", { class: "mono trace" }, e.trace_id || "not sampled"));
    errors.append(tr);
  }
}

async function refresh() {
  try {
    const response = await fetch("/status.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const doc = await response.json();
    render(doc);
    $("updated").textContent = "updated " + clock(doc.now);
    $("fetch-error").textContent = doc.telemetry ? "" : $("fetch-error").textContent;
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  } catch (error) {
    $("fetch-error").textContent = "cannot reach the runtime: " + error.message;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
