// Small helpers shared by the agent desktop and the chat widget. Text always goes in through textContent:
// nothing a server event carries is ever parsed as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

/** h("div", {class: "x", dataset: {testid: "y"}, onclick: fn}, "text", child, ...) -> HTMLElement */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** The websocket URL for an ingress path on this page's origin, with the token as ?token= (browsers
 * cannot set an Authorization header on a websocket). */
export function wsUrl(path, token) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}?token=${encodeURIComponent(token)}`;
}

/** 75 -> "1 min 15 s"; 8 -> "8 s" */
export function duration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Expected wait in words for a customer: "about 3 minutes", "less than a minute". */
export function waitWords(seconds) {
  const s = Number(seconds);
  if (!Number.isFinite(s) || s <= 0) return "";
  if (s < 60) return "less than a minute";
  const m = Math.round(s / 60);
  return `about ${m} minute${m === 1 ? "" : "s"}`;
}

/** An inline SVG sparkline of scores in −1…1 (no libraries). */
export function sparkline(scores, { width = 240, height = 48, small = false, label = "" } = {}) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", `sparkline${small ? " small" : ""}`);
  svg.setAttribute("role", "img");
  const last = scores.length ? scores[scores.length - 1] : null;
  if (last !== null && last < -0.05) svg.classList.add("negative");
  const title = document.createElementNS(SVG_NS, "title");
  title.textContent =
    label || (scores.length ? `sentiment trend, latest ${last.toFixed(2)}` : "no sentiment yet");
  svg.append(title);
  const pad = 4;
  const y = (v) => pad + ((1 - Math.max(-1, Math.min(1, v))) / 2) * (height - 2 * pad);
  const zero = document.createElementNS(SVG_NS, "line");
  zero.setAttribute("class", "zero");
  zero.setAttribute("x1", "0");
  zero.setAttribute("x2", String(width));
  zero.setAttribute("y1", String(y(0)));
  zero.setAttribute("y2", String(y(0)));
  svg.append(zero);
  if (!scores.length) return svg;
  const step = scores.length > 1 ? (width - 2 * pad) / (scores.length - 1) : 0;
  const points = scores.map((v, i) => [pad + i * step, y(v)]);
  const line = document.createElementNS(SVG_NS, "polyline");
  line.setAttribute("class", "trend");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  line.setAttribute("points", points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" "));
  svg.append(line);
  const [lx, ly] = points[points.length - 1];
  const dot = document.createElementNS(SVG_NS, "circle");
  dot.setAttribute("class", "dot");
  dot.setAttribute("cx", lx.toFixed(1));
  dot.setAttribute("cy", ly.toFixed(1));
  dot.setAttribute("r", small ? "2" : "3");
  svg.append(dot);
  return svg;
}
