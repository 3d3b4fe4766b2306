// vmr's web page, part 1 of 2: DOM builders with no state of their own (app.js, loaded after
// this file, owns the state, the websocket and the wiring). Plain script, shared globals, no build.
"use strict";

const MAX_GAPS_LISTED = 5; // gaps named in words under a coverage bar (all are drawn)
const CHANNEL_NAMES = { visual: "visual", speech: "speech", ocr: "on-screen text" };
const fmt = (t) => (t == null ? "–" : Number(t).toFixed(1));

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

// ------------------------------------------------------------------ coverage
// The bar is the stream's time axis from 0 to its known length (a file's whole duration while it is
// being read): retained stretches in the accent colour, gaps (holes in the memory: outages, jumps)
// hatched red, the rest (not yet read, or never retained) left bare. The meter's value is the share
// ingested; its label and the legend under it say the same in words, gaps included.
function coverageBar(s, frac) {
  const cov = s.covered;
  const holes = cov ? cov.holes : [];
  const seen = Math.max(s.last_time || 0, cov ? cov.end : 0);
  const length = Math.max(s.progress > 0 && s.progress < 1 ? seen / s.progress : seen, 1e-3);
  const pct = (t) => (100 * Math.min(Math.max(t, 0), length) / length).toFixed(2);
  const piece = (cls, a, b, title) => el("div", { class: `span ${cls}`, "data-start": String(a), "data-end": String(b), title, style: `left:${pct(a)}%;width:${(pct(b) - pct(a)).toFixed(2)}%` });
  const pieces = [];
  if (cov) {
    let at = cov.start;
    for (const [a, b] of holes) {
      if (a > at) pieces.push(piece("retained", at, a, `retained ${fmt(at)}–${fmt(a)} s`));
      pieces.push(piece("gap", a, b, `gap ${fmt(a)}–${fmt(b)} s`));
      at = Math.max(at, b);
    }
    if (cov.end > at) pieces.push(piece("retained", at, cov.end, `retained ${fmt(at)}–${fmt(cov.end)} s`));
  }
  const gaps = s.gaps || {};
  const nGaps = gaps.count || 0;
  const gapWords = nGaps ? `${nGaps} gap${nGaps > 1 ? "s" : ""} (${fmt(gaps.seconds)} s)` : "no gaps";
  const retainedWords = cov ? `retained ${fmt(cov.start)}–${fmt(cov.end)} s of ${fmt(length)} s` : "nothing retained yet";
  const meter = el("div", {
    class: "coverage", role: "meter", "aria-label": `coverage of ${s.id}: ${retainedWords}, ${gapWords}`,
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(Math.round(frac * 100)),
    "aria-valuetext": `${Math.round(frac * 100)} % ingested, ${gapWords}`, title: `${Math.round(frac * 100)} % ingested`,
  }, ...pieces);
  const listed = holes.slice(0, MAX_GAPS_LISTED).map(([a, b]) => `${fmt(a)}–${fmt(b)} s`).join(", ");
  const more = holes.length > MAX_GAPS_LISTED ? `, … (${holes.length - MAX_GAPS_LISTED} more drawn)` : "";
  const legend = el("div", { class: "legend" },
    el("span", { class: "key retained", "aria-hidden": "true" }), " retained ",
    el("span", { class: "key gap", "aria-hidden": "true" }), ` ${gapWords}${listed ? ": " + listed + more : ""} `,
    el("span", { class: "key bare", "aria-hidden": "true" }), " not retained");
  return { meter, legend };
}

// ------------------------------------------------------------------ moments
// Which channels support a moment (badges) and the words a text channel matched (quoted).
function support(m) {
  const badges = el("span", { class: "channels", "aria-label": `supported by ${m.channels.map((c) => CHANNEL_NAMES[c] || c).join(", ") || "nothing"}` },
    ...m.channels.map((c) => el("span", { class: `badge ch-${c}`, "data-channel": c, text: CHANNEL_NAMES[c] || c })));
  const quotes = Object.entries(m.quotes || {}).map(([c, words]) =>
    el("q", { class: "quote", "data-channel": c, title: `${CHANNEL_NAMES[c] || c} matched`, text: words }));
  return el("div", { class: "support" }, badges, ...quotes);
}

// The refined per-frame similarity around a moment, as a small inline SVG: the curve over the
// points' own time range, the moment's span shaded, the score axis from the points' min to max.
function curveSvg(m) {
  const W = 120, H = 32, NS = "http://www.w3.org/2000/svg";
  const ts = m.curve.map((p) => p[0]), ys = m.curve.map((p) => p[1]);
  const t0 = Math.min(...ts), t1 = Math.max(...ts), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const x = (t) => (t1 > t0 ? (W * (t - t0)) / (t1 - t0) : W / 2);
  const y = (v) => (y1 > y0 ? H - 2 - ((H - 4) * (v - y0)) / (y1 - y0) : H / 2);
  const peak = m.curve[ys.indexOf(y1)];
  const svg = document.createElementNS(NS, "svg");
  const attrs = { class: "curve", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `similarity curve of ${m.curve.length} frames, ${fmt(t0)}–${fmt(t1)} s, peak ${y1.toFixed(3)} at ${fmt(peak[0])} s` };
  for (const [k, v] of Object.entries(attrs)) svg.setAttribute(k, v);
  const span = document.createElementNS(NS, "rect");
  const a = x(Math.max(m.start, t0)), b = x(Math.min(m.end, t1));
  for (const [k, v] of Object.entries({ class: "span", x: a, y: 0, width: Math.max(1, b - a), height: H })) span.setAttribute(k, v);
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", m.curve.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
  svg.append(span, line);
  return svg;
}
