"""Stray messages change nothing: the projector and ``status`` fold only each run's journal.

Against a real nats-server (the ``bus`` fixture of ``test_projections_bus``, here ``journal_bus``):
messages are published by hand with nats-py, encoded with the runtime's codec,
so the stream holds exactly what a forger, a fenced-out writer or a writer
republishing after a broker fault would leave there.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import test_projections_bus
from helpers import eventually
from test_projections import TABLES, dump
from test_projections_bus import Bus, catch_up_fresh, pjb_outer, rows

from aethergraph.bus.topology import event_subject
from aethergraph.core.wire import events as ev
from aethergraph.core.wire.codec import encode_event
from aethergraph.projections.projector import Projector
from aethergraph.projections.run_state import rebuild_run_state
from aethergraph.projections.store import ProjectionStore

pytestmark = pytest.mark.slow

journal_bus = test_projections_bus.bus  # the same fixture: a nats-server of the test's own

BASE_TS = 1_700_000_000_000_000
# The tables a message outside every journal must leave as they were.
FOLDED = tuple(t for t in TABLES if t not in ("journal_heads", "journal_pending", "rejected_events", "dead_letters"))
FOLDED = tuple(t for t in FOLDED if t != "projection_state")


async def publish(b: Bus, event: ev.Event, subject: str | None = None) -> int:
    """Publish ``event`` as raw bytes (no fencing headers); its stream sequence."""
    subject = subject or event_subject(event.run_id, event.__struct_config__.tag)
    return int((await b.rt.bus.js.publish(subject, encode_event(event))).seq)


def hand_journal(run_id: str) -> list[ev.Event]:
    """A run written by two writers: w-1 starts it and calls a tool, w-2 claims it at seq 3 (epoch 3)."""
    common: dict[str, Any] = {"run_id": run_id, "ts": BASE_TS}
    return [
        ev.RunStarted(**common, seq=1, worker="w-1", graph_id="g", inputs={"doc": "a document of the run"}),
        ev.ToolCalled(**common, seq=2, worker="w-1", parent=1, node_id="load_1", tool="load", args={}, args_digest="d"),
        ev.RunClaimed(**common, seq=3, worker="w-2", epoch=3, reason="takeover", previous_worker="w-1"),
        ev.ToolReturned(
            **common, seq=4, worker="w-2", parent=2, node_id="load_1", epoch=3, tool="load", outputs={"t": "x" * 9}
        ),
        ev.RunCompleted(**common, seq=5, worker="w-2", parent=4, epoch=3, outputs={"t": "x" * 9}),
    ]


async def test_a_forged_run_failed_far_ahead_changes_neither_the_tables_nor_status(journal_bus: Bus) -> None:
    bus = journal_bus
    run_id, outputs = await bus.run(pjb_outer, {"name": "forged.txt"})
    assert outputs["n"] == len("THE CONTENTS OF FORGED.TXT")
    honest = await catch_up_fresh(bus)
    try:
        expected = dump(honest, FOLDED)
        forged = ev.RunFailed(run_id=run_id, seq=9999, ts=BASE_TS, worker="forger", error_type="X", message="lie")
        forged_at = await publish(bus, forged)
        store = await catch_up_fresh(bus)
        try:
            assert rows(store, "SELECT status FROM runs WHERE run_id = ?", [run_id]) == [("succeeded",)]
            assert dump(store, FOLDED) == expected
            assert rows(store, "SELECT stream_seq, run_id, seq FROM journal_pending") == [(forged_at, run_id, 9999)]
        finally:
            store.close()
        state = await rebuild_run_state(bus.rt.event_log, run_id)
        assert (state.status, state.error) == ("succeeded", None)
    finally:
        honest.close()


async def test_a_stale_epoch_event_after_a_claim_is_rejected_by_the_projector_and_status(journal_bus: Bus) -> None:
    bus = journal_bus
    events = hand_journal("pjjstale")
    for event in events[:3]:
        await publish(bus, event)
    # The fenced-out writer w-1 (epoch 1) still had seq 4 in flight: stored after the claim at seq 3.
    stale = ev.RunFailed(run_id="pjjstale", seq=4, ts=BASE_TS, worker="w-1", parent=2, error_type="E", message="old")
    stale_at = await publish(bus, stale)
    for event in events[3:]:
        await publish(bus, event)
    store = await catch_up_fresh(bus)
    try:
        assert rows(store, "SELECT status, event_count, claims, last_seq FROM runs") == [("succeeded", 5, 1, 5)]
        assert rows(store, "SELECT count(*) FROM events WHERE type = 'run.failed'") == [(0,)]
        [(at, seq, epoch, reason)] = rows(store, "SELECT stream_seq, seq, epoch, reason FROM rejected_events")
        assert (at, seq, epoch) == (stale_at, 4, 1)
        assert reason.startswith("stale epoch"), reason
        assert rows(store, "SELECT next_seq, epoch FROM journal_heads WHERE run_id = 'pjjstale'") == [(6, 3)]
    finally:
        store.close()
    state = await rebuild_run_state(bus.rt.event_log, "pjjstale")
    assert (state.status, state.event_count, state.error) == ("succeeded", 5, None)


async def test_an_event_stored_after_the_next_one_is_folded_once_the_gap_fills(journal_bus: Bus) -> None:
    bus = journal_bus
    """A writer republishes seq 4 after seq 5 was stored: both fold, in seq order, even across catch-ups."""
    events = hand_journal("pjjgap")
    for event in events[:3]:
        await publish(bus, event)
    await publish(bus, events[4])  # run.completed (seq 5) is stored first
    store = await catch_up_fresh(bus)
    try:
        assert rows(store, "SELECT status, event_count FROM runs") == [("running", 3)]
        assert rows(store, "SELECT seq FROM journal_pending") == [(5,)]

        await publish(bus, events[3])  # then tool.returned (seq 4): the gap fills
        await Projector(bus.rt.bus, store, store_id="gap").catch_up()
        assert rows(store, "SELECT status, event_count, last_seq, outputs FROM runs") == [
            ("succeeded", 5, 5, '{"t":"xxxxxxxxx"}')
        ]
        assert rows(store, "SELECT status FROM tool_calls WHERE call_seq = 2") == [("succeeded",)]
        assert rows(store, "SELECT count(*) FROM journal_pending UNION ALL SELECT count(*) FROM rejected_events") == [
            (0,),
            (0,),
        ]
        incremental = dump(store)
    finally:
        store.close()
    # The same tables from one catch-up, and from one message per batch.
    for batch_max in (65536, 1):
        fresh = await asyncio.to_thread(ProjectionStore.open, ":memory:")
        try:
            await Projector(bus.rt.bus, fresh, store_id=f"gap{batch_max}", batch_max=batch_max).catch_up()
            assert dump(fresh) == incremental
        finally:
            fresh.close()
    state = await rebuild_run_state(bus.rt.event_log, "pjjgap")
    assert (state.status, state.event_count) == ("succeeded", 5)


async def test_garbage_on_a_run_subject_and_elsewhere_is_dead_lettered_while_following(
    journal_bus: Bus,
) -> None:
    bus = journal_bus
    store = await asyncio.to_thread(ProjectionStore.open, ":memory:")
    projector = Projector(bus.rt.bus, store, store_id="follow")
    stop = asyncio.Event()
    following = asyncio.ensure_future(projector.follow(stop))
    try:
        first, _ = await bus.run(pjb_outer, {"name": "one.txt"})
        js = bus.rt.bus.js
        garbage = [
            (f"ag.evt.{first}.log.recorded", b"\x00\xffnot an event"),
            ("ag.evt.nonsense", b'{"type": "log.recorded"}'),
            ("ag.evt.pjjother.log.recorded", encode_event(hand_journal(first)[0])),  # body names another run
        ]
        garbage_at = [(await js.publish(subject, data)).seq for subject, data in garbage]
        second, _ = await bus.run(pjb_outer, {"name": "two.txt"})

        async def folded() -> bool | None:
            done = rows(store, "SELECT count(*) FROM runs WHERE run_id = ? AND status = 'succeeded'", [second])
            return True if done == [(1,)] else None

        await eventually(folded, "the run published after the garbage is folded")
        letters = rows(store, "SELECT stream_seq, subject, reason FROM dead_letters ORDER BY stream_seq")
        assert [(at, subject) for at, subject, _ in letters] == [
            (at, subject) for at, (subject, _) in zip(garbage_at, garbage, strict=True)
        ]
        assert all(reason.startswith(("undecodable event", "subject ")) for _, _, reason in letters)
        assert rows(store, "SELECT status FROM runs WHERE run_id = ?", [first]) == [("succeeded",)]
        assert rows(store, "SELECT count(*) FROM runs WHERE run_id = 'pjjother'") == [(0,)]
        assert not following.done()
    finally:
        stop.set()
        await following
        store.close()


def _noise(rnd: random.Random, journals: dict[str, list[ev.Event]]) -> list[tuple[str, bytes]]:
    """Messages on the runs' subjects that belong to no journal (and garbage): (subject, payload)."""
    run_ids = sorted(journals)
    out: list[tuple[str, bytes]] = []
    for _ in range(300):
        run_id = rnd.choice(run_ids)
        journal = journals[run_id]
        event = rnd.choice(journal)
        tag = event.__struct_config__.tag
        kind = rnd.choice(["ahead", "taken", "stale", "garbage", "mismatch", "foreign"])
        if kind == "ahead":  # beyond the end: held for a gap nothing fills
            event = ev.RunFailed(
                run_id=run_id, seq=len(journal) + rnd.randint(2, 50), ts=BASE_TS, worker="x", error_type="E", message=""
            )
        elif kind == "taken":  # a position already taken
            event = ev.RunFailed(run_id=run_id, seq=event.seq, ts=BASE_TS, worker="x", epoch=event.epoch,
                                 error_type="E", message="")  # fmt: skip
        elif kind == "stale":  # the next position, in an epoch that is not the writer's
            event = ev.RunFailed(run_id=run_id, seq=len(journal) + 1, ts=BASE_TS, worker="x",
                                 epoch=journal[-1].epoch + 7, error_type="E", message="")  # fmt: skip
        elif kind == "garbage":
            out.append((event_subject(run_id, str(tag)), rnd.randbytes(rnd.randint(1, 64))))
            continue
        elif kind == "mismatch":
            out.append((event_subject(rnd.choice(run_ids) + "x", str(tag)), encode_event(event)))
            continue
        else:  # a subject outside the catalogue's shape
            out.append((f"ag.evt.{run_id}", encode_event(event)))
            continue
        out.append((event_subject(run_id, event.__struct_config__.tag), encode_event(event)))  # type: ignore[arg-type]
    return out


async def test_hundreds_of_stray_messages_leave_every_table_as_the_journals_alone_make_it(journal_bus: Bus) -> None:
    bus = journal_bus
    run_ids = [(await bus.run(pjb_outer, {"name": f"doc-{i}.txt"}))[0] for i in range(3)]
    honest = await catch_up_fresh(bus)
    try:
        expected = dump(honest, FOLDED)
        tree = [r for (r,) in rows(honest, "SELECT run_id FROM runs ORDER BY run_id")]
        journals = {run_id: [record.event async for record in bus.rt.event_log.read_run(run_id)] for run_id in tree}
        assert set(run_ids) <= set(journals)
    finally:
        honest.close()
    noise = _noise(random.Random(15), journals)
    js = bus.rt.bus.js
    for subject, data in noise:
        await js.publish(subject, data)
    store = await catch_up_fresh(bus)
    try:
        assert dump(store, FOLDED) == expected
        accounted = rows(
            store,
            "SELECT (SELECT count(*) FROM dead_letters) + (SELECT count(*) FROM rejected_events) "
            "+ (SELECT count(*) FROM journal_pending)",
        )
        assert accounted == [(len(noise),)]
    finally:
        store.close()
