"""Offline replay (``aethergraph.testing.replay``): recorded journals checked against the current code, no bus.

The golden histories under tests/golden/histories are journals of the
examples (``python tests/golden/make_histories.py``); every change is
replayed against them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import subprocess_env

import aethergraph
from aethergraph import NodeContext, graph_fn, tool
from aethergraph.core.errors import NonDeterminismError
from aethergraph.core.wire.events import AnyEvent, RunCompleted, ToolCalled
from aethergraph.host.process import ProcessHost
from aethergraph.testing import load_journal, replay, replay_async

HISTORIES = Path(__file__).parent / "golden" / "histories"
EXAMPLES = Path(__file__).parent.parent / "examples"

CALLS: Counter[str] = Counter()


@tool(name="offline_double", outputs=["v"])
def offline_double(x: int) -> dict[str, int]:
    CALLS["double"] += 1
    return {"v": 2 * x}


@tool(name="offline_add", outputs=["v"])
def offline_add(a: int, b: int) -> dict[str, int]:
    CALLS["add"] += 1
    return {"v": a + b}


@graph_fn(name="offline_flow", outputs=["v", "at"])
async def offline_flow(x: int, *, context: NodeContext) -> dict[str, Any]:
    doubled = await offline_double(x=x)
    at = context.now().isoformat()
    total = await offline_add(a=doubled["v"], b=x)
    return {"v": total["v"], "at": at}


@graph_fn(name="offline_flow", outputs=["v", "at"])
async def offline_flow_changed_args(x: int, *, context: NodeContext) -> dict[str, Any]:
    doubled = await offline_double(x=x + 1)  # the change: another argument
    total = await offline_add(a=doubled["v"], b=x)
    return {"v": total["v"], "at": context.now().isoformat()}


@graph_fn(name="offline_flow", outputs=["v", "at"])
async def offline_flow_reordered(x: int, *, context: NodeContext) -> dict[str, Any]:
    doubled = await offline_double(x=x)
    total = await offline_add(a=doubled["v"], b=x)  # the change: the tool before the clock
    return {"v": total["v"], "at": context.now().isoformat()}


@graph_fn(name="offline_flow", outputs=["v", "at"])
async def offline_flow_other_result(x: int, *, context: NodeContext) -> dict[str, Any]:
    doubled = await offline_double(x=x)
    at = context.now().isoformat()
    total = await offline_add(a=doubled["v"], b=x)
    return {"v": total["v"] + 1, "at": at}  # the change: the outputs


async def recorded(runtime: ProcessHost, x: int = 5) -> list[AnyEvent]:
    handle = await aethergraph.start_run(offline_flow, {"x": x})
    await handle.result()
    return [record.event async for record in runtime.event_log.read_run(handle.run_id)]


def _examples() -> dict[str, object]:
    sys.path.insert(0, str(EXAMPLES))  # the examples import each other as siblings
    try:
        from demo import analyze_signal
        from lineage import study
        from review import review_signal
    finally:
        sys.path.remove(str(EXAMPLES))
    return {"analyze_signal": analyze_signal, "study": study, "review_signal": review_signal}


@pytest.mark.parametrize(
    ("history", "graph", "outcome"),
    [
        ("analyze_signal", "analyze_signal", "completed"),
        ("study", "study", "completed"),
        ("review_signal_waiting", "review_signal", "waiting"),
        ("review_signal_approved", "review_signal", "completed"),
    ],
)
def test_the_golden_histories_replay_against_the_current_code(history: str, graph: str, outcome: str) -> None:
    path = HISTORIES / f"{history}.jsonl"
    events = load_journal(path)
    steps = sum(isinstance(event, ToolCalled) for event in events)
    result = replay(path, _examples()[graph])
    assert (result.outcome, result.graph) == (outcome, graph)
    assert result.steps_replayed >= steps > 0
    if outcome == "completed":
        [completed] = [event for event in events if isinstance(event, RunCompleted)]
        assert result.outputs == completed.outputs


async def test_a_replay_executes_nothing_and_returns_the_recorded_values(runtime: ProcessHost) -> None:
    events = await recorded(runtime)
    before = dict(CALLS)
    result = await replay_async(events, offline_flow)
    assert dict(CALLS) == before  # no tool ran
    [completed] = [event for event in events if isinstance(event, RunCompleted)]
    assert result.outcome == "completed" and result.outputs == completed.outputs  # context.now() as recorded
    assert result.steps_replayed == 3  # two tools and the clock


@pytest.mark.parametrize(
    ("changed", "recorded_part", "attempted_part"),
    [
        (offline_flow_changed_args, "tool 'offline_double'", "tool 'offline_double'"),
        (offline_flow_reordered, "context.now()", "tool 'offline_add'"),
    ],
)
async def test_changed_code_raises_naming_the_step(
    runtime: ProcessHost, changed: object, recorded_part: str, attempted_part: str
) -> None:
    events = await recorded(runtime)
    before = dict(CALLS)
    with pytest.raises(NonDeterminismError) as caught:
        await replay_async(events, changed)
    assert dict(CALLS) == before
    error = caught.value
    assert error.run_id == events[0].run_id and error.seq is not None and error.seq > 1
    assert recorded_part in (error.recorded or "") and attempted_part in (error.attempted or "")


async def test_code_that_ends_differently_raises(runtime: ProcessHost) -> None:
    events = await recorded(runtime)
    with pytest.raises(NonDeterminismError, match="replayed to a different end"):
        await replay_async(events, offline_flow_other_result)


async def test_a_history_that_stops_midway_replays_up_to_its_end(runtime: ProcessHost) -> None:
    events = await recorded(runtime)
    first_returned = next(i for i, event in enumerate(events) if type(event).__name__ == "ToolReturned")
    before = dict(CALLS)
    result = await replay_async(events[: first_returned + 1], offline_flow)
    assert (result.outcome, result.steps_replayed) == ("history_ended", 1)
    assert dict(CALLS) == before  # the next step would have gone live: it did not


async def test_a_journal_of_another_graph_is_refused(runtime: ProcessHost) -> None:
    events = await recorded(runtime)
    with pytest.raises(NonDeterminismError, match="replay it with that graph"):
        await replay_async(events, _examples()["analyze_signal"])


async def test_the_cli_export_is_the_replay_format(runtime: ProcessHost, tmp_path: Path) -> None:
    handle = await aethergraph.start_run(offline_flow, {"x": 2})
    await handle.result()
    exported = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aethergraph", "events", handle.run_id, "--json"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    path = tmp_path / "run.jsonl"
    path.write_text(exported.stdout)
    result = await replay_async(path, offline_flow)
    assert result.outcome == "completed" and result.outputs is not None and result.outputs["v"] == 6
    with pytest.raises(RuntimeError, match="use `await replay_async"):
        replay(path, offline_flow)  # the sync form refuses a running loop
