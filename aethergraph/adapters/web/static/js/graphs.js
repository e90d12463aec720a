// Served graphs: their static structure drawn, and a form to start a run of each.

import * as api from "./api.js";
import { drawDag } from "./dag.js";
import { clear, h } from "./dom.js";
import { schemaForm } from "./schema_form.js";

function structure(g) {
  const specs = (api.graphStructure(g) || []).map((n, i) => ({ ...n, kind: "tool", status: "pending", firstSeq: i, upstream: new Set(n.deps) }));
  return { nodes: specs, edges: specs.flatMap((n) => n.deps.map((d) => [d, n.id])) };
}

function startForm(g) {
  const form = schemaForm(api.inputsSchema(g), { label: "inputs" });
  const outcome = h("div", { class: "outcome" });
  const el = h("form", { class: "start-form", novalidate: true }, form.el, h("button", { class: "primary", type: "submit" }, "Start run"), outcome);
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const inputs = form.read() ?? {};
      const result = await api.submitRun(g.name, inputs);
      location.hash = `#/runs/${encodeURIComponent(result.run_id)}`;
    } catch (error) {
      outcome.className = "outcome bad";
      outcome.textContent = error.message;
    }
  });
  return el;
}

export function graphsPage(_params, _query, root) {
  const list = h("div", { class: "graphs-list" });
  clear(root, h("div", { class: "graphs-page" }, h("h1", {}, "Graphs"), list));
  api.listGraphs().then((graphs) => {
    if (!graphs.length) list.append(h("p", { class: "note" }, "no graph is served: start the server with modules (aethergraph dev MODULE)"));
    for (const g of graphs) {
      const dag = structure(g);
      list.append(h("section", { class: "panel graph-card", "data-graph": g.name },
        h("h2", {}, g.name, " ", h("span", { class: "badge" }, g.kind)),
        h("p", { class: "note" }, `inputs: ${(g.inputs || []).map((i) => i.name).join(", ") || "none"} · outputs: ${(g.outputs || []).join(", ") || "none"}`),
        dag.nodes.length ? drawDag(dag) : null,
        h("a", { href: `#/?graph=${encodeURIComponent(g.name)}` }, "runs of this graph"),
        startForm(g)));
    }
  }, (error) => list.append(h("p", { class: "error" }, error.message)));
}
