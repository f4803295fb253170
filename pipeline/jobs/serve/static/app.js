// The archive page: search -> hits (with thumbnails) -> one video (player at the moment, or a strip of frames where
// the browser cannot play the file) with its timeline of labelled windows. Plain JavaScript, no build step; every
// text from the index is set with textContent, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { hits: [], selected: -1, video: null, opening: 0 };

function fmtTime(s) {
  const m = Math.floor(s / 60), r = s - 60 * m;
  return `${m}:${r.toFixed(1).padStart(4, "0")}`;
}

function colour(label) {  // a stable colour per label
  let h = 0;
  for (const ch of label) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 65% 52%)`;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = JSON.stringify((await response.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response.json();
}

function thumbURL(hit) {
  const base = `api/videos/${hit.video_id}/thumbnail`;
  return hit.kind === "video" ? base : `${base}?t=${((hit.start_s + hit.end_s) / 2).toFixed(1)}`;
}

function params() {
  const p = new URLSearchParams();
  p.set("q", $("#q").value.trim());
  p.set("k", $("#k").value);
  if ($("#label").value) p.set("label", $("#label").value);
  if ($("#kind").value) p.set("kind", $("#kind").value);
  return p;
}

async function runSearch() {
  const p = params();
  if (!p.get("q")) return;
  history.replaceState(null, "", `?${p}`);  // the search is a shareable link
  $("#status").textContent = "Searching…";
  const started = performance.now();
  try {
    state.hits = await getJSON(`api/search?${p}`);
  } catch (e) {
    $("#status").textContent = `Search failed (${e.message})`;
    return;
  }
  const ms = Math.round(performance.now() - started);
  $("#status").textContent = `${state.hits.length} hits for “${p.get("q")}” in ${ms} ms`;
  renderHits();
  updateDownload();
}

function renderHits() {
  const list = $("#hits");
  list.replaceChildren();
  state.hits.forEach((hit, i) => {
    const name = hit.path.split("/").pop();
    const span = hit.kind === "video" ? "whole video" : `${fmtTime(hit.start_s)}–${fmtTime(hit.end_s)}`;
    const item = el("li", { className: "hit", tabIndex: 0, title: hit.path },
      el("img", { src: thumbURL(hit), alt: `${name} at ${span}`, loading: "lazy" }),
      el("div", { className: "meta" },
        el("div", { className: "name" }, name),
        el("div", { className: "sub" }, el("span", { className: "span" }, span),
          el("span", { className: "label" }, hit.labels[0] || ""),
          el("span", { className: "score" }, hit.score.toFixed(3)))));
    item.dataset.index = i;
    item.setAttribute("role", "button");
    item.addEventListener("click", () => select(i, true));
    list.append(item);
  });
  state.selected = -1;
}

function updateDownload() {
  const cols = ["rank", "score", "path", "kind", "start_s", "end_s", "label", "video_id"];
  // quoted; a cell that a spreadsheet would run as a formula (= + - @ first) is prefixed with '
  const quote = (v) => `"${String(v).replace(/^[=+\-@]/, "'$&").replaceAll('"', '""')}"`;
  const rows = state.hits.map((h, i) => [i + 1, h.score, h.path, h.kind, h.start_s, h.end_s, h.labels[0] || "",
    h.video_id].map(quote).join(","));
  const link = $("#download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([[cols.join(","), ...rows].join("\n") + "\n"], { type: "text/csv" }));
  link.hidden = state.hits.length === 0;
}

function select(i, open) {
  const items = document.querySelectorAll(".hit");
  if (!items.length) return;
  state.selected = Math.max(0, Math.min(items.length - 1, i));
  items.forEach((node, j) => node.setAttribute("aria-selected", String(j === state.selected)));
  items[state.selected].focus();
  if (open) openHit(state.hits[state.selected]);
}

async function openHit(hit) {
  const ticket = ++state.opening;  // a later click wins, whichever answer arrives last
  let data;
  try {
    data = await getJSON(`api/videos/${hit.video_id}`);
  } catch (e) {
    if (ticket === state.opening) $("#status").textContent = `Cannot open the video (${e.message})`;
    return;
  }
  if (ticket !== state.opening) return;
  state.video = data;
  const { video, segments } = data;
  $("#view").hidden = false;
  $("#view-title").textContent = video.path;
  $("#view-meta").textContent = `${fmtTime(video.duration_s || 0)} · ${segments.length} windows · tagged ` +
    `${(video.labels || []).join(", ")}${video.warnings ? ` · ${video.warnings}` : ""}`;
  const start = hit.kind === "video" ? 0 : hit.start_s;
  const player = $("#player");
  const strip = $("#strip");
  const playable = player.canPlayType(video.media_type) !== "";
  const showStrip = () => {
    player.hidden = true;
    player.removeAttribute("src");
    const end = hit.kind === "video" ? (video.duration_s || 0) : hit.end_s;
    const times = Array.from({ length: 6 }, (_, j) => start + (end - start) * j / 5);
    strip.replaceChildren(...times.map((t) => el("img", {
      src: `api/videos/${video.video_id}/thumbnail?t=${t.toFixed(1)}`, alt: `frame at ${fmtTime(t)}` })));
    strip.hidden = false;
  };
  if (playable) {
    strip.hidden = true;
    player.hidden = false;
    player.onerror = showStrip;  // the browser could not decode it after all
    player.onloadedmetadata = () => {  // from the moment on: seek there, then play (the click allows it)
      player.currentTime = start;
      player.play().catch(() => {});
    };
    player.src = `api/videos/${video.video_id}/media`;
  } else {
    showStrip();
  }
  renderTimeline(video, segments, start);
}

function renderTimeline(video, segments, start) {
  const line = $("#timeline");
  const duration = video.duration_s || (segments.length ? segments[segments.length - 1].end_s : 1);
  const labels = new Map();
  line.replaceChildren(...segments.map((s, j) => {
    // windows overlap (a stride shorter than the window): each is drawn up to the next one's start
    const end = j + 1 < segments.length ? Math.min(s.end_s, segments[j + 1].start_s) : s.end_s;
    labels.set(s.label, colour(s.label));
    const node = el("div", { className: "segment", title: `${fmtTime(s.start_s)}–${fmtTime(s.end_s)} ${s.label}` });
    node.style.left = `${(100 * s.start_s) / duration}%`;
    node.style.width = `${(100 * Math.max(0, end - s.start_s)) / duration}%`;
    node.style.background = colour(s.label);
    node.dataset.label = s.label;
    node.dataset.start = s.start_s;
    node.addEventListener("click", () => {
      const player = $("#player");
      if (!player.hidden) { player.currentTime = s.start_s; player.play().catch(() => {}); }
    });
    return node;
  }));
  markCurrent(start);
  $("#legend").replaceChildren(...[...labels].map(([label, c]) => {
    const swatch = el("span");
    swatch.style.background = c;
    return el("li", {}, swatch, label);
  }));
}

function markCurrent(t) {  // the window the player is in: the last one starting at or before t
  const nodes = [...document.querySelectorAll("#timeline .segment")];
  const current = nodes.filter((n) => Number(n.dataset.start) <= t + 1e-6).pop();
  nodes.forEach((n) => n.classList.toggle("current", n === current));
}

function closeView() {
  const player = $("#player");
  player.pause();
  player.removeAttribute("src");
  $("#view").hidden = true;
  if (state.selected >= 0) document.querySelectorAll(".hit")[state.selected]?.focus();
}

document.addEventListener("keydown", (e) => {
  if (e.altKey || e.ctrlKey || e.metaKey) return;  // the browser's own shortcuts
  const typing = e.target.matches("input, select, textarea");
  if (e.key === "/" && !typing) { e.preventDefault(); $("#q").focus(); $("#q").select(); return; }
  if (e.key === "Escape") { if (!$("#view").hidden) closeView(); else $("#q").blur(); return; }
  if (typing || e.target.matches("button, a, video")) return;  // their own keys (Enter on Close, arrows on video)
  const hit = e.target.closest(".hit");
  if (e.key === "j" || e.key === "ArrowDown" || e.key === "ArrowRight") {
    e.preventDefault();
    select((hit ? Number(hit.dataset.index) : state.selected) + 1);
  }
  if (e.key === "k" || e.key === "ArrowUp" || e.key === "ArrowLeft") {
    e.preventDefault();
    select((hit ? Number(hit.dataset.index) : state.selected) - 1);
  }
  if (e.key === "Enter" && (hit || state.selected >= 0)) {  // the focused hit (reached with Tab too)
    e.preventDefault();
    select(hit ? Number(hit.dataset.index) : state.selected, true);
  }
});

$("#search").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
$("#close").addEventListener("click", closeView);
$("#player").addEventListener("timeupdate", () => markCurrent($("#player").currentTime));

async function start() {
  try {
    for (const label of await getJSON("api/labels")) $("#label").append(el("option", { value: label }, label));
  } catch (e) {
    $("#status").textContent = `Cannot reach the archive (${e.message})`;
  }
  const p = new URLSearchParams(location.search);
  if (p.has("token")) {  // now a cookie: out of the address bar and the history
    p.delete("token");
    history.replaceState(null, "", p.toString() ? `?${p}` : location.pathname);
  }
  for (const key of ["q", "label", "kind", "k"]) if (p.get(key)) $(`#${key}`).value = p.get(key);
  if (p.get("q")) runSearch(); else $("#q").focus();
}
start();
