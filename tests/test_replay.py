"""Replay and resume: recorded steps answer without executing; every divergence and bad resume is a clear error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import read_events

from aethergraph import NodeContext, graph_fn, tool
from aethergraph.core.api.callables import GraphFunction
from aethergraph.core.errors import (
    GraphMismatchError,
    NonDeterminismError,
    ReplayedError,
    RunFailedError,
    RunNotFoundError,
)
from aethergraph.core.ids import new_run_id
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.run.executor import execute_run, resume_run
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost


class Crash(BaseException):
    """Stands for the death of the process: nothing after it is journaled."""


calls: list[tuple[str, int]] = []


@tool(name="add_one", outputs=["v"])
def add_one(x: int) -> dict[str, int]:
    calls.append(("add_one", x))
    return {"v": x + 1}


@tool(name="double", outputs=["v"])
def double(x: int) -> dict[str, int]:
    calls.append(("double", x))
    return {"v": x * 2}


class OpaqueError(Exception):
    """Cannot be rebuilt from a message alone."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


@tool(name="fails_plainly")
def fails_plainly() -> None:
    calls.append(("fails_plainly", 0))
    raise ValueError("bad value 7")


@tool(name="fails_opaquely")
def fails_opaquely() -> None:
    calls.append(("fails_opaquely", 0))
    raise OpaqueError(3, "opaque")


def graph(body: Callable[..., Coroutine[Any, Any, dict[str, Any]]]) -> GraphFunction:
    return graph_fn(name="evolving", outputs=["v"])(body)


async def interrupted(runtime: ProcessHost, body: Callable[..., Coroutine[Any, Any, dict[str, Any]]]) -> str:
    """Run ``body`` as graph 'evolving' until it raises Crash; return the run id of the unfinished run."""
    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(body).spec, {"x": 1}, run_id=run_id, env=runtime.env)
    calls.clear()
    return run_id


async def two_steps_then_crash(x: int) -> dict[str, Any]:
    a = await add_one(x)
    await add_one(a["v"])
    raise Crash


async def test_resume_replays_recorded_steps_then_goes_live(runtime: ProcessHost) -> None:
    run_id = await interrupted(runtime, two_steps_then_crash)

    async def finished(x: int) -> dict[str, Any]:
        a = await add_one(x)
        b = await add_one(a["v"])
        return await double(b["v"])

    assert await resume_run(graph(finished).spec, run_id, env=runtime.env) == {"v": 6}
    assert calls == [("double", 3)]  # the two recorded steps did not run again
    journal = journal_chain(r.event for r in await read_events(runtime, run_id))
    claim = next(e for e in journal if isinstance(e, ev.RunClaimed))
    assert claim.reason == "resume" and claim.epoch == claim.seq
    assert all(e.epoch == claim.seq for e in journal if e.seq > claim.seq)


@pytest.mark.parametrize(
    ("changed", "recorded", "attempted"),
    [
        (lambda x: double(x), "tool 'add_one'", "tool 'double'"),  # another tool
        (lambda x: add_one(x + 100), "tool 'add_one'", "tool 'add_one'"),  # other arguments
    ],
    ids=["other-tool", "other-arguments"],
)
async def test_changed_graph_fails_with_non_determinism(
    runtime: ProcessHost, changed: Callable[[int], Any], recorded: str, attempted: str
) -> None:
    run_id = await interrupted(runtime, two_steps_then_crash)

    async def body(x: int) -> dict[str, Any]:
        return await changed(x)

    with pytest.raises(NonDeterminismError) as info:
        await resume_run(graph(body).spec, run_id, env=runtime.env)
    err = info.value
    assert err.run_id == run_id and err.seq == 2
    assert err.recorded.startswith(recorded) and err.attempted.startswith(attempted)
    assert err.recorded != err.attempted
    assert "replay diverged from the journal at event 2" in str(err)
    assert calls == []  # nothing executed
    last = journal_chain(r.event for r in await read_events(runtime, run_id))[-1]
    assert isinstance(last, ev.RunFailed)
    assert last.error_type == "aethergraph.errors.NonDeterminismError"


async def test_code_that_stops_short_of_its_journal_is_non_deterministic(runtime: ProcessHost) -> None:
    run_id = await interrupted(runtime, two_steps_then_crash)

    async def shorter(x: int) -> dict[str, Any]:
        return await add_one(x)

    with pytest.raises(NonDeterminismError, match="no further step"):
        await resume_run(graph(shorter).spec, run_id, env=runtime.env)


async def test_swallowing_the_divergence_does_not_let_the_run_go_on(runtime: ProcessHost) -> None:
    run_id = await interrupted(runtime, two_steps_then_crash)

    async def swallows(x: int) -> dict[str, Any]:
        with contextlib.suppress(Exception):  # what careless user code does
            await double(x)
        return await add_one(5)

    with pytest.raises(NonDeterminismError):
        await resume_run(graph(swallows).spec, run_id, env=runtime.env)
    assert calls == []


async def test_recorded_failures_are_raised_again_without_executing(runtime: ProcessHost) -> None:
    async def body(x: int) -> dict[str, Any]:
        outcomes = []
        for failing in (fails_plainly, fails_opaquely):
            try:
                await failing()
            except Exception as exc:  # noqa: BLE001 - recorded, then inspected below
                outcomes.append(exc)
        seen.append(outcomes)
        raise Crash

    seen: list[list[Exception]] = []
    run_id = await interrupted(runtime, body)

    async def resumed(x: int) -> dict[str, Any]:
        for failing in (fails_plainly, fails_opaquely):
            try:
                await failing()
            except Exception as exc:  # noqa: BLE001
                seen.append([exc])
        return {"v": 0}

    assert await resume_run(graph(resumed).spec, run_id, env=runtime.env) == {"v": 0}
    assert calls == []
    plain, opaque = seen[1][0], seen[2][0]
    assert type(plain) is ValueError and str(plain) == "bad value 7"
    assert isinstance(opaque, ReplayedError)
    assert opaque.error_type.endswith("OpaqueError") and opaque.original_message == "3: opaque"


async def test_context_values_replay_as_recorded(runtime: ProcessHost) -> None:
    first: list[Any] = []

    async def body(x: int, *, context: NodeContext) -> dict[str, Any]:
        values = [context.now(), context.uuid(), context.random()]
        first.append(values)
        await add_one(x)
        if len(first) == 1:
            raise Crash
        return {"v": 0}

    run_id = await interrupted(runtime, body)
    assert await resume_run(graph(body).spec, run_id, env=runtime.env) == {"v": 0}
    assert first[0] == first[1]


async def test_resume_of_an_unknown_run_says_so(runtime: ProcessHost) -> None:
    with pytest.raises(RunNotFoundError, match="has no journal"):
        await resume_run(graph(two_steps_then_crash).spec, new_run_id(), env=runtime.env)


async def test_resume_with_another_graph_names_the_right_one(runtime: ProcessHost) -> None:
    run_id = await interrupted(runtime, two_steps_then_crash)

    @graph_fn(name="something_else")
    async def something_else() -> dict[str, Any]:
        return {}

    with pytest.raises(GraphMismatchError, match="is a run of 'evolving'") as caught:
        await resume_run(something_else.spec, run_id, env=runtime.env)
    assert (caught.value.recorded_graph, caught.value.graph) == ("evolving", "something_else")


async def test_resume_of_a_failed_run_reports_how_it_ended(runtime: ProcessHost) -> None:
    async def body(x: int) -> dict[str, Any]:
        await fails_plainly()
        return {"v": 0}

    run_id = new_run_id()
    with pytest.raises(ValueError):
        await execute_run(graph(body).spec, {"x": 1}, run_id=run_id, env=runtime.env)
    calls.clear()
    with pytest.raises(RunFailedError, match="already ended: ValueError: bad value 7") as info:
        await resume_run(graph(body).spec, run_id, env=runtime.env)
    assert info.value.node_id == "fails_plainly_1"
    assert calls == []


# --- every kind of step diverges the same way (one journaled-step protocol) --------------------------------


async def value_then_message_then_crash(x: int, *, context: NodeContext) -> dict[str, Any]:
    context.now()
    await context.channel().send_text("hello")
    await add_one(x)
    raise Crash


@pytest.mark.parametrize(
    ("first", "recorded", "attempted", "seq"),
    [
        ("uuid", "context.now()", "context.uuid()", 2),  # a context value of another kind
        ("message-elsewhere", "a message on channel 'console'", "a message on channel 'ops'", 3),
        ("tool-instead-of-message", "a message on channel 'console'", "tool 'add_one'", 3),
    ],
)
async def test_values_and_channel_messages_diverge_like_tool_calls(
    runtime: ProcessHost, first: str, recorded: str, attempted: str, seq: int
) -> None:
    run_id = await interrupted(runtime, value_then_message_then_crash)

    async def changed(x: int, *, context: NodeContext) -> dict[str, Any]:
        if first == "uuid":
            context.uuid()
        else:
            context.now()
        if first == "message-elsewhere":
            await context.channel("ops").send_text("hello")
        elif first == "tool-instead-of-message":
            await add_one(x)
        else:
            await context.channel().send_text("hello")
        return {"v": 0}

    with pytest.raises(NonDeterminismError) as info:
        await resume_run(graph(changed).spec, run_id, env=runtime.env)
    err = info.value
    assert (err.run_id, err.seq) == (run_id, seq)
    assert err.recorded.startswith(recorded) and err.attempted.startswith(attempted)
    assert calls == []
    last = journal_chain(r.event for r in await read_events(runtime, run_id))[-1]
    assert isinstance(last, ev.RunFailed) and last.error_type == "aethergraph.errors.NonDeterminismError"


async def test_a_swallowed_value_divergence_still_fails_the_run(runtime: ProcessHost) -> None:
    """``context.uuid()`` where ``now()`` was recorded raises; code that swallows it cannot go on live."""
    run_id = await interrupted(runtime, value_then_message_then_crash)

    async def swallows(x: int, *, context: NodeContext) -> dict[str, Any]:
        with contextlib.suppress(Exception):
            context.uuid()
        await add_one(x)
        return {"v": 0}

    with pytest.raises(NonDeterminismError):
        await resume_run(graph(swallows).spec, run_id, env=runtime.env)
    assert calls == []
