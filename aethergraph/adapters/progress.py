"""Live progress of a run for the console, fed by the run's events on the bus.

On a terminal a status line redraws in place: a static graph (whose node
count is known) shows a bar with nodes done / total, the rate and the time
left; a graph_fn shows its committed steps and their rate. While the process
reads an answer on the console (an inline ``ask_*``), the line stops
redrawing and says what the run waits for, so the prompt and the typed answer
are left alone. Without a terminal, a plain line is printed every
``plain_interval_s`` seconds instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.status import Status
from rich.table import Table
from rich.text import Text

from aethergraph.bus.connection import BusConnection
from aethergraph.bus.topology import run_events_filter
from aethergraph.core.context.waits import add_prompt_listener
from aethergraph.core.wire.codec import decode_event
from aethergraph.core.wire.events import (
    Event,
    LogRecorded,
    NodeCompleted,
    NodeFailed,
    NodeReady,
    NodeSkipped,
    NodeStarted,
    RunWaiting,
    ToolCalled,
    ToolFailed,
    ToolReturned,
    WaitExpired,
    WaitRequested,
    WaitResumed,
)

__all__ = ["RunProgress"]


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class RunProgress:
    """Subscribes to ``ag.evt.<run_id>.>`` and shows the run's progress as its steps commit.

    ``total_nodes`` is the node count of a static graph (a bar with time
    left), ``None`` for a graph_fn (steps and rate).
    """

    def __init__(
        self,
        bus: BusConnection,
        run_id: str,
        graph_id: str,
        console: Console,
        *,
        total_nodes: int | None = None,
        plain_interval_s: float = 5.0,
    ) -> None:
        self._bus = bus
        self._run_id = run_id
        self._graph_id = graph_id
        self._console = console
        self._total = total_nodes
        self._interval = plain_interval_s
        self._status: Status | None = None
        self._plain: asyncio.Task[None] | None = None
        self._stop_watching: Callable[[], Awaitable[None]] | None = None
        self._remove_listener: list[Callable[[], None]] = []
        self._started = time.monotonic()
        self.steps_done = 0
        self.events_seen = 0
        self._finished_nodes: set[str] = set()
        self._running: dict[str, str] = {}
        # The open wait of the run (wait id, kind, prompt), if it waits for an answer.
        self._waiting: tuple[str, str, str] | None = None
        self._prompt_open = False
        self._held_logs: list[str] = []

    async def __aenter__(self) -> RunProgress:
        self._started = time.monotonic()
        if self._console.is_terminal:
            self._status = self._console.status(self._render(), spinner="dots")
            self._status.start()
        else:
            self._plain = asyncio.create_task(self._print_plain(), name=f"aethergraph-progress-{self._run_id}")
        self._remove_listener.append(add_prompt_listener(self._on_prompt))
        self._stop_watching = await self._bus.watch(run_events_filter(self._run_id), self._on_event)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for remove in self._remove_listener:
            remove()
        if self._stop_watching is not None:
            with contextlib.suppress(Exception):
                await self._stop_watching()
        if self._plain is not None:
            self._plain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._plain
        if self._status is not None:
            self._status.stop()

    # --- what is shown ----------------------------------------------------------------------

    @property
    def nodes_done(self) -> int:
        return len(self._finished_nodes)

    def _rate(self) -> float | None:
        """Done per second since the start (``None`` in the first second, when it means little)."""
        elapsed = time.monotonic() - self._started
        done = self.nodes_done if self._total is not None else self.steps_done
        return done / elapsed if elapsed >= 1.0 else None

    def summary(self) -> str:
        """The progress as one plain line (what a terminal's status line says, without the bar)."""
        head = f"{self._graph_id} run {self._run_id}: "
        rate = self._rate()
        if self._total is not None:
            done, total = self.nodes_done, self._total
            percent = 100 * done // total if total else 100
            text = f"{done}/{total} nodes ({percent}%)"
            if rate is not None:
                text += f", {rate:.1f} nodes/s"
                if 0 < done < total and rate > 0:
                    text += f", ~{_duration((total - done) / rate)} left"
        else:
            steps = self.steps_done
            text = f"{steps} step{'' if steps == 1 else 's'} committed"
            if rate is not None:
                text += f", {rate:.1f} steps/s"
        if self._waiting is not None:
            wait_id, kind, prompt = self._waiting
            text += f"; waiting for an answer to {wait_id} ({kind}: {prompt})"
        else:
            running = ", ".join(sorted(self._running.values())[:3])
            if running:
                text += f"; running: {running}"
        return head + text

    def _render(self) -> RenderableType:
        line = Text(self.summary())
        line.stylize("bold", 0, len(self._graph_id))
        if self._total is None:
            return line
        grid = Table.grid(padding=1)
        grid.add_row(ProgressBar(total=max(self._total, 1), completed=self.nodes_done, width=24), line)
        return grid

    def _refresh(self) -> None:
        if self._status is not None and not self._prompt_open:
            self._status.update(self._render())

    async def _print_plain(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self._prompt_open:
                self._console.print(self.summary(), markup=False, highlight=False, soft_wrap=True)

    # --- what changes it ------------------------------------------------------------------

    def _on_prompt(self, requested: WaitRequested, opened: bool) -> None:
        """A console prompt of this process opens (stop redrawing, say what is asked) or closes (resume)."""
        if opened:
            self._prompt_open = True
            self._waiting = (requested.wait_id, requested.kind, requested.prompt)
            if self._status is not None:
                self._status.stop()
            self._console.print(self.summary(), markup=False, highlight=False, soft_wrap=True)
            return
        self._prompt_open = False
        if self._waiting is not None and self._waiting[0] == requested.wait_id:
            self._waiting = None
        for line in self._held_logs:
            self._console.print(line, highlight=False)
        self._held_logs.clear()
        if self._status is not None:
            self._status.update(self._render())
            self._status.start()

    def _count(self, event: Event) -> None:
        node_id = event.node_id
        if isinstance(event, (ToolCalled, NodeReady, NodeStarted)) and node_id:
            self._running[node_id] = event.tool
        elif isinstance(event, (ToolReturned, ToolFailed, NodeCompleted, NodeFailed, NodeSkipped)) and node_id:
            self._running.pop(node_id, None)
            self.steps_done += 1
            final = not isinstance(event, NodeFailed) or event.retry_at_us is None
            if isinstance(event, (NodeCompleted, NodeFailed, NodeSkipped)) and final:
                self._finished_nodes.add(node_id)
        elif isinstance(event, WaitRequested) or (isinstance(event, RunWaiting) and self._waiting is None):
            self._waiting = (event.wait_id, event.kind, event.prompt)
        elif isinstance(event, (WaitResumed, WaitExpired)) and self._waiting and self._waiting[0] == event.wait_id:
            self._waiting = None

    def _on_event(self, data: bytes) -> None:
        try:
            event = decode_event(data)
        except Exception:  # noqa: BLE001 - progress display must not break the run
            return
        self.events_seen += 1
        self._count(event)
        if isinstance(event, LogRecorded):
            line = f"[dim]{escape(event.node_id or '')} {event.level}:[/] {escape(event.message)}"
            if self._prompt_open:
                self._held_logs.append(line)  # not over the line where the answer is typed
            else:
                self._console.print(line)
        self._refresh()
