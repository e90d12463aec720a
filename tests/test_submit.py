"""Submitting runs without driving them: ``aethergraph.submit`` and ``aethergraph run --detach``.

A submitted run is journaled as queued and recorded on the run queue (the
owner ``queue``, which never heartbeats); it stays ``queued`` until a worker
serving its graph claims it, and that worker runs it from the start. Workers
are real processes (tests/process_hosts.py); the graphs live in
``tests/procs/submit_graphs.py``, which no other test's worker serves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import process_hosts
import pytest
from helpers import eventually, read_events, wait_until
from process_hosts import lines, wait_ready

import aethergraph
from aethergraph.core.errors import StaleWriterError
from aethergraph.core.ids import QUEUE_OWNER
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.settings import load_settings
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost

pytestmark = pytest.mark.slow

GRAPHS = Path(__file__).resolve().parent / "procs" / "submit_graphs.py"
OTHER_GRAPHS = Path(__file__).resolve().parent / "procs" / "dp_graphs.py"
SAFETY_S = 60  # an upper bound for anything to happen, never a measurement


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[process_hosts.Hosts]:
    h = process_hosts.Hosts(tmp_path, GRAPHS, prefix="sub", safety_s=SAFETY_S)
    try:
        yield h
    finally:
        h.kill_all()


async def _queued_ids(runtime: ProcessHost) -> set[str]:
    return {owned.run_id for owned in await runtime.leases.owned_runs(QUEUE_OWNER)}


async def _journal(runtime: ProcessHost, run_id: str) -> list[ev.AnyEvent]:
    return journal_chain([record.event for record in await read_events(runtime, run_id)])


def _cli_json(hosts: process_hosts.Hosts, *args: str) -> object:
    done = hosts.cli("cli", *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


async def test_a_submitted_run_is_queued_until_a_worker_serving_its_graph_runs_it(
    runtime: ProcessHost, hosts: process_hosts.Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"
    handle = await aethergraph.submit(f"{GRAPHS}:sub_sum", {"x": 20, "label": "a", "log": str(log)})
    run_id = handle.run_id
    assert await handle.status() == "queued"
    assert run_id in await _queued_ids(runtime)
    state = _cli_json(hosts, "status", run_id)
    assert isinstance(state, dict) and state["status"] == "queued"
    listed = _cli_json(hosts, "runs", "--status", "queued", "--limit", "1000")
    assert isinstance(listed, list) and run_id in {row["run_id"] for row in listed}

    # A worker that does not serve the graph leaves the run queued.
    other = hosts.spawn("other", ["worker", str(OTHER_GRAPHS)])
    wait_ready(other)
    await asyncio.to_thread(
        wait_until,
        lambda: "graph 'sub_sum' not known here" in other.output() or None,
        timeout_s=SAFETY_S,
        what="the other worker to leave the run",
    )
    assert await handle.status() == "queued"

    worker = hosts.worker("w1")
    assert await handle.result(timeout=SAFETY_S) == {"total": 41}
    assert await handle.status() == "succeeded"
    assert [line[0] for line in lines(log)] == ["a"]
    chain = await _journal(runtime, run_id)
    started, claimed = chain[0], chain[1]
    assert isinstance(started, ev.RunStarted) and started.queued and started.worker == QUEUE_OWNER
    assert isinstance(claimed, ev.RunClaimed) and claimed.reason == "takeover"
    assert claimed.worker == worker.worker_id and claimed.previous_worker == QUEUE_OWNER
    assert sum(isinstance(event, ev.RunClaimed) for event in chain) == 1
    await eventually(lambda: _none_queued(runtime, {run_id}), "the run to leave the queue", timeout_s=SAFETY_S)
    state = _cli_json(hosts, "status", run_id)
    assert isinstance(state, dict) and state["status"] == "succeeded"
    assert worker.stop() == 0 and other.stop() == 0


async def _none_queued(runtime: ProcessHost, run_ids: set[str]) -> bool | None:
    return True if not (await _queued_ids(runtime)) & run_ids else None


async def test_run_detach_prints_the_run_id_and_exits_then_a_worker_finishes_the_run(
    runtime: ProcessHost, hosts: process_hosts.Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"
    inputs = json.dumps({"x": 5, "label": "d", "log": str(log)})
    done = hosts.cli("submitter", "run", f"{GRAPHS}:sub_sum", "--inputs-json", inputs, "--detach")
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.strip()
    assert "queued" in done.stderr
    handle = await aethergraph.get_run(run_id)
    assert await handle.status() == "queued"
    assert not log.exists()
    hosts.worker("w1")
    assert await handle.result(timeout=SAFETY_S) == {"total": 11}
    assert [line[0] for line in lines(log)] == ["d"]


async def test_two_workers_started_together_take_each_queued_run_once(
    runtime: ProcessHost, hosts: process_hosts.Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"

    async def submit(label: str, x: int) -> aethergraph.RunHandle:
        return await aethergraph.submit(f"{GRAPHS}:sub_sum", {"x": x, "label": label, "log": str(log)})

    before = [await submit(f"b{i}", i) for i in range(6)]  # taken by the workers' startup adoption
    workers = [hosts.worker("w1"), hosts.worker("w2")]
    wait_ready(*workers)
    after = [await submit(f"n{i}", 10 + i) for i in range(6)]  # taken from the queue as they are written
    handles = before + after
    results = [await handle.result(timeout=SAFETY_S) for handle in handles]
    assert results == [{"total": 2 * i + 1} for i in range(6)] + [{"total": 2 * (10 + i) + 1} for i in range(6)]
    executed = [line[0] for line in lines(log)]
    assert sorted(executed) == sorted([f"b{i}" for i in range(6)] + [f"n{i}" for i in range(6)])
    claimers = set()
    for handle in handles:
        chain = await _journal(runtime, handle.run_id)
        claims = [event for event in chain if isinstance(event, ev.RunClaimed)]
        assert len(claims) == 1, chain
        claimers.add(claims[0].worker)
    assert claimers <= {worker.worker_id for worker in workers}
    await eventually(
        lambda: _none_queued(runtime, {handle.run_id for handle in handles}), "the queue to empty", timeout_s=SAFETY_S
    )


async def test_a_submitted_static_run_is_run_by_a_worker(runtime: ProcessHost, hosts: process_hosts.Hosts) -> None:
    handle = await aethergraph.submit(f"{GRAPHS}:sub_static", {"x": 3}, max_concurrency=1)
    assert await handle.status() == "queued"
    hosts.worker("w1")
    assert await handle.result(timeout=SAFETY_S) == {"y": 12}
    chain = await _journal(runtime, handle.run_id)
    started = chain[0]
    assert isinstance(started, ev.RunStarted) and started.queued and started.plan_digest
    assert started.max_concurrency == 1


async def test_a_queued_run_is_cancelled_at_once_and_taken_off_the_queue(runtime: ProcessHost, tmp_path: Path) -> None:
    handle = await aethergraph.submit(f"{GRAPHS}:sub_sum", {"x": 1, "label": "c", "log": str(tmp_path / "c.log")})
    assert await handle.status() == "queued"
    assert await handle.cancel("not needed") == "cancelled"
    assert await handle.status() == "cancelled"
    await eventually(lambda: _none_queued(runtime, {handle.run_id}), "the run to leave the queue", timeout_s=SAFETY_S)


async def test_submit_refuses_a_taken_run_id_and_the_queue_is_no_worker_id(
    runtime: ProcessHost, tmp_path: Path
) -> None:
    inputs = {"x": 1, "label": "t", "log": str(tmp_path / "t.log")}
    handle = await aethergraph.submit(f"{GRAPHS}:sub_sum", inputs)
    with pytest.raises(StaleWriterError):
        await aethergraph.submit(f"{GRAPHS}:sub_sum", inputs, run_id=handle.run_id)
    assert await handle.cancel() == "cancelled"
    with pytest.raises(ValueError, match="reserved for the run queue"):
        load_settings(worker_id=QUEUE_OWNER)
