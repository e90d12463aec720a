"""Folding decoded events into row batches, one batch per table (pure Python, no I/O).

A batch merges every event it is given into at most one row per key, so the
store can upsert each table with a single statement. Columns merge by a rule:
``last`` (a later non-null value wins), ``first`` (the first non-null value
stays), ``add`` (counters), ``max``. Because each rule is associative, folding
events in one batch or in many gives the same tables: an incremental
projection equals a rebuild.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from aethergraph.core.events import (
    AnyEvent,
    ArtifactSaved,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    RunCancelled,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunWaiting,
    ServiceCalled,
    ServiceFailed,
    ServiceReturned,
    ToolCalled,
    ToolFailed,
    ToolReturned,
    WaitExpired,
    WaitRequested,
    WaitResumed,
)
from aethergraph.core.ids import ROOT_NODE

from .schema import artifact_entity, node_entity, run_entity, wait_entity

__all__ = ["MIN_LINEAGE_VALUE_BYTES", "Decoded", "FoldBatch", "Rule", "TableRows", "value_digest"]

Rule = Literal["key", "last", "first", "add", "max"]

# Values shorter than this (encoded) are too common (1, "ok", true) to imply data flow.
MIN_LINEAGE_VALUE_BYTES: Final = 8

_encode = msgspec.json.Encoder().encode


def _json(value: Any) -> str:
    return _encode(value).decode()


def value_digest(value: Any) -> str | None:
    """Content digest of a value for data-flow lineage, or None if it is too small to tell anything."""
    if value is None or isinstance(value, bool):
        return None
    raw = _encode(value)
    if len(raw) < MIN_LINEAGE_VALUE_BYTES:
        return None
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Decoded:
    """One stored event: its stream sequence, the decoded event and its JSON text."""

    stream_seq: int
    event: AnyEvent
    raw: str


@dataclass(slots=True)
class TableRows:
    """Rows for one table, merged by key; ``timestamps`` are Unix microseconds until inserted."""

    table: str
    columns: tuple[str, ...]
    rules: tuple[Rule, ...]
    timestamps: frozenset[str] = frozenset()
    rows: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    appended: list[list[Any]] = field(default_factory=list)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c for c, r in zip(self.columns, self.rules, strict=True) if r == "key")

    def append(self, row: list[Any]) -> None:
        """A row with no merging (its key is new, e.g. a stream sequence)."""
        self.appended.append(row)

    def merge(self, key: tuple[Any, ...], values: dict[str, Any]) -> None:
        """Fold ``values`` (column -> value) into the row of ``key``."""
        row = self.rows.get(key)
        columns = self.columns
        if row is None:
            row = [None] * len(columns)
            for index, rule in enumerate(self.rules):
                if rule == "add":
                    row[index] = 0
            key_index = 0
            for index, rule in enumerate(self.rules):
                if rule == "key":
                    row[index] = key[key_index]
                    key_index += 1
            self.rows[key] = row
        rules = self.rules
        for name, value in values.items():
            if value is None:
                continue
            index = columns.index(name)
            rule = rules[index]
            current = row[index]
            if rule == "last" or current is None:
                row[index] = value
            elif rule == "add":
                row[index] = current + value
            elif rule == "max":
                row[index] = max(current, value)

    def all_rows(self) -> list[list[Any]]:
        return self.appended + list(self.rows.values()) if self.appended else list(self.rows.values())

    def __len__(self) -> int:
        return len(self.appended) + len(self.rows)


def _table(table: str, spec: Sequence[tuple[str, Rule]], timestamps: Iterable[str] = ()) -> TableRows:
    return TableRows(
        table=table,
        columns=tuple(c for c, _ in spec),
        rules=tuple(r for _, r in spec),
        timestamps=frozenset(timestamps),
    )


_RUN_STATUS: Final[dict[type, str]] = {
    RunStarted: "running",
    RunClaimed: "running",
    RunWaiting: "waiting",
    RunCompleted: "succeeded",
    RunFailed: "failed",
    RunCancelled: "cancelled",
}


class FoldBatch:
    """Rows for every projection table from a run of events in stream order.

    ``projections`` names the projections to fold into (all by default); the
    store passes fewer when one projection is being rebuilt behind the others.
    """

    def __init__(self) -> None:
        self.events = _table(
            "events",
            [
                (c, "key" if c == "stream_seq" else "last")
                for c in ("stream_seq", "run_id", "seq", "type", "ts", "worker", "parent", "node_id", "epoch", "data")
            ],
            ["ts"],
        )
        self.runs = _table(
            "runs",
            [
                ("run_id", "key"),
                ("graph_id", "first"),
                ("status", "last"),
                ("parent_run_id", "first"),
                ("parent_node_id", "first"),
                ("root_run_id", "first"),
                ("inputs", "first"),
                ("outputs", "last"),
                ("error_type", "last"),
                ("error_message", "last"),
                ("failed_node_id", "last"),
                ("waiting_wait_id", "last"),
                ("waiting_run_id", "last"),
                ("started_at", "first"),
                ("ended_at", "last"),
                ("last_event_at", "last"),
                ("last_worker", "last"),
                ("last_seq", "max"),
                ("event_count", "add"),
                ("claims", "add"),
            ],
            ["started_at", "ended_at", "last_event_at"],
        )
        self.nodes = _table(
            "nodes",
            [
                ("run_id", "key"),
                ("node_id", "key"),
                ("tool", "first"),
                ("status", "last"),
                ("attempts", "max"),
                ("started_at", "first"),
                ("ended_at", "last"),
                ("duration_us", "last"),
                ("worker", "last"),
                ("error_type", "last"),
                ("error_message", "last"),
                ("child_run_id", "first"),
                ("first_seq", "first"),
                ("last_seq", "max"),
            ],
            ["started_at", "ended_at"],
        )
        self.tool_calls = _table(
            "tool_calls",
            [
                ("run_id", "key"),
                ("call_seq", "key"),
                ("node_id", "first"),
                ("tool", "first"),
                ("args", "first"),
                ("args_digest", "first"),
                ("outputs", "last"),
                ("status", "last"),
                ("error_type", "last"),
                ("error_message", "last"),
                ("duration_us", "last"),
                ("called_at", "first"),
                ("ended_at", "last"),
                ("worker", "last"),
            ],
            ["called_at", "ended_at"],
        )
        self.service_calls = _table(
            "service_calls",
            [
                ("run_id", "key"),
                ("call_seq", "key"),
                ("node_id", "first"),
                ("service", "first"),
                ("method", "first"),
                ("args", "first"),
                ("kwargs", "first"),
                ("args_digest", "first"),
                ("result", "last"),
                ("status", "last"),
                ("error_type", "last"),
                ("error_message", "last"),
                ("duration_us", "last"),
                ("called_at", "first"),
                ("ended_at", "last"),
            ],
            ["called_at", "ended_at"],
        )
        self.waits = _table(
            "waits",
            [
                ("run_id", "key"),
                ("wait_id", "key"),
                ("node_id", "first"),
                ("kind", "first"),
                ("prompt", "first"),
                ("payload_schema", "first"),
                ("channel", "first"),
                ("deadline", "first"),
                ("status", "last"),
                ("requested_at", "first"),
                ("closed_at", "last"),
                ("payload", "last"),
                ("command_seq", "last"),
            ],
            ["deadline", "requested_at", "closed_at"],
        )
        self.artifacts = _table(
            "artifacts",
            [
                ("run_id", "key"),
                ("seq", "key"),
                ("artifact_id", "last"),
                ("uri", "last"),
                ("kind", "last"),
                ("name", "last"),
                ("mime", "last"),
                ("size", "last"),
                ("labels", "last"),
                ("node_id", "last"),
                ("tool", "last"),
                ("saved_at", "last"),
            ],
            ["saved_at"],
        )
        # Lineage: structural edges, produced values, consumed values, run roots (root resolved in SQL).
        self.edges: list[tuple[str, str, str, str, int]] = []
        self.outputs: list[tuple[str, str, str, int]] = []
        self.inputs: list[tuple[str, str, str, int]] = []
        self.roots: list[tuple[str, str]] = []

    def tables(self) -> dict[str, TableRows]:
        return {
            "events": self.events,
            "runs": self.runs,
            "nodes": self.nodes,
            "tool_calls": self.tool_calls,
            "service_calls": self.service_calls,
            "waits": self.waits,
            "artifacts": self.artifacts,
        }

    # --- folding ------------------------------------------------------------------------

    def add(self, item: Decoded, projections: frozenset[str] | None = None) -> None:
        event = item.event
        every = projections is None
        if every or "events" in projections:  # type: ignore[operator]
            self.events.append(
                [
                    item.stream_seq,
                    event.run_id,
                    event.seq,
                    event.__struct_config__.tag,
                    event.ts,
                    event.worker,
                    event.parent,
                    event.node_id,
                    event.epoch,
                    item.raw,
                ]
            )
        if every or "runs" in projections:  # type: ignore[operator]
            self._run(event)
        if every or "nodes" in projections:  # type: ignore[operator]
            self._node(event)
        if every or "calls" in projections:  # type: ignore[operator]
            self._call(event)
        if every or "waits" in projections:  # type: ignore[operator]
            self._wait(event)
        if isinstance(event, ArtifactSaved) and (every or "artifacts" in projections):  # type: ignore[operator]
            self.artifacts.merge(
                (event.run_id, event.seq),
                {
                    "artifact_id": event.artifact_id,
                    "uri": event.uri,
                    "kind": event.kind,
                    "name": event.name,
                    "mime": event.mime,
                    "size": event.size,
                    "labels": _json(event.labels),
                    "node_id": event.node_id,
                    "tool": event.tool,
                    "saved_at": event.ts,
                },
            )
        if every or "lineage" in projections:  # type: ignore[operator]
            self._lineage(item.stream_seq, event)

    def _run(self, event: AnyEvent) -> None:
        status = _RUN_STATUS.get(type(event))
        values: dict[str, Any] = {
            "last_event_at": event.ts,
            "last_worker": event.worker,
            "last_seq": event.seq,
            "event_count": 1,
            "status": status,
        }
        if isinstance(event, RunWaiting):
            values.update(waiting_wait_id=event.wait_id, waiting_run_id=event.wait_run_id)
        elif status is not None:
            # Merging keeps non-null values, so "not waiting any more" is the empty string.
            values.update(waiting_wait_id="", waiting_run_id="")
        if isinstance(event, RunStarted):
            values.update(
                graph_id=event.graph_id,
                parent_run_id=event.parent_run_id,
                parent_node_id=event.parent_node_id,
                root_run_id=event.root_run_id or event.run_id,
                inputs=_json(event.inputs),
                started_at=event.ts,
            )
        elif isinstance(event, RunCompleted):
            values.update(outputs=_json(event.outputs), ended_at=event.ts)
        elif isinstance(event, RunFailed):
            values.update(
                error_type=event.error_type,
                error_message=event.message,
                failed_node_id=event.failed_node_id,
                ended_at=event.ts,
            )
        elif isinstance(event, RunCancelled):
            values.update(error_message=event.reason or None, ended_at=event.ts)
        elif isinstance(event, RunClaimed):
            values["claims"] = 1
        self.runs.merge((event.run_id,), values)

    def _node(self, event: AnyEvent) -> None:
        if isinstance(event, RunStarted):
            if event.parent_run_id and event.parent_node_id:
                self.nodes.merge((event.parent_run_id, event.parent_node_id), {"child_run_id": event.run_id})
            return
        node_id = event.node_id
        if node_id is None or node_id == ROOT_NODE:
            return
        values: dict[str, Any] = {"last_seq": event.seq, "worker": event.worker}
        if isinstance(event, ToolCalled | NodeStarted):
            values.update(tool=event.tool, status="running", started_at=event.ts, first_seq=event.seq)
            values["attempts"] = event.attempt if isinstance(event, NodeStarted) else 1
        elif isinstance(event, ToolReturned | NodeCompleted):
            values.update(status="succeeded", ended_at=event.ts)
            if isinstance(event, ToolReturned):
                values["duration_us"] = event.duration_us
        elif isinstance(event, ToolFailed | NodeFailed):
            values.update(status="failed", ended_at=event.ts, error_type=event.error_type, error_message=event.message)
            if isinstance(event, ToolFailed):
                values["duration_us"] = event.duration_us
        elif isinstance(event, WaitRequested):
            values["status"] = "waiting"
        elif isinstance(event, WaitResumed | WaitExpired):
            values["status"] = "running"
        else:
            return
        self.nodes.merge((event.run_id, node_id), values)

    def _call(self, event: AnyEvent) -> None:
        if isinstance(event, ToolCalled):
            self.tool_calls.merge(
                (event.run_id, event.seq),
                {
                    "node_id": event.node_id,
                    "tool": event.tool,
                    "args": _json(event.args),
                    "args_digest": event.args_digest,
                    "status": "running",
                    "called_at": event.ts,
                    "worker": event.worker,
                },
            )
        elif isinstance(event, ToolReturned | ToolFailed) and event.parent is not None:
            values: dict[str, Any] = {"duration_us": event.duration_us, "ended_at": event.ts, "worker": event.worker}
            if isinstance(event, ToolReturned):
                values.update(status="succeeded", outputs=_json(event.outputs))
            else:
                values.update(status="failed", error_type=event.error_type, error_message=event.message)
            self.tool_calls.merge((event.run_id, event.parent), values)
        elif isinstance(event, ServiceCalled):
            self.service_calls.merge(
                (event.run_id, event.seq),
                {
                    "node_id": event.node_id,
                    "service": event.service,
                    "method": event.method,
                    "args": _json(event.args),
                    "kwargs": _json(event.kwargs),
                    "args_digest": event.args_digest,
                    "status": "running",
                    "called_at": event.ts,
                },
            )
        elif isinstance(event, ServiceReturned | ServiceFailed) and event.parent is not None:
            values = {"duration_us": event.duration_us, "ended_at": event.ts}
            if isinstance(event, ServiceReturned):
                values.update(status="succeeded", result=_json(event.result))
            else:
                values.update(status="failed", error_type=event.error_type, error_message=event.message)
            self.service_calls.merge((event.run_id, event.parent), values)

    def _wait(self, event: AnyEvent) -> None:
        if isinstance(event, WaitRequested):
            self.waits.merge(
                (event.run_id, event.wait_id),
                {
                    "node_id": event.node_id,
                    "kind": event.kind,
                    "prompt": event.prompt,
                    "payload_schema": _json(event.payload_schema),
                    "channel": event.channel,
                    "deadline": event.deadline_us,
                    "status": "open",
                    "requested_at": event.ts,
                },
            )
        elif isinstance(event, WaitResumed):
            self.waits.merge(
                (event.run_id, event.wait_id),
                {
                    "status": "resumed",
                    "closed_at": event.ts,
                    "payload": _json(event.payload),
                    "command_seq": event.command_seq,
                },
            )
        elif isinstance(event, WaitExpired):
            self.waits.merge(
                (event.run_id, event.wait_id),
                {"status": "expired", "closed_at": event.ts, "command_seq": event.command_seq},
            )

    def _lineage(self, stream_seq: int, event: AnyEvent) -> None:
        run_id = event.run_id
        if isinstance(event, RunStarted):
            self.roots.append((run_id, event.root_run_id or run_id))
            if event.parent_run_id and event.parent_node_id:
                self.edges.append(
                    (
                        node_entity(event.parent_run_id, event.parent_node_id),
                        run_entity(run_id),
                        "spawned",
                        run_id,
                        stream_seq,
                    )
                )
            return
        node_id = event.node_id
        in_node = node_id is not None and node_id != ROOT_NODE
        if isinstance(event, ToolCalled | NodeStarted) and in_node:
            entity = node_entity(run_id, node_id)  # type: ignore[arg-type]
            self.edges.append((run_entity(run_id), entity, "in_run", run_id, stream_seq))
            if isinstance(event, ToolCalled):
                self._values(self.inputs, event.args.values(), run_id, entity, stream_seq)
        elif isinstance(event, ToolReturned | NodeCompleted) and in_node:
            entity = node_entity(run_id, node_id)  # type: ignore[arg-type]
            self._values(self.outputs, [event.outputs, *event.outputs.values()], run_id, entity, stream_seq)
        elif isinstance(event, ServiceCalled) and in_node:
            entity = node_entity(run_id, node_id)  # type: ignore[arg-type]
            self._values(self.inputs, [*event.args, *event.kwargs.values()], run_id, entity, stream_seq)
        elif isinstance(event, RunCompleted):
            self._values(self.outputs, [event.outputs, *event.outputs.values()], run_id, run_entity(run_id), stream_seq)
        elif isinstance(event, WaitResumed):
            wait = wait_entity(run_id, event.wait_id)
            target = node_entity(run_id, node_id) if in_node else run_entity(run_id)  # type: ignore[arg-type]
            self.edges.append((wait, target, "answered", run_id, stream_seq))
            payload = event.payload
            values = [payload, *payload.values()] if isinstance(payload, dict) else [payload]
            self._values(self.outputs, values, run_id, wait, stream_seq)
        elif isinstance(event, ArtifactSaved):
            artifact = artifact_entity(event.artifact_id)
            producer = node_entity(run_id, node_id) if in_node else run_entity(run_id)  # type: ignore[arg-type]
            self.edges.append((producer, artifact, "produced", run_id, stream_seq))
            self._values(self.outputs, [event.uri, event.artifact_id], run_id, artifact, stream_seq)

    @staticmethod
    def _values(
        into: list[tuple[str, str, str, int]], values: Iterable[Any], run_id: str, entity: str, stream_seq: int
    ) -> None:
        seen: set[str] = set()
        for value in values:
            found = value_digest(value)
            if found is not None and found not in seen:
                seen.add(found)
                into.append((found, run_id, entity, stream_seq))

    def __len__(self) -> int:
        return len(self.events) + len(self.runs) + len(self.nodes) + len(self.edges) + len(self.inputs)
