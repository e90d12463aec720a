// The one module that knows the server's HTTP API: every view goes through these functions,
// which adapt the server's JSON to the shapes the views use.

const TOKEN_KEY = "aethergraph.token";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

function errorMessage(status, body) {
  if (body && typeof body === "object") {
    const detail = body.detail ?? body.message ?? body.error;
    if (typeof detail === "string") return detail;
    if (detail !== undefined) return JSON.stringify(detail);
  }
  if (status === 401) return "the server wants an API token (AETHERGRAPH_API_TOKEN): enter it at the top of the page";
  return `HTTP ${status}`;
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!response.ok) throw new ApiError(response.status, errorMessage(response.status, data), data);
  return data;
}

const enc = encodeURIComponent;

function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") q.set(key, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** A run row as the views use it (the server says `graph` and `events`; the projections' names are kept). */
function normaliseRun(r) {
  return { ...r, graph_id: r.graph_id ?? r.graph, event_count: r.event_count ?? r.events };
}

/** A wait as the views use it: `payload_schema`, and where to send its answer (`resume`). */
export function normaliseWait(w) {
  const schema = w.payload_schema ?? w.schema ?? {};
  return { ...w, payload_schema: schema, resume: w.resume ?? { run_id: w.run_id, wait_id: w.wait_id } };
}

/** One page of runs: {runs: [...], next: cursor or null, total}. */
export async function listRuns({ status, graph, since, limit = 50, cursor } = {}) {
  const data = await request("GET", `/api/runs${query({ status, graph, since, limit, cursor })}`);
  return { runs: (data.runs ?? []).map(normaliseRun), next: data.next_cursor ?? null, total: data.total };
}

/** A run's detail: {run, nodes, waits (open), children}. */
export async function getRun(runId) {
  const data = await request("GET", `/api/runs/${enc(runId)}`);
  const run = normaliseRun({ ...data, parent_run_id: data.parent?.run_id, parent_node_id: data.parent?.node_id });
  return {
    run,
    nodes: data.nodes ?? [],
    waits: (data.open_waits ?? []).map(normaliseWait),
    children: (data.children ?? []).map((c) => ({ ...normaliseRun(c), parent_node_id: c.parent_node_id ?? c.node_id })),
  };
}

/** The run's journal events after stream sequence `after` (all of them by default): [{...event, stream_seq}]. */
export async function runEvents(runId, after = 0) {
  const data = await request("GET", `/api/runs/${enc(runId)}/events${query({ after: after || undefined })}`);
  return (data.events ?? []).map(normaliseEvent);
}

/** An event as the views use it: the event's own fields plus `stream_seq`. */
export function normaliseEvent(item) {
  if (item && item.event && typeof item.event === "object") {
    return { ...item.event, stream_seq: item.stream_seq ?? item.id ?? item.event.stream_seq };
  }
  return item;
}

export const submitRun = (graph, inputs, runId) =>
  request("POST", "/api/runs", { graph, inputs, ...(runId ? { run_id: runId } : {}) });
export const cancelRun = (runId, reason) => request("POST", `/api/runs/${enc(runId)}/cancel`, { reason: reason || "" });

/** Continue a failed or cancelled static run from its failed nodes (the server's retry). */
export const retryRun = (runId) => request("POST", `/api/runs/${enc(runId)}/retry`, {});

/** Answer a wait. Resolves to the outcome {status, reason, message, wait_id}; a rejection is an outcome too. */
export async function resumeRun(wait, payload) {
  const { run_id: runId, wait_id: waitId } = normaliseWait(wait).resume;
  try {
    return await request("POST", `/api/runs/${enc(runId)}/resume`, { wait_id: waitId, payload });
  } catch (error) {
    if (error instanceof ApiError && error.body && (error.body.status || error.body.reason)) return error.body;
    if (error instanceof ApiError && error.body && error.body.detail && error.body.detail.reason) return error.body.detail;
    throw error;
  }
}

/** Open waits across runs: [{run_id, wait_id, node_id, kind, prompt, payload_schema, channel, resume, ...}]. */
export async function listWaits() {
  const data = await request("GET", "/api/waits");
  return (data.waits ?? []).map(normaliseWait);
}

/** Served graphs: [{name, kind, inputs: [{name, required, default}], outputs, structure}]. */
export async function listGraphs() {
  const data = await request("GET", "/api/graphs");
  return data.graphs ?? [];
}

/** A static graph's nodes and what each runs after: [{id, tool, deps}] (null for a graph_fn). */
export function graphStructure(graph) {
  const nodes = graph?.structure?.nodes;
  if (!Array.isArray(nodes)) return null;
  return nodes.map((n) => ({ id: n.id, tool: n.tool, deps: [...new Set([...(n.dependencies ?? []), ...(n.after ?? [])])] }));
}

/** A JSON Schema for a graph's inputs: each input any JSON value, its default prefilled. */
export function inputsSchema(graph) {
  const properties = {};
  for (const input of graph.inputs ?? []) {
    properties[input.name] = { title: input.name, ...(input.required ? {} : { default: input.default }) };
  }
  return { type: "object", properties, required: (graph.inputs ?? []).filter((i) => i.required).map((i) => i.name) };
}

/** A read-only SQL query over the projections: a list of row objects. */
export async function sql(statement, params) {
  const data = await request("POST", "/api/sql", { sql: statement, params: params ?? [] });
  if (Array.isArray(data)) return data;
  if (data.rows && data.columns && Array.isArray(data.rows[0])) {
    return data.rows.map((row) => Object.fromEntries(data.columns.map((c, i) => [c, row[i]])));
  }
  return data.rows ?? [];
}

/** Where an artifact's content is downloaded from (by its id or URI). */
export function artifactUrl(artifact) {
  const ref = typeof artifact === "string" ? artifact : (artifact.artifact_id ?? artifact.uri);
  const digest = /[0-9a-f]{64}$/.exec(ref); // a URI ends with the content's sha256, the artifact's id
  return `/api/artifacts/${digest ? digest[0] : ref.split("/").map(enc).join("/")}`;
}

/** Content behind the token, when the server wants one: fetched with the header, handed over as a blob URL. */
async function blobUrl(url) {
  const response = await fetch(url, { headers: { Authorization: `Bearer ${getToken()}` } });
  if (!response.ok) throw new ApiError(response.status, `HTTP ${response.status}`, null);
  return URL.createObjectURL(await response.blob());
}

/** An <img> of an artifact (an <img src> cannot send a token: with one, the image is fetched first). */
export function artifactImage(artifact, attrs = {}) {
  const img = document.createElement("img");
  for (const [key, value] of Object.entries(attrs)) img.setAttribute(key, value);
  const url = artifactUrl(artifact);
  if (getToken()) blobUrl(url).then((src) => (img.src = src), () => (img.alt = `${img.alt} (not loaded)`));
  else img.src = url;
  return img;
}

/** A download link to an artifact (with a token, the click fetches it first). */
export function artifactLink(artifact, label, name) {
  const a = document.createElement("a");
  a.href = artifactUrl(artifact);
  a.textContent = label;
  if (name) a.download = name;
  a.addEventListener("click", async (event) => {
    if (!getToken()) return;
    event.preventDefault();
    const link = document.createElement("a");
    link.href = await blobUrl(a.href);
    link.download = name || label;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  });
  return a;
}
