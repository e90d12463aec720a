"""The journal rule, applied incrementally by the projection store.

A run's journal is the chain of its events with ``seq`` 1, 2, 3, ... where
each event's ``epoch`` is that of the writer owning the run at that point; a
writer's epoch starts at its ``run.started`` (epoch 1) or ``run.claimed``
(epoch equal to its ``seq``). Events may be stored slightly out of ``seq``
order (a writer republishes an event lost in a broker fault after a later
one was stored), so the chain is built by ``seq``:

* an event at the chain's next position is taken if it fits (its epoch is the
  current writer epoch, or it is a ``run.started``/``run.claimed`` whose epoch
  equals its ``seq``), then the events already held for the positions after it
  are taken in turn;
* an event beyond the next position is held until the gap before it fills;
* at each position the first stored candidate that fits is taken; a candidate
  that does not fit, or arrives for a position already taken, is rejected.

:class:`JournalSorter` does this for one batch of stream messages given the
chain heads and held events of the batch's runs (read from the store); the
store persists what it returns in the same transaction as the folded rows.
Only taken events reach the projection tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["OPENERS", "Held", "JournalKey", "JournalSorter", "Rejected", "fits"]

JournalKey = tuple[str, int, int, str]
"""What the rule reads of an event: run id, seq, epoch, type tag."""

OPENERS: Final = frozenset({"run.started", "run.claimed"})
"""The event types that open a writer epoch (their epoch must equal their seq)."""


@dataclass(frozen=True, slots=True)
class Held:
    """An event stored beyond a gap in its run's chain, waiting for the gap to fill."""

    stream_seq: int
    run_id: str
    seq: int
    epoch: int
    type: str
    raw: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event on a run's subjects that is not part of its journal, with the reason."""

    stream_seq: int
    run_id: str
    seq: int
    epoch: int
    type: str
    reason: str
    raw: str


def fits(writer_epoch: int, seq: int, epoch: int, kind: str) -> bool:
    """Whether an event at the chain's next position belongs to the journal."""
    return epoch == seq if kind in OPENERS else epoch == writer_epoch


def _misfit(writer_epoch: int, seq: int, epoch: int, kind: str) -> str:
    if kind in OPENERS:
        return f"stale epoch: a {kind} at seq {seq} must carry epoch {seq}, not {epoch}"
    return f"stale epoch: epoch {epoch} at seq {seq}, the run's writer epoch there is {writer_epoch}"


def _taken(seq: int) -> str:
    return f"duplicate position: seq {seq} of the run's journal is already taken"


@dataclass(slots=True)
class JournalSorter:
    """Sorts one batch of a stream's events into taken (journal), held and rejected.

    ``heads`` maps a run id to ``(next seq, writer epoch)`` (a run not in it
    starts at ``(1, 1)``); ``held`` holds the events already waiting beyond a
    gap, per run. Both cover at least the batch's runs and are updated in
    place; ``changed`` names the runs whose head moved.
    """

    heads: dict[str, tuple[int, int]]
    held: dict[str, list[Held]]
    # Taken events in journal order: own stream sequence, the stream sequence at which it was taken, JSON.
    taken: list[tuple[int, int, str]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    # Held events that left the held area in this batch (taken or rejected), by stream sequence.
    released: list[int] = field(default_factory=list)

    def add_all(self, stream_seqs: Iterable[int], keys: Iterable[JournalKey], raws: Iterable[str]) -> None:
        """:meth:`add` of many events, in stream order (the usual in-order event costs two dict look-ups)."""
        heads, taken, changed = self.heads, self.taken, self.changed
        for stream_seq, key, raw in zip(stream_seqs, keys, raws, strict=True):
            run_id, seq, epoch, kind = key
            head = heads.get(run_id)
            next_seq, writer = head if head is not None else (1, 1)
            if seq == next_seq and run_id not in self.held:
                if kind in OPENERS:
                    if epoch == seq:
                        heads[run_id] = (seq + 1, epoch)
                        taken.append((stream_seq, stream_seq, raw))
                        changed.add(run_id)
                        continue
                elif epoch == writer:
                    heads[run_id] = (seq + 1, writer)
                    taken.append((stream_seq, stream_seq, raw))
                    changed.add(run_id)
                    continue
            self.add(stream_seq, key, raw)

    def add(self, stream_seq: int, key: JournalKey, raw: str) -> None:
        """Sort the next stored event (stream order)."""
        run_id, seq, epoch, kind = key
        next_seq, writer = self.heads.get(run_id, (1, 1))
        if seq < next_seq:
            self.rejected.append(Rejected(stream_seq, run_id, seq, epoch, kind, _taken(seq), raw))
        elif seq > next_seq:
            self.held.setdefault(run_id, []).append(Held(stream_seq, run_id, seq, epoch, kind, raw))
        elif not fits(writer, seq, epoch, kind):
            self.rejected.append(Rejected(stream_seq, run_id, seq, epoch, kind, _misfit(writer, seq, epoch, kind), raw))
        else:
            self.heads[run_id] = (seq + 1, epoch if kind in OPENERS else writer)
            self.taken.append((stream_seq, stream_seq, raw))
            self.changed.add(run_id)
            if run_id in self.held:
                self._drain(run_id, stream_seq)

    def _drain(self, run_id: str, at: int) -> None:
        """Take the held events of ``run_id`` that follow the chain now (stream sequence ``at`` filled a gap)."""
        waiting = self.held[run_id]
        while waiting:
            next_seq, writer = self.heads[run_id]
            due = [h for h in waiting if h.seq == next_seq]  # in stream order
            if not due:
                break
            waiting = [h for h in waiting if h.seq != next_seq]
            chosen = next((h for h in due if fits(writer, h.seq, h.epoch, h.type)), None)
            for h in due:
                self.released.append(h.stream_seq)
                if h is chosen:
                    self.heads[run_id] = (next_seq + 1, h.epoch if h.type in OPENERS else writer)
                    self.taken.append((h.stream_seq, at, h.raw))
                    self.changed.add(run_id)
                else:
                    reason = _taken(h.seq) if chosen is not None else _misfit(writer, h.seq, h.epoch, h.type)
                    self.rejected.append(Rejected(h.stream_seq, run_id, h.seq, h.epoch, h.type, reason, h.raw))
            if chosen is None:
                break
        if waiting:
            self.held[run_id] = waiting
        else:
            del self.held[run_id]
