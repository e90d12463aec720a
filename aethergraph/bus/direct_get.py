"""``DirectGetter``: batched direct gets of a stream through one long-lived reply inbox.

A short read (a run's journal when a resume arrives, which runs have
started) is one request and one batch of replies. Opening and closing a
subscription per read, and building nats-py message objects with parsed
headers per reply, cost more than the read itself; here one wildcard inbox
takes every reply as raw bytes and hands each request's batch back whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client

from aethergraph.core.errors import BusUnavailableError, EventRejectedError

from .dispatch import RawReplyInbox, publish_now, server_address, status_of
from .topology import EVENTS_STREAM

__all__ = ["DirectGetter", "DirectReply", "StoredMessage", "header_value", "stored_messages"]

# The most messages, and about the most bytes, one direct get of a subject filter asks for.
READ_BATCH = 4096
READ_MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DirectReply:
    """One stored message returned by a direct get: its raw header block and payload."""

    headers: bytes
    data: bytes


def header_value(headers: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` in a raw header block (None if absent)."""
    start = headers.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = headers.find(b"\r\n", start)
    return headers[start:end].strip()


@dataclass(slots=True)
class _Pending:
    what: str
    done: asyncio.Future[list[DirectReply]]
    replies: list[DirectReply] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored message read back by :func:`stored_messages`."""

    stream_seq: int
    subject: str
    data: bytes


class DirectGetter:
    """Direct gets of one stream (``AG_EVENTS`` unless told); see the module docstring."""

    def __init__(self, nc: Client, timeout_s: float, *, stream: str = EVENTS_STREAM) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._inbox = RawReplyInbox(nc)
        self._pending: dict[bytes, _Pending] = {}
        self._subject = f"$JS.API.DIRECT.GET.{stream}"

    async def start(self) -> None:
        await self._inbox.start(self._on_reply)

    async def stop(self) -> None:
        await self._inbox.stop()
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._fail(entry, BusUnavailableError("the event log was closed during a read"))

    def connection_lost(self) -> None:
        """Fail every read in flight at once: its replies, if any, went with the connection."""
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self._fail(entry, BusUnavailableError(f"the connection was lost during a read of {entry.what}"))

    async def get(self, request: dict[str, object], what: str) -> list[DirectReply]:
        """The stored messages ``request`` selects, in stream order (empty if none).

        ``request`` must be a batched one (``batch`` set): only those end with a status reply.
        """
        if "batch" not in request:
            raise ValueError("DirectGetter.get takes batched requests only; set 'batch' in the request")
        if self._nc.is_closed:
            raise BusUnavailableError("the NATS connection is closed")
        token, reply = self._inbox.new_reply()
        loop = asyncio.get_running_loop()
        entry = _Pending(what=what, done=loop.create_future())
        entry.timer = loop.call_later(self._timeout_s, self._expire, token)
        self._pending[token] = entry
        publish_now(self._nc, self._subject, msgspec.json.encode(request), reply)
        return await entry.done

    def _on_reply(self, subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> None:
        token = self._inbox.token_of(subject)
        entry = self._pending.get(token)
        if entry is None:
            return
        if data or headers is None or header_value(headers, b"Nats-Sequence") is not None:
            entry.replies.append(DirectReply(headers=headers or b"", data=data))
            return
        del self._pending[token]
        status, fields = status_of(headers)
        if status in ("204", "404"):  # the end of the batch / nothing stored
            if entry.timer is not None:
                entry.timer.cancel()
            if not entry.done.done():
                entry.done.set_result(entry.replies)
            return
        description = fields.get("Description", "")
        self._fail(entry, EventRejectedError(f"direct get of {entry.what} failed: {status} {description}".rstrip()))

    def _expire(self, token: bytes) -> None:
        entry = self._pending.pop(token, None)
        if entry is not None:
            entry.timer = None
            self._fail(
                entry,
                BusUnavailableError(
                    f"no answer to a read of {entry.what} within {self._timeout_s:.1f}s; "
                    f"is the server at {server_address(self._nc)} running?"
                ),
            )

    @staticmethod
    def _fail(entry: _Pending, exc: BaseException) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        if not entry.done.done():
            entry.done.set_exception(exc)


async def stored_messages(
    getter: DirectGetter, subject_filter: str, what: str, *, start: int = 1
) -> AsyncIterator[list[StoredMessage]]:
    """Every message stored on ``subject_filter`` (from stream sequence ``start``), in stream order, in exactly
    sized direct gets.

    The first get asks for one message, to learn from its pending count how
    many the filter has. The second asks again from the stream's start for
    that many: nats-server finds a filter's first message from its subject
    index, but from a start inside the stream it walks the stream to the
    next match, so starting over is the cheaper request. Later gets (more
    than ``READ_BATCH`` messages) go on from the last message read. A batch
    asked for more than is left would make the server search the rest of
    the stream, every run's messages, for a match that is not there.
    """

    async def get(first: int, want: int) -> tuple[list[StoredMessage], int]:
        request = {"seq": first, "next_by_subj": subject_filter, "batch": want, "max_bytes": READ_MAX_BYTES}
        replies = await getter.get(request, what)
        messages = [
            StoredMessage(
                stream_seq=int(header_value(reply.headers, b"Nats-Sequence") or 0),
                subject=(header_value(reply.headers, b"Nats-Subject") or b"").decode(errors="replace"),
                data=reply.data,
            )
            for reply in replies
        ]
        left = int(header_value(replies[-1].headers, b"Nats-Num-Pending") or 0) if replies else 0
        return messages, left

    batch, left = await get(start, 1)
    if left > 0:
        batch, left = await get(start, min(left + 1, READ_BATCH))
    while batch:
        yield batch
        if left <= 0:
            return
        batch, left = await get(batch[-1].stream_seq + 1, min(left, READ_BATCH))
