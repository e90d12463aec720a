"""The process's part in static runs: its node executor and the node reports its schedulers follow."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aethergraph.bus.connection import BusConnection
from aethergraph.bus.node_reports import JetStreamNodeReports
from aethergraph.core.journal.ports import LocalReportSink, ReportSink, RunEnvironment
from aethergraph.core.settings import Settings
from aethergraph.core.wire.node_report import LocalNode

from .node_executor import NodeExecutor

__all__ = ["NodeRole"]


class NodeRole:
    """Implements :class:`~aethergraph.core.journal.ports.NodePort` for the schedulers of this process's static runs.

    The executor starts on first use, with the run environment it executes
    nodes in (:meth:`bind`: the environment holds this role, and the executor
    needs the environment).
    """

    def __init__(self, bus: BusConnection, reports: JetStreamNodeReports, settings: Settings) -> None:
        self._bus = bus
        self._reports = reports
        self._settings = settings
        self._env: RunEnvironment | None = None
        self.executor: NodeExecutor | None = None
        self._starting = asyncio.Lock()
        # Nodes of a run executed here reach its scheduler at once, without being stored first.
        self._local_sinks: dict[str, LocalReportSink] = {}

    def bind(self, env: RunEnvironment) -> None:
        self._env = env

    async def follow_node_reports(
        self, run_id: str, sink: ReportSink, *, from_start: bool, local: LocalReportSink | None = None
    ) -> Callable[[], Awaitable[None]]:
        # A node executed here is not stored at all when the scheduler journals its outcome (that
        # node.completed is the commit); stored reports are how nodes executed elsewhere reach it.
        if local is not None:
            self._local_sinks[run_id] = local
        stop_following = await self._reports.follow(run_id, sink, from_start=from_start)

        async def stop() -> None:
            if local is not None and self._local_sinks.get(run_id) is local:
                del self._local_sinks[run_id]
            await stop_following()

        return stop

    async def ensure_node_executor(self) -> None:
        """Execute nodes of static graphs in this process too (started on first use)."""
        if self.executor is not None:
            return
        if self._env is None:
            raise RuntimeError("the node role is used before its host bound the run environment")
        async with self._starting:
            if self.executor is None:
                settings = self._settings
                executor = NodeExecutor(
                    self._env,
                    self._reports,
                    capacity=settings.node_concurrency,
                    ack_wait_s=settings.node_ack_wait_s,
                    local_capacity=settings.local_node_concurrency,
                    local_sinks=self._local_sinks,
                )
                await executor.start(self._bus)
                self._bus.events.on_disconnect(executor.connection_lost)
                self.executor = executor

    def run_node_here(self, node: LocalNode, sink: LocalReportSink) -> asyncio.Task[None] | None:
        return None if self.executor is None else self.executor.run_node_here(node, sink)

    def cancel_run(self, run_id: str) -> None:
        """Cancel the nodes of ``run_id`` executing here."""
        if self.executor is not None:
            self.executor.cancel_run(run_id)

    async def stop(self) -> None:
        if self.executor is not None:
            await self.executor.stop()
