"""Rebuilding one run's state from the stream alone, on a host that has never seen it.

``rebuild_run_state`` reads the run's journal (and the journals of the runs it
started, recursively) straight from JetStream, folds them into a projection
store (an in-memory one by default) and reads the run back as a
:class:`RunState`: status, nodes, open waits with their prompts and schemas.
``aethergraph status`` and ``aethergraph resume`` use it, so a resume can be
prepared on any machine that reaches the bus. Like every reader it applies the
journal rule: only the events of each run's journal are folded (and only they
name the nested runs to read), whatever else was published on its subjects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aethergraph.bus.event_log import JetStreamEventLog
from aethergraph.core.errors import RunNotFoundError
from aethergraph.core.ids import child_run_id, node_run_id
from aethergraph.core.wire.codec import encode_event
from aethergraph.core.wire.events import NodeReady, NodeStarted, ToolCalled

from .fold import Decoded
from .journal import JournalSorter
from .journal_store import journal_key
from .store import ProjectionStore

__all__ = ["NodeState", "OpenWait", "RunState", "rebuild_run_state"]


@dataclass(frozen=True, kw_only=True)
class OpenWait:
    run_id: str
    wait_id: str
    node_id: str | None
    kind: str
    prompt: str
    payload_schema: dict[str, Any]
    deadline: datetime | None


@dataclass(frozen=True, kw_only=True)
class NodeState:
    run_id: str
    node_id: str
    tool: str | None
    status: str | None
    duration_us: int | None
    child_run_id: str | None
    skip_reason: str | None = None
    error: str | None = None
    traceback: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunState:
    run_id: str
    graph_id: str | None
    status: str | None
    started_at: datetime | None
    ended_at: datetime | None
    event_count: int
    error: str | None
    # The journaled traceback of the failure (None unless the run failed with one).
    traceback: str | None
    outputs: dict[str, Any] | None
    # (wait_id, run_id holding the wait) while the run is parked on a wait.
    waiting_on: tuple[str, str] | None
    runs: list[str]
    nodes: list[NodeState]
    open_waits: list[OpenWait]


async def _read_run(event_log: JetStreamEventLog, run_id: str) -> list[Decoded]:
    """The events of ``run_id``'s journal (the journal rule: nothing else on its subjects), in stream order."""
    items = [
        Decoded(record.stream_seq, record.event, encode_event(record.event).decode())
        async for record in event_log.read_run(run_id)
    ]
    sorter = JournalSorter(heads={}, held={})
    sorter.add_all([i.stream_seq for i in items], [journal_key(i.event) for i in items], [i.raw for i in items])
    taken = {stream_seq for stream_seq, _, _ in sorter.taken}
    return [item for item in items if item.stream_seq in taken]


async def rebuild_run_state(
    event_log: JetStreamEventLog, run_id: str, store: ProjectionStore | None = None
) -> RunState:
    """Fold ``run_id`` and its nested runs from the stream into ``store`` and read its state back.

    ``store`` defaults to a fresh in-memory store, closed before returning;
    a store passed in must not have folded any of the stream yet.
    Raises :class:`RunNotFoundError` if the stream holds no event of the run.
    """
    items = await _read_run(event_log, run_id)
    if not items:
        raise RunNotFoundError(f"no run {run_id} on the bus; check the id with `aethergraph runs`", run_id=run_id)
    tree = [run_id]
    frontier = items
    while frontier:
        # A nested run's id follows from the parent node that started it (child_run_id), or from the
        # static node and attempt it runs (node_run_id); ask which exist.
        candidates = list(
            dict.fromkeys(
                child_run_id(event.run_id, event.node_id)
                if isinstance(event, ToolCalled)
                else node_run_id(event.run_id, event.node_id, event.attempt)
                for event in (item.event for item in frontier)
                if isinstance(event, ToolCalled | NodeReady | NodeStarted) and event.node_id is not None
            )
        )
        started = await event_log.started_runs(candidates)
        children = [child for child in candidates if child in started and child not in tree]
        tree.extend(children)
        frontier = [item for child in children for item in await _read_run(event_log, child)]
        items.extend(frontier)
    own = store is None
    store = store if store is not None else ProjectionStore.open(":memory:")
    try:
        # The runs of a tree interleave on the stream: one batch in stream order folds them all.
        store.apply(sorted(items, key=lambda item: item.stream_seq))
        return _read_state(store, run_id, tree)
    finally:
        if own:
            store.close()


def _read_state(store: ProjectionStore, run_id: str, tree: list[str]) -> RunState:
    run = store.query(
        "SELECT graph_id, status, started_at, ended_at, event_count, error_type, error_message, "
        "waiting_wait_id, waiting_run_id, traceback, outputs "
        "FROM runs WHERE run_id = ?",
        [run_id],
    ).rows[0]
    nodes = store.query(
        "SELECT run_id, node_id, tool, status, duration_us, child_run_id, nullif(skip_reason, ''), "
        "error_type || ': ' || error_message, traceback FROM nodes "
        "WHERE run_id IN (SELECT unnest($1)) ORDER BY started_at, run_id, first_seq",
        [tree],
    ).rows
    # A run that ended has no wait left to answer (its waits closed with it, and so did its nested runs').
    waits = store.query(
        "SELECT run_id, wait_id, node_id, kind, prompt, payload_schema, deadline FROM waits "
        "WHERE status = 'open' AND run_id IN (SELECT unnest($1)) ORDER BY requested_at",
        [tree],
    ).rows
    if run[1] in ("succeeded", "failed", "cancelled"):
        waits = []
    error = f"{run[5]}: {run[6]}" if run[5] else run[6]  # a cancelled run's "error" is its reason
    return RunState(
        run_id=run_id,
        graph_id=run[0],
        status=run[1],
        started_at=run[2],
        ended_at=run[3],
        event_count=run[4],
        error=error,
        traceback=run[9],
        outputs=json.loads(run[10]) if run[10] is not None else None,
        waiting_on=(run[7], run[8]) if run[7] else None,
        runs=tree,
        nodes=[
            NodeState(
                run_id=n[0],
                node_id=n[1],
                tool=n[2],
                status=n[3],
                duration_us=n[4],
                child_run_id=n[5],
                skip_reason=n[6],
                error=n[7],
                traceback=n[8],
            )
            for n in nodes
        ],
        open_waits=[
            OpenWait(
                run_id=w[0],
                wait_id=w[1],
                node_id=w[2],
                kind=w[3] or "",
                prompt=w[4] or "",
                payload_schema=json.loads(w[5]) if w[5] else {},
                deadline=w[6],
            )
            for w in waits
        ],
    )
