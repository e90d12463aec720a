"""Startup adoption claims each orphaned run once, even when workers start together.

A worker that starts adopts the runs of dead processes: it reads the run
ownership records and the set of live processes. If a second worker starts
heartbeating and records a run between those two reads, the second worker
must not look dead. Every "host" is its own OS process sharing only the NATS
server; the graphs are ``tests/procs/dp_graphs.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import process_hosts
import pytest
from helpers import eventually, read_events, run_python, wait_until
from process_hosts import lines

from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost

pytestmark = pytest.mark.slow

GRAPHS = Path(__file__).resolve().parent / "procs" / "dp_graphs.py"
SAFETY_S = 60  # an upper bound for anything to happen, never a measurement


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[process_hosts.Hosts]:
    h = process_hosts.Hosts(tmp_path, GRAPHS, prefix="ar", safety_s=SAFETY_S)
    try:
        yield h
    finally:
        h.kill_all()


def new_run_id(prefix: str) -> str:
    return f"ar{prefix}{os.urandom(5).hex()}"


async def takeover_claims(rt: ProcessHost, run_id: str) -> list[tuple[str, str]]:
    """(worker, previous worker) of every ``run.claimed`` with reason takeover stored for the run."""
    stored = [record.event for record in await read_events(rt, run_id)]
    return [(e.worker, e.previous_worker) for e in stored if isinstance(e, ev.RunClaimed) and e.reason == "takeover"]


async def completed(rt: ProcessHost, run_id: str) -> bool | None:
    chain = journal_chain(record.event for record in await read_events(rt, run_id))
    return True if chain and isinstance(chain[-1], ev.RunCompleted) else None


async def until_dead(rt: ProcessHost, worker_id: str) -> None:
    async def dead() -> bool | None:
        return True if worker_id not in await rt.leases.live_workers() else None

    await eventually(dead, f"the heartbeat of {worker_id} to expire", timeout_s=SAFETY_S)


# Worker b starts (heartbeat, ownership record, claim) between worker a's two reads of the leases.
B_STARTS_BETWEEN_THE_READS = """
import asyncio, json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import dp_graphs  # registers the graphs
from aethergraph.core.settings import load_settings
from aethergraph.host.worker import Worker
from aethergraph.host.process import ProcessHost

async def main(prefix, run_id):
    a = await ProcessHost.open(load_settings(worker_id=prefix + "-a"), inline_answers=False)
    b = await ProcessHost.open(load_settings(worker_id=prefix + "-b"), inline_answers=False)
    worker_a, worker_b = Worker(a.driver, a.commands), Worker(b.driver, b.commands)
    leases = a.driver.leases
    reads = []

    def then_b_adopts(read):
        async def wrapped(*args, **kwargs):
            result = await read(*args, **kwargs)
            reads.append(read.__name__)
            if len(reads) == 1:
                await worker_b._adopt_orphans()  # b: heartbeat, its ownership record, the takeover claim
            return result
        return wrapped

    leases.owned_runs = then_b_adopts(leases.owned_runs)
    leases.live_workers = then_b_adopts(leases.live_workers)
    await leases.start()
    await worker_a._adopt_orphans()
    tasks = [t for t in (a.driver.tasks.get(run_id), b.driver.tasks.get(run_id)) if t is not None]
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    await a.close()
    await b.close()
    print(json.dumps({"reads": reads, "drivers": len(tasks)}))

asyncio.run(main(sys.argv[2], sys.argv[3]))
"""


async def test_a_worker_that_starts_between_the_two_reads_of_another_does_not_look_dead(
    runtime: ProcessHost, hosts: process_hosts.Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("between")
    driver = hosts.driver("d", "dp_chain", {"n": 3, "log": str(log), "hold": "in-s1"}, run_id)
    wait_until(
        lambda: True if any(p[:2] == ["hold", "in-s1"] for p in lines(log)) else None,
        timeout_s=SAFETY_S,
        what="the driver to park in s1",
    )
    driver.kill9()
    await until_dead(runtime, driver.worker_id)
    env, _ = hosts.env("ab")
    result = run_python(B_STARTS_BETWEEN_THE_READS, str(GRAPHS), driver.worker_id, run_id, env=env)
    # Ownership records are read before the live set (see Worker._adopt_orphans).
    assert result == {"reads": ["owned_runs", "live_workers"], "drivers": 1}
    assert await takeover_claims(runtime, run_id) == [(f"{driver.worker_id}-b", driver.worker_id)]
    assert await completed(runtime, run_id)
    s1 = [p for p in lines(log) if p[:2] == ["run", "s1"]]
    assert len(s1) == 2  # the driver's, and b's after the takeover: never a third by a


START_PARKED_RUNS = """
import asyncio, json, sys
import aethergraph

async def main(graphs, log, count, prefix):
    for i in range(int(count)):
        inputs = {"n": 2, "log": log, "hold": f"in-s1@{count}"}
        await aethergraph.start_run(f"{graphs}:dp_chain", inputs, run_id=f"{prefix}{i}")
    await asyncio.Event().wait()  # parked in s1 until killed

asyncio.run(main(*sys.argv[1:]))
"""


def start_parked_runs(
    hosts: process_hosts.Hosts, root: Path, log: Path, count: int, prefix: str
) -> tuple[subprocess.Popen[bytes], str]:
    """A process that starts ``count`` runs which all park in their first step; and its worker id."""
    env, worker_id = hosts.env("d")
    with (root / "d.out").open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-c", START_PARKED_RUNS, str(GRAPHS), str(log), str(count), prefix],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return popen, worker_id


@pytest.mark.parametrize("round_", range(3))
async def test_two_workers_starting_together_claim_each_orphan_once(
    runtime: ProcessHost, hosts: process_hosts.Hosts, tmp_path: Path, round_: int
) -> None:
    count = 6
    log = tmp_path / "count.log"
    prefix = new_run_id(f"r{round_}x")
    driver, driver_id = start_parked_runs(hosts, tmp_path, log, count, prefix)
    try:
        wait_until(
            lambda: True if sum(p[:2] == ["hold", "in-s1"] for p in lines(log)) == count else None,
            timeout_s=SAFETY_S,
            what=f"{count} runs to park in s1",
        )
    finally:
        driver.kill()
        driver.wait(timeout=SAFETY_S)
    await until_dead(runtime, driver_id)
    workers = [hosts.worker("b"), hosts.worker("c")]  # started together: both adopt at startup
    run_ids = [f"{prefix}{i}" for i in range(count)]
    for run_id in run_ids:
        await eventually(lambda run_id=run_id: completed(runtime, run_id), f"run {run_id} to complete")
    for run_id in run_ids:
        claims = await takeover_claims(runtime, run_id)
        assert len(claims) == 1 and claims[0][1] == driver_id, (run_id, claims)
    # Each run's s2 ran once, in the one process that took the run over.
    assert sum(p[:2] == ["run", "s2"] for p in lines(log)) == count
    process_hosts.wait_ready(*workers)  # a worker stopped before it serves dies of the signal
    for worker in workers:
        assert worker.stop() == 0, worker.output()
