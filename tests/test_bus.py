"""The JetStream event log: dedup, fencing, unique run ids, topology and subjects."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import msgspec
import nats
import pytest
from helpers import read_events, run_message_count, start_nats_server
from nats.aio.msg import Msg

import aethergraph
from aethergraph import graph_fn, tool
from aethergraph.bus.connection import ensure_topology
from aethergraph.bus.direct_get import DirectReply, header_value
from aethergraph.bus.dispatch import dispatch_synchronously, status_of
from aethergraph.bus.event_log import READ_BATCH, JetStreamEventLog, JetStreamRunWriter
from aethergraph.bus.topology import (
    COMMANDS_STREAM,
    EVENTS_STREAM,
    RESUME_CONSUMER,
    event_subject,
    resume_subject,
    run_events_filter,
)
from aethergraph.core.errors import BusUnavailableError, EventTooLargeError, StaleWriterError, TopologyMismatchError
from aethergraph.core.ids import new_run_id
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.wire import events as ev
from aethergraph.core.wire.codec import decode_event, encode_event
from aethergraph.host.process import ProcessHost


def make_event(run_id: str, seq: int, *, message: str = "") -> ev.Event:
    now = time.time_ns() // 1000
    if seq == 1:
        return ev.RunStarted(run_id=run_id, seq=1, ts=now, worker="test", graph_id="bus-test")
    return ev.LogRecorded(
        run_id=run_id,
        seq=seq,
        ts=now,
        worker="test",
        parent=seq - 1,
        node_id="root",
        level="info",
        message=message or f"event {seq}",
    )


async def append_all(writer: JetStreamRunWriter, events: list[ev.Event]) -> list[int]:
    futures = [writer.append(event) for event in events]
    async with asyncio.timeout(10):
        return list(await asyncio.gather(*futures))


# --- dedup --------------------------------------------------------------------------------------------


def make_claim(run_id: str, seq: int, *, worker: str = "B") -> ev.RunClaimed:
    return ev.RunClaimed(
        run_id=run_id, seq=seq, ts=time.time_ns() // 1000, worker=worker, parent=seq - 1, epoch=seq, reason="takeover"
    )


async def test_an_event_stored_before_its_acknowledgement_was_lost_is_recognised(runtime: ProcessHost) -> None:
    """A writer whose opening is already stored (its acknowledgement lost) learns so from the stream."""
    run_id = new_run_id()
    log = runtime.event_log
    first = make_event(run_id, 1)
    # The same message the writer publishes (same message id and bytes), stored first.
    headers = {"Nats-Msg-Id": f"{run_id}:1:1"}
    stored = await runtime.bus.js.publish(event_subject(run_id, "run.started"), encode_event(first), headers=headers)
    writer = log.writer(run_id)
    [stream_seq] = await append_all(writer, [first])
    assert stream_seq == stored.seq
    [second] = await append_all(writer, [make_event(run_id, 2)])
    assert second > stream_seq
    assert await run_message_count(runtime, run_id) == 2

    # Another writer's run.started for the same id (other content, same message id) is fenced out.
    other = msgspec.structs.replace(first, worker="other")
    with pytest.raises(StaleWriterError) as info:
        await append_all(log.writer(run_id), [other])
    assert info.value.run_id == run_id
    assert info.value.seq == 1
    records = await read_events(runtime, run_id)
    assert [r.event.seq for r in records] == [1, 2]
    assert records[0].event == first


async def test_raw_republish_with_the_same_msg_id_is_a_duplicate(runtime: ProcessHost) -> None:
    """Anyone publishing with the ``<run_id>:<seq>`` message id gets the server's dedup."""
    run_id = new_run_id()
    event = make_event(run_id, 1)
    js = runtime.bus.js
    subject = event_subject(run_id, "run.started")
    headers = {"Nats-Msg-Id": f"{run_id}:1"}
    ack1 = await js.publish(subject, encode_event(event), headers=headers)
    ack2 = await js.publish(subject, encode_event(event), headers=headers)
    assert ack1.duplicate is not True
    assert ack2.duplicate is True
    assert ack2.seq == ack1.seq
    assert await run_message_count(runtime, run_id) == 1


# --- fencing ------------------------------------------------------------------------------------------


async def test_stale_writer_is_fenced_out(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    log = runtime.event_log
    writer_a = log.writer(run_id)
    seqs = await append_all(writer_a, [make_event(run_id, 1), make_event(run_id, 2)])
    seqs += await append_all(writer_a, [make_event(run_id, 3)])
    assert seqs == sorted(seqs)

    # B believes the run ends at its first event: A appended since, so B's claim is stale.
    writer_b = log.writer(run_id, last_stream_seq=seqs[0])
    pending = writer_b.append(make_claim(run_id, 2))
    with pytest.raises(StaleWriterError) as info:
        async with asyncio.timeout(10):
            await pending
    assert info.value.run_id == run_id
    assert info.value.seq == 2
    assert "fenced out" in str(info.value)

    # A fenced writer refuses further appends at once, and flush reports the refusal.
    with pytest.raises(StaleWriterError):
        writer_b.append(make_event(run_id, 3, message="from B again"))
    with pytest.raises(StaleWriterError):
        await writer_b.flush()

    # A is not affected and continues the run.
    [next_seq] = await append_all(writer_a, [make_event(run_id, 4, message="from A")])
    await writer_a.flush()
    assert next_seq > seqs[-1]
    records = await read_events(runtime, run_id)
    assert [r.event.seq for r in records] == [1, 2, 3, 4]
    last = records[-1].event
    assert isinstance(last, ev.LogRecorded) and last.message == "from A"


async def test_a_writer_continuing_a_run_opens_with_a_claim(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    seqs = await append_all(runtime.event_log.writer(run_id), [make_event(run_id, 1)])
    with pytest.raises(ValueError, match=r"must open with run\.claimed"):
        runtime.event_log.writer(run_id, last_stream_seq=seqs[-1]).append(make_event(run_id, 2))


async def test_stale_writer_cannot_get_pipelined_events_into_the_journal(runtime: ProcessHost) -> None:
    """Once another writer claimed the run, none of the old writer's pipelined events is stored.

    Writer A (epoch 1) was paused; B claimed the run (a fenced ``run.claimed`` at seq 3
    opens B's epoch 3). A wakes up and appends events 3 and 4 without waiting in between:
    each carries A's claim fence (no claim on the run), so both are refused, and B goes on.
    """
    run_id = new_run_id()
    log = runtime.event_log
    writer_a = log.writer(run_id)
    seqs = await append_all(writer_a, [make_event(run_id, 1), make_event(run_id, 2)])
    writer_b = log.writer(run_id, last_stream_seq=seqs[-1])
    await append_all(writer_b, [make_claim(run_id, 3)])

    a3 = writer_a.append(make_event(run_id, 3, message="from A"))
    a4 = writer_a.append(make_event(run_id, 4, message="from A"))
    outcomes = await asyncio.wait_for(asyncio.gather(a3, a4, return_exceptions=True), 10)
    assert all(isinstance(outcome, StaleWriterError) for outcome in outcomes), outcomes
    with pytest.raises(StaleWriterError):
        writer_a.append(make_event(run_id, 5, message="from A"))

    b4 = msgspec.structs.replace(make_event(run_id, 4, message="from B"), epoch=3, worker="B")
    await append_all(writer_b, [b4])
    records = await read_events(runtime, run_id)
    assert all(getattr(record.event, "message", None) != "from A" for record in records)
    journal = journal_chain(record.event for record in records)
    assert [event.seq for event in journal] == [1, 2, 3, 4]
    assert journal[-1].worker == "B" and isinstance(journal[2], ev.RunClaimed)


async def test_writer_that_is_up_to_date_may_continue_a_run(runtime: ProcessHost) -> None:
    """A writer handed the run's last stream sequence (as a resuming worker would be) claims and appends."""
    run_id = new_run_id()
    log = runtime.event_log
    seqs = await append_all(log.writer(run_id), [make_event(run_id, 1), make_event(run_id, 2)])
    successor = log.writer(run_id, last_stream_seq=seqs[-1])
    [seq3, seq4] = await append_all(
        successor, [make_claim(run_id, 3), msgspec.structs.replace(make_event(run_id, 4), epoch=3, worker="B")]
    )
    assert seq4 > seq3 > seqs[-1]
    assert [r.event.seq for r in await read_events(runtime, run_id)] == [1, 2, 3, 4]


async def test_pipelined_appends_commit_in_order(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    writer = runtime.event_log.writer(run_id)
    events = [make_event(run_id, seq) for seq in range(1, 51)]
    futures = [writer.append(event) for event in events]
    await writer.flush()
    stream_seqs = [f.result() for f in futures]
    assert stream_seqs == sorted(stream_seqs) and len(set(stream_seqs)) == 50
    records = await read_events(runtime, run_id)
    assert [r.event for r in records] == events
    assert [r.stream_seq for r in records] == stream_seqs


async def test_new_writer_for_an_existing_run_is_rejected(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    log = runtime.event_log
    await append_all(log.writer(run_id), [make_event(run_id, 1), make_event(run_id, 2)])

    # last_stream_seq=0 means "the run must be new": events with fresh message ids are refused too.
    intruder = log.writer(run_id)
    with pytest.raises(StaleWriterError):
        async with asyncio.timeout(10):
            await intruder.append(make_event(run_id, 7))
    assert await run_message_count(runtime, run_id) == 2


@tool(name="bus_step", outputs=["val"])
def bus_step(x: int) -> dict[str, int]:
    return {"val": x + 1}


@graph_fn(name="bus_graph", outputs=["val"])
async def bus_graph(x: int) -> dict[str, int]:
    return await bus_step(x)


async def test_run_ids_are_unique(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    assert await aethergraph.run_async(bus_graph, {"x": 1}, run_id=run_id) == {"val": 2}
    before = [r.event for r in await read_events(runtime, run_id)]
    with pytest.raises(StaleWriterError) as info:
        await aethergraph.run_async(bus_graph, {"x": 5}, run_id=run_id)
    assert info.value.run_id == run_id
    after = [r.event for r in await read_events(runtime, run_id)]
    assert after == before


async def test_oversized_event_is_refused_before_publishing(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    writer = runtime.event_log.writer(run_id)
    big = make_event(run_id, 1)
    big = ev.LogRecorded(
        run_id=run_id, seq=1, ts=big.ts, worker="test", level="info", message="z" * runtime.event_log.max_event_bytes
    )
    with pytest.raises(EventTooLargeError) as info:
        writer.append(big)
    assert info.value.seq == 1
    assert "log.recorded" in str(info.value)
    # The writer is not poisoned by a local refusal.
    await append_all(writer, [make_event(run_id, 1)])
    assert await run_message_count(runtime, run_id) == 1


# --- reading ------------------------------------------------------------------------------------------


async def test_read_run_of_an_unknown_run_is_empty(runtime: ProcessHost) -> None:
    """Reading a run that has no events returns at once with nothing, however often it is done.

    (The stream must hold other events: the server may then report the new consumer's
    delivered stream sequence as non-zero although it delivered nothing.)
    """
    other = new_run_id()
    await append_all(runtime.event_log.writer(other), [make_event(other, seq) for seq in range(1, 4)])
    for _ in range(20):
        assert await read_events(runtime, new_run_id(), timeout_s=5) == []


async def test_a_journal_longer_than_one_read_batch_is_read_whole_and_in_order(runtime: ProcessHost) -> None:
    """Three direct gets (one event to count, READ_BATCH from the start, then the rest), amid another run."""
    run_id, other = new_run_id(), new_run_id()
    count = READ_BATCH + 7
    writer, other_writer = runtime.event_log.writer(run_id), runtime.event_log.writer(other)
    for first in range(1, count + 1, 500):
        last = min(first + 500, count + 1)
        await append_all(writer, [make_event(run_id, seq) for seq in range(first, last)])
        await append_all(other_writer, [make_event(other, seq) for seq in range(first, last)])
    records = await read_events(runtime, run_id, timeout_s=30)
    assert [record.event.seq for record in records] == list(range(1, count + 1))
    assert all(record.event.run_id == run_id for record in records)
    assert [record.stream_seq for record in records] == sorted(record.stream_seq for record in records)


async def test_a_journal_read_never_asks_for_more_events_than_are_left(
    runtime: ProcessHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking for more than is left makes nats-server search the rest of the whole stream.

    That search costs the server time in proportion to every run's events, so
    a read asks for one event (its pending count says how many the run has),
    then for exactly that many from the start: every request is answered in full.
    """
    run_id = new_run_id()
    await append_all(runtime.event_log.writer(run_id), [make_event(run_id, seq) for seq in range(1, 6)])
    later = new_run_id()  # events stored after the run's last one: what an unbounded batch would search
    await append_all(runtime.event_log.writer(later), [make_event(later, seq) for seq in range(1, 50)])
    getter = runtime.event_log._direct
    asked: list[tuple[int, int]] = []
    real_get = getter.get

    async def recording_get(request: dict[str, object], what: str) -> list[DirectReply]:
        replies = await real_get(request, what)
        batch = request["batch"]
        assert isinstance(batch, int)
        asked.append((batch, len(replies)))
        return replies

    monkeypatch.setattr(getter, "get", recording_get)
    assert [record.event.seq for record in await read_events(runtime, run_id)] == [1, 2, 3, 4, 5]
    assert asked == [(1, 1), (5, 5)]


async def test_a_direct_get_must_be_batched(runtime: ProcessHost) -> None:
    """Only batched direct gets end with a status reply; an unbatched one would wait for its timeout."""
    with pytest.raises(ValueError, match="batched requests only; set 'batch'"):
        await runtime.event_log._direct.get({"seq": 1}, "one message")


def test_raw_header_blocks_are_read() -> None:
    stored = b"NATS/1.0\r\nNats-Stream: AG_EVENTS\r\nNats-Sequence: 42\r\nNats-Num-Pending: 0\r\n\r\n"
    assert header_value(stored, b"Nats-Sequence") == b"42"
    assert header_value(stored, b"Nats-Num-Pending") == b"0"
    assert header_value(stored, b"Nats-Subject") is None
    assert status_of(stored) == ("", {"Nats-Stream": "AG_EVENTS", "Nats-Sequence": "42", "Nats-Num-Pending": "0"})
    expired = b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 5\r\nNats-Pending-Bytes: 0\r\n\r\n"
    assert status_of(expired) == (
        "408",
        {"Nats-Pending-Messages": "5", "Nats-Pending-Bytes": "0", "Description": "Request Timeout"},
    )
    assert status_of(b"NATS/1.0 204\r\n\r\n") == ("204", {})
    assert status_of(None) == ("", {})


async def test_read_run_follow_sees_new_events(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    writer = runtime.event_log.writer(run_id)
    await append_all(writer, [make_event(run_id, 1)])
    seen: list[int] = []

    async def follow() -> None:
        async for record in runtime.event_log.read_run(run_id, follow=True):
            seen.append(record.event.seq)
            if len(seen) == 3:
                return

    task = asyncio.create_task(follow())
    await append_all(writer, [make_event(run_id, 2), make_event(run_id, 3)])
    async with asyncio.timeout(10):
        await task
    assert seen == [1, 2, 3]


async def test_events_are_published_on_their_public_subjects(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    await aethergraph.run_async(bus_graph, {"x": 1}, run_id=run_id)
    js = runtime.bus.js
    subjects: list[str] = []
    sub = await js.subscribe(run_events_filter(run_id), ordered_consumer=True)
    try:
        async with asyncio.timeout(10):
            while len(subjects) < 4:
                msg = await sub.next_msg(timeout=None)
                event = decode_event(msg.data)
                assert msg.subject == event_subject(run_id, event.__struct_config__.tag)
                assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == f"{run_id}:{event.seq}:{event.epoch}"
                subjects.append(msg.subject)
    finally:
        await sub.unsubscribe()
    assert subjects == [
        f"ag.evt.{run_id}.run.started",
        f"ag.evt.{run_id}.tool.called",
        f"ag.evt.{run_id}.tool.returned",
        f"ag.evt.{run_id}.run.completed",
    ]
    # A filter on one kind of event across runs.
    last = await js.get_last_msg(EVENTS_STREAM, f"ag.evt.{run_id}.tool.returned")
    assert json.loads(last.data)["outputs"] == {"val": 2}


# --- topology -----------------------------------------------------------------------------------------


async def test_ensure_topology_is_idempotent(runtime: ProcessHost) -> None:
    js = runtime.bus.js
    topology = runtime.bus.topology
    await ensure_topology(js, topology)
    await ensure_topology(js, topology)

    names = [info.config.name for info in await js.streams_info()]
    assert names.count(EVENTS_STREAM) == 1
    assert names.count(COMMANDS_STREAM) == 1
    consumers = [info.name for info in await js.consumers_info(COMMANDS_STREAM)]
    assert consumers.count(RESUME_CONSUMER) == 1

    events = (await js.stream_info(EVENTS_STREAM)).config
    assert events.subjects == ["ag.evt.>"]
    assert events.duplicate_window == pytest.approx(topology.duplicate_window_s)
    assert events.max_msg_size == topology.max_event_bytes + 4096
    resume = await js.consumer_info(COMMANDS_STREAM, RESUME_CONSUMER)
    assert resume.config.filter_subject == "ag.cmd.resume.>"
    assert resume.config.durable_name == RESUME_CONSUMER


async def test_ensure_topology_refuses_to_change_a_stream_silently(runtime: ProcessHost) -> None:
    js = runtime.bus.js
    original = runtime.bus.topology
    changed = dataclasses.replace(original, duplicate_window_s=45.0)
    with pytest.raises(TopologyMismatchError, match="aethergraph nats --migrate") as info:
        await ensure_topology(js, changed)
    assert (EVENTS_STREAM, "duplicate_window", original.duplicate_window_s, 45.0) in info.value.differences
    # Nothing was changed: the streams keep their configuration (tests/test_topology.py migrates).
    assert (await js.stream_info(EVENTS_STREAM)).config.duplicate_window == pytest.approx(original.duplicate_window_s)
    assert (await js.stream_info(COMMANDS_STREAM)).config.duplicate_window == pytest.approx(original.duplicate_window_s)


# --- subjects -----------------------------------------------------------------------------------------


def test_subject_helpers() -> None:
    assert event_subject("abc123", "tool.called") == "ag.evt.abc123.tool.called"
    assert run_events_filter("abc123") == "ag.evt.abc123.>"
    assert resume_subject("abc-1_2") == "ag.cmd.resume.abc-1_2"


@pytest.mark.parametrize("bad", ["a.b", "has space", "star*", "gt>", ">", "*", "", "tab\tid", "x" * 129])
def test_subject_helpers_reject_unsafe_run_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="no dots, spaces or wildcards"):
        run_events_filter(bad)
    with pytest.raises(ValueError, match="no dots, spaces or wildcards"):
        resume_subject(bad)


@pytest.mark.parametrize("bad", ["a.b", "run *", "x>"])
async def test_writers_reject_unsafe_run_ids(runtime: ProcessHost, bad: str) -> None:
    with pytest.raises(ValueError, match="is not valid"):
        runtime.event_log.writer(bad)
    with pytest.raises(ValueError, match="is not valid"):
        await aethergraph.run_async(bus_graph, {"x": 1}, run_id=bad)


async def test_unacknowledged_events_fail_at_their_deadline(tmp_path: Path) -> None:
    """With no JetStream answering (a silent subscriber takes the subject), appends fail with a clear error."""
    server = start_nats_server(tmp_path, jetstream=False)
    nc = await nats.connect(server.url)
    try:

        async def silent(_msg: object) -> None:
            return None

        await nc.subscribe("ag.evt.>", cb=silent)
        log = JetStreamEventLog(nc, nc.jetstream(), max_event_bytes=256 * 1024, ack_timeout_s=0.2, outage_s=1.0)
        await log.start()
        run_id = new_run_id()
        writer = log.writer(run_id)
        first = writer.append(make_event(run_id, 1))
        second = writer.append(make_event(run_id, 2))
        outcomes = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)
        for outcome in outcomes:
            assert isinstance(outcome, BusUnavailableError)
            assert "AETHERGRAPH_OUTAGE_TOLERANCE_S" in str(outcome)
        with pytest.raises(BusUnavailableError):
            writer.append(make_event(run_id, 3))
        await log.close()
    finally:
        await nc.close()
        server.stop()


async def test_a_synchronously_dispatched_subscription_is_never_a_slow_consumer(runtime: ProcessHost) -> None:
    """Bytes handed to the handler are released: far more than the byte limit can pass through."""
    nc = runtime.bus.nc
    inbox = nc.new_inbox()
    received: list[bytes] = []
    done = asyncio.Event()

    def on_message(msg: Msg) -> None:
        received.append(msg.data)
        if len(received) == 500:
            done.set()

    sub = await nc.subscribe(inbox, pending_bytes_limit=10_000)
    dispatch_synchronously(sub, on_message)
    try:
        for index in range(500):
            await nc.publish(inbox, b"%04d" % index + b"x" * 996)  # 500 kB through a 10 kB limit
        await asyncio.wait_for(done.wait(), timeout=30)
    finally:
        await sub.unsubscribe()
    assert [data[:4] for data in received] == [b"%04d" % i for i in range(500)]
    assert sub._pending_size == 0


async def test_stray_messages_on_a_runs_subjects_fence_out_nobody(runtime: ProcessHost) -> None:
    """Garbage, foreign events and a claim that does not fit the journal, published among a writer's
    pipelined and idle appends, refuse some of its publishes; it reads the run back, finds its journal
    intact, republishes, and every one of its events is committed. A republished event may be stored
    after later ones; readers put the journal back in seq order."""
    run_id = new_run_id()
    js = runtime.bus.js
    writer = runtime.event_log.writer(run_id)
    # A claim whose epoch is not its seq never opens an epoch (a well-formed event that fits the journal's
    # next position is indistinguishable from the writer's own: NATS permissions keep those out, see deploy/).
    stale_claim = encode_event(msgspec.structs.replace(make_claim(run_id, 40), epoch=7))
    strays = [
        (event_subject(run_id, "run.claimed"), b"not json"),
        (event_subject(run_id, "log.recorded"), b"\x00\x01garbage"),
        (event_subject(run_id, "run.claimed"), stale_claim),
        (event_subject(run_id, "run.failed"), encode_event(make_event(new_run_id(), 2))),
    ]
    committed: list[int] = []
    appended: list[ev.Event] = []
    for round_, (subject, data) in enumerate(strays):
        batch = [make_event(run_id, seq) for seq in range(round_ * 10 + 1, round_ * 10 + 11)]
        appended += batch
        futures = [writer.append(event) for event in batch[:5]]
        await js.publish(subject, data)
        futures += [writer.append(event) for event in batch[5:]]
        async with asyncio.timeout(30):
            committed += await asyncio.gather(*futures)
    records = await read_events(runtime, run_id)
    journal = journal_chain(record.event for record in records)
    assert journal == appended
    stream_seq_of = {record.event.seq: record.stream_seq for record in records if record.event in appended}
    assert committed == [stream_seq_of[seq] for seq in range(1, 41)]
    assert await run_message_count(runtime, run_id) == 40 + len(strays)
