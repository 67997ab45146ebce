"""The live dashboard at `GET /_proxy/`: one self-contained page (no CDN, charts in plain SVG).

The page carries no data. Its script reads `/_proxy/live` every two seconds; when the sidecar
has `listen.keys`, it asks for a key once, keeps it in the tab's sessionStorage and sends it as
a bearer token, so no key ever sits in a URL, a history or a log. Read-only: it shows the
command that rolls back, and changes nothing itself.
"""

from __future__ import annotations

from typing import Final

PAGE: Final = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>llm-sidecar: live</title>
<style>
:root { --fg:#1d2430; --dim:#6b7380; --line:#dde1e6; --bad:#b3261e; --ok:#1e7b34; --bg:#fafbfc; }
body { font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 0; }
header { padding: 12px 20px; border-bottom: 1px solid var(--line); background: #fff; }
header h1 { font-size: 17px; margin: 0 0 4px; }
main { padding: 8px 20px 40px; max-width: 1200px; }
section { margin-top: 18px; }
h2 { font-size: 14px; text-transform: uppercase; letter-spacing: .04em; color: var(--dim); margin: 0 0 6px; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f1f3f5; font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
code, pre { font: 12.5px ui-monospace, monospace; }
pre { background: #fff; border: 1px solid var(--line); padding: 8px; overflow-x: auto; margin: 4px 0; }
.dim { color: var(--dim); } .bad { color: var(--bad); font-weight: 600; } .ok { color: var(--ok); }
#chart svg { background: #fff; border: 1px solid var(--line); }
#keyform { display: none; margin-top: 10px; }
</style></head>
<body>
<header><h1>llm-sidecar: live</h1>
<div id="summary" class="dim">loading&hellip;</div>
<form id="keyform"><label>This sidecar needs one of its keys (listen.keys):
<input id="key" type="password" autocomplete="off" size="40"></label>
<button type="submit">Show</button>
<span class="dim">kept in this tab only (sessionStorage), sent as a bearer token</span></form>
</header>
<main>
<section><h2>Roll back</h2>
<div class="dim">Run this on the sidecar's host; the sidecar sees the file change and reloads
(or <code>kill -HUP</code> it). This page changes nothing itself.</div>
<pre id="rollback"></pre></section>
<section><h2>Config</h2><div id="config"></div></section>
<section><h2>Split per route: configured and served (last minutes)</h2><div id="routes"></div></section>
<section><h2>Calls per second</h2><div id="chart"></div></section>
<section><h2>Upstreams (last minutes)</h2><div id="upstreams"></div></section>
<section><h2>Shadow copies beside the primary (same window)</h2><div id="compare"></div>
<div id="shadow" class="dim"></div></section>
<section><h2>Guard and quotas</h2><div id="guard"></div><div id="quotas"></div></section>
</main>
<script>
"use strict";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fmt(v, unit) {
  if (v === null || v === undefined) return "\\u2013";
  if (unit === "%") return (100 * v).toFixed(1) + "%";
  if (unit === "ms") return v.toFixed(v < 10 ? 1 : 0) + " ms";
  return String(v);
}
function table(head, rows) {
  const t = el("table"), tr = el("tr");
  head.forEach((h) => tr.appendChild(el("th", h)));
  t.appendChild(tr);
  rows.forEach((r) => {
    const row = el("tr");
    r.forEach((c) => row.appendChild(c instanceof Node ? wrap(c) : el("td", c)));
    t.appendChild(row);
  });
  return t;
}
function wrap(node) { const td = el("td"); td.appendChild(node); return td; }
function fill(id, ...nodes) { const e = $(id); e.replaceChildren(...nodes); }
function shares(obj) {
  return Object.entries(obj).map(([u, s]) => u + " " + (100 * s).toFixed(1) + "%").join(", ");
}
function chart(perUpstream, slot) {
  const names = Object.keys(perUpstream);
  const W = 720, H = 180, P = 30;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H + 24);
  if (!names.length) { fill("chart", el("div", "no calls in the window yet", "dim")); return; }
  const n = perUpstream[names[0]].length;
  // The last slot is still filling: it is drawn, but the scale ignores it.
  let max = 0.001;
  names.forEach((u) => perUpstream[u].slice(0, -1).forEach((v) => { max = Math.max(max, v); }));
  const x = (i) => P + (i * (W - P - 8)) / Math.max(1, n - 1);
  const y = (v) => H - 6 - (Math.min(v, max) / max) * (H - 16);
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", 2); axis.setAttribute("y", 12); axis.setAttribute("font-size", "11");
  axis.textContent = max.toFixed(1) + "/s";
  svg.appendChild(axis);
  names.forEach((u, k) => {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[k % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("points", perUpstream[u].map((v, i) => x(i) + "," + y(v)).join(" "));
    svg.appendChild(line);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", P + k * 140); label.setAttribute("y", H + 18);
    label.setAttribute("font-size", "12"); label.setAttribute("fill", COLORS[k % COLORS.length]);
    label.textContent = "\\u25a0 " + u;
    svg.appendChild(label);
  });
  fill("chart", svg, el("div", "each point is " + slot + " s; newest on the right", "dim"));
}
function render(d) {
  const c = d.config;
  fill("summary", el("span", "revision " + c.revision + " \\u00b7 config " + c.config + " \\u00b7 "),
       el("span", c.rollback ? "ROLLBACK ON" : "rollback off", c.rollback ? "bad" : "ok"),
       el("span", " \\u00b7 updated " + new Date(d.now * 1000).toLocaleTimeString()));
  $("rollback").textContent = d.rollback_command;
  const err = c.last_reload_error;
  fill("config", table(["revision", "file", "rollback", "reloads", "last reload refused"],
    [[c.revision, c.config, c.rollback ? "on" : "off", c.reloads,
      err ? el("span", err.message, "bad") : "none"]]));
  const t = d.traffic;
  const s = d.shadow;
  fill("shadow", el("span", "copies sent " + s.sent + ", failed " + s.failed + ", in flight " + s.in_flight +
    ", skipped: cap " + s.skipped_in_flight_cap + ", guard " + s.skipped_guard +
    ", not repeatable " + s.skipped_not_repeatable));
  if (!t) {
    const off = el("div", "metrics.enabled is false: no live figures (the state above is current)", "dim");
    ["routes", "upstreams", "compare", "chart"].forEach((id) => fill(id, off.cloneNode(true)));
  } else {
    fill("routes", table(["route", "configured", "served", "calls"],
      t.routes.map((r) => [r.route, shares(r.configured), shares(r.served) || "\\u2013", r.calls])));
    fill("upstreams", table(["upstream", "role", "calls", "per s", "failed", "error rate",
      "p50", "p95", "p99", "TTFT p50", "TTFT p95"],
      t.upstreams.map((u) => [u.upstream, u.role, u.calls, u.per_s, u.failed,
        el("span", fmt(u.error_rate, "%"), u.error_rate > 0.05 ? "bad" : ""),
        fmt(u.p50_ms, "ms"), fmt(u.p95_ms, "ms"), fmt(u.p99_ms, "ms"),
        fmt(u.ttft_p50_ms, "ms"), fmt(u.ttft_p95_ms, "ms")])));
    fill("compare", t.compare.length ? table(["shadow", "primary", "copies", "calls",
      "copy error rate", "primary error rate", "failures", "copy p50", "primary p50",
      "p50 ratio", "copy p95", "primary p95"],
      t.compare.map((r) => [r.shadow, r.primary, r.copies, r.calls, fmt(r.copy_error_rate, "%"),
        fmt(r.primary_error_rate, "%"), el("span", r.failures, r.failures === "more failures" ? "bad" : ""),
        fmt(r.copy_p50_ms, "ms"), fmt(r.primary_p50_ms, "ms"), fmt(r.latency_ratio),
        fmt(r.copy_p95_ms, "ms"), fmt(r.primary_p95_ms, "ms")]))
      : el("div", "no route shadows its calls", "dim"));
    chart(t.rates.per_upstream, t.rates.slot_s);
  }
  const g = c.guard;
  fill("guard", g === null ? el("div", "no guard configured", "dim") :
    g.tripped.length ? table(["tripped upstream", "rule", "evidence", "since"],
      g.tripped.map((x) => [el("span", x.upstream, "bad"), x.rule, x.figures,
        new Date(x.since * 1000).toLocaleTimeString()]))
    : el("div", "guard: nothing tripped", "ok"));
  const q = Object.entries(d.quotas.upstreams);
  fill("quotas", q.length ? table(["quota of", "requests/min", "tokens/min", "USD today", "spent"],
    q.map(([u, x]) => [u, x.requests_last_minute, x.tokens_last_minute, x.usd_today,
      el("span", x.spent ? "spent" : "no", x.spent ? "bad" : "")]))
    : el("div", "no quotas configured", "dim"));
}
async function refresh() {
  const key = sessionStorage.getItem("sidecar-key");
  const headers = key ? { Authorization: "Bearer " + key } : {};
  let r;
  try { r = await fetch("live", { headers, cache: "no-store" }); }
  catch (e) { $("summary").textContent = "the sidecar does not answer; retrying"; return; }
  if (r.status === 401) {
    $("keyform").style.display = "block";
    $("summary").textContent = key ? "that key was refused" : "a key is needed";
    return;
  }
  $("keyform").style.display = "none";
  render(await r.json());
}
$("keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("sidecar-key", $("key").value);
  $("key").value = "";
  refresh();
});
refresh();
setInterval(refresh, 2000);
</script>
</body></html>
"""
