"""Live progress of a run for the console, fed by the run's events on the bus."""

from __future__ import annotations

from types import TracebackType

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from rich.console import Console
from rich.markup import escape
from rich.status import Status

from aethergraph.bus.topology import run_events_filter
from aethergraph.core.codec import decode_event
from aethergraph.core.events import (
    LogRecorded,
    NodeCompleted,
    NodeFailed,
    NodeReady,
    NodeSkipped,
    NodeStarted,
    ToolCalled,
    ToolFailed,
    ToolReturned,
)

__all__ = ["RunProgress"]


class RunProgress:
    """Subscribes to ``ag.evt.<run_id>.>`` and shows steps as they commit."""

    def __init__(self, nc: Client, run_id: str, graph_id: str, console: Console) -> None:
        self._nc = nc
        self._run_id = run_id
        self._graph_id = graph_id
        self._console = console
        self._status: Status | None = None
        self._sub: Subscription | None = None
        self.steps_done = 0
        self.events_seen = 0
        self._running: dict[str, str] = {}

    async def __aenter__(self) -> RunProgress:
        self._status = self._console.status(self._text(), spinner="dots")
        self._status.start()
        self._sub = await self._nc.subscribe(run_events_filter(self._run_id), cb=self._on_event)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._status is not None:
            self._status.stop()

    def _text(self) -> str:
        now = ", ".join(sorted(self._running.values())[:3]) or "-"
        return (
            f"[bold]{self._graph_id}[/] run [cyan]{self._run_id}[/]: "
            f"{self.steps_done} steps committed, {self.events_seen} events; running: {now}"
        )

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except Exception:  # noqa: BLE001 - progress display must not break the run
            return
        self.events_seen += 1
        if isinstance(event, (ToolCalled, NodeReady, NodeStarted)) and event.node_id:
            self._running[event.node_id] = event.tool
        elif isinstance(event, (ToolReturned, ToolFailed, NodeCompleted, NodeFailed, NodeSkipped)) and event.node_id:
            self._running.pop(event.node_id, None)
            self.steps_done += 1
        elif isinstance(event, LogRecorded):
            self._console.print(f"[dim]{escape(event.node_id or '')} {event.level}:[/] {escape(event.message)}")
        if self._status is not None:
            self._status.update(self._text())
