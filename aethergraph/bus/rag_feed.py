"""The vector index's feed: every run's ``rag.*`` events stored on ``AG_EVENTS``, read from a stream position.

A host's vector index (:mod:`aethergraph.projections.vector_index`) catches
up before each search: it asks how far the stream goes, then reads the
``ag.evt.*.rag.>`` messages stored after what it has folded, by batched
direct gets (no consumer is created, so a thousand hosts cost the server
nothing between searches). A message that does not decode as an event of
the run its subject names is skipped (logged once).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec

from aethergraph.core.wire.codec import decode_event
from aethergraph.core.wire.events import AnyEvent

from .connection import BusConnection
from .direct_get import DirectGetter, stored_messages
from .topology import EVENTS_STREAM, RAG_EVENTS

__all__ = ["RagFeed", "RagMessage"]

log = logging.getLogger("aethergraph.rag")


@dataclass(frozen=True, slots=True)
class RagMessage:
    stream_seq: int
    event: AnyEvent


class RagFeed:
    """Reads the ``rag.*`` events of every run; see the module docstring."""

    def __init__(self, bus: BusConnection, *, timeout_s: float = 10.0) -> None:
        self._bus = bus
        self._timeout_s = timeout_s
        self._getter: DirectGetter | None = None

    async def last_seq(self) -> int:
        """The stream sequence of the latest message stored on ``AG_EVENTS`` (0: none)."""
        info = await self._bus.js.stream_info(EVENTS_STREAM)
        return int(info.state.last_seq)

    async def stored_since(self, start: int) -> AsyncIterator[list[RagMessage]]:
        """The ``rag.*`` events stored from stream sequence ``start`` on, in stream order, in batches."""
        if self._getter is None:
            self._getter = DirectGetter(self._bus.nc, self._timeout_s)
            await self._getter.start()
        async for batch in stored_messages(self._getter, RAG_EVENTS, "the rag events", start=start):
            found = []
            for message in batch:
                event = _decode(message.subject, message.data, message.stream_seq)
                if event is not None:
                    found.append(RagMessage(stream_seq=message.stream_seq, event=event))
            yield found

    def connection_lost(self) -> None:
        if self._getter is not None:
            self._getter.connection_lost()

    async def close(self) -> None:
        if self._getter is not None:
            await self._getter.stop()
            self._getter = None


def _decode(subject: str, data: bytes, stream_seq: int) -> AnyEvent | None:
    parts = subject.split(".")
    try:
        event = decode_event(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("skipped message %d on %s: it does not decode as an event (%s)", stream_seq, subject, exc)
        return None
    if len(parts) < 3 or event.run_id != parts[2]:
        log.warning("skipped message %d on %s: it names run %r", stream_seq, subject, event.run_id)
        return None
    return event
