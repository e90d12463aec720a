"""``context.viz()``: points recorded as ``viz.recorded`` events, replayed once, folded into the ``viz`` table.

Runs go through the session's nats-server, live and under always-suspend
(every run suspends after each step and continues by replay from the stream).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import read_events

from aethergraph import graph_fn
from aethergraph.core.api.callables import GraphFunction
from aethergraph.core.context.viz import MAX_NUMBERS
from aethergraph.core.errors import ArtifactNotFoundError, NonDeterminismError
from aethergraph.core.ids import new_run_id
from aethergraph.core.run.executor import execute_run, resume_run
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost
from aethergraph.projections.projector import Projector
from aethergraph.projections.store import ProjectionStore

# The smallest valid PNG (1x1, transparent); the content is what matters, not the picture.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


class Crash(BaseException):
    """Stands for the death of the process."""


def graph(body: Callable[..., Coroutine[Any, Any, dict[str, Any]]]) -> GraphFunction:
    return graph_fn(name="viz_flow", outputs=["v"])(body)


@pytest.fixture(params=["live", "always_suspend"])
def graph_env(request: pytest.FixtureRequest, runtime: ProcessHost, suspending_runtime: ProcessHost) -> ProcessHost:
    return suspending_runtime if request.param == "always_suspend" else runtime


async def _training(*, context: Any) -> dict[str, Any]:
    viz = context.viz()
    for step in range(3):
        await viz.scalar("loss", step=step, value=1.0 / (step + 1))
    await viz.vector("weights", [0.5, -1, 2.25], step=2, meta={"layer": "fc1"})
    await viz.matrix("confusion", [[5, 1], [0, 7]], step=2)
    picture = await viz.image_from_bytes("samples", PNG, step=2, name="sample.png")
    await viz.image_from_artifact("samples", picture, step=3)
    await viz.image_from_artifact("samples", picture.uri, step=4, mime="image/png")
    await viz.scalar("accuracy", value=0.9)  # no step
    return {"v": picture.uri}


async def _fold(rt: ProcessHost) -> ProjectionStore:
    store = ProjectionStore.open(":memory:")
    await Projector(rt.bus, store, store_id=f"viz-{os.urandom(4).hex()}").catch_up()
    return store


async def test_points_are_events_once_and_rows_of_the_viz_table(graph_env: ProcessHost) -> None:
    run_id = new_run_id()
    outputs = await execute_run(graph(_training).spec, {}, run_id=run_id, env=graph_env.env)
    uri = outputs["v"]
    events = [r.event for r in await read_events(graph_env, run_id)]
    points = [e for e in events if isinstance(e, ev.VizRecorded)]
    expected = [
        ("loss", "scalar", 0, 1.0, None, ""),
        ("loss", "scalar", 1, 0.5, None, ""),
        ("loss", "scalar", 2, 1 / 3, None, ""),
        ("weights", "vector", 2, [0.5, -1.0, 2.25], None, ""),
        ("confusion", "matrix", 2, [[5.0, 1.0], [0.0, 7.0]], None, ""),
        ("samples", "image", 2, None, uri, "image/png"),
        ("samples", "image", 3, None, uri, "image/png"),
        ("samples", "image", 4, None, uri, "image/png"),
        ("accuracy", "scalar", None, 0.9, None, ""),
    ]
    # Under always-suspend the body re-ran from the top after every step: still one event per point.
    assert [(p.track, p.kind, p.step, p.value, p.artifact_uri, p.mime) for p in points] == expected
    assert {p.node_id for p in points} == {"root"} and points[3].meta == {"layer": "fc1"}
    replays = sum(isinstance(e, ev.RunClaimed) and e.reason == "replay" for e in events)
    assert replays == (len(expected) + 1 if graph_env.env.always_suspend else 0)  # each point and the save suspended
    saved = [e for e in events if isinstance(e, ev.ArtifactSaved)]
    assert [(a.uri, a.kind, a.name, a.mime) for a in saved] == [(uri, "image", "sample.png", "image/png")]

    store = await _fold(graph_env)
    try:
        rows = store.query(
            "SELECT track, kind, step, value, artifact_uri, mime, meta->>'layer' FROM viz "
            "WHERE run_id = ? ORDER BY seq",
            [run_id],
        ).rows
    finally:
        store.close()
    assert [(t, k, s, None if v is None else json.loads(v), u, m) for t, k, s, v, u, m, _ in rows] == [
        (t, k, s, v, u, m or None) for t, k, s, v, u, m in expected
    ]
    assert [r[6] for r in rows] == [None, None, None, "fc1", None, None, None, None, None]


async def test_a_replay_records_no_point_again_and_a_changed_track_diverges(runtime: ProcessHost) -> None:
    async def crashes(*, context: Any) -> dict[str, Any]:
        await context.viz().scalar("loss", step=0, value=2.0)
        await context.viz().vector("grad", [1, 2], step=0)
        await context.memory().record("note", "flushes the pipelined points")
        raise Crash

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=runtime.env)

    async def finishes(*, context: Any) -> dict[str, Any]:
        await context.viz().scalar("loss", step=0, value=2.0)
        await context.viz().vector("grad", [1, 2], step=0)
        await context.memory().record("note", "flushes the pipelined points")
        await context.viz().scalar("loss", step=1, value=1.0)
        return {"v": "done"}

    assert await resume_run(graph(finishes).spec, run_id, env=runtime.env) == {"v": "done"}
    points = [r.event for r in await read_events(runtime, run_id) if isinstance(r.event, ev.VizRecorded)]
    assert [(p.track, p.step, p.value) for p in points] == [("loss", 0, 2.0), ("grad", 0, [1.0, 2.0]), ("loss", 1, 1.0)]

    async def renamed(*, context: Any) -> dict[str, Any]:
        await context.viz().scalar("train_loss", step=0, value=2.0)
        return {"v": "never"}

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=runtime.env)
    with pytest.raises(NonDeterminismError) as caught:
        await resume_run(graph(renamed).spec, run_id, env=runtime.env)
    assert "context.viz().scalar('train_loss', step=0) in node root" in str(caught.value)


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda viz: viz.scalar("loss", step=1, value=math.nan), ValueError, "value is nan, not a finite number"),
        (lambda viz: viz.scalar("loss", value=math.inf), ValueError, "not a finite number"),
        (lambda viz: viz.scalar("loss", value=10**400), ValueError, "value is inf, not a finite number"),
        (lambda viz: viz.scalar("loss", value="0.5"), TypeError, "not a number"),
        (lambda viz: viz.scalar("loss", value=True), TypeError, "not a number"),
        (lambda viz: viz.scalar("", value=1.0), ValueError, "a viz track needs a name"),
        (lambda viz: viz.scalar("loss", step=1.5, value=1.0), TypeError, "a viz step is an integer"),
        (lambda viz: viz.vector("v", [1.0, float("-inf")]), ValueError, "values[1] is -inf"),
        (lambda viz: viz.vector("v", "123"), TypeError, "must be a sequence of numbers"),
        (lambda viz: viz.vector("v", [0.0] * (MAX_NUMBERS + 1)), ValueError, "save_json"),
        (lambda viz: viz.vector("v", (0.0 for _ in range(MAX_NUMBERS + 1))), ValueError, "rides inside an event"),
        (lambda viz: viz.matrix("m", [[1, 2], [3]]), ValueError, "row 1 has 1 numbers but row 0 has 2"),
        (lambda viz: viz.matrix("m", [[0.0] * 200] * 51), ValueError, "more numbers than the 10,000"),
        (lambda viz: viz.matrix("m", [[1, math.nan]]), ValueError, "row 0[1] is nan"),
        (lambda viz: viz.image_from_bytes("img", PNG, mime="text/plain"), ValueError, "mime is an image type"),
        (lambda viz: viz.image_from_bytes("img", b""), TypeError, "the image's bytes"),
        (lambda viz: viz.image_from_artifact("img", "not-an-artifact"), ArtifactNotFoundError, "neither an artifact"),
        (lambda viz: viz.image_from_artifact("img", "ab" * 32), ArtifactNotFoundError, "save the image first"),
        (lambda viz: viz.scalar("loss", value=1.0, meta={"at": {1, 2}}), Exception, "meta of context.viz()"),
    ],
)
async def test_bad_points_raise_clear_errors_and_record_nothing(
    runtime: ProcessHost, call: Callable[[Any], Any], error: type[Exception], says: str
) -> None:
    async def flow(*, context: Any) -> dict[str, Any]:
        await call(context.viz())
        return {"v": "recorded"}

    run_id = new_run_id()
    with pytest.raises(error) as caught:
        await execute_run(graph(flow).spec, {}, run_id=run_id, env=runtime.env)
    assert says in str(caught.value)
    events = [r.event for r in await read_events(runtime, run_id)]
    assert not [e for e in events if isinstance(e, ev.VizRecorded | ev.ArtifactSaved)]
    assert isinstance(events[-1], ev.RunFailed)
