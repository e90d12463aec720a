"""The projector's feed: every event of the stream, pushed in order to one durable consumer, acknowledged in batches.

The projector folds batches of raw deliveries into DuckDB; this module is all
of its JetStream: the push consumer (recreated at the store's cursor), the
raw delivery handler (no message objects), the cumulative acknowledgement
of a folded batch, and what the server says about the stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass

import nats.errors
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from .client_internals import server_info
from .connection import BusConnection
from .dispatch import ack_position, dispatch_raw, release_raw
from .topology import ALL_EVENTS, EVENTS_STREAM

__all__ = ["Delivery", "ProjectorFeed", "StreamFacts"]

Delivery = tuple[bytes, bytes, bytes]
"""One delivered message: its acknowledgement subject, its subject and its payload."""


@dataclass(frozen=True, slots=True)
class StreamFacts:
    """What identifies the events stream on this bus, and how far it goes."""

    last_seq: int
    created: str
    cluster: str | None
    server_name: str | None
    url: str


class ProjectorFeed:
    """Deliveries of the events stream from ``start`` on, into :attr:`buffer` (``wake`` is set on arrival)."""

    def __init__(self, bus: BusConnection, consumer: str, *, window: int) -> None:
        self._bus = bus
        self._consumer = consumer
        self._window = window
        self.buffer: collections.deque[Delivery] = collections.deque()
        self.wake = asyncio.Event()
        self._latest = b""  # the acknowledgement subject of the latest delivery: it tells how many are to come
        self._sub: Subscription | None = None

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, _headers: bytes | None) -> None:
        if not reply:
            return  # a status message (no heartbeats or flow control are configured)
        self.buffer.append((reply, subject, data))
        self._latest = reply
        self.wake.set()

    def pending(self) -> int | None:
        """Messages the consumer has yet to deliver after the latest one received; None until one arrives."""
        return ack_position(self._latest)[1] if self._latest else None

    async def open(self, start: int) -> None:
        """Subscribe, then (re)create the durable consumer delivering from stream sequence ``start``."""
        nc, js = self._bus.nc, self._bus.js
        inbox = nc.new_inbox()
        self._sub = await nc.subscribe(inbox)
        dispatch_raw(nc, self._sub, self._on_message)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(EVENTS_STREAM, self._consumer)
        await js.add_consumer(
            EVENTS_STREAM,
            ConsumerConfig(
                durable_name=self._consumer,
                description="AetherGraph projector: folds the journal into DuckDB",
                deliver_subject=inbox,
                filter_subject=ALL_EVENTS,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
                opt_start_seq=start if start > 1 else None,
                ack_policy=AckPolicy.ALL,
                ack_wait=60.0,
                max_ack_pending=self._window,
                inactive_threshold=3600.0,
            ),
        )

    async def nothing_to_deliver(self) -> bool:
        """True if the consumer has delivered nothing and has nothing pending (what lay ahead was deleted)."""
        info = await self._bus.js.consumer_info(EVENTS_STREAM, self._consumer)
        return info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq)

    async def acknowledge_through(self, reply: bytes) -> None:
        """Acknowledge every delivery up to the one with acknowledgement subject ``reply`` (AckAll)."""
        await self._bus.nc.publish(reply.decode(), b"+ACK")

    async def close(self, *, delete_consumer: bool) -> None:
        """Stop the deliveries; a one-off catch-up deletes its consumer, leaving nothing on the server."""
        if self._sub is not None:
            release_raw(self._bus.nc, self._sub)
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        if delete_consumer:
            with contextlib.suppress(NotFoundError, nats.errors.Error):
                await self._bus.js.delete_consumer(EVENTS_STREAM, self._consumer)


async def stream_facts(bus: BusConnection) -> StreamFacts:
    """The events stream as this bus has it: its last sequence and its identity (creation time, cluster)."""
    info = await bus.js.stream_info(EVENTS_STREAM)
    server = server_info(bus.nc)
    return StreamFacts(
        last_seq=int(info.state.last_seq),
        created=info.created.isoformat() if info.created else "",
        cluster=info.cluster.name if info.cluster is not None else None,
        server_name=server.get("server_name"),
        url=bus.url,
    )
