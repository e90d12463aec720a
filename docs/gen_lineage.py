"""Regenerate the generated parts of docs/lineage.md: the table schemas and the worked queries' output.

Run ``python docs/gen_lineage.py``. It runs ``examples/lineage.py:study`` as
run ``study-1`` on a throwaway workspace (embedded server), folds the stream
into a projection store and runs every query of ``QUERIES`` against it, so the
page shows what the code really returns. tests/test_docs.py checks that every
table and column is described.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = Path(__file__).with_name("lineage.md")
SCHEMA_HEADING = "## Tables\n"
QUERIES_HEADING = "## Worked queries\n"
END_MARK = "<!-- end of generated section -->\n"

# Column descriptions: every column of every table (tests/test_docs.py checks none is missing).
COLUMNS: dict[str, dict[str, str]] = {
    "events": {
        "stream_seq": "the event's sequence in the `AG_EVENTS` stream (global order; primary key)",
        "run_id": "the run",
        "seq": "the event's number within its run (1, 2, 3, ...)",
        "type": "the event tag, e.g. `tool.called`",
        "ts": "when the emitting host wrote it (UTC)",
        "worker": "the process that wrote it",
        "parent": "`seq` of the event that caused it",
        "node_id": "the node it belongs to (`root` for the run body)",
        "epoch": "the writer epoch (see docs/events.md, journal integrity)",
        "data": "the whole event as JSON (`data->>'tool'`, `data->'outputs'`)",
    },
    "runs": {
        "run_id": "primary key",
        "graph_id": "the graph_fn (or tool) the run executes",
        "status": "`queued` (submitted, no worker has taken it yet), `running`, `waiting`, `succeeded`, `failed` or `cancelled` (from the run's latest run event)",
        "parent_run_id": "the run whose node started this one (nested runs)",
        "parent_node_id": "that node",
        "root_run_id": "the top-level run of the tree (itself for a top-level run)",
        "inputs": "the run's inputs (JSON)",
        "outputs": "the run's outputs once it succeeded (JSON)",
        "error_type": "the error type when it failed (NULL again once a retry made it succeed)",
        "error_message": "the error message (or the cancel reason)",
        "failed_node_id": "the node whose failure failed the run",
        "traceback": "the failing code's Python traceback, as journaled with `run.failed` (at most 8,192 "
        "characters, the end kept)",
        "waiting_wait_id": "while parked: the wait it waits for (empty once it runs again)",
        "waiting_run_id": "while parked: the run holding that wait (itself or a nested run)",
        "started_at": "time of `run.started`",
        "ended_at": "time of the run's end event",
        "last_event_at": "time of its latest event",
        "last_worker": "the process that wrote its latest event",
        "last_seq": "its latest event's `seq`",
        "event_count": "how many events it has",
        "claims": "how many times a worker continued it (`run.claimed`: resume, takeover)",
    },
    "nodes": {
        "run_id": "the run (primary key with `node_id`)",
        "node_id": "`<tool>_<n>` in a graph_fn run, the node id in a static graph",
        "tool": "the tool (or nested graph) the node calls",
        "status": "`running`, `waiting`, `succeeded` or `failed`; static graph nodes also `retrying` (an attempt "
        "failed and the retry policy runs it again) and `skipped` (a node still running when its run was "
        "cancelled is `skipped`, reason `cancelled`; a graph_fn's call then shows `cancelled`)",
        "attempts": "attempts started (static graphs retry; a graph_fn step counts 1)",
        "started_at": "first start (a static node's first `node.ready` or `node.started`, its dispatch)",
        "ended_at": "end of the latest attempt (or the skip)",
        "duration_us": "how long the tool ran in the latest attempt that ran (µs)",
        "worker": "the process that wrote the node's latest event (a static graph's scheduler)",
        "executor": "static graphs: the worker that executed the latest attempt that ran",
        "error_type": "error type of the latest failed attempt (kept when a retry then succeeded)",
        "error_message": "its error message",
        "traceback": "its Python traceback, as journaled with the failure (at most 8,192 characters)",
        "skip_reason": "static graphs: `condition`, `upstream_skipped`, `upstream_failed` or `cancelled` while "
        "skipped, empty if dispatched (NULL in graph_fn runs)",
        "skip_upstream": "static graphs: the skipped or failed node that made it skip (empty if none)",
        "child_run_id": "the nested run the node started, if any",
        "first_seq": "`seq` of the node's first event",
        "last_seq": "`seq` of its latest event",
    },
    "tool_calls": {
        "run_id": "the run (primary key with `call_seq`)",
        "call_seq": "`seq` of the `tool.called` event",
        "node_id": "the node the call opens",
        "tool": "the tool",
        "args": "the bound arguments (JSON)",
        "args_digest": "digest of the encoded arguments (what replay compares)",
        "outputs": "the outputs it returned (JSON)",
        "status": "`running`, `succeeded` or `failed`",
        "error_type": "error type when it failed",
        "error_message": "error message when it failed",
        "traceback": "the tool's Python traceback when it failed, as journaled in `tool.failed` (at most 8,192 "
        "characters, the end kept)",
        "duration_us": "how long it ran (µs)",
        "called_at": "time of `tool.called`",
        "ended_at": "time of its outcome",
        "worker": "the process that wrote the outcome",
    },
    "service_calls": {
        "run_id": "the run (primary key with `call_seq`)",
        "call_seq": "`seq` of the `service.called` event",
        "node_id": "the node that called the service",
        "service": "the context service's name",
        "method": "the method",
        "args": "positional arguments (JSON)",
        "kwargs": "keyword arguments (JSON)",
        "args_digest": "digest of the encoded arguments",
        "result": "the returned value (JSON)",
        "status": "`running`, `succeeded` or `failed`",
        "error_type": "error type when it failed",
        "error_message": "error message when it failed",
        "duration_us": "how long it ran (µs)",
        "called_at": "time of `service.called`",
        "ended_at": "time of its outcome",
    },
    "waits": {
        "run_id": "the run holding the wait (primary key with `wait_id`)",
        "wait_id": "`w<seq>`",
        "node_id": "the node that waits",
        "kind": "`text`, `approval`, `files`, or a custom kind",
        "prompt": "the question",
        "payload_schema": "JSON Schema the answer must satisfy",
        "channel": "where it was asked (`console`, ...)",
        "deadline": "when it expires, if it has a deadline",
        "status": "`open`, `resumed`, `expired`, or `cancelled` / `failed` when its run ended that way "
        "before an answer came (it can no longer be answered)",
        "requested_at": "time of `wait.requested`",
        "closed_at": "time it was answered, expired, or its run ended",
        "payload": "the answer (JSON)",
        "command_seq": "stream sequence of the resume command that carried the answer",
    },
    "artifacts": {
        "run_id": "the producing run (primary key with `seq`)",
        "seq": "`seq` of the `artifact.saved` event",
        "artifact_id": "sha256 of the content",
        "uri": "where the content is stored",
        "kind": "the artifact's kind (e.g. `report`)",
        "name": "a file name, if given",
        "mime": "media type",
        "size": "bytes",
        "labels": "labels (JSON)",
        "node_id": "the producing node",
        "tool": "the producing node's tool",
        "saved_at": "time of the save",
    },
    "memories": {
        "run_id": "the run whose memory holds the entry (primary key with `seq`)",
        "seq": "`seq` of the `memory.recorded` event",
        "node_id": "the node that recorded it",
        "kind": "the entry's kind (e.g. `chat`, `fact`)",
        "name": "its name, if given (`last_by_name` looks it up)",
        "data": "what was recorded (JSON)",
        "tags": "tags (JSON array)",
        "text": "the searchable text",
        "recorded_at": "time of the record",
    },
    "viz": {
        "run_id": "the run whose node recorded the point (primary key with `seq`)",
        "seq": "`seq` of the `viz.recorded` event",
        "node_id": "the node that recorded it",
        "track": "the track's name (e.g. `loss`)",
        "kind": "`scalar`, `vector`, `matrix` or `image`",
        "step": "the point's step (iteration, epoch), NULL if none was given",
        "value": "the number (scalar), list of numbers (vector) or list of rows (matrix); NULL for an image",
        "artifact_uri": "an image's URI in the artifact store (`context.artifacts().load_bytes(uri)`)",
        "mime": "an image's media type (NULL for numbers)",
        "meta": "the `meta=` fields given with the point (JSON)",
        "recorded_at": "time of the record",
    },
    "llm_calls": {
        "run_id": "the run (primary key with `call_seq`)",
        "call_seq": "`seq` of the `llm.called` event",
        "node_id": "the node that called the model",
        "profile": "the `context.llm(profile)` profile",
        "model": "the model (as the endpoint reported it once the call returned)",
        "operation": "`chat` (one model turn) or `embed`",
        "streamed": "whether the response was streamed (deltas on `ag.stream.<run_id>.<node_id>`)",
        "status": "`in_flight` (no outcome yet), `ok` or `failed`",
        "input_tokens": "prompt tokens, as the endpoint reported them (0 if it reported none)",
        "output_tokens": "completion tokens",
        "cached_tokens": "prompt tokens served from the provider's cache",
        "reasoning_tokens": "reasoning tokens (models that report them)",
        "duration_us": "how long the call took, retries included (µs)",
        "attempts": "HTTP attempts the call took (retries after 408/409/429/5xx)",
        "finish_reason": "why the model stopped (`stop`, `length`, `tool_calls`, ...)",
        "error_type": "error type when it failed (after its retries)",
        "error_message": "error message when it failed",
        "called_at": "time of `llm.called`",
        "ended_at": "time of its outcome",
    },
    "edges": {
        "src": "the entity `dst` was derived from",
        "dst": "the derived entity",
        "kind": "`in_run`, `spawned`, `data`, `answered` or `produced` (see above)",
        "root_run_id": "the top-level run of the tree the edge belongs to",
        "run_id": "the run of the event that created the edge",
        "stream_seq": "the stream sequence at which that event joined its run's journal (its own, unless it was "
        "stored before the gap in front of it filled)",
    },
    "lineage_values": {
        "digest": "content digest of a produced value",
        "root_run_id": "the run tree it was produced in",
        "entity": "the producer (node, run, wait or artifact)",
        "stream_seq": "when it was produced (the stream sequence at which its event joined the journal)",
    },
    "lineage_roots": {
        "run_id": "a run",
        "root_run_id": "its top-level run",
    },
    "dead_letters": {
        "stream_seq": "stream sequence of the message",
        "subject": "its subject",
        "raw": "its bytes, as stored (the first 4,096; the reason then gives the full length)",
        "reason": "why no projection could fold it: undecodable, a subject that does not match the event, a "
        "projection that failed on it",
    },
    "journal_heads": {
        "run_id": "a run (one row per run with at least one journal event)",
        "next_seq": "the `seq` its journal expects next",
        "epoch": "the epoch of the writer owning the run at that point",
    },
    "journal_pending": {
        "stream_seq": "stream sequence of an event stored beyond a gap in its run's journal",
        "run_id": "its run",
        "seq": "its `seq` (greater than the run's `next_seq`)",
        "epoch": "its epoch",
        "type": "its event type",
        "raw": "the event as JSON, folded when the gap before it fills",
    },
    "rejected_events": {
        "stream_seq": "stream sequence of an event on a run's subjects that is not part of its journal",
        "run_id": "its run",
        "seq": "its `seq`",
        "epoch": "its epoch",
        "type": "its event type",
        "reason": "`stale epoch: ...` (written by a writer that no longer owned the run) or `duplicate "
        "position: ...` (another event already took that `seq`)",
        "data": "the whole event as JSON",
    },
    "store_source": {
        "stream": "the stream the store folded (`AG_EVENTS`)",
        "created": "that stream's creation time on its server: a stream deleted and created again is another one",
        "cluster": "its cluster's name (NULL on a single server)",
        "server_name": "the server it was read from (for the message only)",
        "url": "the NATS URL it was read from (for the message only)",
    },
    "projection_state": {
        "projection": "a projection (`journal`, `events`, `runs`, `nodes`, `calls`, `waits`, `artifacts`, "
        "`memories`, `viz`, `llm`, `lineage`)",
        "version": "the version its tables were built with",
        "last_seq": "the last stream sequence folded into it",
    },
}

QUERIES: list[tuple[str, str, str]] = [
    (
        "Where did the report come from?",
        "Every ancestor of the `write_report` node, nearest first: `via` is the kind of the edge that reached "
        "it. The nested run's `summary_stats` node and the cleaning step both appear, and so does the run "
        "whose inputs started it all.",
        "SELECT * FROM ancestors(node_entity('study-1', 'write_report_1'))",
    ),
    (
        "What did the raw data feed?",
        "Every descendant of `load_series`, across the nested run.",
        "SELECT * FROM descendants(node_entity('study-1', 'load_series_1'))",
    ),
    (
        "The run tree with each run's parent node",
        "Nested runs carry their parent run and node, so one query lists a whole tree.",
        "SELECT run_id, graph_id, status, parent_run_id, parent_node_id, event_count\n"
        "FROM runs WHERE root_run_id = 'study-1' ORDER BY started_at",
    ),
    (
        "Which inputs did each tool call receive, and from which node?",
        "Join the data edges to the calls: a value an argument carries is matched by content to the node "
        "that produced it earlier in the same run tree.",
        "SELECT c.run_id, c.node_id, c.tool,\n"
        "       list(e.src ORDER BY e.src) FILTER (WHERE e.src IS NOT NULL) AS inputs_from\n"
        "FROM tool_calls c\n"
        "LEFT JOIN edges e ON e.dst = node_entity(c.run_id, c.node_id) AND e.kind = 'data'\n"
        "JOIN runs r ON r.run_id = c.run_id\n"
        "WHERE r.root_run_id = 'study-1'\n"
        "GROUP BY ALL ORDER BY min(c.called_at)",
    ),
    (
        "What did a step return, straight from the event?",
        "The `events` table keeps every event as JSON; DuckDB's JSON operators reach into it.",
        "SELECT run_id, node_id, data->'outputs'->'stats' AS stats\n"
        "FROM events WHERE type = 'tool.returned' AND data->>'tool' = 'summary_stats'",
    ),
]


def _markdown(result: Any) -> str:
    def cell(value: Any) -> str:
        text = "NULL" if value is None else str(value)
        if len(text) > 90:
            text = text[:87] + "..."
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(result.columns) + " |", "|" + "---|" * len(result.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in result.rows]
    return "\n".join(lines) + "\n"


async def _queries() -> str:
    from aethergraph.projections.projector import Projector
    from aethergraph.projections.store import ProjectionStore
    from aethergraph.runtime import close_runtime, get_runtime, run_async

    sys.path.insert(0, str(ROOT / "examples"))
    from lineage import study

    try:
        await run_async(study, run_id="study-1")
        runtime = await get_runtime()
        store = ProjectionStore.open(":memory:")
        await Projector(runtime.bus, store, store_id="docs").catch_up()
        parts = [QUERIES_HEADING]
        for title, text, sql in QUERIES:
            parts.append(f"\n### {title}\n\n{text}\n\n```sql\n{sql};\n```\n\n{_markdown(store.query(sql))}")
        store.close()
        return "".join(parts)
    finally:
        await close_runtime()


def _schema() -> str:
    from aethergraph.projections.schema import PROJECTIONS
    from aethergraph.projections.store import ProjectionStore

    store = ProjectionStore.open(":memory:")
    parts = [SCHEMA_HEADING]
    owners = {table: schema for schema in PROJECTIONS for table in schema.tables}
    order = [t for schema in PROJECTIONS for t in schema.tables] + ["dead_letters", "projection_state", "store_source"]
    for table in order:
        rows = store.query(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = ? ORDER BY ordinal_position",
            [table],
        ).rows
        owner = owners.get(table)
        where = f"projection `{owner.name}` v{owner.version}: {owner.description}" if owner else "the store itself"
        parts.append(f"\n### `{table}`\n\n{where}.\n\n| column | type | meaning |\n|---|---|---|\n")
        for name, data_type, _nullable in rows:
            parts.append(f"| `{name}` | `{data_type}` | {COLUMNS[table][name]} |\n")
    store.close()
    return "".join(parts)


def main() -> None:
    text = PAGE.read_text()
    head, _, rest = text.partition(SCHEMA_HEADING)
    _, _, tail = rest.partition(END_MARK)
    with tempfile.TemporaryDirectory() as workspace:
        os.environ["AETHERGRAPH_WORKSPACE"] = workspace
        os.environ.pop("AETHERGRAPH_NATS_URL", None)
        queries = asyncio.run(_queries())
        from aethergraph.bus.embedded import stop_embedded_server

        stop_embedded_server(Path(workspace))
    PAGE.write_text(head + _schema() + "\n" + queries + "\n" + END_MARK + tail)
    print(f"{PAGE}: {len(COLUMNS)} tables, {len(QUERIES)} queries")


if __name__ == "__main__":
    main()
