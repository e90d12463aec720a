"""``AckRouter``: pipelined publishes to JetStream with their acknowledgements routed back to handlers.

A publish is written into the client's outbound buffer at once, with a reply
subject on one shared wildcard inbox; the acknowledgement (or a timeout, or
the loss of the connection) is handed to the publish's handler. Many
publishes can be in flight, so a commit costs one round trip.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import msgspec
from nats.aio.client import Client

from aethergraph.core.errors import BusUnavailableError, EventRejectedError

from .client_internals import write_outbound
from .dispatch import RawReplyInbox, server_address, status_of
from .stream_errors import no_stream_answer_message
from .topology import EVENTS_STREAM

__all__ = ["MAX_IN_FLIGHT", "AckHandler", "AckRouter", "PublishedAck"]

MAX_IN_FLIGHT = 8192
"""Publishes awaiting their acknowledgement at once, per router (beyond it they are held, in order)."""


class _AckError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PublishedAck(msgspec.Struct):
    """JetStream's reply to a publish."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _AckError | None = None


_ack_decoder = msgspec.json.Decoder(PublishedAck)

AckHandler = Callable[[PublishedAck | BaseException], None]


class AckRouter:
    """Routes JetStream acknowledgements from one wildcard inbox to handlers."""

    def __init__(
        self, nc: Client, ack_timeout_s: float, *, stream: str = EVENTS_STREAM, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        self._nc = nc
        self._stream = stream  # named in errors: the stream most publishes go to
        self._inbox = RawReplyInbox(nc)
        # token -> (handler, deadline); insertion order is deadline order.
        self._pending: dict[bytes, tuple[AckHandler, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._ack_timeout_s = ack_timeout_s
        self._loop = asyncio.get_running_loop()
        # Publishes beyond the window wait here, in order, until acknowledgements make room.
        self._max_in_flight = max_in_flight
        self._held: collections.deque[tuple[bytes, bytes, AckHandler]] = collections.deque()

    async def start(self) -> None:
        await self._inbox.start(self._on_reply)

    async def stop(self) -> None:
        await self._inbox.stop()
        self._fail_all(BusUnavailableError("the event log was closed before the bus acknowledged"))

    def connection_lost(self) -> None:
        """Fail every publish in flight at once: its acknowledgement, if any, went with the connection."""
        self._fail_all(
            BusUnavailableError(f"the connection to {server_address(self._nc)} was lost before JetStream acknowledged")
        )

    def _fail_all(self, exc: BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        held, self._held = self._held, collections.deque()
        for handler, _ in pending.values():
            handler(exc)
        for _, _, handler in held:
            handler(exc)

    def publish(self, subject: str, headers: bytes, payload: bytes, handler: AckHandler) -> None:
        """Write the publish into the client's outbound buffer now, or hold it (in order) while the window is full.

        The window caps publishes awaiting their acknowledgement; a held
        publish goes out as acknowledgements come back, and its handler
        learns the outcome like any other's. Callers feel the backpressure
        as commits that take longer, not as an error.
        """
        if self._nc.is_closed:
            raise BusUnavailableError("the NATS connection is closed")
        token, reply = self._inbox.new_reply()
        command = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
            subject.encode(),
            reply.encode(),
            len(headers),
            len(headers) + len(payload),
            headers,
            payload,
        )
        if self._held or len(self._pending) >= self._max_in_flight:
            self._held.append((token, command, handler))
            return
        self._write(token, command, handler)

    def _write(self, token: bytes, command: bytes, handler: AckHandler) -> None:
        deadline = self._loop.time() + self._ack_timeout_s
        self._pending[token] = (handler, deadline)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire_overdue)
        write_outbound(self._nc, command)

    def _send_held(self) -> None:
        while self._held and len(self._pending) < self._max_in_flight:
            token, command, handler = self._held.popleft()
            self._write(token, command, handler)

    def _expire_overdue(self) -> None:
        """Fail every publish past its deadline; one timer serves all pending publishes.

        Deadlines grow with insertion order, so the scan stops at the first
        publish still in time and the timer is re-armed for it.
        """
        self._timer = None
        now = self._loop.time()
        overdue: list[bytes] = []
        next_deadline: float | None = None
        for token, (_, deadline) in self._pending.items():
            if deadline > now:
                next_deadline = deadline
                break
            overdue.append(token)
        expired = [self._pending.pop(token)[0] for token in overdue]
        if next_deadline is not None:
            self._timer = self._loop.call_at(next_deadline, self._expire_overdue)
        self._send_held()
        for handler in expired:
            handler(
                BusUnavailableError(
                    f"JetStream did not acknowledge an event within {self._ack_timeout_s:.1f}s; "
                    f"is the server at {server_address(self._nc)} running?"
                )
            )

    def _on_reply(self, subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> None:
        entry = self._pending.pop(self._inbox.token_of(subject), None)
        if entry is None:
            return
        if self._held:
            self._send_held()
        handler = entry[0]
        if not data:
            status, _ = status_of(headers)
            handler(
                BusUnavailableError(no_stream_answer_message(self._stream, status, server=server_address(self._nc)))
            )
            return
        try:
            ack = _ack_decoder.decode(data)
        except msgspec.DecodeError as exc:
            handler(EventRejectedError(f"unreadable JetStream acknowledgement: {exc}"))
            return
        handler(ack)
