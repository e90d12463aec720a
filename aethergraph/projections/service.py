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
import contextlib
import datetime as dt
import decimal
import hashlib
import socket
import uuid
from pathlib import Path
from typing import Any, Literal

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

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

    def __init__(self, nc: Client, store: ProjectionStore, store_id: str) -> None:
        self._nc = nc
        self._store = store
        self._subject = projector_query_subject(store_id)
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._subject, cb=self._on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        for task in list(self._tasks):
            task.cancel()

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        task = asyncio.ensure_future(self._answer(msg.reply, msg.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, reply: str, data: bytes) -> None:
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
            await self._send(reply, result)
        except (msgspec.DecodeError, ProjectionError) as exc:
            await self._error(reply, str(exc))
        except Exception as exc:  # noqa: BLE001 - the requester must always get an answer
            await self._error(reply, f"cannot answer the query: {type(exc).__name__}: {exc}")

    async def _error(self, reply: str, message: str) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(reply, _encoder.encode(QueryChunk(error=message)))

    async def _send(self, reply: str, result: QueryResult) -> None:
        columns, types = list(result.columns), list(result.types)
        limit = min(CHUNK_BYTES, max(self._nc.max_payload // 2, 1024))
        rows: list[list[Any]] = []
        size = 0
        for row in result.rows:
            encoded = len(_encoder.encode(row))
            if rows and size + encoded > limit:
                await self._nc.publish(
                    reply, _encoder.encode(QueryChunk(columns=columns, types=types, rows=rows, more=True))
                )
                rows, size = [], 0
            rows.append(list(row))
            size += encoded
        try:
            await self._nc.publish(reply, _encoder.encode(QueryChunk(columns=columns, types=types, rows=rows)))
        except nats.errors.MaxPayloadError:
            await self._nc.publish(
                reply, _encoder.encode(QueryChunk(error="a single result row exceeds the bus message size limit"))
            )


async def remote_request(
    nc: Client, store_id: str, request: QueryRequest, *, timeout_s: float = 30.0
) -> QueryResult | None:
    """Send ``request`` to the projector of ``store_id``; None if no projector is listening."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(projector_query_subject(store_id), _encoder.encode(request), reply=inbox)
        columns: list[str] = []
        types: list[str] = []
        rows: list[tuple[Any, ...]] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout_s)
            except nats.errors.TimeoutError:
                if not columns and not rows:
                    return None
                raise ProjectionError(f"the projector stopped answering after {len(rows)} rows") from None
            if msg.headers and msg.headers.get("Status") == "503":
                return None
            chunk = _chunk_decoder.decode(msg.data)
            if chunk.error is not None:
                raise ProjectionError(chunk.error)
            columns, types = chunk.columns, chunk.types
            rows.extend(_from_wire(types, chunk.rows))
            if not chunk.more:
                return QueryResult(columns=tuple(columns), types=tuple(types), rows=rows)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
