// The run page: status, inputs and outputs (or error and traceback), open waits with their forms, the
// conversation, the DAG with the selected node's detail, live token streams, viz tracks, artifacts,
// child runs and the timeline. History comes from the JSON API; the rest arrives live over SSE.

import * as api from "./api.js";
import * as stream from "./live.js";
import { drawDag } from "./dag.js";
import { clear, fmtDuration, fmtTime, h, jsonBlock, runLink, statusBadge } from "./dom.js";
import { addToken, RunModel } from "./model.js";
import { artifactList, childRuns, conversation, nodePanel, tokenStreams } from "./panels.js";
import { drawTracks } from "./plots.js";
import { setQuery } from "./router.js";
import { Timeline } from "./timeline.js";
import { waitCard } from "./wait_card.js";

const ACTIVE = new Set(["queued", "running", "waiting"]);

function section(title, cls) {
  const body = h("div", { class: "section-body" });
  const el = h("section", { class: `panel ${cls}` }, h("h2", {}, title), body);
  el.hidden = true;
  return { el, body };
}

export function runPage({ id }, query, root) {
  const t0 = performance.now();
  const model = new RunModel(id);
  const state = { detail: null, selected: query.get("node"), closed: false, stop: null, scheduled: false, dirty: new Set(), cards: new Map(), graphNames: new Set() };
  const live = stream.indicator();
  const head = h("div", { class: "run-head" });
  const summary = h("div", { class: "run-summary" });
  const waits = section("Waiting for an answer", "waits");
  const talk = section("Conversation", "talk");
  const dagBox = h("div", { class: "dag-wrap" });
  const nodeBox = h("div", { class: "node-box" });
  const tokens = section("Model output (live)", "token-panel");
  const viz = section("Tracks", "viz-panel");
  const files = section("Artifacts", "artifact-panel");
  const kids = section("Child runs", "children-panel");
  const timeline = new Timeline({ onNode: (nodeId) => select(nodeId) });
  root.append(
    h("div", { class: "run-page", "data-run": id }, head, summary, waits.el, talk.el,
      h("section", { class: "panel graph" }, h("h2", {}, "Graph"), h("div", { class: "graph-row" }, dagBox, nodeBox)),
      tokens.el, viz.el, files.el, kids.el,
      h("section", { class: "panel events" }, h("h2", {}, "Timeline"), timeline.el)),
  );

  const select = (nodeId) => {
    state.selected = nodeId;
    const q = new URLSearchParams(location.hash.split("?")[1] || "");
    q.set("node", nodeId);
    setQuery(q);
    mark("dag", "node");
  };
  const childOf = (nodeId) => state.detail?.children.find((c) => c.parent_node_id === nodeId)?.run_id;

  const renderers = {
    head() {
      const run = state.detail?.run || {};
      const status = model.status !== "unknown" ? model.status : run.status;
      const graph = model.run?.graph_id || run.graph_id || "";
      const parent = model.run?.parent_run_id || run.parent_run_id;
      clear(head,
        h("h1", {}, graph, " ", h("span", { class: "run-id" }, id), " ", statusBadge(status)),
        h("div", { class: "run-actions" }, live.el,
          ACTIVE.has(status) ? h("button", { class: "danger", onclick: cancel }, "Cancel") : null,
          status === "failed" || status === "cancelled"
            ? h("button", { class: "retry", onclick: retry }, model.staticNodes ? "Retry" : "Run again") : null),
        h("div", { class: "note" },
          parent ? h("span", {}, "child of ", runLink(parent), model.run?.parent_node_id ? ` (${model.run.parent_node_id})` : "", " · ") : null,
          `started ${fmtTime(model.run?.ts || run.started_at)} · ${model.events.length} events`,
          model.events.length > 1 ? ` · ${fmtDuration(model.events[model.events.length - 1].ts - model.events[0].ts)}` : ""));
    },
    summary() {
      const listed = state.detail?.run;
      const err = model.error || (listed?.error ? { type: "error", message: listed.error, traceback: listed.traceback || "" } : null);
      clear(summary,
        h("div", { class: "io" }, h("h3", {}, "inputs"), jsonBlock(model.run?.inputs ?? state.detail?.run?.inputs ?? {})),
        model.outputs !== null ? h("div", { class: "io" }, h("h3", {}, "outputs"), jsonBlock(model.outputs)) : null,
        err ? h("div", { class: "io error" }, h("h3", {}, "error"), h("p", { class: "error-message" }, `${err.type}: ${err.message}`),
          err.traceback ? h("pre", { class: "traceback" }, err.traceback) : null) : null);
    },
    waits() {
      // Cards stay while the page is open: a filled form survives other events, an answered one keeps
      // its outcome and is marked closed.
      const open = mergeWaits(id, model.openWaits(), state.detail?.waits || []);
      const keys = new Set(open.map((w) => `${w.run_id}/${w.wait_id}`));
      for (const w of open) {
        const key = `${w.run_id}/${w.wait_id}`;
        if (!state.cards.has(key)) {
          state.cards.set(key, waitCard(w, { showRun: w.run_id !== id }));
          waits.body.append(state.cards.get(key));
        }
      }
      for (const [key, card] of state.cards) {
        if (keys.has(key)) continue;
        if (card.matches(".answered, .answering")) card.classList.add("closed");
        else {
          card.remove(); // answered elsewhere: the conversation shows the answer
          state.cards.delete(key);
        }
      }
      waits.el.hidden = state.cards.size === 0;
    },
    talk() {
      const c = conversation(model);
      talk.el.hidden = !c;
      clear(talk.body, c);
    },
    dag() {
      clear(dagBox, drawDag(model.dag(), { selected: state.selected, onSelect: select }));
    },
    node() {
      clear(nodeBox, nodePanel(model, state.selected, { childOf, onEvent: (seq) => timeline.reveal(seq) }));
    },
    tokens() {
      const t = tokenStreams(model);
      tokens.el.hidden = !t;
      clear(tokens.body, t);
    },
    viz() {
      viz.el.hidden = model.viz.size === 0;
      clear(viz.body, h("div", { class: "cards" }, drawTracks(model.viz)));
    },
    files() {
      const list = artifactList(model.artifacts.length ? model.artifacts : state.detail?.artifacts || []);
      files.el.hidden = !list;
      clear(files.body, list);
    },
    kids() {
      const c = childRuns(state.detail?.children || []);
      kids.el.hidden = !c;
      clear(kids.body, c);
    },
    timeline() {
      timeline.setEvents(model.events);
    },
  };

  function mark(...names) {
    names.forEach((n) => state.dirty.add(n));
    if (state.scheduled) return;
    state.scheduled = true;
    requestAnimationFrame(() => {
      state.scheduled = false;
      const dirty = [...state.dirty];
      state.dirty.clear();
      for (const n of dirty) renderers[n]();
    });
  }
  const ALL = Object.keys(renderers);

  // Cancel asks once more on the button itself (no modal dialog); errors show beside the buttons.
  async function cancel(event) {
    const button = event.currentTarget;
    if (button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Really cancel?";
      return;
    }
    button.disabled = true;
    try {
      await api.cancelRun(id, "cancelled from the web viewer");
    } catch (error) {
      actionError(error);
    }
  }
  async function retry(event) {
    event.currentTarget.disabled = true;
    try {
      // A static run continues from its failed nodes; a graph_fn's run cannot, so it runs again from its inputs.
      if (model.staticNodes) await api.retryRun(id);
      else {
        const result = await api.submitRun(model.run.graph_id, model.run.inputs ?? {});
        location.hash = `#/runs/${encodeURIComponent(result.run_id)}`;
      }
    } catch (error) {
      actionError(error);
    }
  }
  const actionError = (error) => head.querySelector(".run-actions").append(h("span", { class: "error action-error" }, error.message));

  let detailTimer = null;
  const refreshDetail = () => {
    clearTimeout(detailTimer);
    detailTimer = setTimeout(async () => {
      if (state.closed) return;
      try {
        state.detail = await api.getRun(id);
        mark("head", "waits", "kids", "files");
      } catch {
        /* the events still show; the next event tries again */
      }
    }, 300);
  };

  const onEvent = (ev) => {
    if (!model.addAll([ev])) return;
    const names = ["head", "timeline", "dag", "node"];
    if (ev.type.startsWith("run.")) names.push("summary", "waits");
    if (ev.type.startsWith("wait.") || ev.type === "channel.sent") names.push("waits", "talk");
    if (ev.type === "viz.recorded") names.push("viz");
    if (ev.type === "artifact.saved") names.push("files");
    if (ev.type === "llm.returned") names.push("tokens");
    // The detail (rebuilt by the server from the journal) is fetched again only when child runs or waits change.
    const nested = ev.type.startsWith("tool.") && state.graphNames.has(ev.tool);
    if (ev.type.startsWith("run.") || ev.type.startsWith("wait.") || nested) refreshDetail();
    mark(...names);
  };

  // The events alone draw the page; the run detail (child runs, nested runs' open waits), which the server
  // rebuilds from the whole journal, is asked for once the page is drawn.
  const loadDetail = () => api.getRun(id).then((detail) => {
    state.detail = detail;
    if (state.closed) return;
    mark("head", "summary", "waits", "kids");
    root.querySelector(".run-page").dataset.detail = "1";
  }, (error) => !state.closed && head.append(h("p", { class: "error" }, error.message)));

  (async () => {
    try {
      const [events, graphs] = await Promise.all([api.runEvents(id), api.listGraphs().catch(() => [])]);
      if (state.closed) return;
      const started = events.find((ev) => ev.type === "run.started");
      model.staticNodes = api.graphStructure(graphs.find((g) => g.name === started?.graph_id));
      state.graphNames = new Set(graphs.map((g) => g.name));
      window.agTimings = { fetched: performance.now() - t0 };
      model.addAll(events);
      window.agTimings.folded = performance.now() - t0;
      ALL.forEach((n) => renderers[n]());
      // How long the page took (read by benchmarks/bench_viewer.py): from the route's start, and `at` from
      // the navigation's start (performance.now()'s origin).
      window.agTimings.rendered = performance.now() - t0;
      window.agTimings.at = performance.now();
      root.querySelector(".run-page").dataset.rendered = "1";
      loadDetail();
    } catch (error) {
      clear(head, h("h1", {}, id), h("p", { class: "error" }, error.message));
      return;
    }
    state.stop = stream.followRun(id, model.lastStreamSeq, {
      event: onEvent,
      token: (delta) => {
        addToken(model, delta);
        mark("tokens");
      },
    }, {
      onState: live.show,
      onFallback: async () => model.addAll(await api.runEvents(id, model.lastStreamSeq)) && mark(...ALL),
    });
  })();

  return () => {
    state.closed = true;
    clearTimeout(detailTimer);
    state.stop?.();
  };
}

/** The run's open waits (from its events), plus those of nested runs the run detail lists. */
function mergeWaits(runId, own, listed) {
  return own.concat(listed.filter((w) => w.run_id !== runId && (w.status ?? "open") === "open"));
}
