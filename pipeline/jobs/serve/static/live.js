// The watch page: polls /api/live and draws the current label, the recent windows' top scores and the events.
"use strict";

const COLOURS = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#000000"];
const $ = (id) => document.getElementById(id);
const colour = (labels, label) => COLOURS[Math.max(0, labels.indexOf(label)) % COLOURS.length];

function text(tag, content) {
  const el = document.createElement(tag);
  el.textContent = content;
  return el;
}

function draw(state) {
  $("source").textContent = state.source;
  const c = state.counts;
  $("counts").textContent = `${c.windows} windows, ${c.events} events, ${c.dropped} dropped, ${c.gaps} gaps`;
  const w = state.latest;
  if (w) {
    $("now").replaceChildren(text("span", `${w.labels[0]} ${(100 * w.scores[0]).toFixed(0)} %`),
      text("small", `  window ${w.window}, ${w.stream_start_s.toFixed(1)}-${w.stream_end_s.toFixed(1)} s, ` +
        `latency ${w.latency_s.toFixed(2)} s`));
    $("now").dataset.window = w.window;
    $("now").dataset.label = w.labels[0];
  }
  const svg = $("timeline");
  const n = state.windows.length;
  const bars = state.windows.map((win, i) => {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const h = 160 * win.scores[0];
    rect.setAttribute("x", (1000 * i / Math.max(n, 1)).toFixed(2));
    rect.setAttribute("width", (1000 / Math.max(n, 1)).toFixed(2));
    rect.setAttribute("y", (160 - h).toFixed(2));
    rect.setAttribute("height", h.toFixed(2));
    rect.setAttribute("fill", colour(state.labels, win.labels[0]));
    rect.appendChild(document.createElementNS("http://www.w3.org/2000/svg", "title")).textContent =
      `window ${win.window}: ${win.labels[0]} ${win.scores[0].toFixed(3)}`;
    return rect;
  });
  svg.replaceChildren(...bars);
  const shown = [...new Set(state.windows.map((win) => win.labels[0]))];
  $("legend").replaceChildren(...shown.map((label) => {
    const span = text("span", label);
    const swatch = document.createElement("i");
    swatch.style.background = colour(state.labels, label);
    span.prepend(swatch);
    return span;
  }));
  $("events").replaceChildren(...state.events.map((e) => {
    const row = document.createElement("tr");
    row.className = e.type;
    if (e.type === "gap") {
      row.append(text("td", "gap: the stream was away"), text("td", `${(e.wall_end - e.wall_start).toFixed(1)} s`),
        text("td", ""), text("td", ""));
    } else {
      row.append(text("td", e.label), text("td", `${e.start_s.toFixed(1)}-${e.end_s.toFixed(1)} s`),
        text("td", `${(100 * e.peak).toFixed(0)} %`), text("td", String(e.windows)));
    }
    return row;
  }));
}

async function poll() {
  try {
    const response = await fetch("/api/live", { cache: "no-store" });
    if (response.ok) draw(await response.json());
  } catch (e) {
    $("counts").textContent = "the watch has ended";
    return;
  }
  setTimeout(poll, 500);
}
poll();
