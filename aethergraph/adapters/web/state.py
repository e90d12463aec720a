"""What the HTTP handlers share: the process's host, the live feeds, the projections, the token."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import Request

    from aethergraph.host.process import ProcessHost
    from aethergraph.projections.store import QueryResult

    from .live import LiveHub

__all__ = ["WebState", "jsonable", "web_state"]


@dataclass(eq=False, kw_only=True)
class WebState:
    """The server's parts: a bus subscriber; nothing here is a source of truth."""

    host: ProcessHost
    hub: LiveHub
    token: str | None

    async def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> QueryResult:
        """Read-only SQL on the workspace's projections (asked of its projector: the same path as `aethergraph sql`)."""
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
