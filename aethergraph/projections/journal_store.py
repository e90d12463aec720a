"""The journal rule's state in the projection store: reading it for a batch, writing what the batch changed.

Three tables of the ``journal`` projection hold it:

* ``journal_heads``: per run, the next ``seq`` its chain expects and the
  current writer epoch;
* ``journal_pending``: events stored beyond a gap in their run's chain, held
  until the gap fills (a forged far-ahead ``seq`` stays here for good);
* ``rejected_events``: events on a run's subjects that are not part of its
  journal (stale epoch, a position already taken), with the reason.

The journal state moves with the lowest projection cursor: a projection
rebuilt from sequence 0 resets it (see ``ProjectionStore``), so the rule
decides the same way for every projection.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from aethergraph.core.wire.events import Event

from .journal import Held, JournalKey, JournalSorter

__all__ = ["journal_key", "read_heads", "read_held", "write_journal"]


def journal_key(event: Event) -> JournalKey:
    """What the journal rule reads of ``event``."""
    return event.run_id, event.seq, event.epoch, str(event.__struct_config__.tag)


def read_heads(con: duckdb.DuckDBPyConnection, runs: Sequence[str], low_run: str) -> dict[str, tuple[int, int]]:
    """The chain heads ``(next seq, writer epoch)`` of ``runs`` that have one (``low_run``: the lowest of them)."""
    rows = con.execute(
        "SELECT run_id, next_seq, epoch FROM journal_heads WHERE run_id >= $2 AND run_id IN (SELECT unnest($1))",
        [runs, low_run],
    ).fetchall()
    return {run_id: (next_seq, epoch) for run_id, next_seq, epoch in rows}


def read_held(con: duckdb.DuckDBPyConnection, runs: Sequence[str]) -> dict[str, list[Held]]:
    """The events held beyond a gap for ``runs``, per run, in stream order."""
    held: dict[str, list[Held]] = {}
    if con.execute("SELECT count(*) FROM journal_pending").fetchone() == (0,):
        return held
    rows = con.execute(
        "SELECT stream_seq, run_id, seq, epoch, type, raw FROM journal_pending "
        "WHERE run_id IN (SELECT unnest($1)) ORDER BY stream_seq",
        [runs],
    ).fetchall()
    for row in rows:
        held.setdefault(row[1], []).append(Held(*row))
    return held


def write_journal(con: duckdb.DuckDBPyConnection, sorter: JournalSorter, low_run: str, first_seq: int) -> None:
    """Store what sorting a batch changed: heads, held events (new and released) and rejected events.

    ``first_seq`` is the batch's first stream sequence: held events below it
    were stored by earlier batches.
    """
    if sorter.changed:
        changed = list(sorter.changed)
        heads = [sorter.heads[run_id] for run_id in changed]
        con.execute(
            "MERGE INTO journal_heads AS t USING (SELECT unnest($1) AS run_id, unnest($2) AS next_seq, "
            "unnest($3) AS epoch) AS x ON t.run_id = x.run_id AND t.run_id >= $4 "
            "WHEN MATCHED THEN UPDATE SET next_seq = x.next_seq, epoch = x.epoch "
            "WHEN NOT MATCHED THEN INSERT (run_id, next_seq, epoch) VALUES (x.run_id, x.next_seq, x.epoch)",
            [changed, [h[0] for h in heads], [h[1] for h in heads], low_run],
        )
    released = [seq for seq in sorter.released if seq < first_seq]
    if released:
        con.execute("DELETE FROM journal_pending WHERE stream_seq IN (SELECT unnest($1))", [released])
    fresh = [h for waiting in sorter.held.values() for h in waiting if h.stream_seq >= first_seq]
    if fresh:
        con.execute(
            "INSERT INTO journal_pending SELECT unnest($1), unnest($2), unnest($3), unnest($4), unnest($5), unnest($6)",
            [
                [h.stream_seq for h in fresh],
                [h.run_id for h in fresh],
                [h.seq for h in fresh],
                [h.epoch for h in fresh],
                [h.type for h in fresh],
                [h.raw for h in fresh],
            ],
        )
    if sorter.rejected:
        rejected = sorter.rejected
        con.execute(
            "INSERT INTO rejected_events SELECT unnest($1), unnest($2), unnest($3), unnest($4), unnest($5), "
            "unnest($6), unnest($7)::JSON",
            [
                [r.stream_seq for r in rejected],
                [r.run_id for r in rejected],
                [r.seq for r in rejected],
                [r.epoch for r in rejected],
                [r.type for r in rejected],
                [r.reason for r in rejected],
                [r.raw for r in rejected],
            ],
        )
