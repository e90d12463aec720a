// Viz tracks (viz.recorded events): scalars as SVG line plots over their steps, the latest vector as a
// line, the latest matrix as a heat map, images inline.

import { artifactImage } from "./api.js";
import { h, s } from "./dom.js";

const PW = 360;
const PH = 160;
const PAD = { l: 48, r: 10, t: 12, b: 24 };

function niceNumber(v) {
  if (!Number.isFinite(v)) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return String(Math.round(v * 1000) / 1000);
}

/** An SVG line plot of points [{x, y}] (non-numeric y skipped). */
export function linePlot(points, { title = "", xLabel = "step" } = {}) {
  const pts = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const svg = s("svg", { class: "plot", width: PW, height: PH, viewBox: `0 0 ${PW} ${PH}`, role: "img" });
  svg.append(s("title", {}, title));
  if (!pts.length) {
    svg.append(s("text", { x: PW / 2, y: PH / 2, "text-anchor": "middle", class: "plot-empty" }, "no numeric points"));
    return svg;
  }
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const p of pts) {
    x0 = Math.min(x0, p.x);
    x1 = Math.max(x1, p.x);
    y0 = Math.min(y0, p.y);
    y1 = Math.max(y1, p.y);
  }
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const sx = (x) => PAD.l + ((x - x0) / (x1 - x0)) * (PW - PAD.l - PAD.r);
  const sy = (y) => PH - PAD.b - ((y - y0) / (y1 - y0)) * (PH - PAD.t - PAD.b);
  svg.append(
    s("line", { class: "axis", x1: PAD.l, y1: PH - PAD.b, x2: PW - PAD.r, y2: PH - PAD.b }),
    s("line", { class: "axis", x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: PH - PAD.b }),
    s("text", { class: "tick", x: PAD.l - 4, y: PAD.t + 8, "text-anchor": "end" }, niceNumber(y1)),
    s("text", { class: "tick", x: PAD.l - 4, y: PH - PAD.b, "text-anchor": "end" }, niceNumber(y0)),
    s("text", { class: "tick", x: PAD.l, y: PH - 8 }, niceNumber(x0)),
    s("text", { class: "tick", x: PW - PAD.r, y: PH - 8, "text-anchor": "end" }, `${niceNumber(x1)} ${xLabel}`),
  );
  // Thin out very long tracks to about one point per pixel column.
  const stride = Math.max(1, Math.floor(pts.length / (PW - PAD.l - PAD.r)));
  const kept = pts.filter((_, i) => i % stride === 0 || i === pts.length - 1);
  const d = kept.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join("");
  svg.append(s("path", { class: "line", d }));
  if (kept.length <= 60) for (const p of kept) svg.append(s("circle", { class: "dot", cx: sx(p.x), cy: sy(p.y), r: 2.5 }));
  return svg;
}

function heatmap(matrix) {
  const rows = matrix.length;
  const cols = Math.max(0, ...matrix.map((r) => (Array.isArray(r) ? r.length : 0)));
  if (!rows || !cols || rows * cols > 10000) return h("p", { class: "note" }, `matrix ${rows}×${cols}`);
  const flat = matrix.flat().filter(Number.isFinite);
  const lo = Math.min(...flat);
  const hi = Math.max(...flat);
  const cell = Math.max(2, Math.min(24, Math.floor(PW / cols)));
  const svg = s("svg", { class: "plot heat", width: cols * cell, height: rows * cell });
  matrix.forEach((row, i) => row.forEach((v, j) => {
    const t = hi === lo ? 0.5 : (v - lo) / (hi - lo);
    svg.append(s("rect", { x: j * cell, y: i * cell, width: cell, height: cell, fill: `hsl(${220 - 200 * t},70%,${30 + 40 * t}%)` }, s("title", {}, String(v))));
  }));
  return svg;
}

/** One card per viz track of the model. */
export function drawTracks(viz) {
  const cards = [];
  for (const track of viz.values()) {
    const latest = track.latest;
    let body;
    if (track.kind === "scalar") {
      body = linePlot(track.points.map((p) => ({ x: Number(p.step), y: Number(p.value) })), { title: track.name });
    } else if (track.kind === "vector" && Array.isArray(latest.value)) {
      body = linePlot(latest.value.map((y, x) => ({ x, y: Number(y) })), { title: track.name, xLabel: "index" });
    } else if (track.kind === "matrix" && Array.isArray(latest.value)) {
      body = heatmap(latest.value);
    } else if (track.kind === "image" && latest.artifact_uri) {
      body = artifactImage(latest.artifact_uri, { class: "viz-img", alt: track.name });
    } else {
      body = h("pre", { class: "json" }, JSON.stringify(latest.value));
    }
    cards.push(h("figure", { class: "card viz", "data-track": track.name },
      h("figcaption", {}, `${track.name} `, h("span", { class: "note" }, `${track.kind}, ${track.points.length} points, step ${latest.step}`)),
      body));
  }
  return cards;
}
