// Small DOM and formatting helpers shared by every view.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of [children].flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h("div", {class: "x", onclick: f}, child, ...): an HTML element. */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** s("rect", {x: 1}): an SVG element. */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el, ...children) {
  el.replaceChildren();
  return fill(el, {}, children);
}

/** A timestamp (ISO string, or Unix microseconds) as local date and time. */
export function fmtTime(value) {
  const date = toDate(value);
  return date ? date.toLocaleString() : "";
}

export function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  if (typeof value === "number") return new Date(value / 1000);
  const text = String(value);
  // DuckDB timestamps come as "2026-12-07 01:02:03.456" (UTC, no zone).
  const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text.replace(" ", "T") + "Z";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** A duration in microseconds, readable. */
export function fmtDuration(us) {
  if (us === null || us === undefined) return "";
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(1)} ms`;
  if (us < 60e6) return `${(us / 1e6).toFixed(2)} s`;
  const minutes = Math.floor(us / 60e6);
  return `${minutes} min ${Math.round((us - minutes * 60e6) / 1e6)} s`;
}

/** A short one-line rendering of a JSON value. */
export function brief(value, max = 80) {
  let text;
  try {
    text = typeof value === "string" ? value : JSON.stringify(value);
  } catch {
    text = String(value);
  }
  if (text === undefined) return "";
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

/** A <pre> block of pretty JSON. */
export function jsonBlock(value, cls = "json") {
  let text;
  try {
    text = JSON.stringify(value, null, 2);
  } catch {
    text = String(value);
  }
  return h("pre", { class: cls }, text === undefined ? "" : text);
}

export function statusBadge(status) {
  return h("span", { class: `badge st-${status || "unknown"}` }, status || "unknown");
}

export function runLink(runId, label) {
  return h("a", { href: `#/runs/${encodeURIComponent(runId)}` }, label || runId);
}
