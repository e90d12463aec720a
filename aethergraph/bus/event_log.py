"""``JetStreamEventLog``: the run journal on a JetStream stream.

Publishing is pipelined: an append writes the message into the client's
outbound buffer at once and returns a future that resolves when JetStream's
acknowledgement arrives on a shared wildcard inbox, so many events can be in
flight and a step's commit costs one round trip.

Every event carries ``Nats-Msg-Id: <run_id>:<seq>``, so a republished event is
stored once. Fencing: whenever a writer has nothing in flight, its next event
carries ``Nats-Expected-Last-Subject-Sequence`` for the subject filter
``ag.evt.<run_id>.>``; if another writer appended to the run in between,
JetStream refuses the event and this writer is fenced out
(:class:`StaleWriterError`) and refuses further appends. A writer for a new run
expects no event at all, so two runs can never share an id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from aethergraph.core.codec import decode_event, encode_event
from aethergraph.core.errors import (
    BusUnavailableError,
    EventRejectedError,
    EventTooLargeError,
    StaleWriterError,
)
from aethergraph.core.events import AnyEvent, Event

from .direct_get import DirectGetter, header_value
from .dispatch import RawReplyInbox, delivery_position, server_address, status_of
from .topology import event_subject, run_events_filter

# The most events, and about the most bytes, one direct get of a run's journal asks for.
READ_BATCH = 4096
READ_MAX_BYTES = 8 * 1024 * 1024

__all__ = ["JetStreamEventLog", "JetStreamRunWriter", "PublishedAck", "StoredRecord"]

_WRONG_LAST_SEQUENCE = 10071


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


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """An event read back from the stream with its stream sequence."""

    event: AnyEvent
    stream_seq: int


AckHandler = Callable[[PublishedAck | BaseException], None]


class _AckRouter:
    """Routes JetStream acknowledgements from one wildcard inbox to handlers."""

    def __init__(self, nc: Client, ack_timeout_s: float) -> None:
        self._nc = nc
        self._inbox = RawReplyInbox(nc)
        # token -> (handler, deadline); insertion order is deadline order.
        self._pending: dict[bytes, tuple[AckHandler, float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._ack_timeout_s = ack_timeout_s
        self._loop = asyncio.get_running_loop()
        # The public client API makes publish a coroutine; events must enter the
        # outbound buffer synchronously, in append order, so use the buffer directly.
        if not (hasattr(nc, "_pending") and hasattr(nc, "_flush_queue") and hasattr(nc, "_pending_data_size")):
            raise BusUnavailableError(
                "this nats-py does not expose the outbound buffer the event log writes into; "
                "install the version pinned in constraints.txt (pip install -c constraints.txt -e .)"
            )

    async def start(self) -> None:
        await self._inbox.start(self._on_reply)

    async def stop(self) -> None:
        await self._inbox.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for handler, _ in pending.values():
            handler(BusUnavailableError("the event log was closed before the bus acknowledged"))

    def publish(self, subject: str, headers: bytes, payload: bytes, handler: AckHandler) -> None:
        nc = self._nc
        if nc.is_closed:
            raise BusUnavailableError("the NATS connection is closed")
        token, reply = self._inbox.new_reply()
        deadline = self._loop.time() + self._ack_timeout_s
        self._pending[token] = (handler, deadline)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire_overdue)
        cmd = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
            subject.encode(),
            reply.encode(),
            len(headers),
            len(headers) + len(payload),
            headers,
            payload,
        )
        nc._pending.append(cmd)
        nc._pending_data_size += len(cmd)
        queue = nc._flush_queue
        if queue is not None and queue.empty():
            queue.put_nowait(self._loop.create_future())

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
        handler = entry[0]
        if not data:
            status, _ = status_of(headers)
            handler(
                BusUnavailableError(
                    f"no JetStream stream answered (status {status or 'unknown'}); "
                    "the AG_EVENTS stream is missing: connect through aethergraph so it is created"
                )
            )
            return
        try:
            ack = _ack_decoder.decode(data)
        except msgspec.DecodeError as exc:
            handler(EventRejectedError(f"unreadable JetStream acknowledgement: {exc}"))
            return
        handler(ack)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class JetStreamRunWriter:
    """Appends one run's events; see the module docstring for fencing."""

    __slots__ = ("_failure", "_filter", "_inflight", "_last", "_log", "_run_id", "_tail")

    def __init__(self, log: JetStreamEventLog, run_id: str, last_stream_seq: int) -> None:
        self._log = log
        self._run_id = run_id
        self._filter = run_events_filter(run_id).encode()
        self._last = last_stream_seq
        self._inflight = 0
        self._failure: BaseException | None = None
        self._tail: asyncio.Future[int] | None = None

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def last_stream_seq(self) -> int:
        return self._last

    def append(self, event: Event) -> asyncio.Future[int]:
        if self._failure is not None:
            raise self._failure
        payload = encode_event(event)
        if len(payload) > self._log.max_event_bytes:
            raise EventTooLargeError(
                f"a {event.__struct_config__.tag} event is {len(payload):,} bytes, over the "
                f"limit of {self._log.max_event_bytes:,} (AETHERGRAPH_MAX_EVENT_BYTES). Large "
                "values do not ride inside events: save them with context.artifacts() and "
                "pass the artifact reference instead",
                run_id=self._run_id,
                node_id=event.node_id,
                seq=event.seq,
            )
        headers = b"NATS/1.0\r\nNats-Msg-Id: %s:%d:%d\r\n" % (self._run_id.encode(), event.seq, event.epoch)
        if self._inflight == 0:
            headers += (
                b"Nats-Expected-Last-Subject-Sequence: %d\r\n"
                b"Nats-Expected-Last-Subject-Sequence-Subject: %s\r\n" % (self._last, self._filter)
            )
        headers += b"\r\n"
        subject = event_subject(self._run_id, event.__struct_config__.tag)  # type: ignore[arg-type]
        result: asyncio.Future[int] = self._log._loop.create_future()
        seq = event.seq
        self._log._router.publish(subject, headers, payload, lambda ack: self._on_ack(ack, result, seq))
        self._inflight += 1
        result.add_done_callback(_retrieve)
        self._tail = result
        return result

    def _on_ack(self, ack: PublishedAck | BaseException, result: asyncio.Future[int], seq: int) -> None:
        self._inflight -= 1
        if isinstance(ack, BaseException):
            exc: BaseException = ack
        else:
            if ack.error is not None:
                if ack.error.err_code == _WRONG_LAST_SEQUENCE:
                    exc = StaleWriterError(
                        "another writer appended to this run first "
                        f"({ack.error.description}); this writer is fenced out",
                        run_id=self._run_id,
                        seq=seq,
                    )
                else:
                    exc = EventRejectedError(
                        f"JetStream refused the event: {ack.error.description} (code {ack.error.err_code})",
                        run_id=self._run_id,
                        seq=seq,
                    )
            elif ack.duplicate:
                exc = StaleWriterError(
                    f"event {seq} of this run was already stored by another writer; this writer is fenced out",
                    run_id=self._run_id,
                    seq=seq,
                )
            else:
                if ack.seq > self._last:
                    self._last = ack.seq
                if not result.done():
                    result.set_result(ack.seq)
                return
        if self._failure is None:
            self._failure = exc
        if not result.done():
            result.set_exception(exc)

    async def flush(self) -> None:
        if self._tail is not None:
            await self._tail
        if self._failure is not None:
            raise self._failure


class JetStreamEventLog:
    """The :class:`aethergraph.core.ports.EventLog` on JetStream."""

    def __init__(self, nc: Client, js: JetStreamContext, *, max_event_bytes: int, ack_timeout_s: float = 10.0) -> None:
        self._nc = nc
        self._js = js
        self.max_event_bytes = max_event_bytes
        self._router = _AckRouter(nc, ack_timeout_s)
        self._direct = DirectGetter(nc, ack_timeout_s)
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        await self._router.start()
        await self._direct.start()

    async def close(self) -> None:
        await self._direct.stop()
        await self._router.stop()

    def writer(self, run_id: str, *, last_stream_seq: int = 0) -> JetStreamRunWriter:
        return JetStreamRunWriter(self, run_id, last_stream_seq)

    def publish_acked(self, subject: str, payload: bytes, *, msg_id: str) -> asyncio.Future[int]:
        """Publish to any stream through the pipelined acknowledgement inbox; resolves to the stream sequence.

        A republish with the same ``msg_id`` inside the duplicate window is stored once (and resolves too).
        """
        result: asyncio.Future[int] = self._loop.create_future()
        result.add_done_callback(_retrieve)

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
            for record in batch:
                yield record
            last = batch[-1].stream_seq
        if follow:
            async for record in self._follow(run_id, start_seq=last + 1):
                yield record

    async def _stored_batches(self, run_id: str) -> AsyncIterator[list[StoredRecord]]:
        """The run's stored events in exactly sized direct gets.

        The first get asks for one event, to learn from its pending count how
        many the run has. The second asks again from the stream's start for
        that many: nats-server finds a filter's first event from its subject
        index, but from a start inside the stream it walks the stream to the
        next match, so starting over is the cheaper request. Later gets (a
        journal longer than ``READ_BATCH``) go on from the last event read.
        """
        subject_filter = run_events_filter(run_id)

        async def get(start: int, want: int) -> tuple[list[StoredRecord], int]:
            request = {"seq": start, "next_by_subj": subject_filter, "batch": want, "max_bytes": READ_MAX_BYTES}
            replies = await self._direct.get(request, f"run {run_id}")
            records = [
                StoredRecord(
                    event=decode_event(reply.data),
                    stream_seq=int(header_value(reply.headers, b"Nats-Sequence") or 0),
                )
                for reply in replies
            ]
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
                yield StoredRecord(event=decode_event(data), stream_seq=stream_seq)
        finally:
            # The connection may already be draining or closed when a reader stops early.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
