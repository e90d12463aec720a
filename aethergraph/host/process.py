"""``ProcessHost``: one process's place on the bus, composed from its roles.

A host owns the process's connection and the bus clients built on it (event
log, commands, leases, node reports, service backends), and composes the
roles that act on runs:

* the **driver** (:class:`~aethergraph.host.runs.RunDriver`): drives runs
  started here, under ownership records;
* the **run operations** (:class:`~aethergraph.host.run_ops.RunOps`): start,
  submit, cancel, retry; runs started from inside runs;
* the **node role** (:class:`~aethergraph.host.nodes.NodeRole`): this
  process's node executor and the node reports its schedulers follow;
* the **resume intake** (:class:`~aethergraph.host.intake.ResumeIntake`):
  resume commands taken while someone here awaits a waiting run;
* the **projections client** (:meth:`ProcessHost.projections`).

Runs receive the roles they need as one
:class:`~aethergraph.core.journal.ports.RunEnvironment` value of small ports; core
never looks the host up. Use it as ``async with await ProcessHost.open() as
host:``; the public facade (``aethergraph.runtime``) keeps one per event loop.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from aethergraph.bus.commands import JetStreamCommands
from aethergraph.bus.connection import BusConnection, connect_bus
from aethergraph.bus.event_log import JetStreamEventLog
from aethergraph.bus.leases import JetStreamLeases
from aethergraph.bus.node_reports import JetStreamNodeReports
from aethergraph.bus.presence import client_name
from aethergraph.bus.service_backends import JetStreamServiceBackends, open_service_backends
from aethergraph.bus.token_stream import NatsTokenStream
from aethergraph.core.context.service_registry import close_services, start_services
from aethergraph.core.ids import new_worker_id, token
from aethergraph.core.journal.ports import RunEnvironment
from aethergraph.core.journal.vector_port import RagConfig
from aethergraph.core.settings import Settings, load_settings
from aethergraph.projections.vector_index import VectorIndex
from aethergraph.services.llm import OpenAIModelPort
from aethergraph.services.mcp import McpConnections

from .intake import ResumeIntake
from .nodes import NodeRole
from .run_ops import RunOps
from .runs import RunDriver

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aethergraph.projections.client import ProjectionAccess

__all__ = ["ProcessHost", "WaitRole"]


@dataclass(frozen=True, slots=True)
class WaitRole:
    """Implements the core's ``WaitPort``: terminal answers, and deadlines on the command stream."""

    commands: JetStreamCommands
    inline_answers: bool

    async def schedule_wait_expiry(self, run_id: str, wait_id: str, deadline_us: int) -> None:
        await self.commands.schedule_expiry(run_id, wait_id, deadline_us)


def _rag_config(settings: Settings) -> RagConfig:
    rag = settings.rag
    profile = settings.llm.default if rag.embed_profile == "default" else settings.llm.profiles.get(rag.embed_profile)
    return RagConfig(
        embed_profile=rag.embed_profile,
        chunk_chars=rag.chunk_chars,
        chunk_overlap=rag.chunk_overlap,
        memory_embed_profile=rag.embed_profile if profile is not None and profile.embed_model else None,
    )


def _terminal_answers(settings: Settings) -> bool:
    mode = settings.console_input
    return mode == "always" or (mode == "auto" and sys.stdin is not None and sys.stdin.isatty())


@dataclass(eq=False, kw_only=True)
class ProcessHost:
    """A process's connection to the bus and the roles that act on runs; see the module docstring."""

    settings: Settings
    bus: BusConnection
    worker_id: str
    event_log: JetStreamEventLog
    commands: JetStreamCommands
    leases: JetStreamLeases
    node_reports: JetStreamNodeReports
    service_backends: JetStreamServiceBackends
    inline_answers: bool
    models: OpenAIModelPort = field(init=False)
    env: RunEnvironment = field(init=False)
    mcp: McpConnections = field(init=False)
    driver: RunDriver = field(init=False)
    runs: RunOps = field(init=False)
    nodes: NodeRole = field(init=False)
    intake: ResumeIntake = field(init=False)
    vectors: VectorIndex = field(init=False)
    _stop_cancels: Callable[[], Awaitable[None]] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # Runs start runs: the environment holds the roles, and the roles run in the environment.
        self.nodes = NodeRole(self.bus, self.node_reports, self.settings)
        self.runs = RunOps(self.event_log, self.commands, self.leases)
        self.models = OpenAIModelPort(self.settings.llm)
        self.mcp = McpConnections(self.settings.mcp.servers)
        self.vectors = VectorIndex(self.event_log, self.service_backends.blobs, _rag_config(self.settings))
        self.env = RunEnvironment(
            event_log=self.event_log,
            worker_id=self.worker_id,
            waits=WaitRole(self.commands, self.inline_answers),
            nodes=self.nodes,
            runs=self.runs,
            service_backends=self.service_backends,
            always_suspend=self.settings.always_suspend,
            models=self.models,
            mcp=self.mcp,
            token_stream=NatsTokenStream(self.bus.nc),
            vectors=self.vectors,
        )
        self.driver = RunDriver(self.env, self.leases)
        self.intake = ResumeIntake(self.driver, self.commands)
        self.nodes.bind(self.env)
        self.runs.bind(self.driver, self.intake)

    @classmethod
    async def open(cls, settings: Settings | None = None, *, inline_answers: bool | None = None) -> ProcessHost:
        """Connect to the bus of ``settings`` (the environment's by default) and start the roles.

        ``inline_answers``: whether a terminal here may answer waits (by
        default when ``console_input`` allows it and stdin is a terminal).
        """
        settings = settings or load_settings()
        worker_id = token(settings.worker_id) if settings.worker_id else new_worker_id()
        bus = await connect_bus(settings, client_name=client_name(worker_id))
        event_log = JetStreamEventLog(
            bus.nc, bus.js, max_event_bytes=settings.max_event_bytes, outage_s=settings.outage_tolerance_s
        )
        await event_log.start()
        bus.events.on_disconnect(event_log.connection_lost)
        host = cls(
            settings=settings,
            bus=bus,
            worker_id=worker_id,
            event_log=event_log,
            commands=JetStreamCommands(bus.nc, bus.js, max_event_bytes=settings.max_event_bytes),
            leases=JetStreamLeases(
                bus.nc, bus.js, worker_id, lease_s=settings.lease_s, retry_s=settings.connect_retry_s
            ),
            node_reports=JetStreamNodeReports(bus.nc, bus.js, event_log),
            service_backends=open_service_backends(bus.js, settings),
            inline_answers=_terminal_answers(settings) if inline_answers is None else inline_answers,
        )
        bus.events.on_disconnect(host.node_reports.connection_lost)
        try:
            host._stop_cancels = await host.commands.watch_cancels(host._on_cancel_request)
            await start_services()  # registered context services' start() hooks
        except BaseException:
            await host.close()
            raise
        return host

    def _on_cancel_request(self, run_id: str) -> None:
        self.driver.cancel(run_id)
        self.nodes.cancel_run(run_id)

    def __repr__(self) -> str:
        return f"ProcessHost(worker_id={self.worker_id!r}, url={self.bus.url!r})"

    def projections(self) -> ProjectionAccess:
        """The client of the workspace's projections (DuckDB loads on first use, not at import)."""
        from aethergraph.projections.client import ProjectionAccess

        return ProjectionAccess(self.bus, self.settings)

    async def close(self) -> None:
        """Let the runs this process drives end or suspend, then disconnect."""
        await self.intake.stop()
        await self.driver.drain()
        await self.nodes.stop()
        if self._stop_cancels is not None:
            await self._stop_cancels()
        await close_services()  # context services' close() hooks
        await self.models.close()
        await self.mcp.close()  # stops the MCP servers this process started
        await self.vectors.close()
        await self.leases.close()
        await self.node_reports.close()
        await self.event_log.close()
        await self.bus.close()

    async def __aenter__(self) -> ProcessHost:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
