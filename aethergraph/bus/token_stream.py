"""Streamed model tokens on ``ag.stream.<run_id>.<node_id>``: the publisher runs use, and a watcher.

Deltas are core NATS messages, fire-and-forget: no stream captures
``ag.stream.>``, so nothing is stored, journaled or replayed (the complete
response is in the journal). :class:`NatsTokenStream` implements core's
:class:`~aethergraph.core.journal.model_port.TokenStream`: a publish writes into
the connection's outbound buffer at once (no task, no await), in order with
the run's events, and is dropped while the connection is down.
:class:`TokenWatch` receives one run's deltas (``aethergraph tokens RUN_ID``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from aethergraph.core.wire.token_delta import TokenDelta, decode_token_delta

from .dispatch import publish_now
from .topology import token_stream_filter, token_stream_subject

__all__ = ["NatsTokenStream", "TokenWatch", "watch_tokens"]


class NatsTokenStream:
    """Publishes streamed deltas on ``ag.stream.<run_id>.<node_id>`` (best effort, never stored)."""

    __slots__ = ("_nc", "dropped", "published")

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.published = 0
        self.dropped = 0  # while the connection was down, or a delta above the server's payload limit

    def publish(self, run_id: str, node_id: str, payload: bytes) -> None:
        nc = self._nc
        if not nc.is_connected or len(payload) > nc.max_payload:
            self.dropped += 1
            return
        publish_now(nc, token_stream_subject(run_id, node_id), payload)
        self.published += 1


class TokenWatch:
    """One run's deltas as they arrive: ``async for delta in watch`` until :meth:`close`.

    :meth:`close` unsubscribes and still yields every delta the server sent
    before (a round trip to the server, then the subscription's queue), so a
    watcher that closes when it sees the run end misses none of the deltas
    published before the run's last event.
    """

    def __init__(self, nc: Client, run_id: str) -> None:
        self._nc = nc
        self.subject = token_stream_filter(run_id)
        self._queue: asyncio.Queue[TokenDelta | None] = asyncio.Queue()
        self._subscription: Subscription | None = None
        self._closed = False
        self.undecodable = 0  # messages on the subject that are no token delta (skipped)

    async def start(self) -> None:
        """Subscribe; returns once the server has the subscription (deltas published from then on arrive)."""
        self._subscription = await self._nc.subscribe(self.subject, cb=self._on_message)
        await self._nc.flush()

    async def _on_message(self, msg: Msg) -> None:
        try:
            delta = decode_token_delta(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.undecodable += 1
            return
        self._queue.put_nowait(delta)

    async def close(self) -> None:
        """Stop receiving; the iterator ends after the deltas already sent."""
        if self._closed:
            return
        self._closed = True
        subscription = self._subscription
        try:
            if subscription is not None:
                try:
                    await subscription.drain()  # type: ignore[no-untyped-call]
                except nats.errors.Error:  # the connection is gone: what arrived is all there is
                    with contextlib.suppress(nats.errors.Error):
                        await subscription.unsubscribe()
        finally:
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[TokenDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[TokenDelta]:
        while (delta := await self._queue.get()) is not None:
            yield delta


@contextlib.asynccontextmanager
async def watch_tokens(nc: Client, run_id: str) -> AsyncIterator[TokenWatch]:
    """A started :class:`TokenWatch` of ``run_id``, closed on exit."""
    watch = TokenWatch(nc, run_id)
    await watch.start()
    try:
        yield watch
    finally:
        await watch.close()
