// The runs list: filters (status, graph, since), pages, and statuses that change live.

import * as api from "./api.js";
import * as stream from "./live.js";
import { clear, fmtDuration, fmtTime, h, runLink, statusBadge, toDate } from "./dom.js";
import { setQuery } from "./router.js";

const STATUSES = ["", "queued", "running", "waiting", "succeeded", "failed", "cancelled"];
const STATUS_OF = { "run.started": "running", "run.claimed": "running", "run.waiting": "waiting", "run.completed": "succeeded", "run.failed": "failed", "run.cancelled": "cancelled" };

function duration(run) {
  const a = toDate(run.started_at);
  const b = toDate(run.ended_at) || (run.status in { running: 1, waiting: 1, queued: 1 } ? null : toDate(run.last_event_at));
  return a && b ? fmtDuration((b - a) * 1000) : "";
}

export function runsPage(_params, query, root) {
  const filters = { status: query.get("status") || "", graph: query.get("graph") || "", since: query.get("since") || "" };
  const rows = new Map();
  const body = h("tbody");
  const more = h("button", { class: "more", hidden: true }, "More");
  const live = stream.indicator();
  const message = h("p", { class: "note" });
  let cursor = null;

  const apply = () => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    setQuery(q);
    load(true);
  };
  const status = h("select", { name: "status", onchange: () => ((filters.status = status.value), apply()) },
    STATUSES.map((s) => h("option", { value: s }, s || "any status")));
  status.value = filters.status;
  const graph = h("input", { name: "graph", type: "search", placeholder: "graph", value: filters.graph, onchange: () => ((filters.graph = graph.value.trim()), apply()) });
  const since = h("input", { name: "since", type: "datetime-local", value: filters.since, onchange: () => ((filters.since = since.value), apply()) });

  function row(run) {
    const tr = h("tr", { "data-run": run.run_id },
      h("td", {}, runLink(run.run_id)),
      h("td", {}, run.graph_id || ""),
      h("td", { class: "status" }, statusBadge(run.status)),
      h("td", {}, fmtTime(run.started_at)),
      h("td", {}, duration(run)),
      h("td", { class: "num" }, run.event_count ?? ""),
      h("td", {}, run.parent_run_id ? runLink(run.parent_run_id) : ""));
    rows.set(run.run_id, { run, tr });
    return tr;
  }

  async function load(reset) {
    if (reset) {
      cursor = null;
      rows.clear();
      body.replaceChildren();
    }
    try {
      const sinceIso = filters.since ? new Date(filters.since).toISOString() : undefined;
      const page = await api.listRuns({ status: filters.status, graph: filters.graph, since: sinceIso, cursor });
      for (const run of page.runs) if (!rows.has(run.run_id)) body.append(row(run));
      cursor = page.next;
      more.hidden = !cursor;
      message.textContent = rows.size ? "" : "no runs match";
    } catch (error) {
      message.textContent = error.message;
    }
  }
  more.addEventListener("click", () => load(false));

  // The fallback while the live stream is down: the first page again, merged into the rows shown.
  async function refresh() {
    try {
      const sinceIso = filters.since ? new Date(filters.since).toISOString() : undefined;
      const page = await api.listRuns({ status: filters.status, graph: filters.graph, since: sinceIso });
      let anchor = null;
      for (const run of page.runs) {
        const known = rows.get(run.run_id);
        const tr = row(run);
        if (known) known.tr.replaceWith(tr);
        else if (anchor) anchor.after(tr);
        else body.prepend(tr);
        anchor = tr;
      }
      message.textContent = rows.size ? "" : "no runs match";
    } catch (error) {
      message.textContent = error.message;
    }
  }

  // Live: a run event changes its row's status; a new top-level run that fits the filters goes on top.
  const onEvent = (ev) => {
    const status = STATUS_OF[ev.type];
    if (!status) return;
    const known = rows.get(ev.run_id);
    if (known) {
      known.run.status = ev.type === "run.started" && ev.queued ? "queued" : status;
      if (ev.type in { "run.completed": 1, "run.failed": 1, "run.cancelled": 1 }) known.run.ended_at = new Date(ev.ts / 1000).toISOString();
      known.run.event_count = Math.max(known.run.event_count ?? 0, ev.seq);
      const fresh = row(known.run);
      known.tr.replaceWith(fresh);
      fresh.classList.add("flash");
      return;
    }
    if (ev.type !== "run.started" || ev.parent_run_id) return;
    if ((filters.status && filters.status !== (ev.queued ? "queued" : "running")) || (filters.graph && filters.graph !== ev.graph_id)) return;
    const run = { run_id: ev.run_id, graph_id: ev.graph_id, status: ev.queued ? "queued" : "running", started_at: new Date(ev.ts / 1000).toISOString(), event_count: 1 };
    body.prepend(row(run));
    message.textContent = "";
  };

  clear(root, h("div", { class: "runs-page" },
    h("div", { class: "toolbar" }, h("h1", {}, "Runs"), status, graph, h("label", {}, "since ", since), live.el),
    message,
    h("table", { class: "runs" },
      h("thead", {}, h("tr", {}, ["run", "graph", "status", "started", "duration", "events", "parent"].map((c) => h("th", {}, c)))),
      body),
    more));
  load(true);
  return stream.followAll(onEvent, {
    onState: live.show,
    onFallback: refresh,
  });
}
