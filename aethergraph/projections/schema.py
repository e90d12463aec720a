"""The projection tables: their DDL, their versions, and the lineage macros.

Each projection owns some tables and has a ``version``. The store records, per
projection, the version its tables were built with and the last stream
sequence folded into them. Bumping a version (a new column, a changed meaning)
drops that projection's tables and rebuilds them from stream sequence 0 on the
next start; nothing is migrated in place.

The ``journal`` projection holds the journal rule's state (chain heads, events
held beyond a gap, rejected events); the other projections fold only the
events it takes, so their tables describe the runs' journals and nothing else.

Lineage entities are strings: ``run:<run_id>``, ``node:<run_id>/<node_id>``,
``artifact:<artifact_id>`` and ``wait:<run_id>/<wait_id>``. An edge
``src -> dst`` means *dst was derived from src*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "JOURNAL",
    "MACROS",
    "PROJECTIONS",
    "STATE_DDL",
    "ProjectionSchema",
    "node_entity",
    "projection",
]


def node_entity(run_id: str, node_id: str) -> str:
    """A node's id in the lineage tables (``edges``): what the SQL macro ``node_entity(run_id, node_id)`` builds."""
    return f"node:{run_id}/{node_id}"


@dataclass(frozen=True, kw_only=True)
class ProjectionSchema:
    """One projection: a name, a version, its tables (name -> DDL)."""

    name: str
    version: int
    tables: dict[str, str]
    description: str


JOURNAL: Final = "journal"
"""The projection holding the journal rule's state (it moves with the lowest projection cursor)."""

STATE_DDL: Final = """
CREATE TABLE IF NOT EXISTS projection_state (
    projection VARCHAR PRIMARY KEY,
    version INTEGER NOT NULL,
    last_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS store_source (
    stream VARCHAR PRIMARY KEY,
    created VARCHAR NOT NULL,
    cluster VARCHAR,
    server_name VARCHAR,
    url VARCHAR
);
CREATE TABLE IF NOT EXISTS dead_letters (
    stream_seq BIGINT PRIMARY KEY,
    subject VARCHAR NOT NULL,
    raw BLOB NOT NULL,
    reason VARCHAR NOT NULL
);
"""

PROJECTIONS: Final[tuple[ProjectionSchema, ...]] = (
    ProjectionSchema(
        name=JOURNAL,
        version=1,
        description="the journal rule's state: each run's chain head, events held beyond a gap, rejected events",
        tables={
            "journal_heads": """
CREATE TABLE journal_heads (
    run_id VARCHAR NOT NULL,
    next_seq BIGINT NOT NULL,
    epoch BIGINT NOT NULL
)""",
            "journal_pending": """
CREATE TABLE journal_pending (
    stream_seq BIGINT NOT NULL,
    run_id VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    type VARCHAR NOT NULL,
    raw VARCHAR NOT NULL
)""",
            "rejected_events": """
CREATE TABLE rejected_events (
    stream_seq BIGINT NOT NULL,
    run_id VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    type VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    data JSON NOT NULL
)""",
        },
    ),
    ProjectionSchema(
        name="events",
        version=2,
        description="every journal event, decoded: envelope columns plus the full event as JSON",
        tables={
            "events": """
CREATE TABLE events (
    stream_seq BIGINT,
    run_id VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    type VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,
    worker VARCHAR NOT NULL,
    parent BIGINT,
    node_id VARCHAR,
    epoch BIGINT NOT NULL,
    data JSON NOT NULL
)""",
        },
    ),
    ProjectionSchema(
        name="runs",
        version=4,  # 3: status 'queued' (a submitted run no worker has claimed yet); 4: traceback, retry clears errors
        description="one row per run: graph, status, parent/root, inputs, outputs, error, timings",
        tables={
            "runs": """
CREATE TABLE runs (
    run_id VARCHAR,
    graph_id VARCHAR,
    status VARCHAR,
    parent_run_id VARCHAR,
    parent_node_id VARCHAR,
    root_run_id VARCHAR,
    inputs JSON,
    outputs JSON,
    error_type VARCHAR,
    error_message VARCHAR,
    failed_node_id VARCHAR,
    traceback VARCHAR,
    waiting_wait_id VARCHAR,
    waiting_run_id VARCHAR,
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    last_event_at TIMESTAMP NOT NULL,
    last_worker VARCHAR NOT NULL,
    last_seq BIGINT NOT NULL,
    event_count BIGINT NOT NULL,
    claims INTEGER NOT NULL
)""",
        },
    ),
    ProjectionSchema(
        name="nodes",
        version=4,  # 4: traceback; nodes of a cancelled run are skipped (reason cancelled)
        description="one row per node of a run (a tool call of a graph_fn, or a node of a static graph)",
        tables={
            "nodes": """
CREATE TABLE nodes (
    run_id VARCHAR NOT NULL,
    node_id VARCHAR NOT NULL,
    tool VARCHAR,
    status VARCHAR,
    attempts INTEGER NOT NULL,
    started_at TIMESTAMP,
    ended_at TIMESTAMP,
    duration_us BIGINT,
    worker VARCHAR,
    executor VARCHAR,
    error_type VARCHAR,
    error_message VARCHAR,
    traceback VARCHAR,
    skip_reason VARCHAR,
    skip_upstream VARCHAR,
    child_run_id VARCHAR,
    first_seq BIGINT,
    last_seq BIGINT
)""",
        },
    ),
    ProjectionSchema(
        name="calls",
        version=3,  # 3: tool_calls.traceback
        description="tool calls and service calls with arguments, results, errors and durations",
        tables={
            "tool_calls": """
CREATE TABLE tool_calls (
    run_id VARCHAR NOT NULL,
    call_seq BIGINT NOT NULL,
    node_id VARCHAR,
    tool VARCHAR,
    args JSON,
    args_digest VARCHAR,
    outputs JSON,
    status VARCHAR NOT NULL,
    error_type VARCHAR,
    error_message VARCHAR,
    traceback VARCHAR,
    duration_us BIGINT,
    called_at TIMESTAMP,
    ended_at TIMESTAMP,
    worker VARCHAR
)""",
            "service_calls": """
CREATE TABLE service_calls (
    run_id VARCHAR NOT NULL,
    call_seq BIGINT NOT NULL,
    node_id VARCHAR,
    service VARCHAR,
    method VARCHAR,
    args JSON,
    kwargs JSON,
    args_digest VARCHAR,
    result JSON,
    status VARCHAR NOT NULL,
    error_type VARCHAR,
    error_message VARCHAR,
    duration_us BIGINT,
    called_at TIMESTAMP,
    ended_at TIMESTAMP
)""",
        },
    ),
    ProjectionSchema(
        name="waits",
        version=3,  # 3: a wait of a run that ended unanswered is closed with the run (cancelled or failed)
        description="every wait: prompt, schema, deadline, open/resumed/expired/cancelled/failed, the resume payload",
        tables={
            "waits": """
CREATE TABLE waits (
    run_id VARCHAR NOT NULL,
    wait_id VARCHAR NOT NULL,
    node_id VARCHAR,
    kind VARCHAR,
    prompt VARCHAR,
    payload_schema JSON,
    channel VARCHAR,
    deadline TIMESTAMP,
    status VARCHAR NOT NULL,
    requested_at TIMESTAMP,
    closed_at TIMESTAMP,
    payload JSON,
    command_seq BIGINT
)""",
        },
    ),
    ProjectionSchema(
        name="artifacts",
        version=2,
        description="one row per artifact.saved event: content id, URI, producing run/node/tool",
        tables={
            "artifacts": """
CREATE TABLE artifacts (
    run_id VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    artifact_id VARCHAR NOT NULL,
    uri VARCHAR NOT NULL,
    kind VARCHAR,
    name VARCHAR,
    mime VARCHAR,
    size BIGINT,
    labels JSON,
    node_id VARCHAR,
    tool VARCHAR,
    saved_at TIMESTAMP NOT NULL
)""",
        },
    ),
    ProjectionSchema(
        name="memories",
        version=2,
        description="one row per memory.recorded event: every run's context.memory() entries",
        tables={
            "memories": """
CREATE TABLE memories (
    run_id VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    node_id VARCHAR,
    kind VARCHAR NOT NULL,
    name VARCHAR,
    data JSON,
    tags JSON,
    text VARCHAR,
    recorded_at TIMESTAMP NOT NULL
)""",
        },
    ),
    ProjectionSchema(
        name="viz",
        version=1,
        description="one row per viz.recorded event: the points of every run's context.viz() tracks",
        tables={
            "viz": """
CREATE TABLE viz (
    run_id VARCHAR NOT NULL,
    seq BIGINT NOT NULL,
    node_id VARCHAR,
    track VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    step BIGINT,
    value JSON,
    artifact_uri VARCHAR,
    mime VARCHAR,
    meta JSON,
    recorded_at TIMESTAMP NOT NULL
)""",
        },
    ),
    ProjectionSchema(
        name="llm",
        version=1,
        description="one row per model call of context.llm(): model, tokens, latency, finish reason, failure",
        tables={
            "llm_calls": """
CREATE TABLE llm_calls (
    run_id VARCHAR NOT NULL,
    call_seq BIGINT NOT NULL,
    node_id VARCHAR,
    profile VARCHAR,
    model VARCHAR,
    operation VARCHAR,
    streamed BOOLEAN,
    status VARCHAR NOT NULL,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cached_tokens BIGINT,
    reasoning_tokens BIGINT,
    duration_us BIGINT,
    attempts INTEGER,
    finish_reason VARCHAR,
    error_type VARCHAR,
    error_message VARCHAR,
    called_at TIMESTAMP,
    ended_at TIMESTAMP
)""",
        },
    ),
    ProjectionSchema(
        name="lineage",
        version=3,
        description="causal and data-flow edges between runs, nodes, waits and artifacts",
        tables={
            "edges": """
CREATE TABLE edges (
    src VARCHAR NOT NULL,
    dst VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    root_run_id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    stream_seq BIGINT NOT NULL
)""",
            "lineage_values": """
CREATE TABLE lineage_values (
    digest VARCHAR NOT NULL,
    root_run_id VARCHAR NOT NULL,
    entity VARCHAR NOT NULL,
    stream_seq BIGINT NOT NULL
)""",
            "lineage_roots": """
CREATE TABLE lineage_roots (
    run_id VARCHAR,
    root_run_id VARCHAR NOT NULL
)""",
        },
    ),
)


def projection(name: str) -> ProjectionSchema:
    for schema in PROJECTIONS:
        if schema.name == name:
            return schema
    raise KeyError(name)


# Lineage walks stay inside the entity's run tree (edges carry the root run), which
# keeps them fast on large stores; ``depth`` is the shortest distance.
_HELPER_MACROS: Final = """
CREATE OR REPLACE MACRO run_entity(run_id) AS 'run:' || run_id;
CREATE OR REPLACE MACRO node_entity(run_id, node_id) AS 'node:' || run_id || '/' || node_id;
CREATE OR REPLACE MACRO artifact_entity(artifact_id) AS 'artifact:' || artifact_id;
CREATE OR REPLACE MACRO wait_entity(run_id, wait_id) AS 'wait:' || run_id || '/' || wait_id;
CREATE OR REPLACE MACRO entity_run(ent) AS CASE
    WHEN starts_with(ent, 'artifact:') THEN (SELECT min(run_id) FROM artifacts WHERE artifact_id = ent[10:])
    ELSE split_part(split_part(ent, ':', 2), '/', 1)
END;
CREATE OR REPLACE MACRO lineage_root(ent) AS (
    SELECT coalesce(min(root_run_id), entity_run(ent)) FROM lineage_roots WHERE run_id = entity_run(ent)
);
"""


def _walk_macro(name: str, *, step_to: str, step_from: str) -> str:
    """A table macro walking ``edges`` of the entity's run tree from ``step_from`` to ``step_to``."""
    return f"""
CREATE OR REPLACE MACRO {name}(ent) AS TABLE
    WITH RECURSIVE tree AS MATERIALIZED (
        SELECT src, dst, kind FROM edges WHERE root_run_id = lineage_root(ent)
    ), walk(entity, via, depth) AS (
        SELECT ent, NULL::VARCHAR, 0
        UNION
        SELECT t.{step_to}, t.kind, w.depth + 1 FROM tree t JOIN walk w ON t.{step_from} = w.entity WHERE w.depth < 64
    )
    SELECT entity, arg_min(via, (depth, via)) AS via, min(depth) AS depth
    FROM walk WHERE depth > 0 GROUP BY entity ORDER BY depth, entity;
"""


MACROS: Final = (
    _HELPER_MACROS
    + _walk_macro("ancestors", step_to="src", step_from="dst")
    + _walk_macro("descendants", step_to="dst", step_from="src")
)
