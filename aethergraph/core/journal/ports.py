"""The small typed ports that ``core`` needs and that ``bus`` implements.

``core`` never imports nats or duckdb: the journal writes through
:class:`RunWriter` and reads through :class:`EventLog`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aethergraph.core.wire.events import AnyEvent, Event, RunStarted

if TYPE_CHECKING:
    import asyncio

    from aethergraph.core.journal.mcp_port import McpPort
    from aethergraph.core.journal.model_port import ModelPort, TokenStream
    from aethergraph.core.journal.service_ports import ServiceBackends
    from aethergraph.core.journal.vector_port import VectorIndexPort
    from aethergraph.core.model.spec import CallableSpec
    from aethergraph.core.wire.node_report import LocalNode, NodeReport

__all__ = [
    "EventLog",
    "LocalReportSink",
    "NodePort",
    "ParentLink",
    "ReportSink",
    "RunEnvironment",
    "RunPort",
    "RunWriter",
    "StoredEvent",
    "WaitPort",
]

ReportSink = Callable[["NodeReport | None"], None]
"""Receives a static run's node reports in order; ``None`` once the stored ones have all been delivered."""

LocalReportSink = Callable[["NodeReport"], "asyncio.Future[bool]"]
"""Takes the report of a node executed in the scheduler's own process, without storing it first.

The future becomes True once the scheduler's journal holds the node's
outcome (that entry is the commit, and the work item can be acknowledged);
False if the scheduler did not journal it, in which case the executor
stores the report for whichever process continues the run.
"""


@dataclass(frozen=True, slots=True)
class ParentLink:
    """Where a run was started from: the parent run and node, and the top of the run tree."""

    run_id: str
    node_id: str
    root_run_id: str


class StoredEvent(Protocol):
    """An event as read back from the log, with its position in the stream."""

    @property
    def event(self) -> AnyEvent: ...

    @property
    def stream_seq(self) -> int: ...


class RunWriter(Protocol):
    """Appends one run's events in order, fenced against concurrent writers."""

    @property
    def run_id(self) -> str: ...

    def append(self, event: Event) -> Awaitable[int]:
        """Queue ``event`` for storage now; the awaitable yields its stream
        sequence once the bus has acknowledged it (the event is committed).

        Events are stored in the order ``append`` was called. Raises at once if
        the event is too large; the awaitable raises if the bus refused it.
        """
        ...

    async def flush(self) -> None:
        """Wait until every appended event is acknowledged (or raise the first refusal)."""
        ...


class EventLog(Protocol):
    """The run journal as the core sees it."""

    def writer(self, run_id: str, *, last_stream_seq: int = 0) -> RunWriter:
        """A writer for ``run_id``; ``last_stream_seq`` 0 means the run must be new."""
        ...

    def read_run(self, run_id: str, *, follow: bool = False) -> AsyncIterator[StoredEvent]:
        """A run's events in journal order; with ``follow`` keep waiting for more."""
        ...

    def following(
        self, run_id: str
    ) -> AbstractAsyncContextManager[tuple[Sequence[StoredEvent], AsyncIterator[StoredEvent]]]:
        """A run's stored events now, and an iterator of every event stored after them (none missed, none twice)."""
        ...

    async def first_start(self, run_id: str) -> RunStarted | None:
        """The ``run.started`` that opens ``run_id``'s journal (None: the run does not exist)."""
        ...

    async def started_runs(self, run_ids: list[str]) -> set[str]:
        """Which of ``run_ids`` have a ``run.started`` on the bus."""
        ...


class WaitPort(Protocol):
    """How waits reach the process: whether a terminal may answer them, and their deadlines."""

    @property
    def inline_answers(self) -> bool:
        """True if channels may read a wait's answer in this process (a terminal); else waits suspend."""
        ...

    async def schedule_wait_expiry(self, run_id: str, wait_id: str, deadline_us: int) -> None:
        """Arrange for ``wait.expired`` to be journaled at ``deadline_us`` unless the wait is answered first."""
        ...


class NodePort(Protocol):
    """How a static run's scheduler reaches the nodes it dispatches and their reports."""

    async def follow_node_reports(
        self, run_id: str, sink: ReportSink, *, from_start: bool, local: LocalReportSink | None = None
    ) -> Callable[[], Awaitable[None]]:
        """Deliver the node reports of static run ``run_id`` to ``sink`` (stored ones first if ``from_start``).

        Nodes executed in this process hand their reports to ``local`` instead, if given.

        Returns a coroutine function that stops the delivery.
        """
        ...

    async def ensure_node_executor(self) -> None:
        """Make sure this process also executes nodes from the work queue (the embedded default)."""
        ...

    def run_node_here(self, node: LocalNode, sink: LocalReportSink) -> asyncio.Task[None] | None:
        """Start ``node`` in this process's executor if it has a free local slot and knows the tool.

        The report goes to ``sink``, and is stored like a worker's if the
        sink does not journal it. Returns the node's task, which does not run
        before the caller yields to the event loop (cancelling it before then
        means the tool never runs); None if nothing was started, in which case
        the scheduler dispatches the node to the work queue instead.
        """
        ...


class RunPort(Protocol):
    """How a run starts and cancels other runs (``context.runs()``)."""

    async def spawn_run(self, spec: CallableSpec, inputs: Mapping[str, Any], run_id: str, parent: ParentLink) -> bool:
        """Start run ``run_id`` of ``spec`` detached (driven here, taken over if this process dies).

        Returns False if the run already exists (it was spawned before).
        """
        ...

    async def cancel_run(self, run_id: str, reason: str) -> str:
        """Cancel a run wherever it is driven; returns its status afterwards."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEnvironment:
    """What a run needs from the process hosting it: the hosting process composes it from its roles.

    Every run of the process carries the same value (``RunScope.env``);
    nothing in core looks the host up.
    """

    event_log: EventLog
    # The hosting process's identity in ``worker`` fields, ownership records and claims.
    worker_id: str
    waits: WaitPort
    nodes: NodePort
    runs: RunPort
    service_backends: ServiceBackends
    # Test mode: suspend every run after each step and continue it by replay.
    always_suspend: bool = False
    # Model endpoints by profile (``context.llm()``) and where streamed tokens go; None: not available here.
    models: ModelPort | None = None
    token_stream: TokenStream | None = None
    # MCP servers by name (``context.mcp(name)``); None: not available here.
    mcp: McpPort | None = None
    # The process's vector index (``context.rag()``); None: not available here (offline replay).
    vectors: VectorIndexPort | None = None
