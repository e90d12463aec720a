"""``Projector``: folds the journal stream into a :class:`ProjectionStore`.

It reads through a durable push consumer (``ag-proj-<store_id>``) created at
the store's own cursor: the store, not the server, is the source of truth for
where to resume, because the cursor commits in the same DuckDB transaction as
the rows. Deliveries land in a buffer as the client reads them (raw subject,
acknowledgement subject and payload: no message object, no header parsing,
no task per message); each batch is decoded, folded and committed in a
worker thread, then acknowledged with one AckAll acknowledgement, so the
server keeps at most ``window`` messages in flight and never redelivers what
was committed (if it does, the store skips it by sequence). The stream
sequence of each delivery is read from its acknowledgement subject.

A message that does not decode, or whose body disagrees with its subject, or
that a projection cannot fold, goes to ``dead_letters`` with the raw bytes and
the reason; the projector does not stop. Of the events that decode, the store
folds only those of their run's journal (the journal rule, see ``journal.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import msgspec

from aethergraph.bus.connection import BusConnection
from aethergraph.bus.dispatch import ack_position
from aethergraph.bus.projector_feed import Delivery, ProjectorFeed, stream_facts
from aethergraph.bus.topology import EVENTS_STREAM, event_subject, projector_consumer
from aethergraph.core.errors import ProjectionError
from aethergraph.core.wire.codec import decode_event
from aethergraph.core.wire.events import EVENT_TYPES

from .fold import Decoded
from .journal import JournalKey
from .store import DeadLetter, ProjectionStore, StreamSource

__all__ = ["ProgressCallback", "Projector", "ProjectorStats", "decode_batch", "decode_message"]

ProgressCallback = Callable[[int, int], None]
"""Called after each batch with (stream sequence reached, target sequence or 0 when following)."""


@dataclass(slots=True)
class ProjectorStats:
    batches: int = 0
    messages: int = 0
    dead_letters: int = 0


def decode_message(stream_seq: int, subject: str, data: bytes) -> Decoded | DeadLetter:
    """One stored journal message as a decoded event, or as a dead letter with the reason."""
    try:
        event = decode_event(data)
        raw = data.decode()
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return DeadLetter(stream_seq, subject, bytes(data), f"undecodable event: {exc}")
    expected = event_subject(event.run_id, event.__struct_config__.tag)  # type: ignore[arg-type]
    if subject != expected:
        return DeadLetter(
            stream_seq, subject, bytes(data), f"subject {subject} does not match the event (expected {expected})"
        )
    return Decoded(stream_seq, event, raw)


_TAGS = {cls: tag for tag, cls in EVENT_TYPES.items()}


def decode_batch(
    messages: Iterable[tuple[int, str, bytes]],
) -> tuple[list[int], list[str], list[JournalKey], list[DeadLetter]]:
    """:func:`decode_message` of many messages: the stream sequences, JSON texts and journal keys of those that
    decode, and the dead letters of the others.

    The same strict decoding and subject check, without an object per event:
    the fold needs only the JSON text once the event is known to be valid.
    """
    seqs: list[int] = []
    raws: list[str] = []
    keys: list[JournalKey] = []
    dead: list[DeadLetter] = []
    decode, tags = decode_event, _TAGS
    for stream_seq, subject, data in messages:
        try:
            event = decode(data)
            raw = data.decode()
        except (msgspec.DecodeError, UnicodeDecodeError):
            letter = decode_message(stream_seq, subject, data)
            assert isinstance(letter, DeadLetter)
            dead.append(letter)
            continue
        tag = tags[type(event)]
        if subject != event_subject(event.run_id, tag):
            letter = decode_message(stream_seq, subject, data)
            assert isinstance(letter, DeadLetter)
            dead.append(letter)
            continue
        seqs.append(stream_seq)
        raws.append(raw)
        keys.append((event.run_id, event.seq, event.epoch, tag))
    return seqs, raws, keys, dead


"""A delivery as the client read it: acknowledgement subject, subject, payload."""


@dataclass(slots=True)
class _Batch:
    """A decoded batch: its messages (sequence, subject, payload), what decoded, and the highest sequence."""

    messages: list[tuple[int, str, bytes]]
    seqs: list[int]
    raws: list[str]
    keys: list[JournalKey]
    dead: list[DeadLetter]
    through: int


class Projector:
    """Keeps ``store`` up to date with the ``AG_EVENTS`` stream."""

    def __init__(
        self,
        bus: BusConnection,
        store: ProjectionStore,
        *,
        store_id: str,
        batch_max: int = 65536,
        window: int = 131072,
    ) -> None:
        self._bus = bus
        self._store = store
        self._consumer = projector_consumer(store_id)
        self._batch_max = batch_max
        self._window = window
        self.stats = ProjectorStats()

    @property
    def store(self) -> ProjectionStore:
        return self._store

    async def stream_last_seq(self) -> int:
        return (await stream_facts(self._bus)).last_seq

    async def stream_source(self) -> StreamSource:
        """The identity of the stream on the bus: its creation time and cluster, with the server read from."""
        facts = await stream_facts(self._bus)
        return StreamSource(
            stream=EVENTS_STREAM,
            created=facts.created,
            cluster=facts.cluster,
            server_name=facts.server_name,
            url=facts.url,
        )

    async def check_source(self) -> str | None:
        """Make sure the store folds the stream on this bus; empty it first if it folded another one.

        Returns why the store was emptied (to be folded again from this stream), or None if it was not:
        the bus is another server, or the stream was deleted and created again, since the store last folded.
        """
        current = await self.stream_source()
        store = self._store
        recorded = await asyncio.to_thread(store.source)
        reason: str | None = None
        if recorded is None and store.last_seq > 0:
            reason = "it does not record which stream it folded (it was made by an earlier version)"
        elif recorded is not None and not recorded.same_stream(current):
            reason = f"it holds the {recorded.describe()}, the bus has the {current.describe()}"
        if reason is not None:
            await asyncio.to_thread(store.reset_all)
        if recorded is None or reason is not None or recorded != current:
            await asyncio.to_thread(store.record_source, current)
        return reason

    async def catch_up(self, *, on_progress: ProgressCallback | None = None) -> int:
        """Fold every message stored when this is called; returns how many were read."""
        target = await self.stream_last_seq()
        if target <= self._store.last_seq:
            return 0
        before = self.stats.messages
        await self._consume(until=target, stop=None, on_progress=on_progress)
        return self.stats.messages - before

    async def follow(self, stop: asyncio.Event, *, on_progress: ProgressCallback | None = None) -> None:
        """Fold messages as they are stored until ``stop`` is set."""
        await self._consume(until=None, stop=stop, on_progress=on_progress)

    async def _consume(
        self, *, until: int | None, stop: asyncio.Event | None, on_progress: ProgressCallback | None
    ) -> None:
        feed = ProjectorFeed(self._bus, self._consumer, window=self._window)
        await feed.open(self._store.last_seq + 1)
        stop_wait: asyncio.Task[bool] | None = asyncio.ensure_future(stop.wait()) if stop else None
        # The batch being folded in the worker thread while the next one is decoded, with the
        # acknowledgement subject of its last message; at most one at a time.
        folding: tuple[asyncio.Future[None], bytes] | None = None
        taken = 0  # the highest stream sequence taken from the buffer

        async def settle() -> None:
            """Wait for the batch being folded, then acknowledge it and report progress."""
            nonlocal folding
            if folding is None:
                return
            future, reply = folding
            folding = None
            await future
            await feed.acknowledge_through(reply)
            if on_progress is not None:
                on_progress(self._store.last_seq, until or 0)

        try:
            if until is not None and await feed.nothing_to_deliver():
                # What lies between the cursor and the target was deleted: nothing will be delivered.
                await asyncio.to_thread(self._store.apply, [], through=until)
            while until is None or max(self._store.last_seq, taken) < until:
                buffer = feed.buffer
                if not buffer:
                    await settle()
                    if buffer:
                        continue  # more arrived while the last batch was settling
                    if until is not None and feed.pending() == 0:
                        # Caught up; sequences after the last delivered message were deleted from the stream.
                        await asyncio.to_thread(self._store.apply, [], through=until)
                        break
                    if await _arrival_or_stop(feed.wake, stop_wait):
                        break
                    continue
                if folding is not None and not folding[0].done() and len(buffer) < self._batch_max and feed.pending():
                    await _arrival_or_done(feed.wake, folding[0])  # let the batch fill up while the last one folds
                    continue
                batch = [buffer.popleft() for _ in range(min(len(buffer), self._batch_max))]
                # Decoding (Python) overlaps the previous batch's fold (DuckDB, which releases the GIL).
                decoded = await asyncio.to_thread(self._decode, batch)
                taken = max(taken, decoded.through)
                await settle()
                folding = (asyncio.ensure_future(asyncio.to_thread(self._fold, decoded)), batch[-1][0])
            await settle()
        finally:
            if folding is not None:
                # Leaving on an error or a cancellation: the store must not be closed under the fold.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(folding[0])
            if stop_wait is not None:
                stop_wait.cancel()
            await feed.close(delete_consumer=until is not None)

    def _apply(self, batch: Sequence[Delivery]) -> None:
        """Decode and fold one batch of deliveries (in one thread; the consumer overlaps the two steps)."""
        self._fold(self._decode(batch))

    @staticmethod
    def _decode(batch: Sequence[Delivery]) -> _Batch:
        messages = [(ack_position(reply)[0], subject.decode(), data) for reply, subject, data in batch]
        seqs, raws, keys, dead = decode_batch(messages)
        return _Batch(messages, seqs, raws, keys, dead, max(seq for seq, _, _ in messages))

    def _fold(self, decoded: _Batch) -> None:
        messages, dead = decoded.messages, decoded.dead
        try:
            self._store.apply_encoded(decoded.seqs, decoded.raws, decoded.keys, dead, through=decoded.through)
        except (duckdb.Error, ProjectionError):
            # Isolate what a projection could not fold, one message at a time, in stream order.
            dead = []
            for one in (decode_message(*message) for message in messages):
                if isinstance(one, DeadLetter):
                    dead.append(one)
                    self._store.apply([], [one], through=one.stream_seq)
                    continue
                try:
                    self._store.apply([one], through=one.stream_seq)
                except (duckdb.Error, ProjectionError) as exc:
                    tag = one.event.__struct_config__.tag
                    letter = DeadLetter(
                        one.stream_seq,
                        event_subject(one.event.run_id, tag),  # type: ignore[arg-type]
                        one.raw.encode(),
                        f"projection failed: {exc}",
                    )
                    dead.append(letter)
                    self._store.apply([], [letter], through=one.stream_seq)
        self.stats.batches += 1
        self.stats.messages += len(messages)
        self.stats.dead_letters += len(dead)


async def _arrival_or_stop(wake: asyncio.Event, stop_wait: asyncio.Task[bool] | None) -> bool:
    """Wait for the next delivery; True if the projector was told to stop first."""
    wake.clear()
    if stop_wait is None:
        await wake.wait()
        return False
    wake_wait = asyncio.ensure_future(wake.wait())
    await asyncio.wait({wake_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    wake_wait.cancel()
    return stop_wait.done()


async def _arrival_or_done(wake: asyncio.Event, folded: asyncio.Future[None]) -> None:
    """Wait for the next delivery or the end of the fold in progress, whichever comes first."""
    wake.clear()
    arrived: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
    await asyncio.wait({arrived, folded}, return_when=asyncio.FIRST_COMPLETED)
    arrived.cancel()
