"""Resume commands on ``ag.cmd.resume.<run_id>`` and the outcomes workers publish on ``ag.cmd.outcome.<run_id>``.

``aethergraph.resume`` checks a resume against the run's journal before it
publishes anything; a command published some other way (here: raw JSON with
the test's NATS client) is checked again by the worker, which publishes why it
refused it. One in-process worker serves the whole module; tests about which
worker handles a command pause it and run their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from helpers import chain_of, read_events

import aethergraph
from aethergraph import NodeContext, RunHandle, graph_fn, tool
from aethergraph.bus.commands import ResumeOutcome
from aethergraph.bus.event_log import StoredRecord
from aethergraph.core.errors import GraphNotFoundError, ResumeRejectedError, RunFailedError, RunNotFoundError
from aethergraph.core.ids import new_run_id
from aethergraph.core.journal.replay import ChainBuilder
from aethergraph.core.model.registry import must_get_graph
from aethergraph.core.model.spec import CallableSpec, build_spec
from aethergraph.core.run.resume import AlreadyAnswered, JournalState, accept_resume, journal_state
from aethergraph.core.wire import events as ev
from aethergraph.host.runs import Suspended
from aethergraph.host.worker import Worker
from aethergraph.runtime import ProcessHost, load_target

SAFETY_S = 30.0
"""Bound on anything awaited, so a hang fails the test instead of blocking the session."""

AFTER: list[str] = []  # run id per execution of trc_after
GATES: dict[str, asyncio.Event] = {}
ENTERED: dict[str, asyncio.Event] = {}


@tool(name="trc_after", outputs=["n"])
def trc_after(text: str, *, context: NodeContext) -> dict[str, int]:
    AFTER.append(context.run_id)
    return {"n": len(text)}


@tool(name="trc_block", outputs=[])
async def trc_block(gate: str) -> dict[str, Any]:
    ENTERED[gate].set()
    await GATES[gate].wait()
    return {}


@graph_fn(name="trc_ask", outputs=["answer", "n"])
async def trc_ask(*, context: NodeContext) -> dict[str, Any]:
    answer = await context.channel().ask_text("answer?")
    counted = await trc_after(answer)
    return {"answer": answer, "n": counted["n"]}


@graph_fn(name="trc_two", outputs=["first", "second"])
async def trc_two(*, context: NodeContext) -> dict[str, Any]:
    first = await context.channel().ask_text("first?")
    second = await context.channel().ask_text("second?")
    return {"first": first, "second": second}


@graph_fn(name="trc_gather", outputs=["a", "b"])
async def trc_gather(*, context: NodeContext) -> dict[str, Any]:
    console = context.channel()
    a, b = await asyncio.gather(console.ask_text("a?"), console.ask_text("b?"))
    return {"a": a, "b": b}


@graph_fn(name="trc_approve", outputs=["decision"])
async def trc_approve(*, context: NodeContext) -> dict[str, Any]:
    return {"decision": await context.channel().ask_approval("merge?")}


@graph_fn(name="trc_done", outputs=["v"])
async def trc_done() -> dict[str, Any]:
    return {"v": 1}


@graph_fn(name="trc_fail", outputs=["v"])
async def trc_fail() -> dict[str, Any]:
    raise ValueError("trc_fail always fails")


@graph_fn(name="trc_gated", outputs=["v"])
async def trc_gated(gate: str) -> dict[str, Any]:
    await trc_block(gate)
    return {"v": gate}


async def _trc_hidden(*, context: NodeContext) -> dict[str, Any]:
    return {"answer": await context.channel().ask_text("hidden?")}


# Built without registering it: no worker that looks graphs up by name knows it.
TRC_HIDDEN = build_spec(_trc_hidden, kind="graph_fn", name="trc_hidden", outputs=["answer"])


# --- workers ----------------------------------------------------------------------------------------------


class WorkerSlot:
    """The module's worker: one consumer of resume commands at a time, paused by tests that run their own."""

    def __init__(self, rt: ProcessHost) -> None:
        self.rt = rt
        self.worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, **options: Any) -> Worker:
        assert self.worker is None, "one worker at a time"
        worker = Worker(self.rt.driver, self.rt.commands, **options)
        task = asyncio.create_task(worker.serve())
        async with asyncio.timeout(SAFETY_S):
            ready = asyncio.ensure_future(worker.ready.wait())
            await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()  # raise why the worker stopped
        self.worker, self._task = worker, task
        return worker

    async def stop(self) -> None:
        if self.worker is not None and self._task is not None:
            self.worker.stop()
            async with asyncio.timeout(SAFETY_S):
                await self._task
        self.worker, self._task = None, None

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No worker in the block (the test starts its own); the module's worker again after it."""
        await self.stop()
        try:
            yield
        finally:
            await self.stop()
            await self.start()


@pytest.fixture(scope="module")
async def slot(runtime: ProcessHost) -> AsyncIterator[WorkerSlot]:
    workers = WorkerSlot(runtime)
    await workers.start()
    try:
        yield workers
    finally:
        await workers.stop()


# --- helpers ----------------------------------------------------------------------------------------------


async def waiting_run(
    rt: ProcessHost, target: object | CallableSpec, inputs: dict[str, Any] | None = None
) -> RunHandle:
    """Start a run and return its handle once it has suspended on a wait."""
    spec = target if isinstance(target, CallableSpec) else load_target(target)
    run_id = new_run_id()
    task = rt.driver.start(spec, spec.bind((), dict(inputs or {})), run_id)
    async with asyncio.timeout(SAFETY_S):
        end = await task
    assert isinstance(end, Suspended), end
    return RunHandle(run_id, rt.env, task)


async def records(rt: ProcessHost, run_id: str) -> list[tuple[int, str, int]]:
    """The run's stored events as (stream seq, type, run seq): equal lists mean nothing was written."""
    stored: list[StoredRecord] = await read_events(rt, run_id)
    return [(r.stream_seq, r.event.__struct_config__.tag, r.event.seq) for r in stored]


async def commands_published(rt: ProcessHost, run_id: str) -> int:
    """How many resume commands AG_COMMANDS holds for the run."""
    info = await rt.bus.js.stream_info("AG_COMMANDS", subjects_filter=f"ag.cmd.resume.{run_id}")
    return sum((info.state.subjects or {}).values())


async def publish_raw(rt: ProcessHost, run_id: str, body: bytes | dict[str, Any]) -> int:
    """Publish a resume command body as is, bypassing ``aethergraph.resume``'s checks; returns its stream seq."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    ack = await rt.bus.js.publish(f"ag.cmd.resume.{run_id}", data, stream="AG_COMMANDS")
    return int(ack.seq)


async def outcomes_of(outcomes: asyncio.Queue[ResumeOutcome], *command_seqs: int) -> list[ResumeOutcome]:
    """The first outcome published for each command, in the order of ``command_seqs`` (they may arrive in any)."""
    found: dict[int, ResumeOutcome] = {}
    async with asyncio.timeout(SAFETY_S):
        while not all(seq in found for seq in command_seqs):
            outcome = await outcomes.get()
            found.setdefault(outcome.command_seq, outcome)
    return [found[seq] for seq in command_seqs]


async def outcome_of(outcomes: asyncio.Queue[ResumeOutcome], command_seq: int) -> ResumeOutcome:
    [outcome] = await outcomes_of(outcomes, command_seq)
    return outcome


async def resume_ok(run_id: str, payload: Any, wait_id: str | None = None) -> ResumeOutcome:
    outcome = await aethergraph.resume(run_id, payload, wait_id=wait_id, timeout=SAFETY_S)
    assert outcome is not None and outcome.status == "accepted", outcome
    return outcome


async def rejected(run_id: str, payload: Any = None, wait_id: str | None = None) -> ResumeRejectedError:
    with pytest.raises(ResumeRejectedError) as info:
        await aethergraph.resume(run_id, payload, wait_id=wait_id, timeout=SAFETY_S)
    return info.value


async def until(rt: ProcessHost, run_id: str, check: Callable[[JournalState], bool]) -> JournalState:
    """Follow the run's journal until its state satisfies ``check``; return that state."""
    builder = ChainBuilder()
    async with asyncio.timeout(SAFETY_S):
        async for record in rt.event_log.read_run(run_id, follow=True):
            if builder.add(record.event) and check(state := journal_state(run_id, builder.chain)):
                return state
    raise AssertionError(f"stopped reading run {run_id}")


def only_wait_id(state: JournalState) -> str:
    [wait_id] = state.open_waits
    return str(wait_id)


# --- accepted resumes and their outcome ---------------------------------------------------------------------


async def test_resume_publishes_a_command_and_returns_the_accepted_outcome(
    runtime: ProcessHost, slot: WorkerSlot
) -> None:
    handle = await waiting_run(runtime, trc_ask)
    wait_id = only_wait_id(await handle.state())
    raw: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_outcome(msg: Any) -> None:
        raw.put_nowait(json.loads(msg.data))

    sub = await runtime.bus.nc.subscribe(f"ag.cmd.outcome.{handle.run_id}", cb=on_outcome)
    try:
        outcome = await resume_ok(handle.run_id, "forty-two")
        async with asyncio.timeout(SAFETY_S):
            published = await raw.get()
    finally:
        await sub.unsubscribe()
    assert slot.worker is not None
    # The outcome as any subscriber sees it on ag.cmd.outcome.<run_id>: plain JSON.
    assert published == {
        "run_id": handle.run_id,
        "command_seq": outcome.command_seq,
        "status": "accepted",
        "wait_id": wait_id,
        "reason": "",
        "message": "",
        "worker": slot.worker.worker_id,
    }
    # The command itself, as stored on ag.cmd.resume.<run_id>.
    stored = await runtime.bus.js.get_last_msg("AG_COMMANDS", f"ag.cmd.resume.{handle.run_id}")
    assert stored.seq == outcome.command_seq
    # resume() names the wait it checked the answer against, even when the caller did not.
    assert json.loads(stored.data) == {"wait_id": wait_id, "payload": "forty-two", "expire": False}

    assert await handle.result(timeout=SAFETY_S) == {"answer": "forty-two", "n": 9}
    events = await chain_of(runtime, handle.run_id)
    [resumed] = [e for e in events if isinstance(e, ev.WaitResumed)]
    assert (resumed.wait_id, resumed.payload, resumed.command_seq) == (wait_id, "forty-two", outcome.command_seq)
    assert AFTER.count(handle.run_id) == 1


async def test_resume_without_waiting_for_the_outcome(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_approve)
    assert await aethergraph.resume(handle.run_id, {"approved": True}, wait=False) is None
    assert await handle.result(timeout=SAFETY_S) == {"decision": {"approved": True, "choice": "Approve"}}


async def test_get_run_gives_a_handle_to_a_waiting_run(runtime: ProcessHost, slot: WorkerSlot) -> None:
    started = await waiting_run(runtime, trc_ask)
    handle = await aethergraph.get_run(started.run_id)
    assert await handle.status() == "waiting"
    with pytest.raises(TimeoutError):  # nobody answered yet; the run goes on waiting
        await handle.result(timeout=0.05)
    assert await handle.status() == "waiting"
    await resume_ok(handle.run_id, "ok")
    assert await handle.result(timeout=SAFETY_S) == {"answer": "ok", "n": 2}
    assert await handle.status() == "succeeded"


# --- rejected before publishing --------------------------------------------------------------------------------


async def test_unknown_run_is_rejected_and_has_no_status(runtime: ProcessHost, slot: WorkerSlot) -> None:
    run_id = new_run_id()
    error = await rejected(run_id, "hello")
    assert (error.reason, error.run_id) == ("unknown_run", run_id)
    assert await commands_published(runtime, run_id) == 0
    with pytest.raises(RunNotFoundError):
        await (await aethergraph.get_run(run_id)).status()
    with pytest.raises(ValueError, match="not valid"):
        await aethergraph.resume("not.a.run", "hello")


async def test_finished_runs_cannot_be_resumed(runtime: ProcessHost, slot: WorkerSlot) -> None:
    done = await aethergraph.start_run(trc_done)
    assert await done.result(timeout=SAFETY_S) == {"v": 1}
    failed = await aethergraph.start_run(trc_fail)
    with pytest.raises(ValueError, match="always fails"):
        await failed.result(timeout=SAFETY_S)
    assert (await done.status(), await failed.status()) == ("succeeded", "failed")
    for handle, how in ((done, "succeeded"), (failed, "failed")):
        error = await rejected(handle.run_id, "late")
        assert error.reason == "run_ended" and how in str(error)
        assert await commands_published(runtime, handle.run_id) == 0


async def test_running_run_without_a_wait_is_rejected(runtime: ProcessHost, slot: WorkerSlot) -> None:
    gate = new_run_id()
    GATES[gate], ENTERED[gate] = asyncio.Event(), asyncio.Event()
    handle = await aethergraph.start_run(trc_gated, {"gate": gate})
    try:
        async with asyncio.timeout(SAFETY_S):
            await ENTERED[gate].wait()
        assert await handle.status() == "running"
        error = await rejected(handle.run_id, "anything")
        assert error.reason == "no_open_wait"
        assert await commands_published(runtime, handle.run_id) == 0
    finally:
        GATES[gate].set()
    assert await handle.result(timeout=SAFETY_S) == {"v": gate}


async def test_unknown_wait_id_is_rejected(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_ask)
    wait_id = only_wait_id(await handle.state())
    error = await rejected(handle.run_id, "x", wait_id="w999")
    assert (error.reason, error.wait_id) == ("unknown_wait", "w999")
    assert wait_id in str(error)  # says which waits are open
    assert await commands_published(runtime, handle.run_id) == 0
    await resume_ok(handle.run_id, "x", wait_id=wait_id)
    assert await handle.result(timeout=SAFETY_S) == {"answer": "x", "n": 1}


@pytest.mark.parametrize(
    "payload",
    [{"choice": "Maybe"}, {}, {"approved": "yes"}, "Approve", None],
    ids=["unknown-choice", "empty", "approved-not-bool", "string", "null"],
)
async def test_payload_failing_the_schema_is_rejected_before_publishing(
    runtime: ProcessHost, slot: WorkerSlot, payload: Any
) -> None:
    handle = await waiting_run(runtime, trc_approve)
    wait_id = only_wait_id(await handle.state())
    before = await records(runtime, handle.run_id)
    error = await rejected(handle.run_id, payload)
    assert (error.reason, error.wait_id, error.run_id) == ("invalid_payload", wait_id, handle.run_id)
    assert "does not match its schema" in str(error)
    assert await commands_published(runtime, handle.run_id) == 0
    assert await records(runtime, handle.run_id) == before
    await resume_ok(handle.run_id, {"choice": "Reject"})
    assert await handle.result(timeout=SAFETY_S) == {"decision": {"approved": False, "choice": "Reject"}}


async def test_second_resume_of_a_wait_is_rejected_and_changes_nothing(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_two)
    first = only_wait_id(await handle.state())
    first_outcome = await resume_ok(handle.run_id, "one")
    await until(runtime, handle.run_id, lambda s: s.waiting_on is not None and s.waiting_on.wait_id != first)
    before = await records(runtime, handle.run_id)
    published = await commands_published(runtime, handle.run_id)

    error = await rejected(handle.run_id, "one again", wait_id=first)
    assert (error.reason, error.wait_id) == ("wait_closed", first)
    assert "already resumed" in str(error)
    assert await commands_published(runtime, handle.run_id) == published
    assert await records(runtime, handle.run_id) == before

    # The same command published again (as a redelivery or a second client would): refused by the worker.
    async with runtime.commands.outcomes(handle.run_id) as outcomes:
        seq = await publish_raw(runtime, handle.run_id, {"wait_id": first, "payload": "one again"})
        outcome = await outcome_of(outcomes, seq)
    assert (outcome.status, outcome.reason, outcome.wait_id) == ("rejected", "wait_closed", first)
    assert await records(runtime, handle.run_id) == before

    await resume_ok(handle.run_id, "two")
    assert await handle.result(timeout=SAFETY_S) == {"first": "one", "second": "two"}
    resumed = [e for e in await chain_of(runtime, handle.run_id) if isinstance(e, ev.WaitResumed)]
    assert [r.payload for r in resumed] == ["one", "two"]
    assert resumed[0].command_seq == first_outcome.command_seq


async def test_ambiguous_resume_needs_a_wait_id(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_gather)
    state = await handle.state()
    assert len(state.open_waits) == 2
    error = await rejected(handle.run_id, "x")
    assert error.reason == "ambiguous_wait"
    assert await commands_published(runtime, handle.run_id) == 0
    # The same, published raw: the worker refuses it too.
    async with runtime.commands.outcomes(handle.run_id) as outcomes:
        seq = await publish_raw(runtime, handle.run_id, {"payload": "x"})
        outcome = await outcome_of(outcomes, seq)
    assert (outcome.status, outcome.reason) == ("rejected", "ambiguous_wait")
    assert (await handle.state()).open_waits.keys() == state.open_waits.keys()


# --- checked again by the worker ------------------------------------------------------------------------------


async def test_raw_command_with_an_invalid_payload_is_rejected_by_the_worker(
    runtime: ProcessHost, slot: WorkerSlot
) -> None:
    handle = await waiting_run(runtime, trc_ask)
    wait_id = only_wait_id(await handle.state())
    before = await records(runtime, handle.run_id)
    async with runtime.commands.outcomes(handle.run_id) as outcomes:
        seq = await publish_raw(runtime, handle.run_id, {"wait_id": wait_id, "payload": {"not": "text"}})
        outcome = await outcome_of(outcomes, seq)
    assert (outcome.status, outcome.reason, outcome.wait_id) == ("rejected", "invalid_payload", wait_id)
    assert "does not match its schema" in outcome.message
    # The wait stays open and the journal is untouched ...
    assert await records(runtime, handle.run_id) == before
    state = await handle.state()
    assert state.status == "waiting" and list(state.open_waits) == [wait_id]
    # ... so a valid answer still goes through.
    await resume_ok(handle.run_id, "valid")
    assert await handle.result(timeout=SAFETY_S) == {"answer": "valid", "n": 5}


@pytest.mark.parametrize(
    "body",
    [b"not json at all", b'{"payload": "x", "bogus": true}', b'["w1"]', b'{"wait_id": 7, "payload": "x"}', b""],
    ids=["not-json", "unknown-field", "array", "wait-id-not-a-string", "empty"],
)
async def test_malformed_command_is_rejected_by_the_worker(runtime: ProcessHost, slot: WorkerSlot, body: bytes) -> None:
    handle = await waiting_run(runtime, trc_ask)
    before = await records(runtime, handle.run_id)
    async with runtime.commands.outcomes(handle.run_id) as outcomes:
        seq = await publish_raw(runtime, handle.run_id, body)
        outcome = await outcome_of(outcomes, seq)
    assert (outcome.status, outcome.reason, outcome.run_id) == ("rejected", "malformed", handle.run_id)
    assert "is not valid" in outcome.message
    assert await records(runtime, handle.run_id) == before
    assert await handle.status() == "waiting"
    await resume_ok(handle.run_id, "fine")
    assert await handle.result(timeout=SAFETY_S) == {"answer": "fine", "n": 4}


async def test_raw_command_for_an_unknown_run_is_rejected_by_the_worker(runtime: ProcessHost, slot: WorkerSlot) -> None:
    run_id = new_run_id()
    async with runtime.commands.outcomes(run_id) as outcomes:
        seq = await publish_raw(runtime, run_id, {"payload": "hello"})
        outcome = await outcome_of(outcomes, seq)
    assert (outcome.status, outcome.reason) == ("rejected", "unknown_run")
    assert await read_events(runtime, run_id) == []


async def test_raw_expire_command_expires_the_wait(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_ask)
    wait_id = only_wait_id(await handle.state())
    async with runtime.commands.outcomes(handle.run_id) as outcomes:
        seq = await publish_raw(runtime, handle.run_id, {"wait_id": wait_id, "expire": True})
        outcome = await outcome_of(outcomes, seq)
    assert (outcome.status, outcome.wait_id) == ("accepted", wait_id)
    with pytest.raises(RunFailedError) as info:
        await handle.result(timeout=SAFETY_S)
    assert info.value.error_type == "aethergraph.errors.WaitExpiredError"
    events = await chain_of(runtime, handle.run_id)
    [expired] = [e for e in events if isinstance(e, ev.WaitExpired)]
    assert (expired.wait_id, expired.command_seq) == (wait_id, seq)
    assert AFTER.count(handle.run_id) == 0


async def test_two_resumes_of_one_wait_at_once_apply_exactly_one(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_ask)
    wait_id = only_wait_id(await handle.state())
    async with runtime.commands.outcomes(handle.run_id) as outcomes:
        seqs = [
            await publish_raw(runtime, handle.run_id, {"wait_id": wait_id, "payload": answer})
            for answer in ("first", "second")
        ]
        found = await outcomes_of(outcomes, *seqs)
    assert sorted(o.status for o in found) == ["accepted", "rejected"]
    [refused] = [o for o in found if o.status == "rejected"]
    assert refused.reason in ("wait_closed", "run_ended")  # run_ended if the winner already finished the run
    [accepted] = [o for o in found if o.status == "accepted"]
    winner = "first" if accepted.command_seq == seqs[0] else "second"
    assert await handle.result(timeout=SAFETY_S) == {"answer": winner, "n": len(winner)}
    resumed = [e for e in await chain_of(runtime, handle.run_id) if isinstance(e, ev.WaitResumed)]
    assert [(r.payload, r.command_seq) for r in resumed] == [(winner, accepted.command_seq)]
    assert AFTER.count(handle.run_id) == 1


async def test_two_clients_answering_one_wait_one_is_told_it_closed(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_ask)
    wait_id = only_wait_id(await handle.state())
    results = await asyncio.gather(
        aethergraph.resume(handle.run_id, "left", wait_id=wait_id, timeout=SAFETY_S),
        aethergraph.resume(handle.run_id, "right", wait_id=wait_id, timeout=SAFETY_S),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, ResumeOutcome)]
    refused = [r for r in results if isinstance(r, ResumeRejectedError)]
    assert len(accepted) == 1 and len(refused) == 1, results
    # Refused because the wait closed, or (if the first answer already finished the run) the run ended.
    assert accepted[0].status == "accepted" and refused[0].reason in ("wait_closed", "run_ended")
    outputs = await handle.result(timeout=SAFETY_S)
    assert outputs["answer"] in ("left", "right")
    assert AFTER.count(handle.run_id) == 1


async def test_an_answer_checked_against_one_wait_is_not_applied_to_the_next(
    runtime: ProcessHost, slot: WorkerSlot
) -> None:
    """Two clients answer the first question (e.g. a double-submitted form); neither names the wait."""
    handle = await waiting_run(runtime, trc_two)
    first = only_wait_id(await handle.state())
    second_asked = asyncio.Event()
    lookups = 0

    def one_at_a_time(name: str) -> CallableSpec:
        # Defers every command after the first until the run asks its second question,
        # so the commands are applied one after the other whatever order they are handled in.
        # (A worker also looks up the graphs of dead processes' runs when it starts: count trc_two only.)
        nonlocal lookups
        if name == "trc_two":
            lookups += 1
            if lookups > 1 and not second_asked.is_set():
                raise GraphNotFoundError(f"holding {name} back until the second question is asked")
        return must_get_graph(name)

    try:
        async with runtime.commands.outcomes(handle.run_id) as outcomes, slot.paused():
            # Both answers are checked while the first question is the run's only open wait.
            assert await aethergraph.resume(handle.run_id, "A", wait=False) is None
            assert await aethergraph.resume(handle.run_id, "B", wait=False) is None
            await slot.start(graphs=one_at_a_time, defer_delay_s=0.05)
            await until(runtime, handle.run_id, lambda s: s.waiting_on is not None and s.waiting_on.wait_id != first)
            second_asked.set()
            final: dict[int, ResumeOutcome] = {}
            async with asyncio.timeout(SAFETY_S):
                while len(final) < 2:
                    outcome = await outcomes.get()
                    if outcome.status != "deferred":
                        final[outcome.command_seq] = outcome
        statuses = sorted((o.status, o.reason, o.wait_id) for o in final.values())
        # One answer closes the first question; the other was meant for it too, so it must be refused.
        assert statuses == [("accepted", "", first), ("rejected", "wait_closed", first)], statuses
        state = await handle.state()
        assert state.status == "waiting" and len(state.open_waits) == 1
    finally:
        with contextlib.suppress(ResumeRejectedError):
            await aethergraph.resume(handle.run_id, "cleanup", timeout=SAFETY_S)


async def test_answers_to_two_open_waits_arriving_together_both_apply(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_gather)
    state = await handle.state()
    wait_a, wait_b = sorted(state.open_waits, key=lambda w: state.open_waits[w].seq)
    async with runtime.commands.outcomes(handle.run_id) as outcomes:
        seq_a = await publish_raw(runtime, handle.run_id, {"wait_id": wait_a, "payload": "A"})
        seq_b = await publish_raw(runtime, handle.run_id, {"wait_id": wait_b, "payload": "B"})
        found = await outcomes_of(outcomes, seq_a, seq_b)
    assert [(o.status, o.wait_id) for o in found] == [("accepted", wait_a), ("accepted", wait_b)]
    assert await handle.result(timeout=SAFETY_S) == {"a": "A", "b": "B"}
    events = await chain_of(runtime, handle.run_id)
    assert sorted((e.wait_id, e.payload) for e in events if isinstance(e, ev.WaitResumed)) == [
        (wait_a, "A"),
        (wait_b, "B"),
    ]


async def test_a_redelivered_command_is_a_duplicate(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_ask)
    outcome = await resume_ok(handle.run_id, "once")
    assert await handle.result(timeout=SAFETY_S) == {"answer": "once", "n": 4}
    before = await records(runtime, handle.run_id)
    # What a worker does with the same command (same stream sequence) delivered again: nothing.
    again = await accept_resume(
        runtime,
        handle.run_id,
        wait_id=outcome.wait_id,
        payload="once",
        command_seq=outcome.command_seq,
        graphs=must_get_graph,
    )
    assert isinstance(again, AlreadyAnswered) and (again.wait_id, again.by_this_command) == (outcome.wait_id, True)
    assert await records(runtime, handle.run_id) == before
    with pytest.raises(ResumeRejectedError) as info:  # a different command for it is refused
        await accept_resume(
            runtime,
            handle.run_id,
            wait_id=outcome.wait_id,
            payload="once",
            command_seq=outcome.command_seq + 1_000_000,
            graphs=must_get_graph,
        )
    assert info.value.reason == "run_ended"
    assert AFTER.count(handle.run_id) == 1


# --- which worker handles a command ----------------------------------------------------------------------------


async def test_command_waits_in_the_stream_until_a_worker_runs(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_ask)
    async with runtime.commands.outcomes(handle.run_id) as outcomes:
        async with slot.paused():
            before = await records(runtime, handle.run_id)
            # Checked and published, but no worker answers within the timeout: queued, saying why.
            queued = await aethergraph.resume(handle.run_id, "queued", timeout=0.2)
            assert queued is not None and queued.status == "queued" and queued.reason in ("no_answer", "no_process")
            assert await commands_published(runtime, handle.run_id) == 1
            assert await records(runtime, handle.run_id) == before
            assert await handle.status() == "waiting"
        # The module's worker is back and takes the queued command.
        async with asyncio.timeout(SAFETY_S):
            outcome = await outcomes.get()
    assert outcome.status == "accepted"
    assert await handle.result(timeout=SAFETY_S) == {"answer": "queued", "n": 6}


async def test_unknown_graph_is_deferred_until_a_worker_that_knows_it(runtime: ProcessHost, slot: WorkerSlot) -> None:
    with pytest.raises(GraphNotFoundError):
        must_get_graph("trc_hidden")
    handle = await waiting_run(runtime, TRC_HIDDEN)
    looked_up = 0
    deferred_twice = asyncio.Event()

    def ignorant(name: str) -> CallableSpec:
        nonlocal looked_up
        if name == "trc_hidden":
            looked_up += 1
            if looked_up >= 2:
                deferred_twice.set()
        return must_get_graph(name)

    def knowing(name: str) -> CallableSpec:
        return TRC_HIDDEN if name == "trc_hidden" else must_get_graph(name)

    seen: list[ResumeOutcome] = []
    async with runtime.commands.outcomes(handle.run_id) as outcomes, slot.paused():
        before = await records(runtime, handle.run_id)
        await slot.start(graphs=ignorant, defer_delay_s=0.3)
        outcome = await aethergraph.resume(handle.run_id, "found", timeout=SAFETY_S)
        assert outcome is not None
        assert (outcome.status, outcome.reason) == ("deferred", "unknown_graph")
        assert "trc_hidden" in outcome.message
        async with asyncio.timeout(SAFETY_S):
            await deferred_twice.wait()  # delivered again, deferred again: the command stays queued
        await slot.stop()
        assert await records(runtime, handle.run_id) == before
        assert await handle.status() == "waiting"

        await slot.start(graphs=knowing)
        async with asyncio.timeout(SAFETY_S):
            while not seen or seen[-1].status != "accepted":
                seen.append(await outcomes.get())
        assert await handle.result(timeout=SAFETY_S) == {"answer": "found"}
    # Announced as deferred once (when first delivered), then accepted: one command throughout.
    assert [(o.status, o.command_seq) for o in seen] == [
        ("deferred", outcome.command_seq),
        ("accepted", outcome.command_seq),
    ]


async def test_serve_worker_serves_until_stopped(runtime: ProcessHost, slot: WorkerSlot) -> None:
    handle = await waiting_run(runtime, trc_ask)
    stop = asyncio.Event()
    ready = asyncio.Event()
    async with slot.paused():
        serving = asyncio.create_task(aethergraph.serve_worker(stop=stop, ready=ready))
        try:
            async with asyncio.timeout(SAFETY_S):
                await ready.wait()  # it takes commands from here on
            assert not serving.done()
            outcome = await resume_ok(handle.run_id, "served")
            assert await handle.result(timeout=SAFETY_S) == {"answer": "served", "n": 6}
            assert outcome.worker == runtime.worker_id
        finally:
            stop.set()
            async with asyncio.timeout(SAFETY_S):
                await serving
