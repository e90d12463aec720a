"""Request/reply with answers in several messages, on core NATS: what the projector's query service speaks.

A server subscribes to a subject and answers each request (that has a reply
subject) with one or more messages through a :class:`ReplySink`; a client
sends one request and reads the answers one by one from a
:class:`ReplyStream`. What the messages hold is the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .connection import BusConnection

__all__ = ["MessageTooLargeError", "ReplySink", "ReplyStream", "RequestServer", "reply_stream"]


class MessageTooLargeError(Exception):
    """An answer is larger than the server's payload limit."""


class ReplySink:
    """Where one request's answers go."""

    def __init__(self, bus: BusConnection, reply: str) -> None:
        self._bus = bus
        self._reply = reply

    @property
    def max_payload(self) -> int:
        return int(self._bus.nc.max_payload)

    async def send(self, data: bytes) -> None:
        try:
            await self._bus.nc.publish(self._reply, data)
        except nats.errors.MaxPayloadError as exc:
            raise MessageTooLargeError(str(exc)) from None

    async def send_if_possible(self, data: bytes) -> None:
        """Send, unless the connection is gone (the requester then times out)."""
        with contextlib.suppress(nats.errors.Error):
            await self._bus.nc.publish(self._reply, data)


class RequestServer:
    """Answers requests on ``subject`` with ``answer(request, sink)``, each in a task of its own."""

    def __init__(self, bus: BusConnection, subject: str, answer: Callable[[bytes, ReplySink], Awaitable[None]]) -> None:
        self._bus = bus
        self._subject = subject
        self._answer = answer
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self._bus.nc.subscribe(self._subject, cb=self._on_request)

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
        task = asyncio.ensure_future(self._answer(msg.data, ReplySink(self._bus, msg.reply)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ReplyStream:
    """The answers to one request, in order."""

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def next(self, timeout_s: float) -> bytes | None:
        """The next answer; None if nobody listens on the subject. Raises ``TimeoutError`` if none comes."""
        try:
            msg = await self._sub.next_msg(timeout=timeout_s)
        except nats.errors.TimeoutError:
            raise TimeoutError(f"no answer within {timeout_s:g}s") from None
        if msg.headers and msg.headers.get("Status") == "503":
            return None
        return msg.data


@contextlib.asynccontextmanager
async def reply_stream(bus: BusConnection, subject: str, request: bytes) -> AsyncIterator[ReplyStream]:
    """Send ``request`` to ``subject`` and read its answers inside the block."""
    nc = bus.nc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(subject, request, reply=inbox)
        yield ReplyStream(sub)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
