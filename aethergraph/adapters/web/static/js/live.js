// Live streams (Server-Sent Events): a run's events and token deltas, every run's events. EventSource
// reads them; with an API token, which EventSource cannot send, a fetch() reader does.

import { getToken } from "./api.js";

const enc = encodeURIComponent;

/** The "● live" / "reconnecting" / "fallback" marker a page shows beside a stream: {el, show(state)}. */
export function indicator() {
  const el = document.createElement("span");
  el.className = "live-state";
  el.textContent = "loading…";
  const show = (state) => {
    el.textContent = state === "live" ? "● live" : state;
    el.className = `live-state ${state}`;
  };
  return { el, show };
}

/**
 * Follow a live SSE stream. `handlers` maps SSE event types to callbacks taking the parsed data and the
 * event id. Returns a close function. `EventSource` reads the stream; with an API token, which
 * `EventSource` cannot send, a `fetch()` reader does (same parsing, same `Last-Event-ID` on reconnect).
 * When the stream cannot be opened at all (a server without it, a proxy that refuses it) `onFallback` is
 * called every `fallbackMs` until it opens: the only polling the viewer ever does.
 */
export function follow(path, handlers, { onState, onFallback, fallbackMs = 3000 } = {}) {
  let timer = null;
  let closed = false;
  let stop = null;
  const deliver = (type, text, id) => {
    const handler = handlers[type];
    if (!handler) return;
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      return;
    }
    handler(data, id);
  };
  const callbacks = {
    deliver,
    opened() {
      if (timer) clearInterval(timer);
      timer = null;
      onState?.("live");
    },
    lost: () => onState?.("reconnecting"),
    refused() {
      onState?.("fallback");
      if (onFallback && !timer) {
        onFallback();
        timer = setInterval(onFallback, fallbackMs);
      }
      setTimeout(() => !closed && (stop = (getToken() ? fetchStream : eventSource)(path, callbacks)), 15000);
    },
  };
  stop = (getToken() ? fetchStream : eventSource)(path, callbacks);
  return () => {
    closed = true;
    if (timer) clearInterval(timer);
    stop?.();
  };
}

function eventSource(path, { deliver, opened, lost, refused }) {
  const source = new EventSource(path);
  source.onopen = opened;
  source.onerror = () => (source.readyState === EventSource.CLOSED ? refused() : lost());
  for (const type of ["message", "token"]) source.addEventListener(type, (m) => deliver(type, m.data, m.lastEventId));
  return () => source.close();
}

function fetchStream(path, { deliver, opened, lost, refused }) {
  const abort = new AbortController();
  let lastId = "";
  const read = async () => {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${getToken()}` };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await fetch(path, { headers, signal: abort.signal });
    if (!response.ok) return refused();
    opened();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let type = "message";
        let id = null;
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          else if (line.startsWith("event:")) type = line.slice(6).trim();
          else if (line.startsWith("id:")) id = line.slice(3).trim();
        }
        if (id !== null) lastId = id;
        if (data.length) deliver(type, data.join("\n"), id ?? lastId);
      }
    }
    throw new Error("stream ended");
  };
  const loop = () => read().catch(() => {
    if (abort.signal.aborted) return;
    lost();
    setTimeout(loop, 1000);
  });
  loop();
  return () => abort.abort();
}

/** Live events of one run after stream sequence `after`: handlers {event(ev), token(delta)}. */
export function followRun(runId, after, { event, token }, options) {
  const path = `/api/runs/${enc(runId)}/events${after ? `?after=${after}` : ""}`;
  return follow(path, { message: (data, id) => event(withSeq(data, id)), token: (data) => token?.(data) }, options);
}

/** Live events of every run (run status changes and waits), when the server offers them: handler(event). */
export function followAll(handler, options) {
  return follow("/api/events", { message: (data, id) => handler(withSeq(data, id)) }, options);
}

function withSeq(ev, id) {
  if (ev && ev.stream_seq === undefined && id) ev.stream_seq = Number(id);
  return ev;
}
