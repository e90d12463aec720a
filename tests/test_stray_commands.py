"""Stray resume commands change nothing: every command on ``ag.cmd.resume.>`` gets exactly one final outcome.

Commands are published raw, with a plain nats-py client, as any producer on the
bus could: garbage bodies, subjects naming no valid run id, unknown runs and
waits, payloads failing the wait's schema, ended runs, oversize payloads,
commands whose handling fails. Each must be answered once (``rejected`` with
its reason), acknowledged (nothing stays pending on ``ag-resume``), logged once,
and a valid resume published among them still goes through.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest
from helpers import eventually
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

import aethergraph
from aethergraph import NodeContext, graph_fn
from aethergraph.bus.commands import ResumeOutcome
from aethergraph.core.errors import GraphNotFoundError
from aethergraph.core.ids import new_run_id
from aethergraph.core.model.registry import must_get_graph
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.resume import AcceptedResume, AlreadyAnswered, accept_resume
from aethergraph.host.resume_commands import RetryPolicy
from aethergraph.host.runs import Suspended
from aethergraph.host.worker import Worker
from aethergraph.runtime import ProcessHost, load_target

SAFETY_S = 30.0
"""Bound on anything awaited, so a hang fails the test instead of blocking the session."""
RETRY = RetryPolicy(max_attempts=3, retry_delay_s=0.02, defer_delay_s=0.05, max_defer_delay_s=0.2)


@graph_fn(name="sc_ask", outputs=["answer"])
async def sc_ask(*, context: NodeContext) -> dict[str, Any]:
    return {"answer": await context.channel().ask_text("answer?")}


@graph_fn(name="sc_approve", outputs=["decision"])
async def sc_approve(*, context: NodeContext) -> dict[str, Any]:
    return {"decision": await context.channel().ask_approval("merge?")}


@graph_fn(name="sc_boom", outputs=["answer"])
async def sc_boom(*, context: NodeContext) -> dict[str, Any]:
    return {"answer": await context.channel().ask_text("never answered")}


@graph_fn(name="sc_done", outputs=["v"])
async def sc_done() -> dict[str, Any]:
    return {"v": 1}


@graph_fn(name="sc_hidden", outputs=["answer"])
async def sc_hidden(*, context: NodeContext) -> dict[str, Any]:
    return {"answer": await context.channel().ask_text("hidden?")}


HIDDEN: set[str] = set()
"""Graph names the worker's lookup does not know (until a test lets them through)."""


def lookup(name: str) -> CallableSpec:
    """The worker's graph lookup: ``sc_boom`` fails unexpectedly, names in HIDDEN are unknown."""
    if name == "sc_boom":
        raise RuntimeError("the graph lookup broke (as a test wants)")
    if name in HIDDEN:
        raise GraphNotFoundError(f"graph {name!r} is hidden from this worker")
    return must_get_graph(name)


@pytest.fixture(scope="module")
async def worker(runtime: ProcessHost) -> AsyncIterator[Worker]:
    serving = Worker(runtime.driver, runtime.commands, graphs=lookup, retry=RETRY)
    task = asyncio.create_task(serving.serve())
    async with asyncio.timeout(SAFETY_S):
        await serving.ready.wait()
    try:
        yield serving
    finally:
        serving.stop()
        async with asyncio.timeout(SAFETY_S):
            await task


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[nats.NATS]:
    """A plain nats-py client: what any non-Python producer of resume commands looks like."""
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


async def waiting_run(rt: ProcessHost, target: object) -> tuple[str, str]:
    """Start a run here; return (run id, its open wait) once it suspended."""
    spec = load_target(target)
    run_id = new_run_id()
    task = rt.driver.start(spec, spec.bind((), {}), run_id)
    async with asyncio.timeout(SAFETY_S):
        end = await task
    assert isinstance(end, Suspended), end
    return run_id, end.wait_id


async def publish(nc: nats.NATS, subject: str, body: bytes | dict[str, Any]) -> int:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    ack = await nc.jetstream().publish(subject, data, stream="AG_COMMANDS")
    return int(ack.seq)


async def stored_outcomes(rt: ProcessHost, after_seq: int) -> list[tuple[str, ResumeOutcome]]:
    """Every outcome stored on AG_COMMANDS after stream sequence ``after_seq``, with its subject."""
    sub = await rt.bus.js.pull_subscribe(
        "ag.cmd.outcome.>",
        stream="AG_COMMANDS",
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after_seq + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=5.0,
        ),
    )
    found: list[tuple[str, ResumeOutcome]] = []
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending:
            batch = await sub.fetch(min(pending, 256), timeout=SAFETY_S)
            found += [(m.subject, msgspec.json.decode(m.data, type=ResumeOutcome)) for m in batch]
            pending = batch[-1].metadata.num_pending
    finally:
        await sub.unsubscribe()
    return found


async def final_outcomes(rt: ProcessHost, after_seq: int, seqs: list[int]) -> dict[int, tuple[str, ResumeOutcome]]:
    """Once every command in ``seqs`` has a final outcome: each one's (subject, outcome); asserts there is one each."""

    async def all_final() -> list[tuple[str, ResumeOutcome]] | None:
        found = [(s, o) for s, o in await stored_outcomes(rt, after_seq) if o.status != "deferred"]
        return found if {o.command_seq for _, o in found} >= set(seqs) else None

    found = await eventually(all_final, "every command's final outcome", timeout_s=SAFETY_S)
    per_command: dict[int, list[tuple[str, ResumeOutcome]]] = {}
    for subject, outcome in found:
        per_command.setdefault(outcome.command_seq, []).append((subject, outcome))
    assert all(len(per_command[seq]) == 1 for seq in seqs), {s: per_command[s] for s in seqs}
    return {seq: per_command[seq][0] for seq in seqs}


async def nothing_pending(rt: ProcessHost) -> None:
    """``ag-resume`` holds no command that is undelivered or delivered and not acknowledged."""

    async def drained() -> bool | None:
        info = await rt.bus.js.consumer_info("AG_COMMANDS", "ag-resume")
        return True if info.num_pending == 0 and info.num_ack_pending == 0 else None

    await eventually(drained, "ag-resume to have nothing pending", timeout_s=SAFETY_S)


async def last_seq(rt: ProcessHost) -> int:
    return int((await rt.bus.js.stream_info("AG_COMMANDS")).state.last_seq)


async def test_every_stray_command_gets_one_outcome_and_a_valid_resume_among_them_applies(
    runtime: ProcessHost, worker: Worker, raw: nats.NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aethergraph.worker")
    ask_id, ask_wait = await waiting_run(runtime, sc_ask)
    approve_id, approve_wait = await waiting_run(runtime, sc_approve)
    boom_id, _ = await waiting_run(runtime, sc_boom)
    done = await aethergraph.start_run(sc_done)
    assert await done.result(timeout=SAFETY_S) == {"v": 1}
    unknown_run = new_run_id()
    limit = runtime.settings.max_event_bytes
    before = await last_seq(runtime)

    cases: dict[str, tuple[str, bytes | dict[str, Any]]] = {
        "garbage": (f"ag.cmd.resume.{ask_id}", b"not json"),
        "invalid-run-id": ("ag.cmd.resume.r$x", {"payload": "x"}),
        "dotted-subject": ("ag.cmd.resume.a.b", {"payload": "x"}),
        "unknown-run": (f"ag.cmd.resume.{unknown_run}", {"payload": "x"}),
        "unknown-wait": (f"ag.cmd.resume.{approve_id}", {"wait_id": "w999", "payload": "x"}),
        "schema": (f"ag.cmd.resume.{approve_id}", {"wait_id": approve_wait, "payload": {"choice": "Maybe"}}),
        "oversize": (f"ag.cmd.resume.{ask_id}", {"wait_id": ask_wait, "payload": "x" * (limit - 1024)}),
        "internal-error": (f"ag.cmd.resume.{boom_id}", {"payload": "x"}),
        "ended": (f"ag.cmd.resume.{done.run_id}", {"payload": "late"}),
    }
    expected = {
        "garbage": "malformed",
        "invalid-run-id": "invalid_run_id",
        "dotted-subject": "invalid_run_id",
        "unknown-run": "unknown_run",
        "unknown-wait": "unknown_wait",
        "schema": "invalid_payload",
        "oversize": "payload_too_large",
        "internal-error": "internal_error",
        "ended": "run_ended",
    }
    seqs: dict[str, int] = {}
    for name, (subject, body) in list(cases.items())[:4]:
        seqs[name] = await publish(raw, subject, body)
    seqs["valid"] = await publish(raw, f"ag.cmd.resume.{ask_id}", {"wait_id": ask_wait, "payload": "fine"})
    for name, (subject, body) in list(cases.items())[4:]:
        seqs[name] = await publish(raw, subject, body)

    found = await final_outcomes(runtime, before, list(seqs.values()))
    subject, accepted = found[seqs["valid"]]
    assert (subject, accepted.status, accepted.wait_id) == (f"ag.cmd.outcome.{ask_id}", "accepted", ask_wait)
    assert await (await aethergraph.get_run(ask_id)).result(timeout=SAFETY_S) == {"answer": "fine"}
    for name, reason in expected.items():
        subject, outcome = found[seqs[name]]
        assert (outcome.status, outcome.reason) == ("rejected", reason), (name, outcome)
        assert outcome.message, name
        target = cases[name][0].removeprefix("ag.cmd.resume.")
        assert (subject, outcome.run_id) == (f"ag.cmd.outcome.{target}", target), name
    assert "AETHERGRAPH_MAX_EVENT_BYTES" in found[seqs["oversize"]][1].message
    assert "3 deliveries" in found[seqs["internal-error"]][1].message
    await nothing_pending(runtime)
    # The failing command's traceback is logged once, not on every delivery.
    tracebacks = [r for r in caplog.records if r.exc_info and f"resume {seqs['internal-error']} " in r.getMessage()]
    assert len(tracebacks) == 1


async def test_a_command_for_an_unknown_graph_is_deferred_and_logged_once_then_applied(
    runtime: ProcessHost, worker: Worker, raw: nats.NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aethergraph.worker")
    run_id, wait_id = await waiting_run(runtime, sc_hidden)
    before = await last_seq(runtime)
    HIDDEN.add("sc_hidden")
    try:
        seq = await publish(raw, f"ag.cmd.resume.{run_id}", {"payload": "found"})

        async def redelivered() -> bool | None:
            info = await runtime.bus.js.consumer_info("AG_COMMANDS", "ag-resume")
            return True if info.num_redelivered and info.delivered.stream_seq >= seq else None

        await eventually(redelivered, "the command to be delivered again")
        # Put back again and again (with a growing delay); announced once, before the first put-back.
        deferrals = [o for _, o in await stored_outcomes(runtime, before) if o.command_seq == seq]
        assert [(o.status, o.reason) for o in deferrals] == [("deferred", "unknown_graph")]
    finally:
        HIDDEN.discard("sc_hidden")
    found = await final_outcomes(runtime, before, [seq])
    assert (found[seq][1].status, found[seq][1].wait_id) == ("accepted", wait_id)
    assert await (await aethergraph.get_run(run_id)).result(timeout=SAFETY_S) == {"answer": "found"}
    logged = [r for r in caplog.records if f"resume {seq} " in r.getMessage() and "deferred" in r.getMessage()]
    assert len(logged) == 1
    await nothing_pending(runtime)


async def test_a_command_handled_twice_has_one_stored_outcome(
    runtime: ProcessHost, worker: Worker, raw: nats.NATS
) -> None:
    """A second handling of a command (its acknowledgement was lost) publishes its outcome again: dropped."""
    run_id, wait_id = await waiting_run(runtime, sc_ask)
    before = await last_seq(runtime)
    seq = await publish(raw, f"ag.cmd.resume.{run_id}", {"wait_id": wait_id, "payload": "once"})
    found = await final_outcomes(runtime, before, [seq])
    outcome = found[seq][1]
    assert (outcome.status, outcome.wait_id) == ("accepted", wait_id)
    # The answer journaled: handled again (a redelivery), the command changes nothing and answers "accepted"
    # again, which JetStream drops as a duplicate of the stored outcome (Nats-Msg-Id outcome:<seq>).
    again = await accept_resume(
        runtime.env, run_id, wait_id=None, payload="once", command_seq=seq, graphs=must_get_graph
    )
    assert isinstance(again, AlreadyAnswered) and again.by_this_command
    await runtime.commands.publish_outcome(outcome, msg_id=f"outcome:{seq}")
    assert [o for _, o in await stored_outcomes(runtime, before) if o.command_seq == seq] == [outcome]
    assert await (await aethergraph.get_run(run_id)).result(timeout=SAFETY_S) == {"answer": "once"}


async def test_a_command_redelivered_after_its_answer_was_stored_is_answered_accepted(
    runtime: ProcessHost, worker: Worker, raw: nats.NATS
) -> None:
    """The kill between answer and outcome, made deterministic: the answer is stored by hand under the
    command's stream sequence, the command stays on ``ag-resume``, and the worker then handles it."""
    run_id, wait_id = await waiting_run(runtime, sc_ask)
    before = await last_seq(runtime)
    HIDDEN.add("sc_ask")  # the worker only defers the command until the answer is stored
    try:
        seq = await publish(raw, f"ag.cmd.resume.{run_id}", {"payload": "by hand"})
        accepted = await accept_resume(
            runtime.env, run_id, wait_id=None, payload="by hand", command_seq=seq, graphs=must_get_graph
        )
        assert isinstance(accepted, AcceptedResume)
        runtime.driver.drive(accepted.root_run_id, accepted.continuation)  # as the dead worker's successor would
    finally:
        HIDDEN.discard("sc_ask")
    found = await final_outcomes(runtime, before, [seq])
    outcome = found[seq][1]
    assert (outcome.status, outcome.wait_id) == ("accepted", wait_id)
    assert "earlier delivery" in outcome.message
    assert await (await aethergraph.get_run(run_id)).result(timeout=SAFETY_S) == {"answer": "by hand"}
    await nothing_pending(runtime)


async def test_a_run_with_an_undecodable_message_on_its_subject_gets_one_outcome(
    runtime: ProcessHost, worker: Worker, raw: nats.NATS
) -> None:
    """8 bytes of garbage among a waiting run's events change nothing: the journal read skips them, the
    resume is accepted once and the run completes."""
    run_id, wait_id = await waiting_run(runtime, sc_ask)
    await raw.jetstream().publish(f"ag.evt.{run_id}.log.recorded", b"not json", stream="AG_EVENTS")
    before = await last_seq(runtime)
    seq = await publish(raw, f"ag.cmd.resume.{run_id}", {"wait_id": wait_id, "payload": "x"})
    outcome = (await final_outcomes(runtime, before, [seq]))[seq][1]
    assert (outcome.status, outcome.wait_id) == ("accepted", wait_id), outcome
    assert await (await aethergraph.get_run(run_id)).result(timeout=SAFETY_S) == {"answer": "x"}
    await nothing_pending(runtime)
