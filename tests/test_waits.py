"""Durable waits inside graphs: channels, ``Wait``, ``DualStageTool``, checkpoints, deadlines, nesting.

Every wait here is durable (the test process's standard input is not a terminal):
the run journals ``wait.requested`` and ``run.waiting`` and releases its task; a
resume command, handled by an in-process :class:`Worker` on the same bus, commits
``wait.resumed`` (or ``wait.expired``) and continues the run by replay. The graph
tests run twice, live and in always-suspend mode (the run also suspends after
every step and continues by replay from the stream), like ``test_runs.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import pytest
from helpers import chain_of

import aethergraph
from aethergraph import DualStageTool, NodeContext, RunHandle, Wait, graph_fn, tool
from aethergraph.core.errors import (
    DecorationError,
    NotInRunError,
    ResumeRejectedError,
    RunFailedError,
    WaitExpiredError,
)
from aethergraph.core.ids import new_run_id
from aethergraph.core.journal.replay import ChainBuilder
from aethergraph.core.model.registry import register_graph
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.resume import JournalState, journal_state
from aethergraph.core.wire import events as ev
from aethergraph.host.runs import Suspended
from aethergraph.host.worker import Worker
from aethergraph.runtime import ProcessHost, load_target

SAFETY_S = 30.0
"""Bound on anything awaited, so a hang fails the test instead of blocking the session."""

# --- side effects, keyed by run id so tests (and both modes) never see each other's -----------------

EXECUTED: list[tuple[str, str]] = []  # (tool, run_id) per real execution of a tool
SETUPS: list[dict[str, Any]] = []  # one per execution of TwReview.setup
RESUMES: list[dict[str, Any]] = []  # one per execution of TwReview.on_resume
BODY_KEYS: list[tuple[str, str]] = []  # (run_id, idempotency key) per execution of tw_greet's body
LOADED: list[tuple[str, Any]] = []  # (run_id, checkpoint) per execution of tw_checkpointed's body
GATES: dict[str, asyncio.Event] = {}
ENTERED: dict[str, asyncio.Event] = {}


def executions(tool_name: str, run_id: str) -> int:
    return EXECUTED.count((tool_name, run_id))


def of_run(entries: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["run_id"] == run_id]


# --- graphs and tools (module level: the worker finds them by name) ----------------------------------


@tool(name="tw_prepare", outputs=["n"])
def tw_prepare(x: int, *, context: NodeContext) -> dict[str, int]:
    EXECUTED.append(("tw_prepare", context.run_id))
    return {"n": x + 1}


@tool(name="tw_other", outputs=["n"])
def tw_other(x: int, *, context: NodeContext) -> dict[str, int]:
    EXECUTED.append(("tw_other", context.run_id))
    return {"n": x - 1}


@tool(name="tw_block", outputs=[])
async def tw_block(gate: str, *, context: NodeContext) -> dict[str, Any]:
    EXECUTED.append(("tw_block", context.run_id))
    ENTERED[gate].set()
    await GATES[gate].wait()
    return {}


@graph_fn(name="tw_greet", outputs=["n", "name"])
async def tw_greet(x: int, *, context: NodeContext) -> dict[str, Any]:
    prepared = await tw_prepare(x)
    console = context.channel()
    await console.send_text(f"hello {prepared['n']}")
    BODY_KEYS.append((context.run_id, context.idempotency_key()))
    name = await console.ask_text("your name?")
    await console.send_text(f"thanks {name}")
    return {"n": prepared["n"], "name": name}


@graph_fn(name="tw_gated", outputs=["decision"])
async def tw_gated(gate: str, *, context: NodeContext) -> dict[str, Any]:
    await tw_block(gate)
    return {"decision": await context.channel().ask_approval("ship it?")}


@graph_fn(name="tw_approve", outputs=["decision"])
async def tw_approve(options: list[str], *, context: NodeContext) -> dict[str, Any]:
    return {"decision": await context.channel().ask_approval("deploy?", options=options)}


@graph_fn(name="tw_files", outputs=["files", "count"])
async def tw_files(*, context: NodeContext) -> dict[str, Any]:
    files = await context.channel().ask_files("upload the inputs")
    counted = await tw_prepare(len(files))
    return {"files": files, "count": counted["n"] - 1}


PAYMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["amount"],
    "properties": {"amount": {"type": "integer", "minimum": 1}, "note": {"type": "string"}},
}


@graph_fn(name="tw_custom", outputs=["payment"])
async def tw_custom(*, context: NodeContext) -> dict[str, Any]:
    await context.channel("slack:#billing").send_text("invoice sent")
    payment = await context.wait(
        Wait(kind="payment", prompt="pay invoice 7", schema=PAYMENT_SCHEMA, channel="slack:#billing")
    )
    return {"payment": payment}


@graph_fn(name="tw_named", outputs=["decision"])
async def tw_named(*, context: NodeContext) -> dict[str, Any]:
    ops = context.channel("slack:#ops")
    await ops.send_text("about to deploy")
    return {"decision": await ops.ask_approval("deploy to prod?")}


@graph_fn(name="tw_two_questions", outputs=["first", "second"])
async def tw_two_questions(*, context: NodeContext) -> dict[str, Any]:
    console = context.channel()
    first = await console.ask_text("first?")
    await tw_prepare(len(first))
    second = await console.ask_text(f"second, after {first}?")
    return {"first": first, "second": second}


@graph_fn(name="tw_gather", outputs=["a", "b"])
async def tw_gather(*, context: NodeContext) -> dict[str, Any]:
    console = context.channel()
    a, b = await asyncio.gather(console.ask_text("a?"), console.ask_text("b?"))
    return {"a": a, "b": b}


REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["approved"],
    "properties": {"approved": {"type": "boolean"}, "notes": {"type": "string"}},
}


class TwReview(DualStageTool):
    name = "tw_review"
    outputs: ClassVar[Sequence[str] | None] = ["approved", "notes", "ticket", "item", "priority"]

    async def setup(self, item: str, priority: int = 1, *, context: NodeContext) -> Wait:
        ticket = f"T-{item}-{priority}"
        await context.checkpoint("ticket", {"ticket": ticket})
        SETUPS.append(
            {
                "run_id": context.run_id,
                "node_id": context.node_id,
                "item": item,
                "priority": priority,
                "key": context.idempotency_key(),
            }
        )
        return Wait(kind="review", prompt=f"review {item} ({ticket})", schema=REVIEW_SCHEMA)

    async def on_resume(self, resume: Any, item: str, priority: int = 1, *, context: NodeContext) -> dict[str, Any]:
        saved = await context.load_checkpoint("ticket")
        RESUMES.append(
            {
                "run_id": context.run_id,
                "node_id": context.node_id,
                "resume": resume,
                "item": item,
                "priority": priority,
                "key": context.idempotency_key(),
            }
        )
        return {
            "approved": resume["approved"],
            "notes": resume.get("notes", ""),
            "ticket": saved["ticket"] if saved else None,
            "item": item,
            "priority": priority,
        }


tw_review = TwReview()


class TwPlainJob(DualStageTool):
    """A dual-stage tool whose setup returns None (wait kind = the tool's name) and takes no context."""

    outputs: ClassVar[Sequence[str] | None] = ["echo"]

    async def setup(self, job: str) -> None:
        return None

    async def on_resume(self, resume: Any, job: str) -> dict[str, Any]:
        return {"echo": {"job": job, "resume": resume}}


tw_plain_job = TwPlainJob()


@graph_fn(name="tw_reviewing", outputs=["review", "after"])
async def tw_reviewing(item: str, *, context: NodeContext) -> dict[str, Any]:
    await tw_prepare(1)
    review = await tw_review(item=item, priority=3)
    after = await tw_prepare(2)
    return {"review": review, "after": after["n"]}


@graph_fn(name="tw_plain_jobs", outputs=["echo"])
async def tw_plain_jobs() -> dict[str, Any]:
    return await tw_plain_job(job="render")


@graph_fn(name="tw_review_then_ask", outputs=["approved", "more"])
async def tw_review_then_ask(*, context: NodeContext) -> dict[str, Any]:
    review = await tw_review(item="spec")
    more = await context.channel().ask_text("anything else?")
    return {"approved": review["approved"], "more": more}


@tool(name="tw_notify", outputs=[])
async def tw_notify(*, context: NodeContext) -> dict[str, Any]:
    await context.channel("slack:#ops").send_text("job started")
    return {}


@tool(name="tw_stamp", outputs=["at"])
def tw_stamp(*, context: NodeContext) -> dict[str, Any]:
    return {"at": context.now().isoformat()}


@graph_fn(name="tw_inner_step_then_ask", outputs=["answer"])
async def tw_inner_step_then_ask(inner: str, *, context: NodeContext) -> dict[str, Any]:
    await (tw_notify() if inner == "channel" else tw_stamp())
    return {"answer": await context.channel().ask_text("go on?")}


@graph_fn(name="tw_checkpointed", outputs=["before", "after", "answer"])
async def tw_checkpointed(*, context: NodeContext) -> dict[str, Any]:
    before = await context.load_checkpoint("progress", {"step": 0})
    LOADED.append((context.run_id, before))
    if before["step"] == 0:
        await context.checkpoint("progress", {"step": 1, "items": ["a", "b"]})
    answer = await context.channel().ask_text("continue?")
    after = await context.load_checkpoint("progress")
    return {"before": before, "after": after, "answer": answer}


@graph_fn(name="tw_deadline", outputs=["outcome", "expired_wait", "late"])
async def tw_deadline(seconds: float, *, context: NodeContext) -> dict[str, Any]:
    console = context.channel()
    try:
        answer = await console.ask_text("quick?", deadline=dt.timedelta(seconds=seconds))
    except WaitExpiredError as exc:
        late = await console.ask_text("too late; answer at leisure")
        return {"outcome": "expired", "expired_wait": exc.wait_id, "late": late}
    return {"outcome": answer, "expired_wait": None, "late": None}


@graph_fn(name="tw_deadline_uncaught", outputs=["answer"])
async def tw_deadline_uncaught(*, context: NodeContext) -> dict[str, Any]:
    return {"answer": await context.wait(Wait(kind="text", prompt="now!", deadline=dt.timedelta(seconds=0.5)))}


AT_DEADLINE = dt.datetime(2099, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


@graph_fn(name="tw_deadline_at", outputs=["answer"])
async def tw_deadline_at(*, context: NodeContext) -> dict[str, Any]:
    return {"answer": await context.wait(Wait(kind="text", prompt="by 2099", deadline=AT_DEADLINE))}


@graph_fn(name="tw_child", outputs=["answer"])
async def tw_child(question: str, *, context: NodeContext) -> dict[str, Any]:
    await tw_prepare(100)
    return {"answer": await context.channel().ask_text(question)}


@graph_fn(name="tw_parent", outputs=["answer", "n"])
async def tw_parent(*, context: NodeContext) -> dict[str, Any]:
    prepared = await tw_prepare(10)
    child = await tw_child("who are you?")
    return {"answer": child["answer"], "n": prepared["n"]}


@graph_fn(name="tw_child_deadline", outputs=["answer"])
async def tw_child_deadline(*, context: NodeContext) -> dict[str, Any]:
    try:
        return {"answer": await context.channel().ask_text("in time?", deadline=dt.timedelta(seconds=0.3))}
    except WaitExpiredError as exc:
        return {"answer": f"expired {exc.wait_id}"}


@graph_fn(name="tw_parent_deadline", outputs=["answer"])
async def tw_parent_deadline() -> dict[str, Any]:
    return await tw_child_deadline()


@graph_fn(name="tw_evolving", outputs=["answer"])
async def tw_evolving(*, context: NodeContext) -> dict[str, Any]:
    await tw_prepare(1)
    return {"answer": await context.channel().ask_text("still there?")}


# --- helpers --------------------------------------------------------------------------------------------


@pytest.fixture(params=["live", "always_suspend"])
def graph_env(request: pytest.FixtureRequest, runtime: ProcessHost, suspending_runtime: ProcessHost) -> ProcessHost:
    """The wait tests run twice: live, and suspending after every step to continue by replay."""
    return suspending_runtime if request.param == "always_suspend" else runtime


@contextlib.asynccontextmanager
async def serving(env: ProcessHost, graphs: Callable[[str], CallableSpec] | None = None) -> AsyncIterator[Worker]:
    """An in-process worker on ``env`` consuming resume commands until the block ends."""
    worker = Worker(env.driver, env.commands) if graphs is None else Worker(env.driver, env.commands, graphs=graphs)
    serving_task = asyncio.create_task(worker.serve())
    try:
        async with asyncio.timeout(SAFETY_S):
            ready = asyncio.ensure_future(worker.ready.wait())
            await asyncio.wait({ready, serving_task}, return_when=asyncio.FIRST_COMPLETED)
            if serving_task.done():
                ready.cancel()
                serving_task.result()  # raise why the worker stopped
        yield worker
    finally:
        worker.stop()
        async with asyncio.timeout(SAFETY_S):
            await serving_task


@pytest.fixture
async def worker(graph_env: ProcessHost) -> AsyncIterator[Worker]:
    """The only consumer of resume commands during the test, continuing runs on ``graph_env``."""
    async with serving(graph_env) as serving_worker:
        yield serving_worker


def start(
    env: ProcessHost, target: object, inputs: dict[str, Any] | None = None
) -> tuple[RunHandle, asyncio.Task[Any]]:
    """``aethergraph.start_run`` on a given runtime; also returns the task driving the run here."""
    spec = load_target(target)
    run_id = new_run_id()
    task = env.driver.start(spec, spec.bind((), dict(inputs or {})), run_id)
    return RunHandle(run_id, env.env, task), task


async def suspended(task: asyncio.Task[Any]) -> Suspended:
    """The task of a run that waits ends (it does not block) with a :class:`Suspended`."""
    async with asyncio.timeout(SAFETY_S):
        end = await task
    assert isinstance(end, Suspended), f"the run did not suspend: {end!r}"
    return end


async def result(handle: RunHandle) -> dict[str, Any]:
    return await handle.result(timeout=SAFETY_S)


def tags(events: list[ev.Event]) -> list[str]:
    """Event types in order, without ``run.claimed`` (each replay, resume or takeover writes one)."""
    return [event.__struct_config__.tag for event in events if not isinstance(event, ev.RunClaimed)]


def only(events: list[ev.Event], cls: type[ev.Event]) -> list[Any]:
    return [event for event in events if isinstance(event, cls)]


async def statuses_until_end(env: ProcessHost, run_id: str) -> list[str]:
    """The run's status after every journaled event (consecutive repeats dropped), until it ends."""
    builder = ChainBuilder()
    seen: list[str] = []
    async for record in env.event_log.read_run(run_id, follow=True):
        if not builder.add(record.event):
            continue
        status = journal_state(run_id, builder.chain).status
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("succeeded", "failed", "cancelled"):
            break
    return seen


async def until(env: ProcessHost, run_id: str, check: Callable[[JournalState], bool]) -> JournalState:
    """Follow the run's journal until its state satisfies ``check``; return that state."""
    builder = ChainBuilder()
    async with asyncio.timeout(SAFETY_S):
        async for record in env.event_log.read_run(run_id, follow=True):
            if builder.add(record.event) and check(state := journal_state(run_id, builder.chain)):
                return state
    raise AssertionError(f"stopped reading run {run_id}")


async def resume_ok(run_id: str, payload: Any, wait_id: str | None = None) -> Any:
    outcome = await aethergraph.resume(run_id, payload, wait_id=wait_id, timeout=SAFETY_S)
    assert outcome is not None, "no worker answered the resume command"
    assert outcome.status == "accepted", outcome
    return outcome


# --- channel questions: suspend, resume, replay ------------------------------------------------------


async def test_ask_text_suspends_then_a_resume_continues_by_replay(graph_env: ProcessHost, worker: Worker) -> None:
    handle, task = start(graph_env, tw_greet, {"x": 1})
    run_id = handle.run_id
    end = await suspended(task)
    assert (end.run_id, end.wait_run_id, end.kind, end.prompt) == (run_id, run_id, "text", "your name?")

    assert await handle.status() == "waiting"
    state = await handle.state()
    assert list(state.open_waits) == [end.wait_id]
    requested = state.open_waits[end.wait_id]
    assert requested.wait_id == f"w{requested.seq}"
    assert (requested.kind, requested.prompt, requested.channel) == ("text", "your name?", "console")
    assert requested.payload_schema == {"type": "string"}
    assert requested.deadline_us is None and requested.node_id == "root"
    assert state.waiting_on is not None and state.waiting_on.wait_id == end.wait_id
    assert state.waiting_on.wait_run_id == run_id
    assert tags(await chain_of(graph_env, run_id)) == [
        "run.started",
        "tool.called",
        "tool.returned",
        "channel.sent",
        "wait.requested",
        "run.waiting",
    ]

    outcome = await resume_ok(run_id, "Ada")
    assert (outcome.run_id, outcome.wait_id, outcome.worker) == (run_id, end.wait_id, worker.worker_id)
    assert await result(handle) == {"n": 2, "name": "Ada"}
    assert await handle.status() == "succeeded"

    events = await chain_of(graph_env, run_id)
    assert tags(events) == [
        "run.started",
        "tool.called",
        "tool.returned",
        "channel.sent",
        "wait.requested",
        "run.waiting",
        "wait.resumed",
        "channel.sent",
        "run.completed",
    ]
    # Replay neither re-ran the tool nor re-sent the first message.
    assert executions("tw_prepare", run_id) == 1
    assert [sent.text for sent in only(events, ev.ChannelSent)] == ["hello 2", "thanks Ada"]
    [resumed] = only(events, ev.WaitResumed)
    assert (resumed.wait_id, resumed.payload, resumed.parent) == (end.wait_id, "Ada", requested.seq)
    assert resumed.command_seq == outcome.command_seq
    claims = only(events, ev.RunClaimed)
    assert [claim.reason for claim in claims if claim.reason != "replay"] == ["resume"]
    # The body's idempotency key at the same point is the same in every execution.
    keys = {key for owner, key in BODY_KEYS if owner == run_id}
    assert len([owner for owner, _ in BODY_KEYS if owner == run_id]) >= 2
    assert len(keys) == 1
    final = await handle.state()
    assert final.open_waits == {} and list(final.closed_waits) == [end.wait_id]
    assert isinstance(final.ended, ev.RunCompleted)


async def test_status_goes_running_waiting_running_succeeded(graph_env: ProcessHost, worker: Worker) -> None:
    gate = new_run_id()
    GATES[gate], ENTERED[gate] = asyncio.Event(), asyncio.Event()
    run_id = new_run_id()
    observer = asyncio.create_task(statuses_until_end(graph_env, run_id))
    spec = load_target(tw_gated)
    task = graph_env.driver.start(spec, {"gate": gate}, run_id)
    handle = await aethergraph.get_run(run_id)
    try:
        async with asyncio.timeout(SAFETY_S):
            await ENTERED[gate].wait()
            assert await handle.status() == "running"  # inside a tool, no wait yet
            GATES[gate].set()
            assert await handle.wait_for_status("waiting") == "waiting"
        await suspended(task)
        assert await handle.status() == "waiting"
        await resume_ok(run_id, {"approved": True})
        assert await result(handle) == {"decision": {"approved": True, "choice": "Approve"}}
        async with asyncio.timeout(SAFETY_S):
            assert await handle.wait_for_status("succeeded") == "succeeded"
            history = await observer
    finally:
        GATES[gate].set()
        observer.cancel()
    # The resume's claim makes it running again until it completes.
    assert history == ["running", "waiting", "running", "succeeded"]
    assert executions("tw_block", run_id) == 1


@pytest.mark.parametrize(
    ("options", "payload", "expected"),
    [
        (["Approve", "Reject"], {"choice": "Approve"}, {"approved": True, "choice": "Approve"}),
        (["Approve", "Reject"], {"choice": "Reject"}, {"approved": False, "choice": "Reject"}),
        (["Approve", "Reject"], {"approved": True}, {"approved": True, "choice": "Approve"}),
        (["Approve", "Reject"], {"approved": False}, {"approved": False, "choice": "Reject"}),
        (["Ship", "Hold", "Drop"], {"choice": "Hold"}, {"approved": False, "choice": "Hold"}),
        (["Ship", "Hold", "Drop"], {"approved": False}, {"approved": False, "choice": "Drop"}),
        (["Ship", "Hold", "Drop"], {"approved": True, "choice": "Ship"}, {"approved": True, "choice": "Ship"}),
    ],
    ids=["choice-first", "choice-last", "approved-true", "approved-false", "middle", "false-is-last", "both"],
)
async def test_ask_approval_accepts_a_choice_or_approved(
    runtime: ProcessHost, options: list[str], payload: dict[str, Any], expected: dict[str, Any]
) -> None:
    async with serving(runtime):
        handle, task = start(runtime, tw_approve, {"options": options})
        end = await suspended(task)
        assert end.kind == "approval"
        requested = (await handle.state()).open_waits[end.wait_id]
        assert requested.payload_schema["properties"]["choice"] == {"enum": options}
        await resume_ok(handle.run_id, payload)
        assert await result(handle) == {"decision": expected}
    [resumed] = only(await chain_of(runtime, handle.run_id), ev.WaitResumed)
    assert resumed.payload == payload  # the journal keeps the answer as given


async def test_ask_files_returns_the_list(graph_env: ProcessHost, worker: Worker) -> None:
    handle, task = start(graph_env, tw_files)
    end = await suspended(task)
    assert (end.kind, end.prompt) == ("files", "upload the inputs")
    requested = (await handle.state()).open_waits[end.wait_id]
    assert requested.payload_schema == {"type": "array", "items": {"type": "string"}}
    with pytest.raises(ResumeRejectedError) as info:
        await aethergraph.resume(handle.run_id, "report.pdf")  # a string, not a list
    assert info.value.reason == "invalid_payload"
    await resume_ok(handle.run_id, ["report.pdf", "s3://bucket/data.csv"])
    assert await result(handle) == {"files": ["report.pdf", "s3://bucket/data.csv"], "count": 2}
    events = await chain_of(graph_env, handle.run_id)
    assert tags(events)[-4:] == ["wait.resumed", "tool.called", "tool.returned", "run.completed"]
    assert executions("tw_prepare", handle.run_id) == 1


async def test_custom_wait_on_a_named_channel_checks_its_schema(graph_env: ProcessHost, worker: Worker) -> None:
    handle, task = start(graph_env, tw_custom)
    end = await suspended(task)
    assert (end.kind, end.prompt) == ("payment", "pay invoice 7")
    events = await chain_of(graph_env, handle.run_id)
    [sent] = only(events, ev.ChannelSent)
    assert (sent.channel, sent.text) == ("slack:#billing", "invoice sent")
    [requested] = only(events, ev.WaitRequested)
    assert (requested.channel, requested.payload_schema) == ("slack:#billing", PAYMENT_SCHEMA)
    for bad in ({"amount": 0}, {"note": "no amount"}, 5):
        with pytest.raises(ResumeRejectedError) as info:
            await aethergraph.resume(handle.run_id, bad)
        assert info.value.reason == "invalid_payload"
        assert info.value.wait_id == end.wait_id
    assert await chain_of(graph_env, handle.run_id) == events  # refused answers change nothing

    await resume_ok(handle.run_id, {"amount": 12, "note": "paid"}, wait_id=end.wait_id)
    assert await result(handle) == {"payment": {"amount": 12, "note": "paid"}}
    assert len(only(await chain_of(graph_env, handle.run_id), ev.ChannelSent)) == 1


async def test_named_channel_waits_durably_even_where_the_console_answers_inline(runtime: ProcessHost) -> None:
    """A process that may read answers inline (a terminal) still suspends on a named channel's question."""
    interactive = await ProcessHost.open(inline_answers=True)
    try:
        assert interactive.inline_answers
        handle, task = start(interactive, tw_named)
        end = await suspended(task)
        assert (end.kind, end.prompt) == ("approval", "deploy to prod?")
        requested = (await handle.state()).open_waits[end.wait_id]
        assert requested.channel == "slack:#ops"
    finally:
        await interactive.close()
    async with serving(runtime):
        await resume_ok(handle.run_id, {"choice": "Reject"})
        assert await (await aethergraph.get_run(handle.run_id)).result(timeout=SAFETY_S) == {
            "decision": {"approved": False, "choice": "Reject"}
        }


async def test_two_waits_in_sequence_each_answered_once(graph_env: ProcessHost, worker: Worker) -> None:
    handle, task = start(graph_env, tw_two_questions)
    first = await suspended(task)
    await resume_ok(handle.run_id, "alpha")
    # The resumed run goes on and waits again, on a new wait.
    state = await until(
        graph_env, handle.run_id, lambda s: s.waiting_on is not None and first.wait_id in s.closed_waits
    )
    [second_id] = state.open_waits
    assert second_id != first.wait_id
    assert state.open_waits[second_id].prompt == "second, after alpha?"
    assert state.waiting_on is not None and state.waiting_on.wait_id == second_id

    with pytest.raises(ResumeRejectedError) as info:
        await aethergraph.resume(handle.run_id, "again", wait_id=first.wait_id)
    assert info.value.reason == "wait_closed"
    await resume_ok(handle.run_id, "beta")
    assert await result(handle) == {"first": "alpha", "second": "beta"}
    events = await chain_of(graph_env, handle.run_id)
    assert [(r.wait_id, r.payload) for r in only(events, ev.WaitResumed)] == [
        (first.wait_id, "alpha"),
        (second_id, "beta"),
    ]
    assert len(only(events, ev.RunWaiting)) == 2
    assert executions("tw_prepare", handle.run_id) == 1


async def test_two_concurrent_waits_are_ambiguous_until_named(graph_env: ProcessHost, worker: Worker) -> None:
    """``asyncio.gather`` of two questions opens two waits; each is answered by id, in any order."""
    handle, task = start(graph_env, tw_gather)
    end = await suspended(task)
    state = await handle.state()
    assert len(state.open_waits) == 2
    wait_a, wait_b = sorted(state.open_waits, key=lambda wait_id: state.open_waits[wait_id].seq)
    assert [state.open_waits[w].prompt for w in (wait_a, wait_b)] == ["a?", "b?"]
    assert end.wait_id == wait_a
    with pytest.raises(ResumeRejectedError) as info:
        await aethergraph.resume(handle.run_id, "x")
    assert info.value.reason == "ambiguous_wait"
    assert wait_a in str(info.value) and wait_b in str(info.value)

    await resume_ok(handle.run_id, "B", wait_id=wait_b)  # the second one first
    state = await until(graph_env, handle.run_id, lambda s: s.waiting_on is not None and wait_b in s.closed_waits)
    assert list(state.open_waits) == [wait_a]
    assert state.waiting_on is not None and state.waiting_on.wait_id == wait_a
    await resume_ok(handle.run_id, "A")  # the only open wait now: no id needed
    assert await result(handle) == {"a": "A", "b": "B"}
    assert len(only(await chain_of(graph_env, handle.run_id), ev.WaitRequested)) == 2


# --- DualStageTool ---------------------------------------------------------------------------------------


# Steps journaled inside a finished tool (a DualStageTool's wait, a tool's messages and values)
# are not asked for again when the body is replayed; these graphs are checked in both modes.
LIVE_AND_SUSPEND_WITH_INNER_STEPS = pytest.mark.parametrize("graph_env", ["live", "always_suspend"], indirect=True)


@LIVE_AND_SUSPEND_WITH_INNER_STEPS
async def test_dual_stage_tool_sets_up_once_and_resumes_with_payload_and_arguments(
    graph_env: ProcessHost, worker: Worker
) -> None:
    handle, task = start(graph_env, tw_reviewing, {"item": "doc"})
    run_id = handle.run_id
    end = await suspended(task)
    assert (end.kind, end.prompt) == ("review", "review doc (T-doc-3)")
    [setup] = of_run(SETUPS, run_id)
    assert (setup["node_id"], setup["item"], setup["priority"]) == ("tw_review_1", "doc", 3)
    assert of_run(RESUMES, run_id) == []
    requested = (await handle.state()).open_waits[end.wait_id]
    assert (requested.node_id, requested.payload_schema) == ("tw_review_1", REVIEW_SCHEMA)

    with pytest.raises(ResumeRejectedError) as info:
        await aethergraph.resume(run_id, {"notes": "no verdict"})
    assert info.value.reason == "invalid_payload"
    await resume_ok(run_id, {"approved": True, "notes": "lgtm"})
    assert await result(handle) == {
        "review": {"approved": True, "notes": "lgtm", "ticket": "T-doc-3", "item": "doc", "priority": 3},
        "after": 3,
    }
    assert len(of_run(SETUPS, run_id)) == 1  # setup is not run again on resume
    [resumed] = of_run(RESUMES, run_id)
    assert resumed["resume"] == {"approved": True, "notes": "lgtm"}
    assert (resumed["node_id"], resumed["item"], resumed["priority"]) == ("tw_review_1", "doc", 3)
    # The same step has the same idempotency key before and after the suspension.
    assert setup["key"] == resumed["key"] == f"{run_id}:tw_review_1"
    assert executions("tw_prepare", run_id) == 2

    events = await chain_of(graph_env, run_id)
    assert tags(events) == [
        "run.started",
        "tool.called",
        "tool.returned",
        "tool.called",
        "checkpoint.saved",
        "wait.requested",
        "run.waiting",
        "wait.resumed",
        "tool.returned",
        "tool.called",
        "tool.returned",
        "run.completed",
    ]
    review_called = [e for e in only(events, ev.ToolCalled) if e.tool == "tw_review"]
    assert len(review_called) == 1
    assert review_called[0].args == {"item": "doc", "priority": 3}
    [returned] = [e for e in only(events, ev.ToolReturned) if e.tool == "tw_review"]
    assert returned.parent == review_called[0].seq and returned.outputs["approved"] is True


@LIVE_AND_SUSPEND_WITH_INNER_STEPS
async def test_dual_stage_setup_returning_none_waits_on_the_tool_name(graph_env: ProcessHost, worker: Worker) -> None:
    assert tw_plain_job.name == "tw_plain_job"  # the class name in snake case
    handle, task = start(graph_env, tw_plain_jobs)
    end = await suspended(task)
    assert (end.kind, end.prompt) == ("tw_plain_job", "")
    requested = (await handle.state()).open_waits[end.wait_id]
    assert requested.payload_schema == {}  # no schema: any payload is accepted
    await resume_ok(handle.run_id, [1, "two", None])
    assert await result(handle) == {"echo": {"job": "render", "resume": [1, "two", None]}}


async def test_dual_stage_tool_outside_a_run_is_refused(runtime: ProcessHost) -> None:
    with pytest.raises(NotInRunError):
        await tw_review(item="doc")


async def test_dual_stage_tool_followed_by_another_wait(runtime: ProcessHost) -> None:
    """The second resume replays the finished dual-stage step; its recorded wait must not be asked for again."""
    async with serving(runtime):
        handle, task = start(runtime, tw_review_then_ask)
        review = await suspended(task)
        await resume_ok(handle.run_id, {"approved": True})
        state = await until(runtime, handle.run_id, lambda s: s.waiting_on is not None and bool(s.closed_waits))
        assert [w.prompt for w in state.open_waits.values()] == ["anything else?"]
        assert review.wait_id in state.closed_waits
        await resume_ok(handle.run_id, "no")
        assert await result(handle) == {"approved": True, "more": "no"}


@pytest.mark.parametrize("inner", ["channel", "now"])
async def test_tool_with_journaled_context_calls_then_a_wait(runtime: ProcessHost, inner: str) -> None:
    """A tool that sends on a channel (or takes context.now()) before the body waits: the resume replays it."""
    async with serving(runtime):
        handle, task = start(runtime, tw_inner_step_then_ask, {"inner": inner})
        await suspended(task)
        inner_tag = "channel.sent" if inner == "channel" else "value.recorded"
        assert tags(await chain_of(runtime, handle.run_id))[:5] == [
            "run.started",
            "tool.called",
            inner_tag,
            "tool.returned",
            "wait.requested",
        ]
        await resume_ok(handle.run_id, "yes")
        assert await result(handle) == {"answer": "yes"}


def test_dual_stage_tool_declarations_are_checked_at_class_definition() -> None:
    with pytest.raises(DecorationError, match=r"must define `async def on_resume"):

        class NoResume(DualStageTool):
            async def setup(self, x: int) -> None:
                return None

    with pytest.raises(DecorationError, match=r"must define `async def setup"):

        class NoSetup(DualStageTool):
            async def on_resume(self, resume: Any, x: int) -> None:
                return None

    with pytest.raises(DecorationError, match=r"setup must be `async def`"):

        class SyncSetup(DualStageTool):
            def setup(self, x: int) -> None:  # type: ignore[override]
                return None

            async def on_resume(self, resume: Any, x: int) -> None:
                return None

    with pytest.raises(DecorationError, match=r"on_resume must be `async def`"):

        class SyncResume(DualStageTool):
            async def setup(self, x: int) -> None:
                return None

            def on_resume(self, resume: Any, x: int) -> None:  # type: ignore[override]
                return None

    with pytest.raises(DecorationError, match=r"on_resume must take the payload first"):

        class NoResumeParam(DualStageTool):
            async def setup(self, x: int) -> None:
                return None

            async def on_resume(self, payload: Any, x: int) -> None:  # type: ignore[override]
                return None

    with pytest.raises(DecorationError, match=r"on_resume must take the payload first"):

        class NothingAtAll(DualStageTool):
            async def setup(self) -> None:
                return None

            async def on_resume(self) -> None:  # type: ignore[override]
                return None

    assert issubclass(DecorationError, TypeError)


def test_wait_declarations_are_checked() -> None:
    with pytest.raises(DecorationError, match=r"timezone-aware"):
        Wait(kind="x", deadline=dt.datetime(2030, 1, 1))  # naive: the point of the test
    with pytest.raises(DecorationError, match=r"JSON Schema dict"):
        Wait(kind="x", schema=["not", "a", "schema"])  # type: ignore[arg-type]
    assert Wait(kind="x", deadline=dt.timedelta(minutes=5)).deadline == dt.timedelta(minutes=5)


# --- checkpoints -------------------------------------------------------------------------------------------


async def test_checkpoint_is_loaded_when_the_body_runs_again_after_a_resume(
    graph_env: ProcessHost, worker: Worker
) -> None:
    handle, task = start(graph_env, tw_checkpointed)
    await suspended(task)
    assert [state for owner, state in LOADED if owner == handle.run_id] == [{"step": 0}]
    await resume_ok(handle.run_id, "yes")
    saved = {"step": 1, "items": ["a", "b"]}
    assert await result(handle) == {"before": saved, "after": saved, "answer": "yes"}
    # The re-executed body found the state the first execution saved.
    assert [state for owner, state in LOADED if owner == handle.run_id] == [{"step": 0}, saved]
    [checkpoint] = only(await chain_of(graph_env, handle.run_id), ev.CheckpointSaved)
    assert (checkpoint.key, checkpoint.state, checkpoint.node_id) == ("progress", saved, "root")


# --- deadlines ---------------------------------------------------------------------------------------------


async def test_expired_deadline_raises_wait_expired_in_the_graph(runtime: ProcessHost) -> None:
    async with serving(runtime):
        handle, task = start(runtime, tw_deadline, {"seconds": 0.5})
        end = await suspended(task)
        requested = (await handle.state()).open_waits[end.wait_id]
        assert requested.deadline_us is not None  # a timestamp: half a second after the request
        assert requested.ts < requested.deadline_us <= requested.ts + 500_000
        # Nobody answers: the wait's schedule expires it, and the graph catches WaitExpiredError...
        state = await until(runtime, handle.run_id, lambda s: bool(s.closed_waits))
        assert isinstance(state.closed_waits[end.wait_id], ev.WaitExpired)
        with pytest.raises(ResumeRejectedError) as info:
            await aethergraph.resume(handle.run_id, "too late", wait_id=end.wait_id)
        assert info.value.reason == "wait_closed"
        assert "expired" in str(info.value)

        # ...then asks again, without a deadline.
        state = await until(
            runtime, handle.run_id, lambda s: s.waiting_on is not None and s.waiting_on.wait_id != end.wait_id
        )
        assert [w.prompt for w in state.open_waits.values()] == ["too late; answer at leisure"]
        await resume_ok(handle.run_id, "whenever")
        assert await result(handle) == {"outcome": "expired", "expired_wait": end.wait_id, "late": "whenever"}
    events = await chain_of(runtime, handle.run_id)
    [expired] = only(events, ev.WaitExpired)
    assert expired.wait_id == end.wait_id and expired.parent == requested.seq
    assert expired.command_seq is not None
    assert [r.payload for r in only(events, ev.WaitResumed)] == ["whenever"]


async def test_uncaught_expiry_fails_the_run(runtime: ProcessHost) -> None:
    async with serving(runtime):
        handle, task = start(runtime, tw_deadline_uncaught)
        end = await suspended(task)
        with pytest.raises(RunFailedError) as info:
            await result(handle)
    assert info.value.error_type == "aethergraph.errors.WaitExpiredError"
    assert await handle.status() == "failed"
    events = await chain_of(runtime, handle.run_id)
    assert tags(events)[-3:] == ["run.waiting", "wait.expired", "run.failed"]
    failed = events[-1]
    assert isinstance(failed, ev.RunFailed) and end.wait_id in failed.message


async def test_answer_before_the_deadline_wins_and_the_expiry_is_a_duplicate(runtime: ProcessHost) -> None:
    async with serving(runtime):
        handle, task = start(runtime, tw_deadline, {"seconds": 0.5})
        end = await suspended(task)
        async with runtime.commands.outcomes(handle.run_id) as outcomes:
            outcome = await resume_ok(handle.run_id, "in time")
            assert await result(handle) == {"outcome": "in time", "expired_wait": None, "late": None}
            async with asyncio.timeout(SAFETY_S):  # the schedule still fires later, and changes nothing
                while True:
                    later = await outcomes.get()
                    if later.command_seq != outcome.command_seq:
                        break
    assert later.status == "duplicate"
    events = await chain_of(runtime, handle.run_id)
    assert only(events, ev.WaitExpired) == []
    assert [(r.wait_id, r.payload) for r in only(events, ev.WaitResumed)] == [(end.wait_id, "in time")]
    assert isinstance(events[-1], ev.RunCompleted)


async def test_deadline_as_an_aware_datetime_is_journaled_exactly(runtime: ProcessHost) -> None:
    async with serving(runtime):
        handle, task = start(runtime, tw_deadline_at)
        end = await suspended(task)
        requested = (await handle.state()).open_waits[end.wait_id]
        assert requested.deadline_us == int(AT_DEADLINE.timestamp() * 1_000_000)
        await resume_ok(handle.run_id, "early")
        assert await result(handle) == {"answer": "early"}


# --- nested runs -------------------------------------------------------------------------------------------


async def test_wait_in_a_nested_run_is_resumed_by_the_child_id(graph_env: ProcessHost, worker: Worker) -> None:
    handle, task = start(graph_env, tw_parent)
    run_id = handle.run_id
    child_id = f"{run_id}-tw_child_1"
    end = await suspended(task)
    assert (end.run_id, end.wait_run_id, end.prompt) == (run_id, child_id, "who are you?")

    parent_state = await handle.state()
    assert parent_state.status == "waiting"
    assert parent_state.open_waits == {}
    assert parent_state.waiting_on is not None
    assert (parent_state.waiting_on.wait_run_id, parent_state.waiting_on.wait_id) == (child_id, end.wait_id)
    child = await aethergraph.get_run(child_id)
    child_state = await child.state()
    assert child_state.status == "waiting" and list(child_state.open_waits) == [end.wait_id]
    assert child_state.started is not None and child_state.started.root_run_id == run_id

    # (By the parent's id it is found too: tests/test_tree_waits.py.)
    outcome = await resume_ok(child_id, "Grace")
    assert (outcome.run_id, outcome.wait_id) == (child_id, end.wait_id)
    assert await result(handle) == {"answer": "Grace", "n": 11}
    assert await child.status() == "succeeded"
    assert executions("tw_prepare", run_id) == 1
    assert executions("tw_prepare", child_id) == 1

    parent_events = await chain_of(graph_env, run_id)
    assert tags(parent_events) == [
        "run.started",
        "tool.called",
        "tool.returned",
        "tool.called",
        "run.waiting",
        "tool.returned",
        "run.completed",
    ]
    [waiting] = only(parent_events, ev.RunWaiting)
    assert waiting.wait_run_id == child_id
    assert len([e for e in only(parent_events, ev.ToolCalled) if e.tool == "tw_child"]) == 1
    child_events = await chain_of(graph_env, child_id)
    assert tags(child_events) == [
        "run.started",
        "tool.called",
        "tool.returned",
        "wait.requested",
        "run.waiting",
        "wait.resumed",
        "run.completed",
    ]
    assert child_events[-1].outputs == {"answer": "Grace"}  # type: ignore[attr-defined]


async def test_deadline_in_a_nested_run_expires_the_child_and_the_root_continues(runtime: ProcessHost) -> None:
    async with serving(runtime):
        handle, task = start(runtime, tw_parent_deadline)
        end = await suspended(task)
        child_id = f"{handle.run_id}-tw_child_deadline_1"
        assert end.wait_run_id == child_id
        assert await result(handle) == {"answer": f"expired {end.wait_id}"}
    child_events = await chain_of(runtime, child_id)
    assert tags(child_events)[-3:] == ["run.waiting", "wait.expired", "run.completed"]
    assert tags(await chain_of(runtime, handle.run_id))[-3:] == ["run.waiting", "tool.returned", "run.completed"]


# --- the code changed while the run waited -------------------------------------------------------------------


async def test_changed_graph_fails_the_resumed_run_with_non_determinism(runtime: ProcessHost) -> None:
    async with serving(runtime):
        handle, task = start(runtime, tw_evolving)
        await suspended(task)
        assert executions("tw_prepare", handle.run_id) == 1

        @graph_fn(name="tw_evolving", outputs=["answer"])
        async def tw_evolving_v2(*, context: NodeContext) -> dict[str, Any]:
            await tw_other(1)  # another tool where the journal recorded tw_prepare
            return {"answer": await context.channel().ask_text("still there?")}

        try:
            await resume_ok(handle.run_id, "yes")
            with pytest.raises(RunFailedError) as info:
                await result(handle)
        finally:
            register_graph(tw_evolving.spec)
    assert info.value.error_type == "aethergraph.errors.NonDeterminismError"
    assert executions("tw_other", handle.run_id) == 0  # nothing executed past the divergence
    assert executions("tw_prepare", handle.run_id) == 1
    events = await chain_of(runtime, handle.run_id)
    failed = events[-1]
    assert isinstance(failed, ev.RunFailed)
    assert failed.error_type == "aethergraph.errors.NonDeterminismError"
    assert "replay diverged from the journal" in failed.message and "tw_other" in failed.message
    assert tags(events)[-3:] == ["run.waiting", "wait.resumed", "run.failed"]
    with pytest.raises(ResumeRejectedError) as rejected:
        await aethergraph.resume(handle.run_id, "again")
    assert rejected.value.reason == "run_ended"
