// A run's state folded from its events (docs/events.md): the nodes of its DAG with their inputs,
// outputs, durations and errors, its waits, channel messages, artifacts, viz tracks and live tokens.
// Pure logic, no DOM: the run page renders it, the browser tests check it.

const ROOT = "root";
const END = { "run.completed": "succeeded", "run.failed": "failed", "run.cancelled": "cancelled" };

/** The DAG node an event belongs to: its node (not the run body), or the wait it asks or answers. */
export function dagKey(ev) {
  if (ev.node_id && ev.node_id !== ROOT) return ev.node_id;
  if (ev.type.startsWith("wait.") && ev.wait_id) return `wait:${ev.wait_id}`;
  return null;
}

export class RunModel {
  constructor(runId) {
    this.runId = runId;
    this.events = []; // journal order (by seq)
    this.bySeq = new Map();
    this.status = "unknown";
    this.run = null; // the run.started event
    this.outputs = null;
    this.error = null;
    this.nodes = new Map();
    this.waits = new Map();
    this.messages = [];
    this.artifacts = [];
    this.viz = new Map();
    this.tokens = new Map();
    this.lastStreamSeq = 0;
    this.staticNodes = null; // [{id, tool, deps}] for a static graph
  }

  /** Fold events (any order, duplicates dropped). Returns whether anything changed. */
  addAll(events) {
    const fresh = [];
    for (const ev of events) {
      if (!ev || typeof ev.seq !== "number" || this.bySeq.has(ev.seq) || ev.run_id !== this.runId) continue;
      this.bySeq.set(ev.seq, ev);
      if (ev.stream_seq > this.lastStreamSeq) this.lastStreamSeq = ev.stream_seq;
      fresh.push(ev);
    }
    if (fresh.length === 0) return false;
    fresh.sort((a, b) => a.seq - b.seq);
    const inOrder = this.events.length === 0 || fresh[0].seq > this.events[this.events.length - 1].seq;
    this.events = inOrder ? this.events.concat(fresh) : this.events.concat(fresh).sort((a, b) => a.seq - b.seq);
    if (inOrder) fresh.forEach((ev) => this.apply(ev));
    else this.refold();
    return true;
  }

  refold() {
    const events = this.events;
    Object.assign(this, new RunModel(this.runId), { staticNodes: this.staticNodes, tokens: this.tokens });
    this.events = events;
    for (const ev of events) {
      this.bySeq.set(ev.seq, ev);
      if (ev.stream_seq > this.lastStreamSeq) this.lastStreamSeq = ev.stream_seq;
      this.apply(ev);
    }
  }

  node(id, tool) {
    let node = this.nodes.get(id);
    if (!node) {
      node = { id, tool: tool || "", kind: "tool", status: "pending", args: null, outputs: null, error: null };
      Object.assign(node, { duration_us: null, startTs: null, endTs: null, attempts: 0, firstSeq: null });
      Object.assign(node, { lastSeq: null, upstream: new Set(), childRunId: null, events: [] });
      this.nodes.set(id, node);
    }
    if (tool && !node.tool) node.tool = tool;
    return node;
  }

  apply(ev) {
    const key = dagKey(ev);
    if (key) {
      const node = this.node(key, ev.tool);
      if (node.firstSeq === null) {
        node.firstSeq = ev.seq;
        node.startTs = ev.ts;
        const up = this.upstreamOf(ev, key);
        if (up) node.upstream.add(up);
      }
      node.lastSeq = ev.seq;
      node.events.push(ev.seq);
    }
    const handler = HANDLERS[ev.type];
    if (handler) handler(this, ev, key);
  }

  /** The DAG node whose event caused `ev`: follow causal parents past the run body's own events. */
  upstreamOf(ev, self) {
    let parent = ev.parent;
    for (let hops = 0; parent !== null && parent !== undefined && hops < 100000; hops++) {
      const cause = this.bySeq.get(parent);
      if (!cause) return null;
      const key = dagKey(cause);
      if (key && key !== self) return key;
      parent = cause.parent;
    }
    return null;
  }

  /** The nodes and edges to draw: a static graph's structure when known, else the causal DAG. */
  dag() {
    if (this.staticNodes && this.staticNodes.length) {
      for (const spec of this.staticNodes) {
        const node = this.node(spec.id, spec.tool);
        for (const dep of spec.deps || []) node.upstream.add(dep);
      }
    }
    const nodes = [...this.nodes.values()];
    const edges = [];
    for (const node of nodes) for (const up of node.upstream) if (this.nodes.has(up)) edges.push([up, node.id]);
    return { nodes, edges };
  }

  openWaits() {
    return [...this.waits.values()].filter((w) => w.status === "open");
  }
}

function end(node, ev, status) {
  node.status = status;
  node.endTs = ev.ts;
  if (ev.duration_us !== undefined) node.duration_us = ev.duration_us;
  if (ev.error_type) {
    node.error = { type: ev.error_type, message: ev.message, traceback: ev.traceback || "" };
  }
}

const HANDLERS = {
  "run.started"(m, ev) {
    m.run = ev;
    m.status = ev.queued ? "queued" : "running";
  },
  "run.claimed"(m) {
    if (!(m.status in { succeeded: 1, failed: 1, cancelled: 1 })) m.status = "running";
  },
  "run.waiting"(m) {
    m.status = "waiting";
  },
  "run.completed"(m, ev) {
    m.status = END[ev.type];
    m.outputs = ev.outputs;
  },
  "run.failed"(m, ev) {
    m.status = END[ev.type];
    m.error = { type: ev.error_type, message: ev.message, traceback: ev.traceback || "", node: ev.failed_node_id };
  },
  "run.cancelled"(m, ev) {
    m.status = END[ev.type];
    m.error = { type: "cancelled", message: ev.reason || "cancelled", traceback: "" };
    for (const node of m.nodes.values()) if (node.status === "running") node.status = "cancelled";
  },
  "tool.called"(m, ev, key) {
    const node = m.node(key, ev.tool);
    Object.assign(node, { status: "running", args: ev.args, attempts: node.attempts + 1 });
  },
  "tool.returned"(m, ev, key) {
    const node = m.node(key, ev.tool);
    node.outputs = ev.outputs;
    end(node, ev, "succeeded");
  },
  "tool.failed"(m, ev, key) {
    end(m.node(key, ev.tool), ev, "failed");
  },
  "node.ready"(m, ev, key) {
    const node = m.node(key, ev.tool);
    Object.assign(node, { kind: "static", status: "running", args: ev.args, attempts: ev.attempt });
  },
  "node.started"(m, ev, key) {
    HANDLERS["node.ready"](m, ev, key);
  },
  "node.completed"(m, ev, key) {
    const node = m.node(key);
    node.outputs = ev.outputs;
    node.executor = ev.executor;
    end(node, ev, "succeeded");
  },
  "node.failed"(m, ev, key) {
    const node = m.node(key);
    node.executor = ev.executor;
    end(node, ev, ev.retry_at_us ? "retrying" : "failed");
  },
  "node.skipped"(m, ev, key) {
    const node = m.node(key);
    node.status = "skipped";
    node.skip = { reason: ev.reason, upstream: ev.upstream };
  },
  "wait.requested"(m, ev, key) {
    const wait = { wait_id: ev.wait_id, run_id: ev.run_id, node_id: ev.node_id, kind: ev.kind, prompt: ev.prompt };
    Object.assign(wait, { payload_schema: ev.payload_schema, channel: ev.channel, deadline_us: ev.deadline_us });
    Object.assign(wait, { status: "open", payload: undefined, seq: ev.seq, ts: ev.ts });
    m.waits.set(ev.wait_id, wait);
    const node = m.node(key);
    if (node.kind !== "tool" || !node.tool) Object.assign(node, { kind: "wait", tool: `${ev.kind} wait` });
    node.status = "waiting";
    node.wait = wait;
    m.messages.push({ seq: ev.seq, ts: ev.ts, channel: ev.channel, kind: "ask", text: ev.prompt, wait_id: ev.wait_id });
  },
  "wait.resumed"(m, ev, key) {
    const wait = m.waits.get(ev.wait_id);
    if (wait) Object.assign(wait, { status: "resumed", payload: ev.payload });
    const node = m.node(key);
    if (node.kind === "wait") {
      node.outputs = { payload: ev.payload };
      end(node, ev, "succeeded");
      node.duration_us = node.startTs ? ev.ts - node.startTs : null;
    } else if (node.status === "waiting") node.status = "running";
    const channel = wait ? wait.channel : "";
    m.messages.push({ seq: ev.seq, ts: ev.ts, channel, kind: "answer", payload: ev.payload, wait_id: ev.wait_id });
  },
  "wait.expired"(m, ev, key) {
    const wait = m.waits.get(ev.wait_id);
    if (wait) wait.status = "expired";
    const node = m.node(key);
    if (node.kind === "wait") end(node, ev, "expired");
  },
  "channel.sent"(m, ev) {
    m.messages.push({ seq: ev.seq, ts: ev.ts, channel: ev.channel, kind: "message", text: ev.text, node_id: ev.node_id });
  },
  "artifact.saved"(m, ev) {
    m.artifacts.push(ev);
  },
  "viz.recorded"(m, ev) {
    let track = m.viz.get(ev.track);
    if (!track) {
      track = { name: ev.track, kind: ev.kind, points: [], latest: null };
      m.viz.set(ev.track, track);
    }
    const step = ev.step ?? track.points.length;
    track.points.push({ step, value: ev.value, artifact_uri: ev.artifact_uri, mime: ev.mime, seq: ev.seq });
    track.latest = track.points[track.points.length - 1];
  },
  "llm.returned"(m, ev) {
    const stream = m.tokens.get(`${ev.node_id}/${ev.parent}`);
    if (stream) stream.done = true;
  },
};

/** Fold one live token delta {node_id, call_seq, index, text, done} into the run's token streams. */
export function addToken(model, delta) {
  const key = `${delta.node_id}/${delta.call_seq}`;
  let stream = model.tokens.get(key);
  if (!stream) {
    stream = { key, node_id: delta.node_id, call_seq: delta.call_seq, parts: [], text: "", done: false };
    model.tokens.set(key, stream);
  }
  if (typeof delta.index === "number") {
    if (stream.parts[delta.index] === undefined) stream.parts[delta.index] = delta.text || "";
    stream.text = stream.parts.join("");
  } else {
    stream.text += delta.text || "";
  }
  if (delta.done) stream.done = true;
  return stream;
}

/** A one-line summary of an event for the timeline. */
export function summary(ev) {
  const pick = SUMMARIES[ev.type];
  if (pick) return pick(ev);
  const { type, run_id, seq, ts, worker, parent, node_id, epoch, stream_seq, ...rest } = ev;
  return short(rest);
}

function short(value, max = 160) {
  let text = typeof value === "string" ? value : JSON.stringify(value);
  if (text === undefined) text = "";
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

const SUMMARIES = {
  "run.started": (ev) => `${ev.graph_id}(${short(ev.inputs, 120)})${ev.queued ? " queued" : ""}`,
  "run.claimed": (ev) => `claimed (${ev.reason})${ev.previous_worker ? " from " + ev.previous_worker : ""}`,
  "run.completed": (ev) => `outputs ${short(ev.outputs)}`,
  "run.failed": (ev) => `${ev.error_type}: ${ev.message}`,
  "run.cancelled": (ev) => `cancelled ${ev.reason || ""}`,
  "run.waiting": (ev) => `waiting for ${ev.wait_run_id === ev.run_id ? "" : ev.wait_run_id + "/"}${ev.wait_id}`,
  "tool.called": (ev) => `${ev.tool}(${short(ev.args, 120)})`,
  "tool.returned": (ev) => `→ ${short(ev.outputs, 120)}`,
  "tool.failed": (ev) => `${ev.error_type}: ${ev.message}`,
  "node.ready": (ev) => `${ev.tool}(${short(ev.args, 120)}) attempt ${ev.attempt}`,
  "node.started": (ev) => `${ev.tool}(${short(ev.args, 120)}) attempt ${ev.attempt}`,
  "node.completed": (ev) => `→ ${short(ev.outputs, 120)}`,
  "node.failed": (ev) => `${ev.error_type}: ${ev.message}${ev.retry_at_us ? " (will retry)" : ""}`,
  "node.skipped": (ev) => `skipped: ${ev.reason}${ev.upstream ? " (" + ev.upstream + ")" : ""}`,
  "service.called": (ev) => `${ev.service}.${ev.method}(${short([...ev.args, ev.kwargs], 100)})`,
  "service.returned": (ev) => `${ev.service}.${ev.method} → ${short(ev.result, 100)}`,
  "service.failed": (ev) => `${ev.service}.${ev.method}: ${ev.error_type}: ${ev.message}`,
  "log.recorded": (ev) => `[${ev.level}] ${ev.message}`,
  "value.recorded": (ev) => `${ev.kind} = ${short(ev.value)}`,
  "wait.requested": (ev) => `${ev.wait_id} ${ev.kind} on ${ev.channel}: ${ev.prompt}`,
  "wait.resumed": (ev) => `${ev.wait_id} answered ${short(ev.payload)}`,
  "wait.expired": (ev) => `${ev.wait_id} expired`,
  "channel.sent": (ev) => `${ev.channel}: ${ev.text}`,
  "artifact.saved": (ev) => `${ev.name || ev.kind || ev.artifact_id.slice(0, 12)} (${ev.mime}, ${ev.size} B)`,
  "viz.recorded": (ev) => `${ev.track}[${ev.step ?? ""}] ${ev.kind} ${ev.kind === "image" ? ev.artifact_uri : short(ev.value, 80)}`,
  "llm.called": (ev) => `${ev.profile}/${ev.model} ${ev.operation}${ev.streamed ? " (streamed)" : ""}`,
  "llm.returned": (ev) => `${ev.model}: ${short(ev.response?.content ?? ev.response, 100)} (${ev.output_tokens} tokens)`,
  "llm.failed": (ev) => `${ev.model}: ${ev.error_type}: ${ev.message}`,
  "memory.recorded": (ev) => `${ev.kind}${ev.name ? " " + ev.name : ""}: ${short(ev.text || ev.data, 100)}`,
  "checkpoint.saved": (ev) => `${ev.key}`,
};
