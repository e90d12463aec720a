"""What the HTTP handlers share: the process's host, the live feeds, the projections, the token."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import Request

    from aethergraph.host.process import ProcessHost
    from aethergraph.projections.store import ProjectionStore, QueryResult

    from .live import LiveHub

__all__ = ["FRESH_WAIT_S", "WebState", "jsonable", "web_state"]

# How long a query waits for this process's projector to fold what the stream held when the query came.
FRESH_WAIT_S = 5.0


@dataclass(eq=False, kw_only=True)
class WebState:
    """The server's parts: a bus subscriber; nothing here is a source of truth."""

    host: ProcessHost
    hub: LiveHub
    token: str | None
    # The projection store, when this process's projector owns it: queried directly.
    store: ProjectionStore | None = None
    # Set (and replaced) each time this process's projector has folded a batch.
    _folded: asyncio.Event = field(default_factory=asyncio.Event)

    def folded(self, _through: int, _target: int) -> None:
        """The projector's progress callback: wake the queries waiting for the store to catch up."""
        folded, self._folded = self._folded, asyncio.Event()
        folded.set()

    async def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> QueryResult:
        """Read-only SQL on the workspace's projections, as fresh as the stream when it was asked.

        With the projector in this process, on its store (beside the folding) once it has folded every
        event stored when the query came (at most :data:`FRESH_WAIT_S`); otherwise asked of the
        workspace's projector, or folded here first when none runs (the path of `aethergraph sql`).
        """
        if self.store is not None:
            await self._caught_up(self.store)
            return await asyncio.to_thread(self.store.query, sql, params)
        return await self.host.projections().query(sql, params)

    async def _caught_up(self, store: ProjectionStore) -> None:
        target = await self.host.event_log.last_stream_seq()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FRESH_WAIT_S
        while True:
            folded = self._folded
            remaining = deadline - loop.time()
            if store.last_seq >= target or remaining <= 0:
                return  # past the deadline: the store as far as it got (a projector far behind still answers)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(folded.wait(), remaining)


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def jsonable(value: Any) -> Any:
    """A DuckDB value as JSON: times in ISO 8601, decimals and UUIDs as text, bytes as hex."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
