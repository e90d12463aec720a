"""What the HTTP handlers share: the process's host, the live feeds, the projections, the token."""

from __future__ import annotations

import asyncio
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

__all__ = ["WebState", "jsonable", "web_state"]


@dataclass(eq=False, kw_only=True)
class WebState:
    """The server's parts: a bus subscriber; nothing here is a source of truth."""

    host: ProcessHost
    hub: LiveHub
    token: str | None
    # The projection store, when this process's projector owns it: queried directly.
    store: ProjectionStore | None = None
    _catch_up: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> QueryResult:
        """Read-only SQL on the workspace's projections.

        With the projector in this process, on its store (beside the folding); otherwise asked of the
        workspace's projector, or folded here first when none runs (the path of `aethergraph sql`), one
        query at a time: two catch-ups of one store in one process would fold over each other.
        """
        if self.store is not None:
            return await asyncio.to_thread(self.store.query, sql, params)
        async with self._catch_up:
            return await self.host.projections().query(sql, params)


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
