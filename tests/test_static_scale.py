"""Many static runs and followers at once: none stuck, and the server's consumers stay bounded (issue 16).

Static runs used to follow their node reports through one ordered consumer per
run, and ``read_run(follow=True)`` (``RunHandle.result()`` of a run driven
elsewhere) through one per follower: past 1,000 on a stream nats-server refuses
more (``maximum consumers limit reached``), runs stayed ``running`` forever and
``result()`` calls failed. These tests start more runs and followers than that
from one process and sample the consumer counts of ``AG_COMMANDS`` and
``AG_EVENTS`` while they run. No assertion is about elapsed time.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import eventually

import aethergraph as ag
from aethergraph import graphify, tool
from aethergraph.bus.embedded import ensure_embedded_server
from aethergraph.bus.topology import COMMANDS_STREAM, EVENTS_STREAM, report_subject
from aethergraph.core.errors import RunFailedError
from aethergraph.core.ids import new_run_id
from aethergraph.core.settings import Settings
from aethergraph.core.wire.node_report import NodeReport
from aethergraph.host.process import ProcessHost
from aethergraph.host.runs import RunHandle

GATES: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

# Well above nats-server's 1,000 consumers per stream; see test_many_static_runs_and_followers.
RUNS = 1500
CONSUMER_BOUND = 50


@tool(name="scale_gate", outputs=["x"])
async def scale_gate(tok: str, x: int) -> dict[str, Any]:
    await GATES[tok].wait()
    return {"x": x}


@tool(name="scale_double", outputs=["y"])
def scale_double(x: int) -> dict[str, Any]:
    return {"y": 2 * x}


@tool(name="scale_add", outputs=["z"])
def scale_add(x: int, y: int) -> dict[str, Any]:
    return {"z": x + y}


@graphify(name="scale_three", inputs=["tok", "n"], outputs=["z"])
def scale_three(tok, n):  # type: ignore[no-untyped-def]
    gated = scale_gate(tok=tok, x=n)
    doubled = scale_double(x=gated.x)
    return {"z": scale_add(x=gated.x, y=doubled.y).z}


async def _consumer_counts(runtime: ProcessHost) -> tuple[int, int]:
    js = runtime.bus.js
    commands = (await js.stream_info(COMMANDS_STREAM)).state.consumer_count
    events = (await js.stream_info(EVENTS_STREAM)).state.consumer_count
    return commands, events


async def test_many_static_runs_and_followers_keep_the_servers_consumers_bounded(runtime: ProcessHost) -> None:
    """1,500 static runs of a three-node graph started at once from one process, each awaited twice:
    by its own handle and by a handle without its task (``result()`` follows the run's events, as a
    caller in another process does): 1,500 runs and 1,500 followers.

    Every run's first node waits on a gate that opens once all 1,500 runs are scheduling and all
    1,500 followers are following, so they are all live at once. Consumers on ``AG_COMMANDS`` and
    ``AG_EVENTS`` are sampled throughout and must stay under a small bound (the durable ones and a
    few short-lived ones), where one consumer per run or per follower would pass 1,000 and fail.
    1,500 runs of three nodes finish in about 20 s on this 2-core machine under other load.
    """
    tok = os.urandom(6).hex()
    baseline = await _consumer_counts(runtime)
    handles = [await ag.start_run(scale_three, {"tok": tok, "n": i}) for i in range(RUNS)]
    followers = [asyncio.ensure_future(RunHandle(h.run_id, runtime.env).result()) for h in handles]
    owned = [asyncio.ensure_future(h.result()) for h in handles]
    peaks = list(baseline)
    sampling = True

    async def sample() -> None:
        while sampling:
            for i, count in enumerate(await _consumer_counts(runtime)):
                peaks[i] = max(peaks[i], count)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:

        async def all_live() -> bool | None:
            scheduling = runtime.node_reports.followed_runs >= RUNS
            return True if scheduling and len(runtime.event_log._followers) >= RUNS else None

        await eventually(all_live, "every run scheduling and every follower following", timeout_s=120)
        GATES[tok].set()
        outputs = await asyncio.gather(*followers)
        own_outputs = await asyncio.gather(*owned)
    finally:
        sampling = False
        await sampler
        GATES.pop(tok, None)
    assert [o["z"] for o in outputs] == [3 * i for i in range(RUNS)]
    assert own_outputs == outputs
    assert peaks[0] < CONSUMER_BOUND and peaks[1] < CONSUMER_BOUND, (baseline, peaks)
    statuses = await asyncio.gather(*(h.status() for h in handles[:: RUNS // 50]))
    assert set(statuses) == {"succeeded"}
    assert runtime.node_reports.followed_runs == 0
    assert not runtime.event_log._followers


async def test_stored_reports_are_caught_up_without_a_consumer(runtime: ProcessHost) -> None:
    """A scheduler continuing a run (``from_start``) gets the reports stored before it followed, then
    live ones, from the process-wide subscription."""
    run_id = new_run_id()
    reports = runtime.node_reports
    before = NodeReport(run_id=run_id, node_id="a", attempt=1, status="completed", outputs={"x": 1})
    await reports.publish(before)
    got: list[NodeReport | None] = []
    stop = await reports.follow(run_id, got.append, from_start=True)
    try:
        assert got == [before, None]
        after = NodeReport(run_id=run_id, node_id="b", attempt=1, status="completed", outputs={"x": 2})
        await reports.publish(after)
        await eventually(lambda: _ready(after in got), "the live report")
        # A report of another run is not handed to this run's sink.
        other = NodeReport(run_id=run_id + "x", node_id="c", attempt=1, status="completed", outputs={})
        await reports.publish(other)
        await runtime.bus.nc.flush()
        assert other not in got
    finally:
        await stop()
    assert reports.followed_runs == 0
    assert (await runtime.bus.js.stream_info(COMMANDS_STREAM)).config.republish is not None
    assert report_subject(run_id).endswith(run_id)


async def _ready(value: bool) -> bool | None:
    return True if value else None


async def test_a_static_run_whose_scheduler_cannot_follow_its_reports_fails(
    runtime: ProcessHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler that fails to start (here: following its reports raises) journals ``run.failed``
    with the error instead of leaving the run ``running`` with its ownership released."""

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("cannot follow reports")

    monkeypatch.setattr(runtime.nodes, "follow_node_reports", broken)
    handle = await ag.start_run(scale_three, {"tok": "never", "n": 1})
    with pytest.raises(RunFailedError, match="cannot follow reports"):
        await RunHandle(handle.run_id, runtime.env).result()
    with pytest.raises(RuntimeError):
        await handle.result()
    assert await handle.status() == "failed"
    state = await handle.state()
    assert state.ended is not None and "cannot follow reports" in getattr(state.ended, "message", "")


async def test_followers_and_schedulers_ride_out_a_server_restart(tmp_path: Path, stop_servers: list[Path]) -> None:
    """kill -9 of nats-server while runs wait on their gate and other connections follow them: after
    the restart every follower reads what it missed (stored events, not republished to it while it
    was away) and every run completes."""
    workspace = tmp_path / "ws"
    stop_servers.append(workspace)
    server = ensure_embedded_server(workspace)
    settings = Settings(nats_url=None, workspace=workspace)
    driver, follower = await ProcessHost.open(settings), await ProcessHost.open(settings)
    tok = os.urandom(6).hex()
    try:
        run_ids = [new_run_id() for _ in range(20)]
        owned = [
            driver.driver.start(scale_three.__aethergraph_spec__, {"tok": tok, "n": i}, r)
            for i, r in enumerate(run_ids)
        ]
        followers = [asyncio.ensure_future(RunHandle(r, follower.env).result()) for r in run_ids]
        await eventually(lambda: _ready(len(follower.event_log._followers) >= len(run_ids)), "every follower following")
        os.kill(server.pid, signal.SIGKILL)
        os.waitpid(server.pid, 0)  # noqa: ASYNC222 - started from this process: reap it
        restarted = ensure_embedded_server(workspace)
        assert restarted.url == server.url
        GATES[tok].set()
        outputs = await asyncio.wait_for(asyncio.gather(*followers), 120)
        assert [o["z"] for o in outputs] == [3 * i for i in range(len(run_ids))]
        assert [await task for task in owned] == outputs
    finally:
        GATES.pop(tok, None)
        await follower.close()
        await driver.close()
