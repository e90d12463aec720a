// The run's DAG in SVG: a layered layout (layer = longest path from a source, order within a layer by
// the barycentre of the nodes above, two sweeps), drawn top to bottom.

import { h, s } from "./dom.js";

const W = 168;
const H = 38;
const GAP_X = 24;
const GAP_Y = 34;
export const MAX_DRAWN = 400;

/** Layers of node ids: [[id, ...], ...]. `nodes` are {id, firstSeq}, `edges` are [from, to]. */
export function layout(nodes, edges) {
  const ids = nodes.map((n) => n.id);
  const known = new Set(ids);
  const ups = new Map(ids.map((id) => [id, []]));
  const downs = new Map(ids.map((id) => [id, []]));
  for (const [from, to] of edges) {
    if (!known.has(from) || !known.has(to) || from === to) continue;
    ups.get(to).push(from);
    downs.get(from).push(to);
  }
  // Longest-path layering in topological order (Kahn); nodes left in a cycle go below the rest.
  const indegree = new Map(ids.map((id) => [id, ups.get(id).length]));
  const layerOf = new Map();
  const queue = ids.filter((id) => indegree.get(id) === 0);
  for (let i = 0; i < queue.length; i++) {
    const id = queue[i];
    const layer = Math.max(-1, ...ups.get(id).map((u) => layerOf.get(u) ?? -1)) + 1;
    layerOf.set(id, layer);
    for (const d of downs.get(id)) {
      indegree.set(d, indegree.get(d) - 1);
      if (indegree.get(d) === 0) queue.push(d);
    }
  }
  let deepest = Math.max(-1, ...layerOf.values());
  for (const id of ids) if (!layerOf.has(id)) layerOf.set(id, ++deepest);

  const order = new Map(nodes.map((n, i) => [n.id, n.firstSeq ?? i]));
  const layers = [];
  for (const id of ids) (layers[layerOf.get(id)] ||= []).push(id);
  for (const layer of layers) layer.sort((a, b) => order.get(a) - order.get(b));
  for (let sweep = 0; sweep < 2; sweep++) {
    for (let l = 1; l < layers.length; l++) {
      const pos = new Map(layers[l - 1].map((id, i) => [id, i]));
      const centre = (id) => {
        const xs = ups.get(id).filter((u) => pos.has(u)).map((u) => pos.get(u));
        return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : Infinity;
      };
      const keyed = layers[l].map((id, i) => [centre(id), i, id]);
      keyed.sort((a, b) => (a[0] === b[0] ? a[1] - b[1] : a[0] === Infinity ? 1 : b[0] === Infinity ? -1 : a[0] - b[0]));
      layers[l] = keyed.map((k) => k[2]);
    }
  }
  return layers.filter(Boolean);
}

/** An SVG element drawing `dag` ({nodes, edges}); `onSelect(id)` is called when a node is clicked. */
export function drawDag(dag, { selected, onSelect, max = MAX_DRAWN } = {}) {
  let nodes = dag.nodes;
  const hidden = Math.max(0, nodes.length - max);
  if (hidden) nodes = [...nodes].sort((a, b) => (a.firstSeq ?? 0) - (b.firstSeq ?? 0)).slice(0, max);
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const layers = layout(nodes, dag.edges);
  const widest = Math.max(1, ...layers.map((l) => l.length));
  const width = widest * (W + GAP_X) + GAP_X;
  const height = layers.length * (H + GAP_Y) + GAP_Y;
  const at = new Map();
  layers.forEach((layer, l) => {
    const offset = ((widest - layer.length) * (W + GAP_X)) / 2;
    layer.forEach((id, i) => at.set(id, { x: GAP_X + offset + i * (W + GAP_X), y: GAP_Y + l * (H + GAP_Y) }));
  });

  const svg = s("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  svg.append(
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))),
  );
  for (const [from, to] of dag.edges) {
    const a = at.get(from);
    const b = at.get(to);
    if (!a || !b) continue;
    const x1 = a.x + W / 2;
    const y1 = a.y + H;
    const x2 = b.x + W / 2;
    const y2 = b.y;
    const bend = Math.max(16, (y2 - y1) / 2);
    svg.append(s("path", { class: "edge", d: `M${x1},${y1} C${x1},${y1 + bend} ${x2},${y2 - bend} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
  }
  for (const [id, { x, y }] of at) {
    const node = byId.get(id);
    const label = node.kind === "wait" ? id.replace(/^wait:/, "") + " · " + (node.wait?.kind || "wait") : id;
    const sub = node.kind === "wait" ? node.wait?.prompt || "" : node.tool || "";
    const group = s("g", {
      class: `dag-node st-${node.status}${id === selected ? " selected" : ""}${node.kind === "wait" ? " wait" : ""}`,
      transform: `translate(${x},${y})`,
      "data-node": id,
      tabindex: 0,
      onclick: () => onSelect?.(id),
    });
    group.append(
      s("rect", { width: W, height: H, rx: node.kind === "wait" ? 18 : 6 }),
      s("text", { x: 10, y: 16, class: "dag-label" }, clip(label, 22)),
      s("text", { x: 10, y: 30, class: "dag-sub" }, clip(`${node.status}${sub && sub !== id ? " · " + sub : ""}`, 26)),
      s("title", {}, `${id}\n${node.tool || ""}\n${node.status}`),
    );
    svg.append(group);
  }
  const box = h("div", { class: "dag-box" }, svg);
  if (hidden) box.append(h("p", { class: "note" }, `${hidden} more nodes not drawn (the first ${max} by start); the timeline lists every event.`));
  if (!nodes.length) box.append(h("p", { class: "note" }, "no nodes yet"));
  return box;
}

function clip(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}
