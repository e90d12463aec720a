"""``JetStreamEventLog``: the run journal on a JetStream stream.

Writing goes through :class:`~aethergraph.bus.run_writer.JetStreamRunWriter`
(pipelined, fenced, repaired after broker faults) over one
:class:`~aethergraph.bus.ack_router.AckRouter`. Reading returns a run's
stored events in stream order; a message on a run's subjects that does not
decode as an event of that run is skipped (logged once), so stray messages
never stop a reader. Which stored events form the journal is the readers'
rule (:class:`aethergraph.core.replay.ChainBuilder`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from aethergraph.core.codec import decode_event
from aethergraph.core.errors import BusUnavailableError, EventRejectedError
from aethergraph.core.events import AnyEvent, RunStarted

from .ack_router import AckRouter, PublishedAck
from .direct_get import DirectGetter, header_value
from .dispatch import delivery_position, retrieve_exception, server_address
from .run_writer import JetStreamRunWriter
from .topology import event_subject, run_events_filter

# The most events, and about the most bytes, one direct get of a run's journal asks for.
READ_BATCH = 4096
READ_MAX_BYTES = 8 * 1024 * 1024

__all__ = ["JetStreamEventLog", "RawStored", "StoredRecord"]

log = logging.getLogger("aethergraph.bus")

_CONNECTED_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """An event read back from the stream with its stream sequence."""

    event: AnyEvent
    stream_seq: int


@dataclass(frozen=True, slots=True)
class RawStored:
    """Any message stored on a run's subjects: its stream sequence, subject and event (None if it is not one)."""

    stream_seq: int
    subject: str
    event: AnyEvent | None


_skipped: set[int] = set()


def _decode_for(run_id: str, data: bytes, stream_seq: int) -> AnyEvent | None:
    """The event in ``data`` if it is one of run ``run_id``'s; else None (logged once per message)."""
    try:
        event = decode_event(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        reason = f"it does not decode as an event ({exc})"
    else:
        if event.run_id == run_id:
            return event
        reason = f"it names run {event.run_id!r}"
    if stream_seq not in _skipped:
        if len(_skipped) > 10_000:
            _skipped.clear()
        _skipped.add(stream_seq)
        log.warning("skipped message %d on the subjects of run %s: %s", stream_seq, run_id, reason)
    return None


class JetStreamEventLog:
    """The :class:`aethergraph.core.ports.EventLog` on JetStream."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        max_event_bytes: int,
        ack_timeout_s: float = 10.0,
        outage_s: float = 300.0,
    ) -> None:
        self._nc = nc
        self._js = js
        self.max_event_bytes = max_event_bytes
        self.outage_s = outage_s
        self.closed = False
        self._router = AckRouter(nc, ack_timeout_s)
        self._direct = DirectGetter(nc, ack_timeout_s)
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        await self._router.start()
        await self._direct.start()

    async def close(self) -> None:
        self.closed = True
        await self._direct.stop()
        await self._router.stop()

    def connection_lost(self) -> None:
        """The connection dropped: publishes and reads in flight fail now rather than at their timeouts."""
        self._router.connection_lost()
        self._direct.connection_lost()

    async def wait_connected(self, deadline: float) -> None:
        """Return once the client is connected; :class:`BusUnavailableError` at ``deadline`` (loop time)."""
        while not self._nc.is_connected:
            if self._nc.is_closed or self.closed:
                raise BusUnavailableError("the NATS connection is closed")
            if self._loop.time() >= deadline:
                raise BusUnavailableError(f"not connected to NATS at {server_address(self._nc)}")
            await asyncio.sleep(_CONNECTED_POLL_S)

    def writer(self, run_id: str, *, last_stream_seq: int = 0) -> JetStreamRunWriter:
        return JetStreamRunWriter(self, run_id, last_stream_seq)

    def publish_acked(self, subject: str, payload: bytes, *, msg_id: str) -> asyncio.Future[int]:
        """Publish to any stream through the pipelined acknowledgement inbox; resolves to the stream sequence.

        A republish with the same ``msg_id`` inside the duplicate window is stored once (and resolves too).
        """
        result: asyncio.Future[int] = self._loop.create_future()
        result.add_done_callback(retrieve_exception)

        def on_ack(ack: PublishedAck | BaseException) -> None:
            if result.done():
                return
            if isinstance(ack, BaseException):
                result.set_exception(ack)
            elif ack.error is not None:
                result.set_exception(
                    EventRejectedError(f"JetStream refused a publish to {subject}: {ack.error.description}")
                )
            else:
                result.set_result(ack.seq)

        headers = b"NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % msg_id.encode()
        self._router.publish(subject, headers, payload, on_ack)
        return result

    async def read_run(self, run_id: str, *, follow: bool = False) -> AsyncIterator[StoredRecord]:
        """Every stored event of ``run_id`` in stream order; with ``follow``, then wait for more.

        The stored events are read by batched direct gets of exactly the
        number of events the server says are left (no consumer is created).
        A batch asked for more than is left would make the server search the
        rest of the stream for a match that is not there: that search costs
        the server time in proportion to the whole stream, every run's events,
        not this run's. A followed run then continues through an ordered
        consumer that starts after the last stored event; each delivery's
        stream sequence is read from its acknowledgement subject rather than
        by building nats-py's metadata objects.
        """
        last = 0
        async for batch in self._stored_batches(run_id):
            for raw in batch:
                if raw.event is not None:
                    yield StoredRecord(event=raw.event, stream_seq=raw.stream_seq)
            last = batch[-1].stream_seq
        if follow:
            async for record in self._follow(run_id, start_seq=last + 1):
                yield record

    async def read_stored(self, run_id: str) -> list[RawStored]:
        """Every message stored on ``run_id``'s subjects, events or not, in stream order."""
        return [raw async for batch in self._stored_batches(run_id) for raw in batch]

    async def _stored_batches(self, run_id: str) -> AsyncIterator[list[RawStored]]:
        """The run's stored messages in exactly sized direct gets.

        The first get asks for one message, to learn from its pending count how
        many the run has. The second asks again from the stream's start for
        that many: nats-server finds a filter's first message from its subject
        index, but from a start inside the stream it walks the stream to the
        next match, so starting over is the cheaper request. Later gets (a
        journal longer than ``READ_BATCH``) go on from the last message read.
        """
        subject_filter = run_events_filter(run_id)

        async def get(start: int, want: int) -> tuple[list[RawStored], int]:
            request = {"seq": start, "next_by_subj": subject_filter, "batch": want, "max_bytes": READ_MAX_BYTES}
            replies = await self._direct.get(request, f"run {run_id}")
            records = []
            for reply in replies:
                stream_seq = int(header_value(reply.headers, b"Nats-Sequence") or 0)
                records.append(
                    RawStored(
                        stream_seq=stream_seq,
                        subject=(header_value(reply.headers, b"Nats-Subject") or b"").decode(errors="replace"),
                        event=_decode_for(run_id, reply.data, stream_seq),
                    )
                )
            left = int(header_value(replies[-1].headers, b"Nats-Num-Pending") or 0) if replies else 0
            return records, left

        batch, left = await get(1, 1)
        if left > 0:
            batch, left = await get(1, min(left + 1, READ_BATCH))
        while batch:
            yield batch
            if left <= 0:
                return
            batch, left = await get(batch[-1].stream_seq + 1, min(left, READ_BATCH))

    async def first_start(self, run_id: str) -> RunStarted | None:
        """The ``run.started`` that opens ``run_id``'s journal (None: the run does not exist)."""
        request = {"seq": 1, "next_by_subj": event_subject(run_id, "run.started"), "batch": 4}
        for reply in await self._direct.get(request, f"the start of run {run_id}"):
            stream_seq = int(header_value(reply.headers, b"Nats-Sequence") or 0)
            event = _decode_for(run_id, reply.data, stream_seq)
            if isinstance(event, RunStarted) and event.seq == 1 and event.epoch == 1:
                return event
        return None

    async def started_runs(self, run_ids: list[str]) -> set[str]:
        """Which of ``run_ids`` have a ``run.started`` on the stream (one batched direct get)."""
        if not run_ids:
            return set()
        subjects = [event_subject(run_id, "run.started") for run_id in run_ids]
        replies = await self._direct.get({"multi_last": subjects, "batch": len(subjects)}, "run starts")
        return {(header_value(reply.headers, b"Nats-Subject") or b"").decode().split(".")[2] for reply in replies}

    async def _follow(self, run_id: str, *, start_seq: int) -> AsyncIterator[StoredRecord]:
        """The run's events from stream sequence ``start_seq`` on, as they are stored, until the reader stops."""
        buffer: collections.deque[tuple[bytes, int]] = collections.deque()
        wake = asyncio.Event()

        async def deliver(msg: Msg) -> None:
            stream_seq, _pending = delivery_position(msg)
            buffer.append((msg.data, stream_seq))
            wake.set()

        # The server drops the consumer soon after this reader unsubscribes.
        sub = await self._js.subscribe(
            run_events_filter(run_id),
            cb=deliver,
            ordered_consumer=True,
            inactive_threshold=1.0,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq),
        )
        try:
            while True:
                while not buffer:
                    wake.clear()
                    await wake.wait()
                data, stream_seq = buffer.popleft()
                event = _decode_for(run_id, data, stream_seq)
                if event is not None:
                    yield StoredRecord(event=event, stream_seq=stream_seq)
        finally:
            # The connection may already be draining or closed when a reader stops early.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
