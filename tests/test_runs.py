"""Journaled runs against the real JetStream server."""

from __future__ import annotations

import asyncio
import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import read_events, run_python, subprocess_env

import aethergraph
from aethergraph import NodeContext, graph_fn, tool
from aethergraph.bus.event_log import StoredRecord
from aethergraph.core.errors import EventTooLargeError, NotInRunError, OutputError, SerializationError
from aethergraph.core.ids import RUN_ID_PATTERN, new_run_id
from aethergraph.core.run.executor import execute_run
from aethergraph.core.wire import events as ev
from aethergraph.core.wire.codec import decode_event
from aethergraph.runtime import ProcessHost, load_target

# --- the seed's example, as written (a log line instead of the channel, which does not exist yet) -------


@tool(name="analyze", outputs=["val"])
def analyze(x: int) -> int:
    return {"val": x * 2}  # type: ignore[return-value]


@graph_fn(name="demo")
async def demo(*, context):  # type: ignore[no-untyped-def]
    y = await analyze(21)
    context.logger().info(f"Answer: {y}")


# --- helpers ------------------------------------------------------------------------------------------


def types_of(records: list[StoredRecord]) -> list[str]:
    """Event types in order, without ``run.claimed`` (written by each replay in always-suspend mode)."""
    return [record.event.__struct_config__.tag for record in records if not isinstance(record.event, ev.RunClaimed)]


def without_claims(records: list[StoredRecord]) -> list[StoredRecord]:
    """The records without ``run.claimed`` (each replay in always-suspend mode writes one)."""
    return [record for record in records if not isinstance(record.event, ev.RunClaimed)]


def events_of(records: list[StoredRecord]) -> list[ev.Event]:
    return [record.event for record in records]


@pytest.fixture(params=["live", "always_suspend"])
def graph_env(request: pytest.FixtureRequest, runtime: ProcessHost, suspending_runtime: ProcessHost) -> ProcessHost:
    """The graph tests run twice: live, and suspending after every step to continue by replay."""
    return suspending_runtime if request.param == "always_suspend" else runtime


async def start(
    env: ProcessHost, target: object, inputs: dict[str, Any] | None = None, *, run_id: str
) -> dict[str, Any]:
    """``aethergraph.run_async`` on a given runtime."""
    spec = load_target(target)
    return await execute_run(spec, spec.bind((), dict(inputs or {})), run_id=run_id, env=env.env)


async def stream_messages(rt: ProcessHost) -> int:
    info = await rt.bus.js.stream_info("AG_EVENTS")
    return int(info.state.messages)


# --- the seed example ---------------------------------------------------------------------------------


async def test_seed_example_runs_and_is_journaled(runtime: ProcessHost) -> None:
    started: list[ev.RunStarted] = []
    seen = asyncio.Event()

    async def on_started(msg: Any) -> None:
        event = decode_event(msg.data)
        if isinstance(event, ev.RunStarted) and event.graph_id == "demo":
            started.append(event)
            seen.set()

    # The public subject contract: anyone can subscribe to a kind of event of every run.
    sub = await runtime.bus.nc.subscribe("ag.evt.*.run.started", cb=on_started)
    await runtime.bus.nc.flush()
    try:
        outputs = await demo()
        await runtime.bus.nc.flush()
        await asyncio.wait_for(seen.wait(), 10)
    finally:
        await sub.unsubscribe()

    assert outputs == {}
    assert len(started) == 1
    records = await read_events(runtime, started[0].run_id)
    assert types_of(records) == ["run.started", "tool.called", "tool.returned", "log.recorded", "run.completed"]
    _, called, returned, log, completed = events_of(records)
    assert isinstance(called, ev.ToolCalled) and called.tool == "analyze" and called.args == {"x": 21}
    assert isinstance(returned, ev.ToolReturned) and returned.outputs == {"val": 42}
    assert isinstance(log, ev.LogRecorded)
    assert (log.level, log.message, log.node_id) == ("info", "Answer: {'val': 42}", "root")
    assert isinstance(completed, ev.RunCompleted) and completed.outputs == {}


async def test_run_async_with_a_graph_and_with_a_tool(runtime: ProcessHost) -> None:
    assert await aethergraph.run_async(demo, {}) == {}
    run_id = new_run_id()
    assert await aethergraph.run_async(analyze, {"x": 4}, run_id=run_id) == {"val": 8}
    records = await read_events(runtime, run_id)
    assert types_of(records) == ["run.started", "tool.called", "tool.returned", "run.completed"]
    started = records[0].event
    assert isinstance(started, ev.RunStarted)
    assert (started.graph_id, started.inputs) == ("analyze", {"x": 4})
    assert records[-1].event.outputs == {"val": 8}  # type: ignore[attr-defined]


@graph_fn(name="adder", outputs=["total"])
async def adder(a: int, b: int = 10) -> dict[str, int]:
    doubled = await analyze(a)
    return {"total": doubled["val"] + b}


async def test_graph_outputs_and_inputs_are_journaled(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    assert await aethergraph.run_async(adder, {"a": 1}, run_id=run_id) == {"total": 12}
    records = await read_events(runtime, run_id)
    started, *_, completed = events_of(records)
    assert isinstance(started, ev.RunStarted) and started.inputs == {"a": 1, "b": 10}
    assert isinstance(completed, ev.RunCompleted) and completed.outputs == {"total": 12}
    assert await adder(2, b=0) == {"total": 4}


async def test_sync_run_in_a_thread_opens_its_own_loop(runtime: ProcessHost) -> None:
    run_id = new_run_id()
    outputs = await asyncio.to_thread(aethergraph.run, adder, {"a": 5, "b": 1}, run_id=run_id)
    assert outputs == {"total": 11}
    records = await read_events(runtime, run_id)
    assert types_of(records)[0] == "run.started"
    assert types_of(records)[-1] == "run.completed"


async def test_sync_run_inside_a_running_loop_says_to_use_run_async(runtime: ProcessHost) -> None:
    with pytest.raises(RuntimeError, match=r"run_async"):
        aethergraph.run(adder, {"a": 1})


async def test_sync_run_in_another_process(runtime: ProcessHost, tmp_path: Path) -> None:
    script = tmp_path / "graphs_elsewhere.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            import aethergraph
            from aethergraph import graph_fn, tool

            @tool(outputs=["val"])
            def square(x: int) -> dict:
                return {"val": x * x}

            @graph_fn(name="remote", outputs=["val"])
            async def remote(x: int, *, context):
                out = await square(x)
                context.logger().info("squared", x=x)
                return out

            if __name__ == "__main__":
                outputs = aethergraph.run(remote, {"x": int(sys.argv[1])}, run_id=sys.argv[2])
                by_reference = aethergraph.run(__file__ + ":square", {"x": 3})
                print(json.dumps({"outputs": outputs, "by_reference": by_reference}))
            """
        )
    )
    run_id = new_run_id()
    result = await asyncio.to_thread(run_python, script, "7", run_id, env=subprocess_env())
    assert result == {"outputs": {"val": 49}, "by_reference": {"val": 9}}
    records = await read_events(runtime, run_id)
    assert types_of(records) == ["run.started", "tool.called", "tool.returned", "log.recorded", "run.completed"]
    workers = {record.event.worker for record in records}
    assert len(workers) == 1
    assert workers != {runtime.worker_id}
    log = records[3].event
    assert isinstance(log, ev.LogRecorded) and log.fields == {"x": 7} and log.node_id == "root"


# --- context identity ---------------------------------------------------------------------------------


@tool(name="probe", outputs=["node"])
def probe(*, context: NodeContext) -> dict[str, str]:
    return {"node": context.node_id, "run": context.run_id, "graph": context.graph_id}


@graph_fn(name="identity")
async def identity(*, context: NodeContext) -> dict[str, Any]:
    first = await probe()
    second = await probe()
    third = await analyze(1)
    return {
        "run_id": context.run_id,
        "graph_id": context.graph_id,
        "node_id": context.node_id,
        "tools": [first, second],
        "third": third,
    }


async def test_context_identifies_run_graph_and_node(graph_env: ProcessHost) -> None:
    run_id = new_run_id()
    out = await start(graph_env, identity, run_id=run_id)
    assert out["run_id"] == run_id
    assert RUN_ID_PATTERN.match(out["run_id"])
    assert out["graph_id"] == "identity"
    assert out["node_id"] == "root"
    assert out["tools"] == [
        {"node": "probe_1", "run": run_id, "graph": "identity"},
        {"node": "probe_2", "run": run_id, "graph": "identity"},
    ]
    raw = await read_events(graph_env, run_id)
    records = without_claims(raw)
    node_ids = [record.event.node_id for record in records if record.event.__struct_config__.tag == "tool.called"]
    assert node_ids == ["probe_1", "probe_2", "analyze_1"]


async def test_generated_run_ids_are_unique_and_valid(runtime: ProcessHost) -> None:
    seen = {(await identity())["run_id"] for _ in range(3)}
    assert len(seen) == 3
    assert all(RUN_ID_PATTERN.match(run_id) for run_id in seen)


# --- tools outside any run ----------------------------------------------------------------------------


@tool(outputs=["val"])
async def async_double(x: int) -> dict[str, int]:
    return {"val": 2 * x}


async def test_tools_outside_a_run_execute_at_once_unjournaled(runtime: ProcessHost) -> None:
    before = await stream_messages(runtime)
    assert analyze(5) == {"val": 10}
    pending = async_double(6)
    assert inspect.isawaitable(pending)
    assert await pending == {"val": 12}
    assert await stream_messages(runtime) == before


async def test_tool_needing_context_outside_a_run_raises_not_in_run(runtime: ProcessHost) -> None:
    with pytest.raises(NotInRunError) as info:
        probe()
    message = str(info.value)
    assert "tool 'probe'" in message
    assert "outside any run" in message
    assert "aethergraph.run(probe" in message


async def test_detached_tool_output_errors_are_raised(runtime: ProcessHost) -> None:
    @tool(outputs=["val"])
    def forgetful() -> dict[str, int]:
        return {"other": 1}

    with pytest.raises(OutputError, match=r"tool 'forgetful' did not return its declared output 'val'"):
        forgetful()


# --- failures -----------------------------------------------------------------------------------------


@tool(name="half_done", outputs=["val", "extra"])
def half_done(x: int) -> dict[str, int]:
    return {"val": x}


async def test_missing_output_raises_output_error_and_is_journaled(graph_env: ProcessHost) -> None:
    @graph_fn(name="uses_half_done")
    async def uses(*, context: NodeContext) -> None:
        await half_done(1)

    run_id = new_run_id()
    with pytest.raises(OutputError) as info:
        await start(graph_env, uses, run_id=run_id)
    message = str(info.value)
    assert "tool 'half_done'" in message
    assert "'extra'" in message
    raw = await read_events(graph_env, run_id)
    records = without_claims(raw)
    assert types_of(records) == ["run.started", "tool.called", "tool.failed", "run.failed"]
    failed, run_failed = records[-2].event, records[-1].event
    assert isinstance(failed, ev.ToolFailed)
    assert failed.error_type == "aethergraph.errors.OutputError"
    assert "'extra'" in failed.message
    assert failed.node_id == "half_done_1"
    assert isinstance(run_failed, ev.RunFailed)
    assert run_failed.failed_node_id == "half_done_1"
    assert run_failed.error_type == "aethergraph.errors.OutputError"


class Opaque:
    pass


@tool(name="opaque_maker", outputs=["thing"])
def opaque_maker() -> dict[str, Any]:
    return {"thing": Opaque()}


async def test_unserialisable_result_raises_serialization_error(graph_env: ProcessHost) -> None:
    run_id = new_run_id()
    with pytest.raises(SerializationError) as info:
        await start(graph_env, opaque_maker, run_id=run_id)
    message = str(info.value)
    assert "tool 'opaque_maker'" in message
    assert "Opaque" in message
    raw = await read_events(graph_env, run_id)
    records = without_claims(raw)
    assert types_of(records)[-2:] == ["tool.failed", "run.failed"]
    assert records[-2].event.error_type == "aethergraph.errors.SerializationError"  # type: ignore[attr-defined]


async def test_unserialisable_plain_object(graph_env: ProcessHost) -> None:
    @tool(name="bare_object", outputs=["thing"])
    def bare_object() -> object:
        return object()

    @graph_fn(name="calls_bare_object")
    async def calls() -> None:
        await bare_object()

    with pytest.raises(SerializationError, match=r"tool 'bare_object'.*type object"):
        await start(graph_env, calls, run_id=new_run_id())


class Boom(Exception):
    pass


@tool(name="boom")
async def boom(x: int) -> None:
    raise Boom(f"exploded on {x}")


async def test_tool_exception_propagates_unchanged_and_is_journaled(graph_env: ProcessHost) -> None:
    raised: list[BaseException] = []

    @graph_fn(name="explodes")
    async def explodes(*, context: NodeContext) -> None:
        await analyze(1)
        try:
            await boom(3)
        except Boom as exc:
            raised.append(exc)
            raise

    run_id = new_run_id()
    with pytest.raises(Boom) as info:
        await start(graph_env, explodes, run_id=run_id)
    assert info.value is raised[0]
    assert str(info.value) == "exploded on 3"
    assert type(info.value) is Boom

    raw = await read_events(graph_env, run_id)
    records = without_claims(raw)
    assert types_of(records) == [
        "run.started",
        "tool.called",
        "tool.returned",
        "tool.called",
        "tool.failed",
        "run.failed",
    ]
    tool_failed, run_failed = records[4].event, records[5].event
    expected_type = f"{Boom.__module__}.{Boom.__qualname__}"
    assert isinstance(tool_failed, ev.ToolFailed)
    assert (tool_failed.tool, tool_failed.node_id, tool_failed.parent) == ("boom", "boom_1", records[3].event.seq)
    assert (tool_failed.error_type, tool_failed.message) == (expected_type, "exploded on 3")
    assert isinstance(run_failed, ev.RunFailed)
    assert (run_failed.error_type, run_failed.message) == (expected_type, "exploded on 3")
    assert run_failed.failed_node_id == "boom_1"
    assert run_failed.parent == tool_failed.seq


async def test_builtin_exception_type_name(graph_env: ProcessHost) -> None:
    @tool(name="divide")
    def divide(a: int, b: int) -> float:
        return a / b

    run_id = new_run_id()
    with pytest.raises(ZeroDivisionError):
        await start(graph_env, divide, {"a": 1, "b": 0}, run_id=run_id)
    raw = await read_events(graph_env, run_id)
    records = without_claims(raw)
    assert records[-2].event.error_type == "ZeroDivisionError"  # type: ignore[attr-defined]
    assert records[-1].event.failed_node_id == "divide_1"  # type: ignore[attr-defined]


async def test_exception_in_the_graph_body_has_no_failed_node(graph_env: ProcessHost) -> None:
    @graph_fn(name="body_fails")
    async def body_fails() -> None:
        await analyze(2)
        raise KeyError("missing")

    run_id = new_run_id()
    with pytest.raises(KeyError):
        await start(graph_env, body_fails, run_id=run_id)
    raw = await read_events(graph_env, run_id)
    records = without_claims(raw)
    run_failed = records[-1].event
    assert isinstance(run_failed, ev.RunFailed)
    assert run_failed.error_type == "KeyError"
    assert run_failed.failed_node_id is None
    assert run_failed.parent == records[-2].event.seq


async def test_graph_missing_declared_output(graph_env: ProcessHost) -> None:
    @graph_fn(name="forgets", outputs=["answer"])
    async def forgets() -> dict[str, int]:
        return {"other": 1}

    run_id = new_run_id()
    with pytest.raises(OutputError, match=r"graph_fn 'forgets' did not return its declared output 'answer'"):
        await start(graph_env, forgets, run_id=run_id)
    assert types_of(await read_events(graph_env, run_id)) == ["run.started", "run.failed"]


# --- logging ------------------------------------------------------------------------------------------


@tool(name="chatty", outputs=["ok"])
def chatty(*, context: NodeContext) -> dict[str, bool]:
    context.logger().warning("inside %s", "the tool", attempt=2)
    return {"ok": True}


async def test_logger_records_are_events_with_node_ids(graph_env: ProcessHost) -> None:
    @graph_fn(name="logs")
    async def logs(*, context: NodeContext) -> None:
        context.logger().debug("before")
        await chatty()
        context.logger().error("after", extra={"code": 7})

    run_id = new_run_id()
    await start(graph_env, logs, run_id=run_id)
    raw = await read_events(graph_env, run_id)
    records = without_claims(raw)
    logs_ = [record.event for record in records if isinstance(record.event, ev.LogRecorded)]
    # Each record is journaled exactly once, also when the run continues by replay.
    assert [(e.level, e.message, e.node_id, e.fields) for e in logs_] == [
        ("debug", "before", "root", {}),
        ("warning", "inside the tool", "chatty_1", {"attempt": 2}),
        ("error", "after", "root", {"code": 7}),
    ]
    assert types_of(records) == [
        "run.started",
        "log.recorded",
        "tool.called",
        "log.recorded",
        "tool.returned",
        "log.recorded",
        "run.completed",
    ]
    # A log record's causal parent is the latest step its line of execution observed.
    assert logs_[0].parent == records[0].event.seq
    assert logs_[1].parent == records[2].event.seq
    assert logs_[2].parent == records[4].event.seq


# --- ordering and causality ---------------------------------------------------------------------------


async def test_event_order_sequence_and_causal_parents(graph_env: ProcessHost) -> None:
    @graph_fn(name="chain", outputs=["val"])
    async def chain() -> dict[str, int]:
        a = await analyze(1)
        b = await analyze(a["val"])
        c = await async_double(b["val"])
        return c

    run_id = new_run_id()
    assert await start(graph_env, chain, run_id=run_id) == {"val": 8}
    raw = await read_events(graph_env, run_id)
    records = without_claims(raw)
    events = events_of(records)

    assert [r.event.seq for r in raw] == list(range(1, len(raw) + 1))
    stream_seqs = [record.stream_seq for record in raw]
    assert stream_seqs == sorted(stream_seqs) and len(set(stream_seqs)) == len(stream_seqs)
    assert types_of(records) == [
        "run.started",
        "tool.called",
        "tool.returned",
        "tool.called",
        "tool.returned",
        "tool.called",
        "tool.returned",
        "run.completed",
    ]
    assert all(e.run_id == run_id for e in events)
    assert len({e.worker for e in events}) == 1
    timestamps = [e.ts for e in events]
    assert timestamps == sorted(timestamps)

    started = events[0]
    assert started.parent is None and started.node_id is None
    previous = started.seq
    for called, returned in zip(events[1:-1:2], events[2:-1:2], strict=True):
        assert isinstance(called, ev.ToolCalled) and isinstance(returned, ev.ToolReturned)
        assert called.parent == previous
        assert returned.parent == called.seq
        assert returned.node_id == called.node_id
        previous = returned.seq
    assert [e.node_id for e in events[1:-1]] == [
        "analyze_1",
        "analyze_1",
        "analyze_2",
        "analyze_2",
        "async_double_1",
        "async_double_1",
    ]
    completed = events[-1]
    assert isinstance(completed, ev.RunCompleted)
    assert completed.parent == events[-2].seq
    assert completed.outputs == {"val": 8}
    # Arguments are journaled with a digest that identifies them.
    called_1, called_2 = events[1], events[3]
    assert isinstance(called_1, ev.ToolCalled) and isinstance(called_2, ev.ToolCalled)
    assert (called_1.args, called_2.args) == ({"x": 1}, {"x": 2})
    assert called_1.args_digest != called_2.args_digest


async def test_concurrent_tool_calls_get_distinct_nodes(graph_env: ProcessHost) -> None:
    @graph_fn(name="fan_out", outputs=["vals"])
    async def fan_out() -> dict[str, list[int]]:
        results = await asyncio.gather(analyze(1), async_double(2), analyze(3), async_double(4))
        return {"vals": [r["val"] for r in results]}

    run_id = new_run_id()
    assert await start(graph_env, fan_out, run_id=run_id) == {"vals": [2, 4, 6, 8]}
    raw = await read_events(graph_env, run_id)
    records = without_claims(raw)
    events = events_of(records)
    assert [r.event.seq for r in raw] == list(range(1, len(raw) + 1))
    assert len(events) == 10
    tags = types_of(records)
    assert (tags[0], tags[-1]) == ("run.started", "run.completed")
    assert sorted(tags[1:-1]) == ["tool.called"] * 4 + ["tool.returned"] * 4

    called = {e.node_id: e for e in events if isinstance(e, ev.ToolCalled)}
    returned = {e.node_id: e for e in events if isinstance(e, ev.ToolReturned)}
    assert set(called) == set(returned) == {"analyze_1", "analyze_2", "async_double_1", "async_double_2"}
    for node_id, call in called.items():
        assert call.parent == events[0].seq  # all started from the same point
        assert returned[node_id].parent == call.seq
        assert returned[node_id].seq > call.seq
    assert {(n, c.args["x"]) for n, c in called.items()} == {
        ("analyze_1", 1),
        ("async_double_1", 2),
        ("analyze_2", 3),
        ("async_double_2", 4),
    }


async def test_nested_graph_is_a_child_run(graph_env: ProcessHost) -> None:
    child_ids: set[str] = set()

    @graph_fn(name="child", outputs=["val"])
    async def child(x: int, *, context: NodeContext) -> dict[str, int]:
        child_ids.add(context.run_id)
        return await analyze(x)

    @graph_fn(name="parent", outputs=["val"])
    async def parent(*, context: NodeContext) -> dict[str, int]:
        first = await analyze(1)
        out = await child(first["val"])
        return {"val": out["val"] + 1}

    run_id = new_run_id()
    assert await start(graph_env, parent, run_id=run_id) == {"val": 5}
    assert len(child_ids) == 1
    [child_id] = child_ids
    assert child_id == f"{run_id}-child_1"  # deterministic: the parent's node names the child run

    child_records = await read_events(graph_env, child_id)
    assert types_of(child_records) == ["run.started", "tool.called", "tool.returned", "run.completed"]
    child_started = child_records[0].event
    assert isinstance(child_started, ev.RunStarted)
    assert child_started.parent_run_id == run_id
    assert child_started.graph_id == "child"
    assert child_started.parent_node_id == "child_1"
    assert child_started.inputs == {"x": 2}
    assert child_records[1].event.node_id == "analyze_1"  # the child numbers its own nodes

    parent_records = without_claims(await read_events(graph_env, run_id))
    # The child run is one step of the parent, so replaying the parent never starts it again.
    assert types_of(parent_records) == [
        "run.started",
        "tool.called",
        "tool.returned",
        "tool.called",
        "tool.returned",
        "run.completed",
    ]
    child_step = [r.event for r in parent_records if isinstance(r.event, ev.ToolCalled)][1]
    assert child_step.tool == "child" and child_step.node_id == "child_1"
    parent_started = parent_records[0].event
    assert isinstance(parent_started, ev.RunStarted) and parent_started.parent_run_id is None


async def test_each_tool_executes_once(graph_env: ProcessHost) -> None:
    """Replay answers recorded steps from the journal: no tool runs twice."""
    executed: list[int] = []

    @tool(name="counted", outputs=["val"])
    def counted(x: int) -> dict[str, int]:
        executed.append(x)
        return {"val": x + 1}

    @graph_fn(name="counting", outputs=["val"])
    async def counting(*, context: NodeContext) -> dict[str, int]:
        context.logger().info("begin")
        a = await counted(1)
        b = await counted(a["val"])
        return await counted(b["val"])

    run_id = new_run_id()
    assert await start(graph_env, counting, run_id=run_id) == {"val": 4}
    assert executed == [1, 2, 3]
    assert types_of(await read_events(graph_env, run_id)) == [
        "run.started",
        "log.recorded",
        "tool.called",
        "tool.returned",
        "tool.called",
        "tool.returned",
        "tool.called",
        "tool.returned",
        "run.completed",
    ]


async def test_nested_run_is_not_run_again_when_the_parent_replays(graph_env: ProcessHost) -> None:
    """A child run is a step of its parent: continuing the parent by replay must not start
    the child again (a second child run, executing the child's tools again)."""
    executed: list[int] = []
    child_runs: set[str] = set()

    @tool(name="counted_in_child", outputs=["val"])
    def counted(x: int) -> dict[str, int]:
        executed.append(x)
        return {"val": x + 1}

    @graph_fn(name="replayed_child", outputs=["val"])
    async def child(x: int, *, context: NodeContext) -> dict[str, int]:
        child_runs.add(context.run_id)
        return await counted(x)

    @graph_fn(name="replayed_parent", outputs=["val"])
    async def parent() -> dict[str, int]:
        first = await child(1)
        return await counted(first["val"] + 100)

    run_id = new_run_id()
    assert await start(graph_env, parent, run_id=run_id) == {"val": 103}
    assert len(child_runs) == 1, f"the child graph ran as {len(child_runs)} separate runs"
    assert executed == [1, 102]


# --- size limits --------------------------------------------------------------------------------------


async def test_output_too_large_points_at_artifacts_and_is_a_failed_step(graph_env: ProcessHost) -> None:
    """An output over max_event_bytes never reaches the bus; the error points at the artifact
    store, and the step is closed with tool.failed naming the node (a replay must not take the
    step for one still in flight)."""
    limit = graph_env.settings.max_event_bytes

    @tool(name="huge", outputs=["text"])
    def huge() -> dict[str, str]:
        return {"text": "x" * (limit + 1)}

    @graph_fn(name="too_big")
    async def too_big() -> None:
        await huge()

    run_id = new_run_id()
    with pytest.raises(EventTooLargeError) as info:
        await start(graph_env, too_big, run_id=run_id)
    err = info.value
    assert "context.artifacts()" in str(err)
    assert f"{limit:,}" in str(err)
    assert err.run_id == run_id
    assert err.node_id == "huge_1"
    assert f"run={run_id}" in str(err)
    records = without_claims(await read_events(graph_env, run_id))
    assert types_of(records) == ["run.started", "tool.called", "tool.failed", "run.failed"]
    tool_failed, run_failed = records[2].event, records[3].event
    assert isinstance(tool_failed, ev.ToolFailed)
    assert tool_failed.node_id == "huge_1"
    assert tool_failed.error_type == "aethergraph.errors.EventTooLargeError"
    assert "context.artifacts()" in tool_failed.message
    assert isinstance(run_failed, ev.RunFailed)
    assert run_failed.error_type == "aethergraph.errors.EventTooLargeError"
    assert run_failed.failed_node_id == "huge_1"
