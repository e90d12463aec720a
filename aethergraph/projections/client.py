"""How a process reaches the projections: the workspace's projector, or a local catch-up.

A query goes first to the projector that owns the workspace's store (if one
runs, it answers from live data). With none running, this process opens the
store itself, folds whatever the stream holds beyond the store's cursor, and
answers; the store is closed again after, so a projector can start later.

Before folding, the store is checked against the stream on the bus: a store
that folded another stream (``AETHERGRAPH_NATS_URL`` now names another server,
or the stream was deleted and created again) is emptied and folded again from
this one, and ``on_notice`` hears why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aethergraph.bus.connection import BusConnection
from aethergraph.core.errors import ProjectionError, ProjectionLockedError
from aethergraph.core.settings import Settings
from aethergraph.projections.projector import ProgressCallback, Projector
from aethergraph.projections.service import QueryRequest, QueryService, remote_request, store_id_for
from aethergraph.projections.store import EXPORT_STORAGE_VERSION, ProjectionStore, QueryResult

__all__ = ["NoticeCallback", "ProjectionAccess", "serve_projections", "store_path"]

NoticeCallback = Callable[[str], None]
"""Hears what a user should know about the store (it is being folded again, and why)."""

log = logging.getLogger(__name__)

STORE_FILE = "projections.duckdb"
# How long a query waits for another process (a catch-up of its own) to release the store.
LOCK_WAIT_S = 30.0


def store_path(settings: Settings) -> Path:
    return (settings.workspace / STORE_FILE).resolve()


class ProjectionAccess:
    """Queries, exports and catch-ups against the projection store of ``settings.workspace``."""

    def __init__(
        self,
        bus: BusConnection,
        settings: Settings,
        *,
        on_progress: ProgressCallback | None = None,
        on_notice: NoticeCallback | None = None,
    ) -> None:
        self._bus = bus
        self.path = store_path(settings)
        self.store_id = store_id_for(self.path)
        self._on_progress = on_progress
        self._on_notice = on_notice or log.warning

    async def _request(self, request: QueryRequest) -> QueryResult | None:
        return await remote_request(self._bus, self.store_id, request)

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
            projector = Projector(self._bus, store, store_id=self.store_id)
            await _check_source(projector, self.path, self._bus.url, self._on_notice)
            await projector.catch_up(on_progress=self._on_progress)
            return await asyncio.to_thread(action, store)
        finally:
            store.close()

    async def rebuild(self) -> Projector:
        """Empty the store and fold the whole stream again (refused while a projector owns the store)."""
        if await self._request(QueryRequest(op="status")) is not None:
            raise ProjectionError(
                f"a projector process owns {self.path}; stop it (Ctrl-C), then run `aethergraph projections "
                "rebuild` again (a projector started afterwards serves the rebuilt store)"
            )
        opened = await self._open_store(QueryRequest(op="status"))
        if isinstance(opened, QueryResult):
            raise ProjectionError(f"a projector process took {self.path} meanwhile; stop it and rebuild again")
        store = opened
        try:
            await asyncio.to_thread(store.reset_all)
            projector = Projector(self._bus, store, store_id=self.store_id)
            await projector.check_source()
            await projector.catch_up(on_progress=self._on_progress)
            return projector
        finally:
            store.close()

    async def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> QueryResult:
        remote = await self._request(QueryRequest(sql=sql, params=params))
        if remote is not None:
            return remote
        request = QueryRequest(sql=sql, params=params)
        result: QueryResult = await self._locally(request, lambda store: store.query(sql, params))
        return result

    async def export(self, target: Path, storage_version: str = EXPORT_STORAGE_VERSION) -> Path:
        target = await asyncio.to_thread(target.resolve)
        request = QueryRequest(op="export", path=str(target), storage_version=storage_version)
        remote = await self._request(request)
        if remote is not None:
            return Path(remote.rows[0][0])
        done = await self._locally(request, lambda store: store.export(target, storage_version))
        return Path(done.rows[0][0]) if isinstance(done, QueryResult) else Path(done)


async def serve_projections(
    bus: BusConnection,
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_progress: ProgressCallback | None = None,
    on_ready: Callable[[Projector], None] | None = None,
    on_notice: NoticeCallback | None = None,
    on_serving: Callable[[ProjectionStore], None] | None = None,
) -> Projector:
    """Own the workspace's store: catch up, then fold new events and answer queries until ``stop``.

    ``on_serving`` is handed the store once queries are answered, before the catch-up (they see the store as
    far as it got); a caller in this process queries it directly (``store.query`` is safe beside the folding).
    """
    path = store_path(settings)
    store_id = store_id_for(path)
    store = await asyncio.to_thread(ProjectionStore.open, path)
    service = QueryService(bus, store, store_id)
    projector = Projector(bus, store, store_id=store_id)
    try:
        await _check_source(projector, path, bus.url, on_notice or log.warning)
        await service.start()
        if on_serving is not None:
            on_serving(store)
        await projector.catch_up(on_progress=on_progress)
        if on_ready is not None:
            on_ready(projector)
        await projector.follow(stop, on_progress=on_progress)
    finally:
        await service.stop()
        store.close()
    return projector


async def _check_source(projector: Projector, path: Path, url: str, notice: NoticeCallback) -> None:
    reason = await projector.check_source()
    if reason is not None:
        notice(f"the projection store {path} was folded from another stream ({reason}); folding it again from {url}")
