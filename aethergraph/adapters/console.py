"""Rendering events for people: one line per event, colour by kind."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from rich.table import Table
from rich.text import Text

from aethergraph.core.wire.events import (
    ChannelSent,
    CheckpointSaved,
    Event,
    LogRecorded,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunWaiting,
    ToolCalled,
    ToolFailed,
    ToolReturned,
    WaitExpired,
    WaitRequested,
    WaitResumed,
)
from aethergraph.projections.run_state import RunState

__all__ = [
    "run_state_json",
    "add_event_row",
    "event_line",
    "event_summary",
    "event_table",
    "event_to_json",
    "outputs_table",
]

_STYLES = {"run": "bold cyan", "tool": "green", "node": "green", "log": "dim", "wait": "magenta", "service": "blue"}


def _short(value: Any, limit: int = 80) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_summary(event: Event) -> str:
    """The interesting fields of an event in one short line."""
    match event:
        case RunStarted():
            return f"{event.graph_id} inputs={_short(event.inputs)}"
        case RunCompleted():
            return f"outputs={_short(event.outputs)}"
        case RunFailed():
            where = f" at {event.failed_node_id}" if event.failed_node_id else ""
            return f"{event.error_type}: {event.message}{where}"
        case ToolCalled():
            return f"{event.tool}({_short(event.args, 60)})"
        case ToolReturned():
            return f"{event.tool} -> {_short(event.outputs, 60)} in {event.duration_us} µs"
        case ToolFailed():
            return f"{event.tool} raised {event.error_type}: {event.message}"
        case LogRecorded():
            return f"[{event.level}] {event.message}"
        case RunClaimed():
            return f"{event.reason} (previous writer {event.previous_worker})"
        case RunWaiting():
            where = "" if event.wait_run_id == event.run_id else f" of run {event.wait_run_id}"
            return f"released until wait {event.wait_id}{where} is answered"
        case WaitRequested():
            deadline = "" if event.deadline_us is None else f" (deadline {event.deadline_us // 1_000_000})"
            return f"{event.wait_id} {event.kind} on {event.channel}: {event.prompt}{deadline}"
        case WaitResumed():
            via = "inline" if event.command_seq is None else f"command {event.command_seq}"
            return f"{event.wait_id} <- {_short(event.payload, 60)} ({via})"
        case WaitExpired():
            return f"{event.wait_id} passed its deadline"
        case ChannelSent():
            return f"{event.channel}: {event.text}"
        case CheckpointSaved():
            return f"{event.key} = {_short(event.state, 60)}"
    fields = {
        name: getattr(event, name)
        for name in event.__struct_fields__
        if name not in {"run_id", "seq", "ts", "worker", "parent", "node_id", "epoch"}
    }
    return _short(fields, 100)


def event_table(title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column, justify in (
        ("seq", "right"),
        ("time (UTC)", "left"),
        ("type", "left"),
        ("node", "left"),
        ("parent", "right"),
        ("detail", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    return table


def _clock(event: Event) -> str:
    """The event's UTC time of day, to the millisecond."""
    return dt.datetime.fromtimestamp(event.ts / 1_000_000, tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def add_event_row(table: Table, event: Event) -> None:
    tag = str(event.__struct_config__.tag)
    stamp = _clock(event)
    table.add_row(
        str(event.seq),
        stamp,
        Text(tag, style=_STYLES.get(tag.split(".", 1)[0], "")),
        event.node_id or "",
        "" if event.parent is None else str(event.parent),
        Text(event_summary(event)),
    )


def event_line(event: Event) -> Text:
    """One event as one line, for tailing."""
    tag = str(event.__struct_config__.tag)
    line = Text(f"{event.seq:>5} {_clock(event)} ")
    line.append(f"{tag:<15}", style=_STYLES.get(tag.split(".", 1)[0], ""))
    line.append(f" {event.node_id or '-':<16} {event_summary(event)}")
    return line


def event_to_json(event: Event) -> str:
    return msgspec.json.encode(event).decode()


def outputs_table(outputs: dict[str, Any]) -> Table:
    table = Table(show_header=True, header_style="bold")
    table.add_column("output")
    table.add_column("value")
    for key, value in outputs.items():
        table.add_row(key, _short(value, 200))
    return table


def run_state_json(state: RunState) -> dict[str, Any]:
    """A run's rebuilt state as plain JSON (``aethergraph status --json``)."""
    return {
        "run_id": state.run_id,
        "graph": state.graph_id,
        "status": state.status,
        "events": state.event_count,
        "error": state.error,
        "traceback": state.traceback,
        "outputs": state.outputs,
        "waiting_on": {"wait_id": state.waiting_on[0], "run_id": state.waiting_on[1]} if state.waiting_on else None,
        "runs": state.runs,
        "nodes": [
            {
                "run_id": n.run_id,
                "node_id": n.node_id,
                "tool": n.tool,
                "status": n.status,
                "duration_us": n.duration_us,
                "child_run_id": n.child_run_id,
                "skip_reason": n.skip_reason,
                "error": n.error,
                "traceback": n.traceback,
            }
            for n in state.nodes
        ],
        "open_waits": [
            {
                "run_id": w.run_id,
                "wait_id": w.wait_id,
                "node_id": w.node_id,
                "kind": w.kind,
                "prompt": w.prompt,
                "schema": w.payload_schema,
                "deadline": w.deadline.isoformat() if w.deadline else None,
            }
            for w in state.open_waits
        ],
    }
