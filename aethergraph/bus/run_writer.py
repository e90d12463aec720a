"""``JetStreamRunWriter``: appends one run's events, pipelined, fenced, and repaired after broker faults.

Fencing. A writer's first event opens its epoch: ``run.started`` for a new
run, ``run.claimed`` for a writer continuing one. Each event carries one
``Nats-Expected-Last-Subject-Sequence`` check. An event sent with nothing of
the writer's in flight (the opening among them) expects the last message
stored for the run (``ag.evt.<run_id>.>``) to be the last one the writer
knows: anything stored in between, a claim or a stray message, refuses it (a
new run expects nothing at all, so two runs never share an id). An event
pipelined behind others cannot know that position; it expects the run's
claim subject (``ag.evt.<run_id>.run.claimed``) to hold the writer's own
claim (or nothing, for the writer that started the run): once anyone else
claims the run, not one more event of this writer is stored, however many it
had in flight. Later events are held until the opening is acknowledged.

No hole. A step is committed when its event and every earlier event of the
writer are acknowledged: the awaitables resolve in append order. When a
publish is not acknowledged (the connection dropped, no answer in time, no
replica reachable) or refused by a check, the writer stops sending, waits for
the bus (up to ``outage_s``), reads back what the stream holds for the run and
applies the journal rule to it. If the journal holds another writer's event
at a position of its own, it is fenced out (:class:`StaleWriterError`);
otherwise it republishes, in order, whatever of its own is missing, with the
checks brought up to date (a message that is not an event, say on the claim
subject, changes nothing), and carries on. ``Nats-Msg-Id`` makes a republish
of an event that was stored after all harmless; such an event may be stored
after later ones, which readers put back in order (see
:class:`aethergraph.core.journal.replay.ChainBuilder`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aethergraph.core.errors import BusUnavailableError, EventRejectedError, EventTooLargeError, StaleWriterError
from aethergraph.core.journal.replay import ChainBuilder
from aethergraph.core.wire.codec import encode_event
from aethergraph.core.wire.events import Event, RunClaimed

from .ack_router import PublishedAck
from .dispatch import retrieve_exception
from .topology import event_subject, run_events_filter

if TYPE_CHECKING:
    from .event_log import JetStreamEventLog, RawStored

__all__ = ["JetStreamRunWriter"]

log = logging.getLogger("aethergraph.bus")

_WRONG_LAST_SEQUENCE = 10071
_FENCE = b"Nats-Expected-Last-Subject-Sequence: %d\r\nNats-Expected-Last-Subject-Sequence-Subject: %s\r\n\r\n"
_REPAIR_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(slots=True)
class _Pending:
    """An appended event until it and every earlier one are acknowledged."""

    event: Event
    subject: str
    payload: bytes
    future: asyncio.Future[int]
    stored_at: int = 0  # stream sequence once acknowledged
    sent: bool = False


class JetStreamRunWriter:
    """Appends one run's events; see the module docstring."""

    __slots__ = (
        "_claim_fence",
        "_claim_subject",
        "_failure",
        "_filter",
        "_generation",
        "_log",
        "_opening",
        "_opening_stored",
        "_pending",
        "_repair",
        "_run_fence",
        "_run_id",
    )

    def __init__(self, log: JetStreamEventLog, run_id: str, last_stream_seq: int) -> None:
        self._log = log
        self._run_id = run_id
        self._filter = run_events_filter(run_id)
        self._claim_subject = event_subject(run_id, "run.claimed")
        self._run_fence = last_stream_seq  # the last message known stored for the run
        self._claim_fence = 0  # for later events: the stream sequence of this writer's claim (0: none)
        self._opening: Event | None = None  # the writer's first event
        self._opening_stored = False
        self._pending: collections.deque[_Pending] = collections.deque()
        self._failure: BaseException | None = None
        self._repair: asyncio.Task[None] | None = None
        self._generation = 0  # acknowledgements of publishes made before the last repair are ignored

    @property
    def run_id(self) -> str:
        return self._run_id

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
        if self._opening is None:
            if self._run_fence and not isinstance(event, RunClaimed):
                raise ValueError(
                    f"a writer continuing run {self._run_id} must open with run.claimed, not "
                    f"{event.__struct_config__.tag}"
                )
            self._opening = event
        future: asyncio.Future[int] = self._log._loop.create_future()
        future.add_done_callback(retrieve_exception)
        subject = event_subject(self._run_id, event.__struct_config__.tag)  # type: ignore[arg-type]
        item = _Pending(event=event, subject=subject, payload=payload, future=future)
        self._pending.append(item)
        if event is self._opening or (self._opening_stored and self._repair is None):
            self._send(item)
        return future

    async def flush(self) -> None:
        if self._pending:
            await self._pending[-1].future
        if self._failure is not None:
            raise self._failure

    # --- sending and acknowledgements -------------------------------------------------

    def _send(self, item: _Pending) -> None:
        event = item.event
        headers = b"NATS/1.0\r\nNats-Msg-Id: %s:%d:%d\r\n" % (self._run_id.encode(), event.seq, event.epoch)
        if item is self._pending[0]:  # nothing of this writer's in flight before it
            fence, fence_subject = self._run_fence, self._filter
        else:
            fence, fence_subject = self._claim_fence, self._claim_subject
        headers += _FENCE % (fence, fence_subject.encode())
        generation = self._generation
        item.sent = True
        try:
            self._log._router.publish(
                item.subject, headers, item.payload, lambda ack: self._on_ack(item, generation, ack)
            )
        except BusUnavailableError as exc:
            self._on_ack(item, generation, exc)

    def _on_ack(self, item: _Pending, generation: int, ack: PublishedAck | BaseException) -> None:
        if generation != self._generation or self._failure is not None:
            return
        if isinstance(ack, PublishedAck) and ack.error is None:
            is_opening = item.event is self._opening and not self._opening_stored
            if ack.duplicate and is_opening:
                # Another claimer at the same position publishes the same message id; only the stream can tell.
                self._start_repair("a duplicate of the opening")
                return
            item.stored_at = ack.seq
            if ack.seq > self._run_fence:
                self._run_fence = ack.seq
            if is_opening:
                self._opened(item)
            self._resolve_in_order()
            return
        if isinstance(ack, PublishedAck):
            assert ack.error is not None
            if ack.error.err_code != _WRONG_LAST_SEQUENCE:
                self._fail(
                    EventRejectedError(
                        f"JetStream refused the event: {ack.error.description} (code {ack.error.err_code})",
                        run_id=self._run_id,
                        seq=item.event.seq,
                    )
                )
                return
            self._start_repair(ack.error.description)
            return
        if isinstance(ack, (BusUnavailableError, EventRejectedError)):
            self._start_repair(ack)
            return
        self._fail(ack)

    def _opened(self, opening: _Pending) -> None:
        """The opening is stored: later events are fenced against it and may go out."""
        self._opening_stored = True
        if isinstance(opening.event, RunClaimed):
            self._claim_fence = opening.stored_at
        if self._repair is None:
            for held in self._pending:
                if not held.sent:
                    self._send(held)

    def _resolve_in_order(self) -> None:
        pending = self._pending
        while pending and pending[0].stored_at:
            item = pending.popleft()
            if not item.future.done():
                item.future.set_result(item.stored_at)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        pending, self._pending = self._pending, collections.deque()
        for item in pending:
            if not item.future.done():
                item.future.set_exception(exc)

    # --- repair -------------------------------------------------------------------------

    def _start_repair(self, cause: BaseException | str) -> None:
        self._generation += 1
        if self._repair is not None:
            return
        log.info("run %s: a publish was not acknowledged (%s); checking the stream", self._run_id, cause)
        self._repair = asyncio.ensure_future(self._repair_from_stream(cause))

    async def _repair_from_stream(self, cause: BaseException | str) -> None:
        """Wait for the bus, read the run back, then republish what is missing (or stop if fenced out)."""
        loop = self._log._loop
        deadline = loop.time() + self._log.outage_s
        attempt = 0
        while self._failure is None:
            try:
                if self._log.closed:
                    self._fail(BusUnavailableError("the event log was closed before the bus acknowledged"))
                    break
                await self._log.wait_connected(deadline)
                stored = await self._log.read_stored(self._run_id)
                self._match_stored(stored)
                break
            except StaleWriterError as exc:
                self._fail(exc)
            except (BusUnavailableError, EventRejectedError) as exc:
                cause = exc
                if loop.time() >= deadline:
                    self._fail(
                        BusUnavailableError(
                            f"run {self._run_id}: the bus did not take this run's events for "
                            f"{self._log.outage_s:.0f}s (AETHERGRAPH_OUTAGE_TOLERANCE_S); last error: {cause}"
                        )
                    )
                    break
                await asyncio.sleep(_REPAIR_BACKOFF_S[min(attempt, len(_REPAIR_BACKOFF_S) - 1)])
                attempt += 1
        self._repair = None
        if self._failure is not None:
            return
        self._generation += 1
        self._resolve_in_order()
        if not self._opening_stored:
            if self._pending:
                self._send(self._pending[0])
            return
        for item in self._pending:
            if not item.stored_at:
                self._send(item)

    def _match_stored(self, stored: Sequence[RawStored]) -> None:
        """Mark this writer's events the journal holds; raise :class:`StaleWriterError` if another's stand there.

        Also brings both fences up to date with every message stored for the
        run, events or not: a message that is not part of the journal fences
        out nobody.
        """
        if not self._pending:
            return
        builder = ChainBuilder()
        stream_seq_of: dict[int, int] = {}
        for record in stored:
            if record.event is not None:
                stream_seq_of[id(record.event)] = record.stream_seq
                builder.add(record.event)
        chain = builder.chain
        opening_at = self._pending[0].event.seq
        if not self._opening_stored and opening_at > len(chain) + 1:
            raise StaleWriterError(
                f"run {self._run_id} holds {len(chain)} events, not the {opening_at - 1} this writer "
                "expected when it began; this writer is fenced out",
                run_id=self._run_id,
                seq=opening_at,
            )
        for item in self._pending:
            position = item.event.seq
            if position > len(chain):
                break
            held = chain[position - 1]
            if held != item.event:
                raise StaleWriterError(
                    f"another writer holds event {position} of run {self._run_id} "
                    f"({held.__struct_config__.tag} from {held.worker}); this writer is fenced out",
                    run_id=self._run_id,
                    seq=position,
                )
            item.stored_at = stream_seq_of[id(held)]
            if item.event is self._opening:
                self._opening_stored = True
                if isinstance(item.event, RunClaimed):
                    self._claim_fence = item.stored_at
        # Nothing past this writer's last event was written by it.
        if len(chain) > self._pending[-1].event.seq:
            newer = chain[self._pending[-1].event.seq]
            raise StaleWriterError(
                f"run {self._run_id} was continued by {newer.worker} (event {newer.seq}, "
                f"{newer.__struct_config__.tag}); this writer is fenced out",
                run_id=self._run_id,
                seq=newer.seq,
            )
        self._run_fence = max((record.stream_seq for record in stored), default=self._run_fence)
        claims = [record.stream_seq for record in stored if record.subject == self._claim_subject]
        if claims and self._opening_stored:
            self._claim_fence = max(claims)
