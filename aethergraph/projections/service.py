"""Queries to the process that owns a projection store, over NATS request/reply.

DuckDB lets one process write a file. That process (``aethergraph
projector``) subscribes to ``ag.proj.<store_id>.query`` and runs each request
on its own cursor while batches keep landing, so other processes query live
data without touching the file. A result is sent back as a sequence of
msgpack chunks (each under the server's payload limit) ending with one whose
``more`` is false. ``store_id`` names the store by host and absolute path, so a
CLI finds the projector of its own workspace.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import hashlib
import socket
import uuid
from pathlib import Path
from typing import Any, Literal

import msgspec

from aethergraph.bus.connection import BusConnection
from aethergraph.bus.request_reply import MessageTooLargeError, ReplySink, RequestServer, reply_stream
from aethergraph.bus.topology import projector_query_subject
from aethergraph.core.errors import ProjectionError

from .store import EXPORT_STORAGE_VERSION, ProjectionStore, QueryResult

__all__ = ["QueryChunk", "QueryRequest", "QueryService", "remote_request", "store_id_for"]

CHUNK_BYTES = 512 * 1024


class QueryRequest(msgspec.Struct, frozen=True, kw_only=True):
    op: Literal["query", "export", "status"] = "query"
    sql: str = ""
    params: list[Any] | dict[str, Any] | None = None
    path: str = ""
    storage_version: str = EXPORT_STORAGE_VERSION


class QueryChunk(msgspec.Struct, frozen=True, kw_only=True):
    columns: list[str] = []
    types: list[str] = []
    rows: list[list[Any]] = []
    more: bool = False
    error: str | None = None


def store_id_for(path: str | Path) -> str:
    """A short id naming the store at ``path`` on this host."""
    where = f"{socket.gethostname()}:{Path(path).resolve()}"
    return hashlib.blake2b(where.encode(), digest_size=6).hexdigest()


def _to_wire(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | dt.timedelta):
        return str(value)
    raise NotImplementedError(f"cannot send a {type(value).__name__} value")


_encoder = msgspec.msgpack.Encoder(enc_hook=_to_wire)
_chunk_decoder = msgspec.msgpack.Decoder(QueryChunk)
_request_decoder = msgspec.msgpack.Decoder(QueryRequest)

_FROM_WIRE: dict[str, Any] = {
    "TIMESTAMP": dt.datetime.fromisoformat,
    "TIMESTAMP WITH TIME ZONE": dt.datetime.fromisoformat,
    "DATE": dt.date.fromisoformat,
    "TIME": dt.time.fromisoformat,
    "UUID": uuid.UUID,
}


def _from_wire(chunk_types: list[str], rows: list[list[Any]]) -> list[tuple[Any, ...]]:
    converters = [_FROM_WIRE.get(t) or (decimal.Decimal if t.startswith("DECIMAL") else None) for t in chunk_types]
    if not any(converters):
        return [tuple(row) for row in rows]
    out = []
    for row in rows:
        out.append(
            tuple(
                conv(value) if conv is not None and isinstance(value, str) else value
                for conv, value in zip(converters, row, strict=True)
            )
        )
    return out


class QueryService:
    """Answers queries, exports and status requests for ``store``."""

    def __init__(self, bus: BusConnection, store: ProjectionStore, store_id: str) -> None:
        self._store = store
        self._server = RequestServer(bus, projector_query_subject(store_id), self._answer)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    async def _answer(self, data: bytes, sink: ReplySink) -> None:
        try:
            request = _request_decoder.decode(data)
            if request.op == "query":
                result = await asyncio.to_thread(self._store.query, request.sql, request.params)
            elif request.op == "export":
                path = await asyncio.to_thread(self._store.export, request.path, request.storage_version)
                result = QueryResult(columns=("path",), types=("VARCHAR",), rows=[(str(path),)])
            else:
                cursors = sorted(self._store.cursors.items())
                result = QueryResult(
                    columns=("projection", "last_seq"), types=("VARCHAR", "BIGINT"), rows=list(cursors)
                )
            await self._send(sink, result)
        except (msgspec.DecodeError, ProjectionError) as exc:
            await sink.send_if_possible(_encoder.encode(QueryChunk(error=str(exc))))
        except Exception as exc:  # noqa: BLE001 - the requester must always get an answer
            message = f"cannot answer the query: {type(exc).__name__}: {exc}"
            await sink.send_if_possible(_encoder.encode(QueryChunk(error=message)))

    async def _send(self, sink: ReplySink, result: QueryResult) -> None:
        columns, types = list(result.columns), list(result.types)
        limit = min(CHUNK_BYTES, max(sink.max_payload // 2, 1024))
        rows: list[list[Any]] = []
        size = 0
        for row in result.rows:
            encoded = len(_encoder.encode(row))
            if rows and size + encoded > limit:
                await sink.send(_encoder.encode(QueryChunk(columns=columns, types=types, rows=rows, more=True)))
                rows, size = [], 0
            rows.append(list(row))
            size += encoded
        try:
            await sink.send(_encoder.encode(QueryChunk(columns=columns, types=types, rows=rows)))
        except MessageTooLargeError:
            await sink.send(_encoder.encode(QueryChunk(error="a single result row exceeds the bus message size limit")))


async def remote_request(
    bus: BusConnection, store_id: str, request: QueryRequest, *, timeout_s: float = 30.0
) -> QueryResult | None:
    """Send ``request`` to the projector of ``store_id``; None if no projector is listening."""
    async with reply_stream(bus, projector_query_subject(store_id), _encoder.encode(request)) as answers:
        columns: list[str] = []
        types: list[str] = []
        rows: list[tuple[Any, ...]] = []
        while True:
            try:
                data = await answers.next(timeout_s)
            except TimeoutError:
                if not columns and not rows:
                    return None
                raise ProjectionError(f"the projector stopped answering after {len(rows)} rows") from None
            if data is None:
                return None
            chunk = _chunk_decoder.decode(data)
            if chunk.error is not None:
                raise ProjectionError(chunk.error)
            columns, types = chunk.columns, chunk.types
            rows.extend(_from_wire(types, chunk.rows))
            if not chunk.more:
                return QueryResult(columns=tuple(columns), types=tuple(types), rows=rows)
