"""The run environment of an offline replay: an event log in memory, and ports that refuse to go live.

Replay stops where the recorded history ends, so none of these ports is
reached by a replay that matches; each one names what it cannot do offline
when code reaches it anyway (a static node, a spawned run, a service backend).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn

from aethergraph.core.errors import NotInRunError
from aethergraph.core.journal.ports import LocalReportSink, ParentLink, ReportSink, RunEnvironment
from aethergraph.core.journal.service_ports import ArtifactCatalog, BlobStore, KeyValueStore
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.wire.node_report import LocalNode

from .offline_log import MemoryEventLog

__all__ = ["offline_environment"]

REPLAYER_ID = "offline-replay"


def _offline(what: str) -> NoReturn:
    raise NotInRunError(f"{what} is not available in an offline replay (it replays recorded steps only)")


class _OfflineWaits:
    inline_answers = False

    async def schedule_wait_expiry(self, run_id: str, wait_id: str, deadline_us: int) -> None:
        return None


class _OfflineNodes:
    async def follow_node_reports(
        self, run_id: str, sink: ReportSink, *, from_start: bool, local: LocalReportSink | None = None
    ) -> Callable[[], Awaitable[None]]:
        _offline("a static graph's node reports")

    async def ensure_node_executor(self) -> None:
        _offline("executing static graph nodes")

    def run_node_here(self, node: LocalNode, sink: LocalReportSink) -> asyncio.Task[None] | None:
        _offline("executing static graph nodes")


class _OfflineRuns:
    async def spawn_run(self, spec: CallableSpec, inputs: Mapping[str, Any], run_id: str, parent: ParentLink) -> bool:
        _offline("starting runs (context.runs())")

    async def cancel_run(self, run_id: str, reason: str) -> str:
        _offline("cancelling runs")


class _OfflineBackends:
    inline_limit = 64 * 1024

    @property
    def kv(self) -> KeyValueStore:
        _offline("the key-value store")

    @property
    def blobs(self) -> BlobStore:
        _offline("the artifact store")

    @property
    def catalog(self) -> ArtifactCatalog:
        _offline("the artifact catalog")


def offline_environment(log: MemoryEventLog) -> RunEnvironment:
    return RunEnvironment(
        event_log=log,
        worker_id=REPLAYER_ID,
        waits=_OfflineWaits(),
        nodes=_OfflineNodes(),
        runs=_OfflineRuns(),
        service_backends=_OfflineBackends(),
    )
