"""``RunJournal``: numbers a run's events and hands them to the run's writer."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from aethergraph.core.journal.ports import RunEnvironment, RunWriter
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.wire.events import AnyEvent, Event

__all__ = ["RunJournal", "load_journal"]

E = TypeVar("E", bound=Event)


class RunJournal:
    """Assigns per-run sequence numbers in append order and stamps common fields."""

    __slots__ = ("_seq", "_writer", "epoch", "run_id", "worker")

    def __init__(self, run_id: str, writer: RunWriter, worker: str, *, last_seq: int = 0) -> None:
        self.run_id = run_id
        self.worker = worker
        self._writer = writer
        self._seq = last_seq
        # A new run's writer owns epoch 1 (its run.started); a writer continuing a
        # run owns the epoch that its run.claimed event opens.
        self.epoch = last_seq + 1

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(
        self, cls: type[E], /, *, parent: int | None, node_id: str | None = None, **fields: Any
    ) -> tuple[E, Awaitable[int]]:
        """Append an event; returns the event it built and an awaitable for its commit."""
        seq = self._seq + 1
        event = cls(
            run_id=self.run_id,
            seq=seq,
            ts=time.time_ns() // 1000,
            worker=self.worker,
            parent=parent,
            node_id=node_id,
            epoch=self.epoch,
            **fields,
        )
        committed = self._writer.append(event)
        self._seq = seq
        return event, committed

    async def commit(self, cls: type[E], /, *, parent: int | None, node_id: str | None = None, **fields: Any) -> E:
        """Append an event and wait until the bus has acknowledged it; returns the event."""
        event, committed = self.append(cls, parent=parent, node_id=node_id, **fields)
        await committed
        return event

    async def flush(self) -> None:
        """Wait until every appended event is acknowledged (raises the first refusal)."""
        await self._writer.flush()


async def load_journal(env: RunEnvironment, run_id: str) -> tuple[list[AnyEvent], int]:
    """A run's journal from the stream, and the stream sequence of the run's last stored event.

    The stream sequence is that of the last event stored for the run at all
    (journal or not): a writer continuing the run is fenced against it.
    """
    events: list[AnyEvent] = []
    last_stream_seq = 0
    async for record in env.event_log.read_run(run_id):
        events.append(record.event)
        last_stream_seq = record.stream_seq
    return journal_chain(events), last_stream_seq
