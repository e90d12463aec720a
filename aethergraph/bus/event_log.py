"""``JetStreamEventLog``: the run journal on a JetStream stream.

Writing goes through :class:`~aethergraph.bus.run_writer.JetStreamRunWriter`
(pipelined, fenced, repaired after broker faults) over one
:class:`~aethergraph.bus.ack_router.AckRouter`. Reading returns a run's
stored events in stream order; a message on a run's subjects that does not
decode as an event of that run is skipped (logged once), so stray messages
never stop a reader. Which stored events form the journal is the readers'
rule (:class:`aethergraph.core.journal.replay.ChainBuilder`).

Following a run (``read_run(follow=True)``: ``RunHandle.result()``,
``wait_for_status``, ``aethergraph events --follow``) creates no JetStream
consumer: a consumer per follower is a server resource per waiting caller,
and nats-server refuses the 1,001st on a stream (``maximum consumers limit
reached``), so a thousand concurrent ``result()`` calls would fail. Instead
``AG_EVENTS`` republishes each event it *stores* on
``ag.live.evt.<run_id>.<type>`` (core NATS, with the stream sequence in a
``Nats-Sequence`` header), and a follower is a plain subscription there
(an entry in the server's subject table, nothing more) plus direct gets:

* the subscription is sent before the stored events are read, so an event
  stored before the read is in the read and one stored after it is
  republished to the follower (the server republishes after storing); what
  is both is dropped by its stream sequence;
* a message the stream refused (a fenced-out writer's, a duplicate) is never
  republished, unlike a plain subscription to ``ag.evt.<run_id>.>``, which
  sees every publish whether stored or not and without its stream sequence;
* core NATS loses messages only with the connection (a slow consumer is
  disconnected too): after a reconnect the follower reads the stored
  events again before anything delivered since.

The cost is one extra server-internal publish per stored event, to a subject
that usually has no subscriber (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from aethergraph.core.errors import BusUnavailableError, EventRejectedError
from aethergraph.core.wire.codec import decode_event
from aethergraph.core.wire.events import AnyEvent, RunStarted

from .ack_router import AckRouter, PublishedAck
from .direct_get import READ_BATCH, DirectGetter, header_value, stored_messages
from .dispatch import dispatch_raw, release_raw, retrieve_exception, server_address
from .run_writer import JetStreamRunWriter
from .topology import EVENTS_STREAM, event_subject, live_event_subject, live_events_filter, run_events_filter

__all__ = ["READ_BATCH", "JetStreamEventLog", "RawStored", "StoredRecord"]

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


def _run_of(subject: str, token: int) -> str:
    """The run id in an event subject: token 2 of ``ag.evt.<run_id>.<type>``, 3 of ``ag.live.evt.<run_id>...``."""
    parts = subject.split(".")
    return parts[token] if len(parts) > token else ""


class JetStreamEventLog:
    """The :class:`aethergraph.core.journal.ports.EventLog` on JetStream."""

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
        self._followers: set[_Follower] = set()
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
        for follower in self._followers:
            follower.connection_lost()

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
        A followed run goes on with the events the server republishes on
        ``ag.live.evt.<run_id>.>`` once stored (see the module docstring):
        no JetStream consumer either.
        """
        if not follow:
            async for batch in self._stored_batches(run_id):
                for raw in batch:
                    if raw.event is not None:
                        yield StoredRecord(event=raw.event, stream_seq=raw.stream_seq)
            return
        async for record in self._follow(run_id):
            yield record

    async def read_stored(self, run_id: str) -> list[RawStored]:
        """Every message stored on ``run_id``'s subjects, events or not, in stream order."""
        return [raw async for batch in self._stored_batches(run_id) for raw in batch]

    async def _stored_batches(self, run_id: str) -> AsyncIterator[list[RawStored]]:
        """The run's stored messages in exactly sized direct gets (:func:`~.direct_get.stored_messages`)."""
        async for batch in stored_messages(self._direct, run_events_filter(run_id), f"run {run_id}"):
            yield [
                RawStored(
                    stream_seq=message.stream_seq,
                    subject=message.subject,
                    event=_decode_for(run_id, message.data, message.stream_seq),
                )
                for message in batch
            ]

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

    async def read_types(self, event_types: Sequence[str], *, after: int, limit: int) -> list[StoredRecord]:
        """Every run's stored events of ``event_types`` (``run.*``, ``wait.requested``) after stream sequence
        ``after``, in stream order, at most the first ``limit``."""
        found: list[StoredRecord] = []
        for event_type in event_types:
            read = 0
            async for batch in self.stored_matching(event_subject("*", event_type), after=after):
                found.extend(batch)
                read += len(batch)
                if read >= limit:
                    break
        found.sort(key=lambda record: record.stream_seq)
        return found[:limit]

    async def stored_matching(self, subject_filter: str, *, after: int) -> AsyncIterator[list[StoredRecord]]:
        """Every run's events stored on ``subject_filter`` (``ag.evt.*.rag.>``) after stream sequence ``after``,
        in stream order, in batches; a message that is no event of the run its subject names is skipped."""
        async for batch in stored_messages(self._direct, subject_filter, subject_filter, start=after + 1):
            records = []
            for message in batch:
                event = _decode_for(_run_of(message.subject, 2), message.data, message.stream_seq)
                if event is not None:
                    records.append(StoredRecord(event=event, stream_seq=message.stream_seq))
            yield records

    async def last_stream_seq(self) -> int:
        """The sequence of the newest message on the events stream (0 when it is empty)."""
        try:
            info = await self._js.stream_info(EVENTS_STREAM)
        except nats.errors.Error as exc:
            raise BusUnavailableError(f"cannot read the state of stream {EVENTS_STREAM}: {exc}") from exc
        return int(info.state.last_seq)

    async def watch_types(
        self, event_types: Sequence[str], on_record: Callable[[StoredRecord], None]
    ) -> Callable[[], Awaitable[None]]:
        """Hand every run's events of ``event_types`` to ``on_record`` as the server stores them (from its
        republish on ``ag.live.evt.*``, no consumer); returns the stop function. Best effort: what is stored
        while the connection is down is not handed over (read it with :meth:`read_types`)."""
        subscriptions = []

        def deliver(subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> None:
            stream_seq = int(header_value(headers or b"", b"Nats-Sequence") or 0)
            event = _decode_for(_run_of(subject.decode(errors="replace"), 3), data, stream_seq)
            if stream_seq and event is not None:
                on_record(StoredRecord(event=event, stream_seq=stream_seq))

        for event_type in event_types:
            sub = await self._nc.subscribe(live_event_subject("*", event_type))
            dispatch_raw(self._nc, sub, deliver)
            subscriptions.append(sub)

        async def stop() -> None:
            for sub in subscriptions:
                release_raw(self._nc, sub)
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

        return stop

    async def _follow(self, run_id: str) -> AsyncIterator[StoredRecord]:
        async with self.following(run_id) as (stored, live):
            for record in stored:
                yield record
            async for record in live:
                yield record

    @contextlib.asynccontextmanager
    async def following(self, run_id: str) -> AsyncIterator[tuple[list[StoredRecord], AsyncIterator[StoredRecord]]]:
        """The run's stored events now, and an iterator of every event stored after them.

        The live subscription exists before the stored events are read, so
        every event is in the read, on the subscription, or both (dropped
        again by its stream sequence). After a lost connection the stored
        events are read again before anything delivered since. One read of
        the stored events serves both: a caller can decide from them (the run
        ended, say) before it waits for anything.
        """
        follower = _Follower()
        sub = await self._nc.subscribe(live_events_filter(run_id))
        dispatch_raw(self._nc, sub, follower.on_message)
        self._followers.add(follower)
        try:
            raws: list[RawStored] = []
            while follower.resync:
                follower.resync = False
                await self.wait_connected(self._loop.time() + self.outage_s)
                try:
                    raws = await self.read_stored(run_id)
                except BusUnavailableError:
                    if not follower.resync:
                        raise
            stored = [StoredRecord(event=raw.event, stream_seq=raw.stream_seq) for raw in raws if raw.event is not None]
            yield stored, self._live(run_id, follower, raws[-1].stream_seq if raws else 0)
        finally:
            self._followers.discard(follower)
            release_raw(self._nc, sub)
            # The connection may already be draining or closed when a reader stops early.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _live(self, run_id: str, follower: _Follower, last: int) -> AsyncIterator[StoredRecord]:
        """What ``follower`` receives after stream sequence ``last``, re-reading the stored events after a reconnect."""
        while True:
            if follower.resync:
                follower.resync = False
                await self.wait_connected(self._loop.time() + self.outage_s)
                try:
                    async for batch in self._stored_batches(run_id):
                        for raw in batch:
                            if raw.stream_seq > last:
                                last = raw.stream_seq
                                if raw.event is not None:
                                    yield StoredRecord(event=raw.event, stream_seq=raw.stream_seq)
                except BusUnavailableError:
                    if not follower.resync:
                        raise
                continue
            if not follower.buffer:
                follower.wake.clear()
                await follower.wake.wait()
                continue
            data, stream_seq = follower.buffer.popleft()
            if stream_seq > last:
                last = stream_seq
                event = _decode_for(run_id, data, stream_seq)
                if event is not None:
                    yield StoredRecord(event=event, stream_seq=stream_seq)


class _Follower:
    """One ``read_run(follow=True)``: the events republished to it, and whether to read the stored ones again."""

    __slots__ = ("buffer", "resync", "wake")

    def __init__(self) -> None:
        self.buffer: collections.deque[tuple[bytes, int]] = collections.deque()
        self.wake = asyncio.Event()
        self.resync = True  # the stored events are read first

    def on_message(self, _subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> None:
        stream_seq = int(header_value(headers or b"", b"Nats-Sequence") or 0)
        if stream_seq:
            self.buffer.append((data, stream_seq))
            self.wake.set()

    def connection_lost(self) -> None:
        """What was republished while disconnected is gone: read the stored events again first."""
        self.resync = True
        self.wake.set()
