// vmr's web page: plain JS over the websocket protocol (docs/protocol.md), no build step, no CDN.
// State, websocket and wiring; the DOM builders it uses (el, fmt, coverageBar, support, curveSvg)
// are in views.js, loaded first.
// With a token set, every HTTP resource (thumbnails, media) is fetched with an Authorization header
// and shown through a blob URL: <img>/<video> cannot send headers themselves.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "vmr.token";
const REFRESH_MS = 2000; // stream list poll; `stream`/`progress` broadcasts update it in between
const THUMB_MS = 5000; // live thumbnail refresh
const MAX_MATCHES = 50; // past matches listed per watch (oldest dropped): the page may stay open for days

const state = {
  ws: null,
  authed: false,
  needToken: false,
  streams: new Map(), // id -> status
  thumbAt: new Map(), // id -> last refresh (ms)
  seq: 0,
  query: null, // id of the query whose answer is shown
  watches: new Map(), // id -> {li, list}
  image: null, // base64 of the query image
  channels: ["visual"], // the service's channels (hello)
  asked: null, // channels the shown query was restricted to (null: all)
  poll: null,
};

const token = () => sessionStorage.getItem(TOKEN_KEY);
const nextId = (p) => `${p}${++state.seq}`;

// ------------------------------------------------------------------ HTTP with the token
async function authedUrl(url) {
  const t = token();
  if (!t) return url;
  const r = await fetch(url, { headers: { Authorization: `Bearer ${t}` } });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return URL.createObjectURL(await r.blob());
}

function setImage(img, url) {
  authedUrl(url).then((src) => {
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = src;
  }, () => img.removeAttribute("src"));
}

// ------------------------------------------------------------------ websocket
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  state.ws = ws;
  $("conn").textContent = "connecting…";
  ws.onopen = () => send({ type: "hello", id: "hello", token: token() });
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  ws.onclose = () => {
    state.authed = false;
    clearInterval(state.poll);
    $("conn").textContent = state.needToken ? "token needed" : "disconnected; retrying";
    if (!state.needToken) setTimeout(connect, 2000);
  };
}

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

function onEvent(e) {
  switch (e.type) {
    case "hello":
      state.authed = true;
      state.needToken = false;
      $("auth").hidden = true;
      $("conn").textContent = "connected";
      $("model").textContent = `model ${e.model.prescreen || ""}${e.meaningless ? " (random weights: scores meaningless)" : ""}`;
      renderChannels(e.channels || ["visual"]);
      send({ type: "streams.list", id: "list" });
      state.poll = setInterval(() => send({ type: "streams.list", id: "list" }), REFRESH_MS);
      break;
    case "streams":
      for (const s of e.streams) state.streams.set(s.id, s);
      for (const id of [...state.streams.keys()]) if (!e.streams.some((s) => s.id === id)) state.streams.delete(id);
      renderStreams();
      break;
    case "stream":
      state.streams.set(e.stream.id, e.stream);
      renderStreams();
      break;
    case "stream.removed":
      state.streams.delete(e.stream);
      renderStreams();
      break;
    case "moments":
    case "moments.update":
      if (state.watches.has(e.id)) watchBackward(e);
      else if (e.id === state.query) renderAnswer(e);
      break;
    case "watching":
      watchOpened(e);
      break;
    case "moment":
    case "moment.update":
      watchMatch(e);
      break;
    case "cancelled":
      watchCancelled(e.target);
      break;
    case "error":
      onError(e);
      break;
  }
}

function onError(e) {
  if (e.code === "unauthorized") {
    state.needToken = true;
    sessionStorage.removeItem(TOKEN_KEY);
    $("auth").hidden = false;
    $("token").focus();
    $("conn").textContent = "token needed";
    return;
  }
  const where = state.watches.has(e.id) ? `watch ${e.id}` : "request";
  $("ask-status").textContent = `${where}: ${e.message} (${e.code})`;
}

// ------------------------------------------------------------------ streams
function renderStreams() {
  const ul = $("streams");
  const seen = new Set();
  for (const s of state.streams.values()) {
    seen.add(s.id);
    let li = ul.querySelector(`li[data-stream="${CSS.escape(s.id)}"]`);
    if (!li) {
      li = el("li", { "data-stream": s.id, class: "stream" },
        el("img", { class: "thumb", alt: `latest frame of ${s.id}`, width: "160", height: "120" }),
        el("div", { class: "info" }));
      ul.append(li);
    }
    streamInfo(li.querySelector(".info"), s);
    const now = Date.now();
    if (s.last_time != null && now - (state.thumbAt.get(s.id) || 0) > THUMB_MS) {
      state.thumbAt.set(s.id, now);
      setImage(li.querySelector("img"), `/thumbnails/${encodeURIComponent(s.id)}/${s.last_time.toFixed(3)}.jpg`);
    }
  }
  for (const li of ul.querySelectorAll("li")) if (!seen.has(li.dataset.stream)) li.remove();
  const sel = $("q-streams");
  const chosen = new Set([...sel.selectedOptions].map((o) => o.value));
  sel.replaceChildren(...[...state.streams.keys()].map((id) => el("option", { value: id, text: id })));
  for (const o of sel.options) o.selected = chosen.has(o.value);
}

function streamInfo(div, s) {
  const src = s.source || {};
  const reason = s.error ? ` — ${s.error.message}` : src.last_error ? ` — ${src.last_error}` : "";
  const stateText = src.state && s.status === "running" ? `${s.status} (${src.state})` : s.status;
  // Coverage: stream seconds seen (of the file's length where known), tokens retained, seconds per token.
  const seen = s.last_time || 0;
  const frac = s.progress != null ? s.progress : seen > 0 ? 1 : 0;
  const spt = s.tokens > 0 && seen > 0 ? (seen / s.tokens).toFixed(2) : "–";
  const bar = coverageBar(s, frac);
  div.replaceChildren(
    el("strong", { class: "name", text: s.id }),
    el("span", { class: `state ${s.status}`, text: ` ${stateText}${reason}` }),
    el("div", { class: "counts", text: `${s.kind} · frames ${s.frames} · drops ${s.dropped} · reconnects ${s.reconnects} · ${fmt(seen)} s · ${s.tokens} tokens · ${spt} s/token` }),
    bar.meter, bar.legend,
  );
}

// ------------------------------------------------------------------ channels
function renderChannels(channels) {
  // One checkbox per channel the service indexes; hidden when there is only one to choose.
  state.channels = channels;
  const box = $("q-channels");
  box.replaceChildren(el("legend", { text: "Channels" }), ...channels.map((c) => el("label", {},
    el("input", { type: "checkbox", name: "channel", value: c, checked: "" }), ` ${CHANNEL_NAMES[c] || c}`)));
  box.hidden = channels.length < 2;
}

function chosenChannels() {
  const all = [...$("q-channels").querySelectorAll("input[name=channel]")];
  const on = all.filter((i) => i.checked).map((i) => i.value);
  return on.length === all.length ? null : on; // every channel: no filter (the protocol's default)
}

// ------------------------------------------------------------------ ask
function queryFields() {
  const msg = {};
  const text = $("q-text").value.trim();
  if (text) msg.text = text;
  if (state.image) msg.image = state.image;
  const start = $("q-start").value, end = $("q-end").value;
  if (start !== "") msg.start = Number(start);
  if (end !== "") msg.end = Number(end);
  const streams = [...$("q-streams").selectedOptions].map((o) => o.value);
  if (streams.length) msg.streams = streams;
  const channels = chosenChannels();
  if (channels) msg.channels = channels;
  return msg;
}

function ask(ev) {
  ev.preventDefault();
  const fields = queryFields();
  if (!fields.text && !fields.image) { $("ask-status").textContent = "type words or give an image"; return; }
  if (fields.channels && !fields.channels.length) { $("ask-status").textContent = "choose at least one channel"; return; }
  state.query = nextId("q");
  state.asked = fields.channels || null;
  $("ask-status").textContent = "asking…";
  send({ type: "query", id: state.query, ...fields });
}

function takeImage(file) {
  if (!file || !/^image\/(jpeg|png)$/.test(file.type)) return;
  const reader = new FileReader();
  reader.onload = () => {
    state.image = String(reader.result).split(",", 2)[1];
    const img = $("q-preview");
    img.src = reader.result;
    img.hidden = false;
  };
  reader.readAsDataURL(file);
}

function renderAnswer(e) {
  // Progressive answers: `moments` (prescreen, milliseconds) is shown at once, then the refined
  // `moments.update` of the same query replaces it; data-phase tells which one is on screen.
  const box = $("results");
  const refined = e.type === "moments.update";
  box.dataset.phase = refined ? "refined" : "first";
  box.dataset.query = e.id; // which ask is on screen (a new one replaces it)
  $("ask-status").textContent = `${refined ? "refined" : "first answer, refining…"}: ${e.moments.length} moment(s)${e.abstained ? ", none confident" : ""}${e.meaningless ? " (random weights)" : ""}`;
  const scores = e.moments.map((m) => m.score);
  const lo = Math.min(...scores), hi = Math.max(...scores);
  const intensity = (s) => (hi > lo ? 0.35 + 0.65 * (s - lo) / (hi - lo) : 1);
  const parts = [];
  for (const [name, info] of Object.entries(e.streams)) {
    const ms = e.moments.filter((m) => m.stream === name);
    const st = state.streams.get(name);
    const span = Math.max(st && st.last_time ? st.last_time : 0, info.coverage ? info.coverage.end : 0, ...ms.map((m) => m.end), 1);
    // The stream's gaps, as on its coverage bar: a moment-free stretch there is no answer, not a miss.
    const holes = (st && st.covered ? st.covered.holes : []).filter(([a]) => a < span);
    const gapWords = holes.length ? `, ${holes.length} gap${holes.length > 1 ? "s" : ""}` : "";
    const line = el("div", { class: "timeline", role: "group", "aria-label": `timeline of ${name}, 0 to ${fmt(span)} s${gapWords}` },
      ...holes.map(([a, b]) => el("div", { class: "span gap", "data-start": String(a), "data-end": String(b), title: `gap ${fmt(a)}–${fmt(b)} s`,
        style: `left:${(100 * a / span).toFixed(2)}%;width:${(100 * (Math.min(b, span) - a) / span).toFixed(2)}%` })));
    for (const m of ms) {
      line.append(el("button", {
        type: "button", class: `moment${m.below_threshold ? " weak" : ""}`,
        style: `left:${(100 * m.start / span).toFixed(2)}%;width:${Math.max(0.8, 100 * (m.end - m.start) / span).toFixed(2)}%;opacity:${intensity(m.score).toFixed(2)}`,
        "aria-label": `play ${name} ${fmt(m.start)} to ${fmt(m.end)} s, score ${m.score.toFixed(3)}`,
        "data-start": String(m.start), "data-end": String(m.end),
        onclick: () => play(name, m.start, m.end),
      }));
    }
    const cov = info.coverage;
    // Coverage is the visual memory's: a query restricted to text channels reports none.
    const unasked = state.asked && !state.asked.includes("visual");
    const caveat = cov ? `retained ${(100 * cov.retained_fraction).toFixed(0)} % of ${fmt(cov.start)}–${fmt(cov.end)} s at ${cov.seconds_per_token ?? "–"} s/token` : unasked ? "visual memory not searched" : "nothing retained";
    const evidence = el("ul", { class: "evidence" }, ...ms.map((m) => {
      const img = el("img", { alt: `evidence of ${name} at ${fmt(m.evidence[0])} s`, width: "120", height: "90" });
      setImage(img, m.thumbnail);
      return el("li", { class: "moment-item", "data-start": String(m.start), "data-end": String(m.end) },
        el("button", { type: "button", class: "ev", onclick: () => play(name, m.start, m.end) }, img,
          el("span", { text: `${fmt(m.start)}–${fmt(m.end)} s · ${m.score.toFixed(3)}${m.confidence != null ? ` · conf ${m.confidence.toFixed(2)}` : ""}` })),
        support(m), m.curve ? curveSvg(m) : "");
    }));
    parts.push(el("div", { class: "answer", "data-stream": name },
      el("h3", { text: name }),
      el("p", { class: "caveat", text: `answered by ${info.answered_by}; ${caveat}${info.abstained ? "; no confident moment" : ""}${info.notes.length ? "; " + info.notes.join("; ") : ""}` }),
      line, evidence));
  }
  box.replaceChildren(...parts);
}

// ------------------------------------------------------------------ play
async function play(stream, start, end) {
  const v = $("player");
  const caption = $("play-caption");
  caption.textContent = `${stream}: ${fmt(start)}–${fmt(end)} s`;
  const st = state.streams.get(stream);
  // Files: range requests on the source (seek to the moment). Live kinds: a clip of stored frames,
  // whose time 0 is the moment's start.
  const file = st && st.kind === "file";
  const url = file
    ? `/media/${encodeURIComponent(stream)}`
    : `/clips/${encodeURIComponent(stream)}.mp4?start=${Math.max(0, start)}&end=${Math.max(end, start + 0.5)}`;
  let src;
  try { src = await authedUrl(url); } catch (err) { caption.textContent += ` — ${err.message}`; return; }
  const from = file ? start : 0;
  v.dataset.end = file ? String(end) : "";
  v.dataset.offset = String(file ? 0 : Math.max(0, start)); // stream seconds of the player's time 0
  const seek = () => { v.currentTime = from; v.play().catch(() => {}); };
  if (file && v.dataset.src === src && v.readyState >= 1) seek();
  else {
    if (v.src.startsWith("blob:")) URL.revokeObjectURL(v.src);
    v.dataset.src = src;
    v.addEventListener("loadedmetadata", seek, { once: true });
    v.src = src;
  }
}

function stopAtEnd() {
  const v = $("player");
  if (v.dataset.end && v.currentTime >= Number(v.dataset.end)) v.pause();
}

// ------------------------------------------------------------------ watch
function watch() {
  const fields = queryFields();
  if (!fields.text && !fields.image) { $("ask-status").textContent = "type words or give an image"; return; }
  const id = nextId("w");
  const thr = $("w-threshold").value;
  const li = el("li", { class: "watch", "data-watch": id },
    el("span", { class: "what", text: `${id}: ${fields.text || "image"} — placing…` }),
    el("button", { type: "button", "aria-label": `cancel watch ${id}`, onclick: () => send({ type: "cancel", id: `c-${id}`, target: id }) }, "Cancel"),
    el("div", { class: "count", id: `${id}-count`, text: "no matches yet" }),
    el("ul", { class: "alerts", "aria-live": "polite", "aria-labelledby": `${id}-count` }));
  $("watches").append(li);
  state.watches.set(id, { li, live: 0, memory: 0 });
  // backward: the server first answers from retained memory; its confident moments head the list
  // as matches from before the watch was placed.
  send({ type: "watch", id, ...fields, ...(thr !== "" ? { threshold: Number(thr) } : {}), backward: true });
}

function watchOpened(e) {
  const w = state.watches.get(e.id);
  if (w) w.li.querySelector(".what").textContent = `${e.id}: watching (threshold ${e.threshold == null ? "calibrating" : e.threshold.toFixed(3)})`;
}

function watchBackward(e) {
  const w = state.watches.get(e.id);
  if (!w) return;
  const found = e.moments.filter((m) => !m.below_threshold);
  found.forEach((m, i) => matchItem(w, `${e.id}-mem-${i}`, m, `in memory: ${m.stream} ${fmt(m.start)}–${fmt(m.end)} s · ${m.score.toFixed(3)}`, true));
  w.memory = found.length;
  matchCount(w);
}

function watchMatch(e) {
  const w = state.watches.get(e.id);
  if (!w) return;
  const m = e.moment;
  const text = `${m.stream} ${fmt(m.start)}–${fmt(m.end)} s · ${m.score.toFixed(3)}${e.closed ? "" : " (open)"}${m.wall_start ? ` · ${m.wall_start}` : ""}`;
  if (matchItem(w, `${e.id}-${e.match}`, m, text, false)) w.live += 1;
  matchCount(w);
}

// One entry of a watch's past matches (newest first); returns whether it is new. The list keeps
// the newest MAX_MATCHES entries: the page may stay open for days.
function matchItem(w, key, m, text, memory) {
  let item = w.li.querySelector(`li[data-match="${CSS.escape(key)}"]`);
  const fresh = !item;
  if (fresh) {
    const img = el("img", { alt: `alert frame of ${m.stream} at ${fmt(m.start)} s`, width: "120", height: "90" });
    setImage(img, m.thumbnail);
    item = el("li", { class: `alert${memory ? " memory" : ""}`, "data-match": key, "data-start": String(m.start), "data-end": String(m.end) },
      el("button", { type: "button", class: "ev", onclick: () => play(m.stream, m.start, m.end) }, img, el("span", { class: "t" })));
    const list = w.li.querySelector(".alerts");
    if (memory) list.append(item); else list.prepend(item);
    while (list.children.length > MAX_MATCHES) list.lastElementChild.remove();
  }
  item.querySelector(".t").textContent = text;
  return fresh;
}

function matchCount(w) {
  const shown = w.li.querySelectorAll(".alerts li").length;
  const total = w.live + w.memory;
  w.li.querySelector(".count").textContent = total
    ? `${w.live} live match${w.live === 1 ? "" : "es"}, ${w.memory} from memory${total > shown ? ` (newest ${shown} listed)` : ""}`
    : "no matches yet";
}

function watchCancelled(id) {
  const w = state.watches.get(id);
  if (!w) return;
  state.watches.delete(id);
  w.li.classList.add("cancelled");
  w.li.querySelector(".what").textContent = `${id}: cancelled`;
  w.li.querySelector("button").disabled = true;
}

// ------------------------------------------------------------------ wiring
document.addEventListener("DOMContentLoaded", () => {
  $("ask").addEventListener("submit", ask);
  $("watch-btn").addEventListener("click", watch);
  $("q-image").addEventListener("change", (ev) => takeImage(ev.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => ev.preventDefault());
  drop.addEventListener("keydown", (ev) => { // keyboard users: Enter or Space opens the file chooser
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("q-image").click(); }
  });
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); takeImage(ev.dataTransfer.files[0]); });
  document.addEventListener("paste", (ev) => {
    const item = [...(ev.clipboardData ? ev.clipboardData.items : [])].find((i) => i.kind === "file");
    if (item) takeImage(item.getAsFile());
  });
  $("player").addEventListener("timeupdate", stopAtEnd);
  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    state.needToken = false;
    $("auth").hidden = true;
    connect();
  });
  connect();
});
