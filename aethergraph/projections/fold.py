"""Folding a batch of events into the projection tables, as set-based SQL.

Python decodes each message once (strictly, with msgspec: what fails becomes a
dead letter) and stages ``(stream_seq, raw JSON)``. DuckDB parses the batch
once into a struct column and every projection is one ``INSERT ... SELECT ...
GROUP BY key ... ON CONFLICT DO UPDATE`` over it, so the per-event cost is
vectorised work instead of Python.

Columns merge by a rule, inside a batch (aggregates ordered by stream
sequence) and with the stored row (the ``ON CONFLICT`` clause): ``last`` (a
later non-null value wins), ``first`` (the first non-null value stays),
``add`` (counters), ``max``. Each rule is associative, so folding the stream
in one batch or in many gives the same tables: an incremental projection
equals a rebuild.

Only events of their run's journal are staged (the store sorts each batch by
the journal rule first), in journal order: ``ord`` numbers them, and the
state merges order by it. ``pos`` is the stream sequence at which an event
joined its journal: its own, or that of the event that filled the gap before
it. Every statement takes ``$1``: the projection's cursor; staged rows whose
``pos`` is at or below it are skipped (that is how one projection is rebuilt
behind others).
Statements that look rows up in a table that grows with the stream also take
``$2`` (:data:`LOW_RUN`: no staged row names a run id below it) and ``$3``
(:data:`LOW_ROOT`: no row the batch touches in the lineage tables has a root
run id below it). They only narrow the scan of the stored table: run ids
begin with their creation time, so DuckDB skips the row groups of older
runs by their min/max statistics; with run ids in any other order the
bounds are just as correct, only less selective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from aethergraph.core.wire.events import AnyEvent

__all__ = ["BOUNDS", "FOLDS", "MIN_LINEAGE_VALUE_BYTES", "STAGE", "STAGING_DDL", "Decoded", "Rule"]

Rule = Literal["key", "last", "first", "add", "max"]

# Values shorter than this (encoded) are too common (1, "ok", true) to imply data flow.
MIN_LINEAGE_VALUE_BYTES: Final = 8


@dataclass(frozen=True, slots=True)
class Decoded:
    """One stored event: its stream sequence, the decoded event and its JSON text."""

    stream_seq: int
    event: AnyEvent
    raw: str


_FIELDS: Final[dict[str, str]] = {
    "type": "VARCHAR", "run_id": "VARCHAR", "seq": "BIGINT", "ts": "BIGINT", "worker": "VARCHAR",
    "parent": "BIGINT", "node_id": "VARCHAR", "epoch": "BIGINT", "graph_id": "VARCHAR", "inputs": "JSON",
    "parent_run_id": "VARCHAR", "parent_node_id": "VARCHAR", "root_run_id": "VARCHAR", "reason": "VARCHAR",
    "outputs": "JSON", "error_type": "VARCHAR", "message": "VARCHAR", "failed_node_id": "VARCHAR",
    "wait_id": "VARCHAR", "wait_run_id": "VARCHAR", "kind": "VARCHAR", "prompt": "VARCHAR", "tool": "VARCHAR",
    "attempt": "BIGINT", "args": "JSON", "args_digest": "VARCHAR", "duration_us": "BIGINT",
    "service": "VARCHAR", "method": "VARCHAR", "kwargs": "JSON", "result": "JSON", "payload_schema": "JSON",
    "channel": "VARCHAR", "deadline_us": "BIGINT", "payload": "JSON", "command_seq": "BIGINT",
    "artifact_id": "VARCHAR", "uri": "VARCHAR", "name": "VARCHAR", "mime": "VARCHAR", "size": "BIGINT",
    "labels": "JSON",
    "data": "JSON", "tags": "JSON", "text": "VARCHAR", "executor": "VARCHAR", "retry_at_us": "BIGINT",
    "upstream": "VARCHAR", "queued": "BOOLEAN", "traceback": "VARCHAR",
    "track": "VARCHAR", "step": "BIGINT", "value": "JSON", "artifact_uri": "VARCHAR", "meta": "JSON",
    "profile": "VARCHAR", "model": "VARCHAR", "operation": "VARCHAR", "streamed": "BOOLEAN",
    "finish_reason": "VARCHAR", "input_tokens": "BIGINT", "output_tokens": "BIGINT", "cached_tokens": "BIGINT",
    "reasoning_tokens": "BIGINT", "attempts": "BIGINT",
}  # fmt: skip

_STRUCTURE: Final = msgspec.json.encode(_FIELDS).decode().replace("'", "''")

STAGING_DDL: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS staging (stream_seq BIGINT, pos BIGINT, ord BIGINT, raw VARCHAR, e STRUCT("
    + ", ".join(f"{name} {kind}" for name, kind in _FIELDS.items())
    + "))"
)

# $1: stream sequences, $2: the stream sequences at which the events joined their journals, $3: raw JSON texts;
# in journal order (``ord`` numbers them).
STAGE: Final = (
    f"INSERT INTO staging SELECT s, p, o, r, json_transform(r, '{_STRUCTURE}') "
    "FROM (SELECT unnest($1) AS s, unnest($2) AS p, unnest(range(len($1))) AS o, unnest($3) AS r)"
)

# The bounds of a staged batch, $2 and $3 of the fold statements: the lowest run id the batch
# names (as a run, a parent run or a root run), then the lowest root run id of its runs, counting
# the roots recorded for them by earlier batches ($1 here is the first bound).
BOUNDS: Final = (
    "SELECT min(least(e.run_id, coalesce(e.parent_run_id, e.run_id), coalesce(e.root_run_id, e.run_id))) FROM staging",
    "SELECT least($1, min(root_run_id)) FROM lineage_roots "
    "WHERE run_id >= $1 AND run_id IN (SELECT e.run_id FROM staging)",
)

_MERGE: Final[dict[Rule, str]] = {
    "key": "",
    "last": "coalesce(excluded.{c}, {t}.{c})",
    "first": "coalesce({t}.{c}, excluded.{c})",
    "add": "{t}.{c} + excluded.{c}",
    "max": "greatest(coalesce({t}.{c}, excluded.{c}), coalesce(excluded.{c}, {t}.{c}))",
}


def _merge(table: str, columns: list[tuple[str, Rule, str]], source: str, *, low: tuple[str, str] | None = None) -> str:
    """``MERGE INTO table USING (SELECT <exprs> <source>)``: merge rows that exist, insert the others.

    The tables have no primary-key index (maintaining and checkpointing one
    costs more than the merge): each statement produces one row per key.
    ``low`` (a key column, the parameter bounding it from below) limits the
    scan of the stored table to the row groups that can hold the batch's keys.
    """
    names = [name for name, _, _ in columns]
    exprs = ",\n    ".join(f"{expr} AS {name}" for name, _, expr in columns)
    keys = " AND ".join(f"t.{name} = x.{name}" for name, rule, _ in columns if rule == "key")
    if low is not None:
        keys += f" AND t.{low[0]} >= {low[1]}"
    updates = ", ".join(
        f"{name} = " + _MERGE[rule].format(t="t", c=name).replace("excluded.", "x.")
        for name, rule, _ in columns
        if rule != "key"
    )
    matched = f"WHEN MATCHED THEN UPDATE SET {updates}\n" if updates else ""
    return (
        f"MERGE INTO {table} AS t USING (\nSELECT\n    {exprs}\n{source}\n) AS x ON {keys}\n{matched}"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) VALUES ({', '.join('x.' + n for n in names)})"
    )


def _insert_missing(table: str, keys: tuple[str, ...], select: str, *, low: tuple[str, str] | None = None) -> str:
    """Insert the rows of ``select`` whose key is not in ``table`` yet (``select`` names every column)."""
    on = " AND ".join(f"t.{key} = x.{key}" for key in keys)
    if low is not None:
        on += f" AND t.{low[0]} >= {low[1]}"
    return f"MERGE INTO {table} AS t USING ({select}) AS x ON {on}\nWHEN NOT MATCHED THEN INSERT BY NAME"


def _first(expr: str, where: str) -> str:
    return f"arg_min({expr}, s) FILTER (WHERE {where} AND ({expr}) IS NOT NULL)"


def _last(expr: str, where: str) -> str:
    return f"arg_max({expr}, s) FILTER (WHERE {where} AND ({expr}) IS NOT NULL)"


_IN_NODE: Final = "e.node_id IS NOT NULL AND e.node_id <> 'root'"
_NODE: Final = "'node:' || e.run_id || '/' || e.node_id"
_RUN: Final = "'run:' || e.run_id"
_OWNER: Final = f"CASE WHEN {_IN_NODE} THEN {_NODE} ELSE {_RUN} END"

_RUN_STATUS: Final = (
    "CASE e.type WHEN 'run.started' THEN CASE WHEN e.queued THEN 'queued' ELSE 'running' END "
    "WHEN 'run.claimed' THEN 'running' "
    "WHEN 'run.waiting' THEN 'waiting' WHEN 'run.completed' THEN 'succeeded' WHEN 'run.failed' THEN 'failed' "
    "WHEN 'run.cancelled' THEN 'cancelled' END"
)

_WHILE_WAITING: Final = "CASE WHEN e.type = 'run.waiting' THEN {} ELSE '' END"
_RUN_ENDS: Final = "'run.completed', 'run.failed', 'run.cancelled'"
_NODE_ENDS: Final = "'tool.returned', 'node.completed', 'tool.failed', 'node.failed', 'node.skipped'"
# The events that open a node: a graph_fn's tool call, a static graph's dispatch or local node (node.started).
_NODE_OPENS: Final = "'tool.called', 'node.started', 'node.ready'"
_ATTEMPT: Final = (
    "CASE WHEN t = 'tool.called' THEN 1 "
    "WHEN t IN ('node.started', 'node.ready', 'node.completed', 'node.failed') THEN coalesce(attempt, 1) END"
)

# The events that set a run's failure (run.failed) or clear it (it completes, or is retried).
_RUN_ERRORS: Final = "(e.type IN ('run.failed', 'run.completed') OR (e.type = 'run.claimed' AND e.reason = 'retry'))"
_FAILED_OR_CLEARED: Final = "CASE WHEN e.type = 'run.failed' THEN {} ELSE '' END"

_EVENTS = (
    "INSERT INTO events SELECT stream_seq, e.run_id, e.seq, e.type, make_timestamp(e.ts), e.worker, e.parent, "
    "e.node_id, coalesce(e.epoch, 1), raw::JSON FROM staging WHERE pos > $1"
)

_RUNS = _merge(
    "runs",
    [
        ("run_id", "key", "e.run_id"),
        ("graph_id", "first", _first("e.graph_id", "e.type = 'run.started'")),
        ("status", "last", _last("st", "true")),
        ("parent_run_id", "first", _first("e.parent_run_id", "e.type = 'run.started'")),
        ("parent_node_id", "first", _first("e.parent_node_id", "e.type = 'run.started'")),
        ("root_run_id", "first", _first("coalesce(e.root_run_id, e.run_id)", "e.type = 'run.started'")),
        ("inputs", "first", _first("e.inputs", "e.type = 'run.started'")),
        ("outputs", "last", _last("e.outputs", "e.type = 'run.completed'")),
        # A run that succeeds after all (a retried static run) drops its old failure: '' clears, see _RUNS_CLEAR.
        ("error_type", "last", _last(_FAILED_OR_CLEARED.format("e.error_type"), _RUN_ERRORS)),
        ("error_message", "last", _last(
            "CASE WHEN e.type = 'run.failed' THEN e.message WHEN e.type = 'run.cancelled' THEN nullif(e.reason, '') "
            "ELSE '' END",
            f"({_RUN_ERRORS} OR e.type = 'run.cancelled')",
        )),
        ("failed_node_id", "last", _last(_FAILED_OR_CLEARED.format("e.failed_node_id"), _RUN_ERRORS)),
        ("traceback", "last", _last(_FAILED_OR_CLEARED.format("nullif(e.traceback, '')"), _RUN_ERRORS)),
        # Merging keeps non-null values, so "not waiting any more" is the empty string.
        ("waiting_wait_id", "last", _last(_WHILE_WAITING.format("e.wait_id"), "st IS NOT NULL")),
        ("waiting_run_id", "last", _last(_WHILE_WAITING.format("e.wait_run_id"), "st IS NOT NULL")),
        ("started_at", "first", _first("make_timestamp(e.ts)", "e.type = 'run.started'")),
        ("ended_at", "last", _last("make_timestamp(e.ts)", f"e.type IN ({_RUN_ENDS})")),
        ("last_event_at", "last", "arg_max(make_timestamp(e.ts), s)"),
        ("last_worker", "last", "arg_max(e.worker, s)"),
        ("last_seq", "max", "max(e.seq)"),
        ("event_count", "add", "count(*)"),
        ("claims", "add", "count(*) FILTER (WHERE e.type = 'run.claimed')"),
    ],
    f"FROM (SELECT ord AS s, e, {_RUN_STATUS} AS st FROM staging WHERE pos > $1) GROUP BY e.run_id",
    low=("run_id", "$2"),
)  # fmt: skip

# The runs of the batch whose failure a later event cleared ('' while merging) show NULL again.
_RUNS_CLEAR = (
    "UPDATE runs SET error_type = nullif(error_type, ''), error_message = nullif(error_message, ''), "
    "failed_node_id = nullif(failed_node_id, ''), traceback = nullif(traceback, '') "
    "WHERE run_id >= $2 AND (error_type = '' OR error_message = '' OR failed_node_id = '' OR traceback = '') "
    "AND run_id IN (SELECT e.run_id FROM staging WHERE pos > $1)"
)

_NODE_TYPES: Final = (
    "'tool.called', 'node.started', 'node.ready', 'tool.returned', 'node.completed', 'tool.failed', 'node.failed', "
    "'node.skipped', 'wait.requested', 'wait.resumed', 'wait.expired'"
)
_NODE_STATUS: Final = (
    "CASE t WHEN 'tool.called' THEN 'running' WHEN 'node.started' THEN 'running' WHEN 'node.ready' THEN 'running' "
    "WHEN 'tool.returned' THEN 'succeeded' WHEN 'node.completed' THEN 'succeeded' "
    "WHEN 'tool.failed' THEN 'failed' "
    "WHEN 'node.failed' THEN CASE WHEN retry_at_us IS NULL THEN 'failed' ELSE 'retrying' END "
    "WHEN 'node.skipped' THEN 'skipped' WHEN 'wait.requested' THEN 'waiting' "
    "WHEN 'wait.resumed' THEN 'running' WHEN 'wait.expired' THEN 'running' END"
)
_NODE_FAILURES: Final = "t IN ('tool.failed', 'node.failed')"
# Merging keeps non-null values, so a static node dispatched again after a skip (a retried run) clears its skip with ''.
_SKIP: Final = "CASE t WHEN 'node.skipped' THEN {} ELSE '' END"
_SKIP_EVENTS: Final = "t IN ('node.skipped', 'node.ready', 'node.started')"
# A static node's attempt that ran on an executor (a node failed before dispatch names none).
_EXECUTED: Final = "t IN ('node.completed', 'node.failed') AND executor <> ''"
_NODES = _merge(
    "nodes",
    [
        ("run_id", "key", "run_id"),
        ("node_id", "key", "node_id"),
        ("tool", "first", _first("tool", f"t IN ({_NODE_OPENS})")),
        ("status", "last", _last(_NODE_STATUS, "t <> 'child'")),
        ("attempts", "max", f"coalesce(max({_ATTEMPT}), 0)"),
        ("started_at", "first", _first("make_timestamp(ts)", f"t IN ({_NODE_OPENS})")),
        ("ended_at", "last", _last("make_timestamp(ts)", f"t IN ({_NODE_ENDS})")),
        ("duration_us", "last", _last(
            "duration_us", f"(t IN ('tool.returned', 'tool.failed') OR ({_EXECUTED}))"
        )),
        ("worker", "last", _last("worker", "t <> 'child'")),
        ("executor", "last", _last("executor", _EXECUTED)),
        # The latest failed attempt's error stays beside a later attempt's success.
        ("error_type", "last", _last("error_type", _NODE_FAILURES)),
        ("error_message", "last", _last("message", _NODE_FAILURES)),
        ("traceback", "last", _last("nullif(traceback, '')", _NODE_FAILURES)),
        ("skip_reason", "last", _last(_SKIP.format("reason"), _SKIP_EVENTS)),
        ("skip_upstream", "last", _last(_SKIP.format("coalesce(upstream, '')"), _SKIP_EVENTS)),
        ("child_run_id", "first", _first("child", "t = 'child'")),
        ("first_seq", "first", _first("seq", f"t IN ({_NODE_OPENS}, 'node.skipped')")),
        ("last_seq", "max", "max(seq) FILTER (WHERE t <> 'child')"),
    ],
    f"""FROM (
    SELECT ord AS s, e.type AS t, e.run_id, e.node_id, e.tool, e.attempt, e.ts, e.seq, e.worker,
           e.duration_us, e.error_type, e.message, e.executor, e.retry_at_us, e.reason, e.upstream,
           e.traceback, NULL::VARCHAR AS child
    FROM staging WHERE pos > $1 AND e.type IN ({_NODE_TYPES}) AND {_IN_NODE}
    UNION ALL
    SELECT ord, 'child', e.parent_run_id, e.parent_node_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL, e.run_id
    FROM staging WHERE pos > $1 AND e.type = 'run.started'
          AND e.parent_run_id IS NOT NULL AND e.parent_node_id IS NOT NULL
) GROUP BY run_id, node_id""",
    low=("run_id", "$2"),
)  # fmt: skip


# The nodes of a run cancelled while they ran or waited are skipped with reason cancelled (static graphs;
# a graph_fn's tool call shows status cancelled), unless the run
# went on after the cancellation (a retried run dispatches them again).
_NODES_CLOSE = (
    """UPDATE nodes SET status = CASE WHEN skip_reason IS NULL THEN 'cancelled' ELSE 'skipped' END,
    skip_reason = CASE WHEN skip_reason IS NULL THEN NULL ELSE 'cancelled' END, ended_at = x.ts
FROM (
    SELECT e.run_id AS run_id, max(e.seq) AS end_seq, max(make_timestamp(e.ts)) AS ts
    FROM staging WHERE pos > $1 AND e.type = 'run.cancelled' GROUP BY e.run_id
) AS x
WHERE nodes.run_id = x.run_id AND nodes.run_id >= $2 AND nodes.status IN ('running', 'waiting', 'retrying')
      AND nodes.last_seq < x.end_seq""",
)


def _calls(
    table: str,
    opened: str,
    closed: tuple[str, str],
    extra: list[tuple[str, Rule, str]],
    statuses: tuple[str, str, str] = ("running", "succeeded", "failed"),
) -> str:
    """A call table: one row per opening event ``opened``, merged with its outcome (``closed``: returned, failed).

    ``statuses`` name a call in flight, returned and failed.
    """
    returned, failed = closed
    running, succeeded, failing = statuses
    return _merge(
        table,
        [
            ("run_id", "key", "e.run_id"),
            ("call_seq", "key", f"CASE WHEN e.type = '{opened}' THEN e.seq ELSE e.parent END"),
            ("node_id", "first", _first("e.node_id", f"e.type = '{opened}'")),
            *extra,
            ("status", "last", _last(
                f"CASE e.type WHEN '{opened}' THEN '{running}' WHEN '{returned}' THEN '{succeeded}' "
                f"ELSE '{failing}' END",
                "true",
            )),
            ("error_type", "last", _last("e.error_type", f"e.type = '{failed}'")),
            ("error_message", "last", _last("e.message", f"e.type = '{failed}'")),
            ("duration_us", "last", _last("e.duration_us", f"e.type <> '{opened}'")),
            ("called_at", "first", _first("make_timestamp(e.ts)", f"e.type = '{opened}'")),
            ("ended_at", "last", _last("make_timestamp(e.ts)", f"e.type <> '{opened}'")),
        ],
        f"FROM (SELECT ord AS s, e FROM staging WHERE pos > $1 AND "
        f"(e.type = '{opened}' OR (e.type IN ('{returned}', '{failed}') AND e.parent IS NOT NULL)))\n"
        f"GROUP BY e.run_id, CASE WHEN e.type = '{opened}' THEN e.seq ELSE e.parent END",
        low=("run_id", "$2"),
    )  # fmt: skip


_TOOL_CALLS = _calls(
    "tool_calls",
    "tool.called",
    ("tool.returned", "tool.failed"),
    [
        ("tool", "first", _first("e.tool", "e.type = 'tool.called'")),
        ("args", "first", _first("e.args", "e.type = 'tool.called'")),
        ("args_digest", "first", _first("e.args_digest", "e.type = 'tool.called'")),
        ("outputs", "last", _last("e.outputs", "e.type = 'tool.returned'")),
        ("worker", "last", _last("e.worker", "true")),
        ("traceback", "last", _last("nullif(e.traceback, '')", "e.type = 'tool.failed'")),
    ],
)
_SERVICE_CALLS = _calls(
    "service_calls",
    "service.called",
    ("service.returned", "service.failed"),
    [
        ("service", "first", _first("e.service", "e.type = 'service.called'")),
        ("method", "first", _first("e.method", "e.type = 'service.called'")),
        ("args", "first", _first("e.args", "e.type = 'service.called'")),
        ("kwargs", "first", _first("e.kwargs", "e.type = 'service.called'")),
        ("args_digest", "first", _first("e.args_digest", "e.type = 'service.called'")),
        ("result", "last", _last("coalesce(e.result, 'null'::JSON)", "e.type = 'service.returned'")),
    ],
)

# A model call (context.llm()): the request's profile/model/operation from llm.called, the usage from llm.returned,
# the attempts from either outcome. Request and response stay in the events (never credentials: none reach them).
_LLM_CALLS = _calls(
    "llm_calls",
    "llm.called",
    ("llm.returned", "llm.failed"),
    [
        ("profile", "first", _first("e.profile", "e.type = 'llm.called'")),
        ("model", "last", _last("e.model", "true")),
        ("operation", "first", _first("e.operation", "e.type = 'llm.called'")),
        ("streamed", "first", _first("e.streamed", "e.type = 'llm.called'")),
        *[(f"{n}_tokens", "last", _last(f"e.{n}_tokens", "e.type = 'llm.returned'"))
          for n in ("input", "output", "cached", "reasoning")],
        ("attempts", "last", _last("e.attempts", "e.type <> 'llm.called'")),
        ("finish_reason", "last", _last("e.finish_reason", "e.type = 'llm.returned'")),
    ],
    statuses=("in_flight", "ok", "failed"),
)  # fmt: skip

_WAITS = _merge(
    "waits",
    [
        ("run_id", "key", "e.run_id"),
        ("wait_id", "key", "e.wait_id"),
        ("node_id", "first", _first("e.node_id", "e.type = 'wait.requested'")),
        ("kind", "first", _first("e.kind", "e.type = 'wait.requested'")),
        ("prompt", "first", _first("e.prompt", "e.type = 'wait.requested'")),
        ("payload_schema", "first", _first("e.payload_schema", "e.type = 'wait.requested'")),
        ("channel", "first", _first("e.channel", "e.type = 'wait.requested'")),
        ("deadline", "first", _first("make_timestamp(e.deadline_us)", "e.type = 'wait.requested'")),
        ("status", "last", _last(
            "CASE e.type WHEN 'wait.requested' THEN 'open' WHEN 'wait.resumed' THEN 'resumed' ELSE 'expired' END",
            "true",
        )),
        ("requested_at", "first", _first("make_timestamp(e.ts)", "e.type = 'wait.requested'")),
        ("closed_at", "last", _last("make_timestamp(e.ts)", "e.type <> 'wait.requested'")),
        ("payload", "last", _last("coalesce(e.payload, 'null'::JSON)", "e.type = 'wait.resumed'")),
        ("command_seq", "last", _last("e.command_seq", "e.type <> 'wait.requested'")),
    ],
    "FROM (SELECT ord AS s, e FROM staging WHERE pos > $1 AND "
    "e.type IN ('wait.requested', 'wait.resumed', 'wait.expired')) GROUP BY e.run_id, e.wait_id",
    low=("run_id", "$2"),
)  # fmt: skip

# A wait still open when its run is cancelled or fails can no longer be answered: it closes with the run.
_WAITS_CLOSE = """UPDATE waits SET status = x.status, closed_at = x.ts
FROM (
    SELECT e.run_id AS run_id,
           arg_max(CASE e.type WHEN 'run.cancelled' THEN 'cancelled' ELSE 'failed' END, ord) AS status,
           max(make_timestamp(e.ts)) AS ts
    FROM staging WHERE pos > $1 AND e.type IN ('run.cancelled', 'run.failed') GROUP BY e.run_id
) AS x
WHERE waits.run_id = x.run_id AND waits.run_id >= $2 AND waits.status = 'open'"""

_ARTIFACTS = (
    "INSERT INTO artifacts SELECT e.run_id, e.seq, e.artifact_id, e.uri, e.kind, e.name, e.mime, e.size, e.labels, "
    "e.node_id, e.tool, make_timestamp(e.ts) FROM staging WHERE pos > $1 AND e.type = 'artifact.saved'"
)

_MEMORIES = (
    "INSERT INTO memories SELECT e.run_id, e.seq, e.node_id, e.kind, e.name, e.data, e.tags, e.text, "
    "make_timestamp(e.ts) FROM staging WHERE pos > $1 AND e.type = 'memory.recorded'"
)

_VIZ = (
    "INSERT INTO viz SELECT e.run_id, e.seq, e.node_id, e.track, e.kind, e.step, e.value, e.artifact_uri, "
    "nullif(e.mime, ''), e.meta, make_timestamp(e.ts) FROM staging WHERE pos > $1 AND e.type = 'viz.recorded'"
)

_ROOTS = (
    "INSERT INTO lineage_roots SELECT e.run_id, arg_min(coalesce(e.root_run_id, e.run_id), ord) "
    "FROM staging WHERE pos > $1 AND e.type = 'run.started' GROUP BY e.run_id"
)

_STRUCTURAL_EDGES = _insert_missing(
    "edges",
    ("root_run_id", "src", "dst", "kind"),
    f"""
WITH x AS (
    SELECT 'node:' || e.parent_run_id || '/' || e.parent_node_id AS src, {_RUN} AS dst, 'spawned' AS kind,
           e.run_id, pos AS s
    FROM staging WHERE pos > $1 AND e.type = 'run.started'
          AND e.parent_run_id IS NOT NULL AND e.parent_node_id IS NOT NULL
    UNION ALL
    SELECT {_RUN}, {_NODE}, 'in_run', e.run_id, pos
    FROM staging WHERE pos > $1 AND e.type IN ({_NODE_OPENS}) AND {_IN_NODE}
    UNION ALL
    SELECT 'wait:' || e.run_id || '/' || e.wait_id, {_OWNER}, 'answered', e.run_id, pos
    FROM staging WHERE pos > $1 AND e.type = 'wait.resumed'
    UNION ALL
    SELECT {_OWNER}, 'artifact:' || e.artifact_id, 'produced', e.run_id, pos
    FROM staging WHERE pos > $1 AND e.type = 'artifact.saved'
)
SELECT x.src, x.dst, x.kind, arg_min(coalesce(r.root_run_id, x.run_id), x.s) AS root_run_id,
       arg_min(x.run_id, x.s) AS run_id, min(x.s) AS stream_seq
FROM x LEFT JOIN lineage_roots r ON r.run_id = x.run_id AND r.run_id >= $2
GROUP BY x.src, x.dst, x.kind""",
    low=("root_run_id", "$3"),
)

# A value worth matching: not null/boolean, and at least MIN_LINEAGE_VALUE_BYTES when encoded.
_MATCHABLE: Final = (
    f"v IS NOT NULL AND length(v::VARCHAR) >= {MIN_LINEAGE_VALUE_BYTES} AND json_type(v) NOT IN ('BOOLEAN', 'NULL')"
)

_PRODUCED_VALUES = _insert_missing(
    "lineage_values",
    ("root_run_id", "digest", "entity"),
    f"""
WITH produced AS (
    SELECT pos AS s, e, CASE WHEN e.type = 'run.completed' THEN {_RUN} ELSE {_NODE} END AS entity
    FROM staging WHERE pos > $1
          AND (e.type = 'run.completed' OR (e.type IN ('tool.returned', 'node.completed') AND {_IN_NODE}))
), answered AS (
    SELECT pos AS s, e, 'wait:' || e.run_id || '/' || e.wait_id AS entity
    FROM staging WHERE pos > $1 AND e.type = 'wait.resumed'
), x AS (
    SELECT e.outputs AS v, entity, e.run_id, s FROM produced
    UNION ALL SELECT unnest(map_values(e.outputs::MAP(VARCHAR, JSON))), entity, e.run_id, s FROM produced
    UNION ALL SELECT e.payload, entity, e.run_id, s FROM answered
    UNION ALL SELECT unnest(map_values(e.payload::MAP(VARCHAR, JSON))), entity, e.run_id, s FROM answered
        WHERE json_type(e.payload) = 'OBJECT'
    UNION ALL SELECT to_json(e.uri), 'artifact:' || e.artifact_id, e.run_id, pos
        FROM staging WHERE pos > $1 AND e.type = 'artifact.saved'
    UNION ALL SELECT to_json(e.artifact_id), 'artifact:' || e.artifact_id, e.run_id, pos
        FROM staging WHERE pos > $1 AND e.type = 'artifact.saved'
)
SELECT md5(v::VARCHAR) AS digest, coalesce(r.root_run_id, x.run_id) AS root_run_id, x.entity, min(x.s) AS stream_seq
FROM x LEFT JOIN lineage_roots r ON r.run_id = x.run_id AND r.run_id >= $2
WHERE {_MATCHABLE}
GROUP BY 1, 2, 3""",
    low=("root_run_id", "$3"),
)

_DATA_EDGES = _insert_missing(
    "edges",
    ("root_run_id", "src", "dst", "kind"),
    f"""
WITH called AS (
    SELECT pos AS s, e, {_NODE} AS entity FROM staging
    WHERE pos > $1 AND e.type IN ('tool.called', 'node.ready', 'node.started', 'service.called') AND {_IN_NODE}
), x AS (
    SELECT unnest(map_values(e.args::MAP(VARCHAR, JSON))) AS v, entity, e.run_id, s FROM called
        WHERE e.type IN ('tool.called', 'node.ready', 'node.started')
    UNION ALL SELECT unnest(e.args::JSON[]), entity, e.run_id, s FROM called WHERE e.type = 'service.called'
    UNION ALL SELECT unnest(map_values(e.kwargs::MAP(VARCHAR, JSON))), entity, e.run_id, s FROM called
        WHERE e.type = 'service.called'
), consumed AS (
    SELECT md5(v::VARCHAR) AS digest, coalesce(r.root_run_id, x.run_id) AS root, x.entity, x.run_id, x.s
    FROM x LEFT JOIN lineage_roots r ON r.run_id = x.run_id AND r.run_id >= $2
    WHERE {_MATCHABLE}
)
SELECT v.entity AS src, c.entity AS dst, 'data' AS kind, c.root AS root_run_id, arg_min(c.run_id, c.s) AS run_id,
       min(c.s) AS stream_seq
FROM consumed c JOIN lineage_values v
  ON v.digest = c.digest AND v.root_run_id = c.root AND v.stream_seq < c.s AND v.entity <> c.entity
     AND v.root_run_id >= $3
GROUP BY v.entity, c.entity, c.root""",
    low=("root_run_id", "$3"),
)

# Projection name -> its statements, in order (lineage: roots, then edges and values, then data edges).
FOLDS: Final[dict[str, tuple[str, ...]]] = {
    "events": (_EVENTS,),
    "runs": (_RUNS, _RUNS_CLEAR),
    "nodes": (_NODES, *_NODES_CLOSE),
    "calls": (_TOOL_CALLS, _SERVICE_CALLS),
    "waits": (_WAITS, _WAITS_CLOSE),
    "artifacts": (_ARTIFACTS,),
    "memories": (_MEMORIES,),
    "viz": (_VIZ,),
    "llm": (_LLM_CALLS,),
    "lineage": (_ROOTS, _STRUCTURAL_EDGES, _PRODUCED_VALUES, _DATA_EDGES),
}
