// The run page's smaller panels: a node's detail, the conversation (channel messages, asks and
// answers), live token streams, artifacts and child runs.

import { artifactImage, artifactLink } from "./api.js";
import { brief, fmtDuration, fmtTime, h, jsonBlock, runLink, statusBadge } from "./dom.js";

/** The selected node: inputs, outputs, duration, error and traceback, its child run, its events. */
export function nodePanel(model, id, { childOf, onEvent } = {}) {
  const node = model.nodes.get(id);
  if (!node) return h("p", { class: "note" }, "click a node of the graph to see its inputs, outputs, duration and error");
  const child = node.childRunId || childOf?.(id);
  const rows = [
    ["tool", node.tool || (node.kind === "wait" ? "wait" : "")],
    ["status", statusBadge(node.status)],
    ["attempts", node.attempts || ""],
    ["started", node.startTs ? fmtTime(node.startTs) : ""],
    ["duration", fmtDuration(node.duration_us ?? (node.endTs && node.startTs ? node.endTs - node.startTs : null))],
    ["executor", node.executor || ""],
    ["child run", child ? runLink(child) : ""],
    ["skipped", node.skip ? `${node.skip.reason}${node.skip.upstream ? " (" + node.skip.upstream + ")" : ""}` : ""],
  ].filter(([, v]) => v !== "" && v !== null && v !== undefined);
  return h("div", { class: "node-panel", "data-node": id },
    h("h3", {}, id),
    h("table", { class: "kv" }, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    node.wait ? h("div", {}, h("h4", {}, "prompt"), h("p", {}, node.wait.prompt)) : null,
    node.args !== null ? h("div", {}, h("h4", {}, "inputs"), jsonBlock(node.args)) : null,
    node.outputs !== null ? h("div", {}, h("h4", {}, "outputs"), jsonBlock(node.outputs)) : null,
    node.error ? h("div", { class: "error" }, h("h4", {}, "error"), h("p", {}, `${node.error.type}: ${node.error.message}`),
      node.error.traceback ? h("pre", { class: "traceback" }, node.error.traceback) : null) : null,
    h("h4", {}, "events"),
    h("div", { class: "seq-links" }, node.events.slice(0, 200).map((seq) =>
      h("a", { href: "javascript:void 0", onclick: () => onEvent?.(seq) }, `#${seq} ${model.bySeq.get(seq)?.type ?? ""}`))),
  );
}

/** Channel messages, asks and their answers, in journal order. */
export function conversation(model) {
  if (!model.messages.length) return null;
  return h("div", { class: "conversation" }, model.messages.slice(-200).map((m) => {
    const text = m.kind === "answer" ? `answered ${m.wait_id}: ${brief(m.payload, 200)}` : m.text;
    return h("div", { class: `msg msg-${m.kind} ch-${m.channel}`, "data-seq": m.seq },
      h("span", { class: "badge channel" }, m.channel || ""),
      h("span", { class: "msg-text" }, m.kind === "ask" ? `asks (${m.wait_id}): ${text}` : text),
      h("span", { class: "note" }, ` ${fmtTime(m.ts)}`));
  }));
}

/** Token streams of the run's model calls, live. */
export function tokenStreams(model) {
  if (!model.tokens.size) return null;
  return h("div", { class: "tokens" }, [...model.tokens.values()].map((t) =>
    h("div", { class: `token-stream${t.done ? " done" : " live"}`, "data-key": t.key },
      h("div", { class: "note" }, `${t.node_id} · call #${t.call_seq}${t.done ? "" : " · streaming…"}`),
      h("pre", { class: "token-text" }, t.text))));
}

/** The run's artifacts: images inline, everything else as a download link. */
export function artifactList(artifacts) {
  if (!artifacts.length) return null;
  return h("div", { class: "artifacts" }, artifacts.map((a) => {
    const label = a.name || a.kind || a.artifact_id.slice(0, 12);
    return h("figure", { class: "card artifact", "data-artifact": a.artifact_id },
      (a.mime || "").startsWith("image/") ? artifactImage(a, { alt: label, loading: "lazy" }) : null,
      h("figcaption", {}, artifactLink(a, label, a.name),
        h("span", { class: "note" }, ` ${a.mime || ""} · ${a.size ?? "?"} B${a.node_id ? " · " + a.node_id : ""}`)));
  }));
}

/** Child runs (nested graph_fns, node runs, runs started with context.runs()). */
export function childRuns(children) {
  if (!children.length) return null;
  return h("table", { class: "runs small" },
    h("tr", {}, ["run", "graph", "status", "node", "started"].map((c) => h("th", {}, c))),
    children.map((c) => h("tr", {},
      h("td", {}, runLink(c.run_id)), h("td", {}, c.graph_id || ""), h("td", {}, statusBadge(c.status)),
      h("td", {}, c.parent_node_id || ""), h("td", {}, fmtTime(c.started_at)))));
}
