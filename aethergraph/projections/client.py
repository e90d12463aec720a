"""How a process reaches the projections: the workspace's projector, or a local catch-up.

A query goes first to the projector that owns the workspace's store (if one
runs, it answers from live data). With none running, this process opens the
store itself, folds whatever the stream holds beyond the store's cursor, and
answers; the store is closed again after, so a projector can start later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aethergraph.bus.connection import BusConnection
from aethergraph.core.errors import ProjectionLockedError
from aethergraph.core.settings import Settings
from aethergraph.projections.projector import ProgressCallback, Projector
from aethergraph.projections.service import QueryRequest, QueryService, remote_request, store_id_for
from aethergraph.projections.store import ProjectionStore, QueryResult

__all__ = ["ProjectionAccess", "serve_projections", "store_path"]

STORE_FILE = "projections.duckdb"
# How long a query waits for another process (a catch-up of its own) to release the store.
LOCK_WAIT_S = 30.0


def store_path(settings: Settings) -> Path:
    return (settings.workspace / STORE_FILE).resolve()


class ProjectionAccess:
    """Queries, exports and catch-ups against the projection store of ``settings.workspace``."""

    def __init__(self, bus: BusConnection, settings: Settings, *, on_progress: ProgressCallback | None = None) -> None:
        self._bus = bus
        self.path = store_path(settings)
        self.store_id = store_id_for(self.path)
        self._on_progress = on_progress

    async def _request(self, request: QueryRequest) -> QueryResult | None:
        return await remote_request(self._bus.nc, self.store_id, request)

    async def _open_store(self, request: QueryRequest) -> ProjectionStore | QueryResult:
        """Open the store; while another process holds it, ask that process (a projector may have started)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT_S
        while True:
            try:
                return await asyncio.to_thread(ProjectionStore.open, self.path)
            except ProjectionLockedError:
                remote = await self._request(request)
                if remote is not None:
                    return remote
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _locally(self, request: QueryRequest, action: Callable[[ProjectionStore], Any]) -> Any:
        opened = await self._open_store(request)
        if isinstance(opened, QueryResult):
            return opened
        store = opened
        try:
            await Projector(self._bus, store, store_id=self.store_id).catch_up(on_progress=self._on_progress)
            return await asyncio.to_thread(action, store)
        finally:
            store.close()

    async def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> QueryResult:
        remote = await self._request(QueryRequest(sql=sql, params=params))
        if remote is not None:
            return remote
        request = QueryRequest(sql=sql, params=params)
        result: QueryResult = await self._locally(request, lambda store: store.query(sql, params))
        return result

    async def export(self, target: Path) -> Path:
        target = await asyncio.to_thread(target.resolve)
        request = QueryRequest(op="export", path=str(target))
        remote = await self._request(request)
        if remote is not None:
            return Path(remote.rows[0][0])
        done = await self._locally(request, lambda store: store.export(target))
        return Path(done.rows[0][0]) if isinstance(done, QueryResult) else Path(done)


async def serve_projections(
    bus: BusConnection,
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_progress: ProgressCallback | None = None,
    on_ready: Callable[[Projector], None] | None = None,
) -> Projector:
    """Own the workspace's store: catch up, then fold new events and answer queries until ``stop``."""
    path = store_path(settings)
    store_id = store_id_for(path)
    store = await asyncio.to_thread(ProjectionStore.open, path)
    service = QueryService(bus.nc, store, store_id)
    projector = Projector(bus, store, store_id=store_id)
    try:
        await service.start()
        await projector.catch_up(on_progress=on_progress)
        if on_ready is not None:
            on_ready(projector)
        await projector.follow(stop, on_progress=on_progress)
    finally:
        await service.stop()
        store.close()
    return projector
