"""Durability across real OS processes: waits, resume commands, workers and crash takeover.

Every "host" is its own process with its own ``AETHERGRAPH_WORKSPACE`` folder;
hosts share only the NATS server (``AETHERGRAPH_NATS_URL``). The graphs live in
``tests/procs/dp_graphs.py`` and are imported by the subprocesses only; every
side effect a step has is a line in a count file (see that module), so the
tests count executions from outside the processes. Processes are parked at
known points by hold points (inputs of the run), never by sleeping, and
killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import nats
import process_hosts
import pytest
from helpers import (
    START_AND_LEAVE,
    NatsServer,
    eventually,
    outcome_of,
    port_accepts,
    read_events,
    run_python,
    start_nats_server,
    wait_until,
)
from process_hosts import lines, wait_ready

import aethergraph
from aethergraph.bus.embedded import find_nats_server_binary
from aethergraph.core.errors import RunNotFoundError
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.run.resume import JournalState
from aethergraph.core.settings import load_settings
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost

pytestmark = pytest.mark.slow
T = TypeVar("T")

GRAPHS = Path(__file__).resolve().parent / "procs" / "dp_graphs.py"
SAFETY_S = 60  # an upper bound for anything to happen, never a measurement

# --- processes ------------------------------------------------------------------------


class Hosts(process_hosts.Hosts):
    """Hosts running the graphs of ``tests/procs/dp_graphs.py``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, GRAPHS, prefix="dp", safety_s=SAFETY_S)

    def leave_waiting(
        self, name: str, graph: str, inputs: dict[str, Any], run_id: str, *, cli: bool = False, **extra: str
    ) -> None:
        """Process A: start the run, let it suspend on its wait, exit.

        With ``cli``, process A is ``aethergraph run`` (stdin is not a terminal), which
        leaves a waiting run with exit status 3; else a script using ``start_run``.
        """
        if cli:
            args = ["run", f"{GRAPHS}:{graph}", "--inputs-json", json.dumps(inputs), "--run-id", run_id]
            done = self.cli(name, *args, **extra)
            assert done.returncode == 3, done.stdout + done.stderr
            assert f"aethergraph resume {run_id}" in done.stderr
            return
        env, _ = self.env(name, **extra)
        status = run_python(START_AND_LEAVE, f"{GRAPHS}:{graph}", json.dumps(inputs), run_id, env=env)
        assert status == "waiting"


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    h = Hosts(tmp_path)
    try:
        yield h
    finally:
        h.kill_all()


# --- the count file ----------------------------------------------------------------------


def executions(log: Path) -> dict[str, list[tuple[str, int]]]:
    """Per step label, every execution's (idempotency key, pid), in order."""
    runs: dict[str, list[tuple[str, int]]] = {}
    for parts in lines(log):
        if parts[0] == "run":
            runs.setdefault(parts[1], []).append((parts[2], int(parts[3])))
    return runs


def finished(log: Path) -> dict[str, list[int]]:
    """Per step label, the pids that finished it."""
    done: dict[str, list[int]] = {}
    for parts in lines(log):
        if parts[0] == "done":
            done.setdefault(parts[1], []).append(int(parts[2]))
    return done


def wait_for_hold(log: Path, point: str) -> int:
    """The pid of the process parked at hold point ``point``."""
    return wait_until(
        lambda: next((int(p[2]) for p in lines(log) if p[0] == "hold" and p[1] == point), None),
        timeout_s=SAFETY_S,
        what=f"a process to park at {point}",
    )


# --- the journal -------------------------------------------------------------------------


async def journal_of(rt: ProcessHost, run_id: str) -> tuple[list[ev.Event], list[ev.Event]]:
    """(every stored event, the run's journal chain)."""
    stored = [record.event for record in await read_events(rt, run_id)]
    return stored, journal_chain(stored)


def assert_consistent_chain(chain: Sequence[ev.Event], outputs: dict[str, Any]) -> None:
    """seq 1..N without gaps, each event in the epoch of the latest start/claim, ending completed."""
    assert [e.seq for e in chain] == list(range(1, len(chain) + 1))
    epoch = 0
    for event in chain:
        if isinstance(event, (ev.RunStarted, ev.RunClaimed)):
            assert event.epoch == event.seq
            epoch = event.seq
        assert event.epoch == epoch, event
        assert event.parent is None or event.parent < event.seq
    assert sum(isinstance(e, ev.RunCompleted) for e in chain) == 1
    assert isinstance(chain[-1], ev.RunCompleted) and chain[-1].outputs == outputs



def new_run_id(prefix: str) -> str:
    return f"dp{prefix}{os.urandom(5).hex()}"


@pytest.fixture
async def bare_nats(nats_url: str) -> AsyncIterator[nats.NATS]:
    """A plain nats-py client: what any non-Python producer of resume commands looks like."""
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


# --- 1. a wait answered by a plain NATS publish, continued by a worker on another host ---------


async def test_wait_resumed_by_plain_nats_publish_is_continued_by_a_worker_of_another_host(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path, bare_nats: nats.NATS
) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("appr")
    hosts.leave_waiting("a", "dp_approval", {"log": str(log)}, run_id, cli=True)

    handle = await aethergraph.get_run(run_id)
    state = await handle.state()
    assert state.status == "waiting"
    [wait_id] = state.open_waits
    assert state.open_waits[wait_id].kind == "approval"
    assert {label: len(runs) for label, runs in executions(log).items()} == {"first": 1}

    worker = hosts.worker("b")
    outcomes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_outcome(msg: Any) -> None:
        outcomes.put_nowait(json.loads(msg.data))

    sub = await bare_nats.subscribe(f"ag.cmd.outcome.{run_id}", cb=on_outcome)
    try:
        ack = await bare_nats.jetstream().publish(
            f"ag.cmd.resume.{run_id}", json.dumps({"wait_id": wait_id, "payload": {"approved": True}}).encode()
        )
        async with asyncio.timeout(SAFETY_S):
            outcome = await outcomes.get()
            while outcome["status"] == "deferred":  # a worker without the graph (another test's) saw it first
                outcome = await outcomes.get()
    finally:
        await sub.unsubscribe()
    assert outcome["status"] == "accepted", outcome
    assert outcome["command_seq"] == ack.seq and outcome["wait_id"] == wait_id
    assert outcome["worker"] == worker.worker_id

    assert await outcome_of(run_id) == {"first": 1, "second": 2, "approved": True}
    runs = executions(log)
    assert sorted(runs) == ["first", "second"]
    assert [len(runs["first"]), len(runs["second"])] == [1, 1]
    assert runs["second"][0] == (f"{run_id}:dp_step_2", worker.pid)

    _, chain = await journal_of(runtime, run_id)
    assert_consistent_chain(chain, {"first": 1, "second": 2, "approved": True})
    [resumed] = [e for e in chain if isinstance(e, ev.WaitResumed)]
    assert resumed.wait_id == wait_id and resumed.payload == {"approved": True} and resumed.command_seq == ack.seq
    [claim] = [e for e in chain if isinstance(e, ev.RunClaimed)]
    assert claim.reason == "resume" and claim.worker == worker.worker_id
    assert worker.stop() == 0, worker.output()


# --- 2. kill -9 of the driving process, a worker takes over ----------------------------------


@pytest.mark.parametrize(
    ("hold", "in_flight", "committed_before_kill"),
    [("after-s1", None, 1), ("in-s2", "s2", 1), ("in-s3", "s3", 2)],
    ids=["after-first-step-committed", "middle-of-a-step", "during-the-last-step"],
)
async def test_kill_9_of_the_driver_then_a_running_worker_takes_over(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path, hold: str, in_flight: str | None, committed_before_kill: int
) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("kd")
    worker = hosts.worker("b")
    wait_ready(worker)
    driver = hosts.driver("a", "dp_chain", {"n": 3, "log": str(log), "hold": hold}, run_id)
    assert wait_for_hold(log, hold) == driver.pid
    driver.kill9()

    assert await outcome_of(run_id) == {"v": 3}

    runs = executions(log)
    assert sorted(runs) == ["s1", "s2", "s3"]
    for i, label in enumerate(["s1", "s2", "s3"], 1):
        key = f"{run_id}:dp_step_{i}"
        if label == in_flight:
            # The step in flight at the kill ran again on the worker, under the same key.
            assert runs[label] == [(key, driver.pid), (key, worker.pid)]
            assert finished(log)[label] == [worker.pid]
        else:
            # A committed step never runs again; later ones run once, on the worker.
            assert len(runs[label]) == 1
            assert runs[label][0][0] == key
    last_run_by = [runs[label][-1][1] for label in ["s1", "s2", "s3"]]
    assert last_run_by == [driver.pid] * committed_before_kill + [worker.pid] * (3 - committed_before_kill)

    stored, chain = await journal_of(runtime, run_id)
    assert_consistent_chain(chain, {"v": 3})
    claims = [e for e in chain if isinstance(e, ev.RunClaimed)]
    assert [(c.reason, c.worker, c.previous_worker) for c in claims] == [
        ("takeover", worker.worker_id, driver.worker_id)
    ]
    assert [e.outputs["v"] for e in chain if isinstance(e, ev.ToolReturned)] == [1, 2, 3]
    # One tool.called per step: the re-executed step reused its recorded tool.called.
    assert [e.node_id for e in stored if isinstance(e, ev.ToolCalled)] == ["dp_step_1", "dp_step_2", "dp_step_3"]
    assert f"took over run {run_id} from {driver.worker_id}" in worker.output()
    assert worker.stop() == 0, worker.output()


async def test_a_process_restarted_under_the_same_worker_id_continues_the_runs_it_was_driving(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    """A stable worker id (a StatefulSet's ``worker-0``): the restarted process takes its own runs back."""
    log = tmp_path / "count.log"
    run_id = new_run_id("same")
    fixed_id = f"dp-fixed-{os.urandom(3).hex()}"
    driver = hosts.driver(
        "a", "dp_chain", {"n": 3, "log": str(log), "hold": "after-s1"}, run_id, AETHERGRAPH_WORKER_ID=fixed_id
    )
    assert wait_for_hold(log, "after-s1") == driver.pid
    driver.kill9()
    worker = hosts.worker("a2", AETHERGRAPH_WORKER_ID=fixed_id)

    assert await outcome_of(run_id) == {"v": 3}
    runs = executions(log)
    assert [len(runs[label]) for label in ["s1", "s2", "s3"]] == [1, 1, 1]
    assert runs["s1"][0][1] == driver.pid and runs["s3"][0][1] == worker.pid
    _, chain = await journal_of(runtime, run_id)
    assert [(c.reason, c.worker) for c in chain if isinstance(c, ev.RunClaimed)] == [("takeover", fixed_id)]
    assert worker.stop() == 0, worker.output()


# --- 3. kill -9 of a worker driving a resumed run, a second worker takes over ------------------


async def test_kill_9_of_a_worker_driving_a_resumed_run_then_the_other_worker_finishes_it(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("kw")
    inputs = {"log": str(log), "hold": "in-second"}
    hosts.leave_waiting("a", "dp_approval", inputs, run_id)
    workers = [hosts.worker("b"), hosts.worker("c")]
    wait_ready(*workers)

    await aethergraph.resume(run_id, {"choice": "Approve"}, wait=False)
    holder = wait_for_hold(log, "in-second")  # whichever worker took the command parks in step two
    [resumer] = [w for w in workers if w.pid == holder]
    [other] = [w for w in workers if w is not resumer]
    resumer.kill9()

    assert await outcome_of(run_id) == {"first": 1, "second": 2, "approved": True}
    runs = executions(log)
    assert len(runs["first"]) == 1  # committed before the wait: never again
    key = f"{run_id}:dp_step_2"
    assert runs["second"] == [(key, resumer.pid), (key, other.pid)]
    assert finished(log) == {"first": [runs["first"][0][1]], "second": [other.pid]}

    _, chain = await journal_of(runtime, run_id)
    assert_consistent_chain(chain, {"first": 1, "second": 2, "approved": True})
    claims = [(c.reason, c.worker, c.previous_worker) for c in chain if isinstance(c, ev.RunClaimed)]
    assert claims[0][:2] == ("resume", resumer.worker_id)
    assert claims[1:] == [("takeover", other.worker_id, resumer.worker_id)]
    assert sum(isinstance(e, ev.WaitResumed) for e in chain) == 1
    assert other.stop() == 0, other.output()


# --- 4. two workers race to take over one orphaned run -------------------------------------


@pytest.mark.parametrize("adoption", ["at-startup", "on-death-marker"])
async def test_two_workers_racing_to_take_over_an_orphaned_run_finish_it_once(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path, adoption: str
) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("race")
    # On the death-marker path the driver's heartbeat outlives it long enough for both
    # workers to be serving (not adopting at startup) when it expires.
    lease = {"AETHERGRAPH_LEASE_S": "3"} if adoption == "on-death-marker" else {}
    driver = hosts.driver("a", "dp_chain", {"n": 3, "log": str(log), "hold": "in-s2"}, run_id, **lease)
    assert wait_for_hold(log, "in-s2") == driver.pid
    driver.kill9()
    if adoption == "at-startup":

        async def driver_dead() -> bool | None:
            return True if driver.worker_id not in await runtime.leases.live_workers() else None

        await eventually(driver_dead, "the driver's heartbeat to expire")
    workers = [hosts.worker("b"), hosts.worker("c")]

    assert await outcome_of(run_id) == {"v": 3}

    stored, chain = await journal_of(runtime, run_id)
    assert_consistent_chain(chain, {"v": 3})
    # The run completed once, and no fenced-out writer's event was stored.
    assert sum(isinstance(e, ev.RunCompleted) for e in stored) == 1
    assert len(stored) == len(chain)
    claims = [e for e in chain if isinstance(e, ev.RunClaimed)]
    assert {c.reason for c in claims} == {"takeover"}
    assert [c.previous_worker for c in claims] == [driver.worker_id] + [c.worker for c in claims[:-1]]
    assert {c.worker for c in claims} <= {w.worker_id for w in workers}
    assert sum(output.count(f"took over run {run_id}") for output in (w.output() for w in workers)) == len(claims)
    # Exactly one worker wins: the loser's claim is fenced, or it sees the winner's claim
    # in the journal and leaves the run alone.
    assert len(claims) == 1
    runs = executions(log)
    pids = {w.pid for w in workers}
    assert runs["s1"] == [(f"{run_id}:dp_step_1", driver.pid)]  # committed before the kill: never again
    assert runs["s2"][0] == (f"{run_id}:dp_step_2", driver.pid)
    assert len(runs["s2"]) == 2 and len(runs["s3"]) == 1
    assert {pid for _, pid in runs["s2"][1:] + runs["s3"]} <= pids
    for i, label in enumerate(["s2", "s3"], 2):
        assert {key for key, _ in runs[label]} == {f"{run_id}:dp_step_{i}"}  # the same key every time
    [last] = [w for w in workers if w.worker_id == claims[-1].worker]
    assert last.pid in finished(log)["s3"]
    wait_ready(*workers)  # the loser may still be starting (a SIGTERM before its handler is installed kills it)
    for w in workers:
        assert w.stop() == 0, w.output()


STALE_LISTING_TAKEOVER = """
import asyncio, json, os, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import dp_graphs  # registers the graphs
from aethergraph.core.settings import load_settings
from aethergraph.host.worker import Worker
from aethergraph.host.process import ProcessHost

async def main(dead, run_id):
    b = await ProcessHost.open(load_settings(worker_id=dead + "-b"), inline_answers=False)
    c = await ProcessHost.open(load_settings(worker_id=dead + "-c"), inline_answers=False)
    # Both workers listed the dead driver's record before either took the run over.
    [owned] = [o for o in await c.leases.owned_runs(dead) if o.run_id == run_id]
    await Worker(b.driver, b.commands)._take_over(owned)  # b claims, and parks in the step in flight
    await Worker(c.driver, c.commands)._take_over(owned)  # should see b's claim and leave the run to b
    task = c.driver.tasks.get(run_id)
    outputs = await asyncio.wait_for(task, 60) if task is not None else None
    b.driver.tasks[run_id].cancel()  # b is parked in the step for good
    await b.close()
    await c.close()
    print(json.dumps(outputs))

asyncio.run(main(sys.argv[2], sys.argv[3]))
"""


async def test_a_worker_with_a_stale_listing_does_not_take_a_run_from_a_live_worker(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    """The interleaving of the race above, made deterministic: worker c lists the dead
    driver's record, worker b takes the run over (and is parked inside the step in
    flight), then c acts on its listing."""
    log = tmp_path / "count.log"
    run_id = new_run_id("stale")
    driver = hosts.driver("a", "dp_chain", {"n": 3, "log": str(log), "hold": "in-s2@2"}, run_id)
    assert wait_for_hold(log, "in-s2") == driver.pid
    driver.kill9()
    env, _ = hosts.env("bc")
    run_python(STALE_LISTING_TAKEOVER, str(GRAPHS), driver.worker_id, run_id, env=env)

    _, chain = await journal_of(runtime, run_id)
    claims = [(c.reason, c.worker, c.previous_worker) for c in chain if isinstance(c, ev.RunClaimed)]
    assert claims == [("takeover", f"{driver.worker_id}-b", driver.worker_id)]
    assert len(executions(log)["s2"]) == 2  # the driver's, and b's re-execution


# --- 5. nats-server restarts while a run waits ------------------------------------------------


def restart_nats_server(server: NatsServer) -> NatsServer:
    """kill -9 ``server``, then start nats-server again on its port and storage directory."""
    server.process.kill()
    server.process.wait(timeout=SAFETY_S)
    host, _, port = server.url.removeprefix("nats://").rpartition(":")
    args = [str(find_nats_server_binary()), "-a", host, "-p", port, "-js", "-sd", str(server.directory / "jetstream")]
    with open(server.directory / "server.log", "ab") as log:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    restarted = NatsServer(process=process, url=server.url, directory=server.directory)

    def ready() -> bool | None:
        if process.poll() is not None:
            raise AssertionError(f"nats-server exited with {process.returncode}: see {server.directory}/server.log")
        return port_accepts(host, int(port)) or None

    try:
        wait_until(ready, timeout_s=SAFETY_S, what="the restarted nats-server to accept clients")
    except BaseException:
        restarted.stop()
        raise
    return restarted


@pytest.mark.parametrize("worker_started", ["after-the-restart", "before-the-restart"])
async def test_a_wait_survives_a_nats_server_restart_and_the_run_completes(
    hosts: Hosts, tmp_path: Path, worker_started: str
) -> None:
    server = start_nats_server(tmp_path / "own-nats")
    url = {"AETHERGRAPH_NATS_URL": server.url}
    log = tmp_path / "count.log"
    run_id = new_run_id("rst")
    try:
        hosts.leave_waiting("a", "dp_approval", {"log": str(log)}, run_id, **url)
        worker = None
        if worker_started == "before-the-restart":  # it must reconnect and go on serving
            worker = hosts.worker("b", **url)
            wait_ready(worker)
        server = restart_nats_server(server)

        status = hosts.cli("status", "status", run_id, "--json", **url)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["status"] == "waiting"
        [wait] = info["open_waits"]
        assert wait["kind"] == "approval" and info["waiting_on"]["wait_id"] == wait["wait_id"]

        if worker is None:
            worker = hosts.worker("b", **url)
        nc = await nats.connect(server.url)
        try:  # a plain publish without wait_id: it answers the run's one open wait
            await nc.jetstream().publish(f"ag.cmd.resume.{run_id}", b'{"payload": {"approved": false}}')
        finally:
            await nc.close()
        rt = await ProcessHost.open(load_settings(nats_url=server.url))
        try:
            result = await aethergraph.RunHandle(run_id, rt.env).result(timeout=SAFETY_S)
        finally:
            await rt.close()
        assert result == {"first": 1, "second": 2, "approved": False}
        runs = executions(log)
        assert [len(runs["first"]), len(runs["second"])] == [1, 1]
        assert runs["second"][0][1] == worker.pid
        assert worker.stop() == 0, worker.output()
    finally:
        hosts.kill_all()
        server.stop()


# --- 6. the command line: status, resume, a second resume of the same wait ----------------------


async def test_cli_status_resume_and_a_second_resume_of_the_same_wait(hosts: Hosts, tmp_path: Path) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("cli")
    hosts.leave_waiting("a", "dp_approval", {"log": str(log), "approvals": 2}, run_id, cli=True)

    status = hosts.cli("status", "status", run_id, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["status"] == "waiting" and info["graph"] == "dp_approval"
    [wait] = info["open_waits"]
    first_wait = wait["wait_id"]
    assert (wait["kind"], wait["prompt"]) == ("approval", "Approve #1?")
    assert info["waiting_on"] == {"wait_id": first_wait, "run_id": run_id}

    worker = hosts.worker("b")
    wait_ready(worker)  # else the resume may find no live process serving the graph, and say so
    answered = hosts.cli("resume", "resume", run_id, "--approve", "--timeout", str(SAFETY_S))
    assert answered.returncode == 0, answered.stderr
    assert "accepted" in answered.stdout and worker.worker_id in answered.stdout
    assert f"(wait {first_wait})" in answered.stdout

    handle = await aethergraph.get_run(run_id)

    async def second_wait() -> JournalState | None:
        state = await handle.state()
        return state if set(state.open_waits) not in (set(), {first_wait}) else None

    state = await eventually(second_wait, "the run to wait for its second approval")
    assert state.status == "waiting"

    again = hosts.cli("resume", "resume", run_id, "--wait-id", first_wait, "--approve")
    assert again.returncode != 0
    assert "wait_closed" in again.stdout + again.stderr

    last = hosts.cli("resume", "resume", run_id, "--reject", "--timeout", str(SAFETY_S))
    assert last.returncode == 0 and "accepted" in last.stdout, last.stdout + last.stderr
    assert await outcome_of(run_id) == {"first": 1, "second": 2, "approved": False}
    done = json.loads(hosts.cli("status", "status", run_id, "--json").stdout)
    assert (done["status"], done["open_waits"]) == ("succeeded", [])
    assert {label: len(r) for label, r in executions(log).items()} == {"first": 1, "second": 1}
    assert worker.stop() == 0, worker.output()


# --- the run lifecycle: a durable start, a process that exits hands its runs over ---------------

START_AND_EXIT = """
import asyncio, json, sys
import aethergraph

async def main():
    handle = await aethergraph.start_run(sys.argv[1], json.loads(sys.argv[2]), run_id=sys.argv[3])
    print(json.dumps(await handle.status()), flush=True)
    # ... and the script ends here: no result(), no close_runtime().

asyncio.run(main())
"""


async def test_start_run_returns_a_run_that_exists(runtime: ProcessHost, tmp_path: Path) -> None:
    handle = await aethergraph.start_run(
        f"{GRAPHS}:dp_chain", {"n": 1, "log": str(tmp_path / "count.log")}, run_id=new_run_id("exists")
    )
    assert await handle.status() in ("running", "succeeded")
    assert await handle.result() == {"v": 1}


async def test_a_script_that_starts_a_run_and_exits_hands_it_to_a_worker(
    hosts: Hosts, runtime: ProcessHost, tmp_path: Path
) -> None:
    """The script's process ends right after ``start_run``: the run is not cancelled but handed over at once
    (the leases here are far longer than the test's safety bound, so only the hand-over can explain it)."""
    log = tmp_path / "count.log"
    worker = hosts.worker("b", AETHERGRAPH_LEASE_S="600")
    wait_ready(worker)
    run_id = new_run_id("exit")
    env, _ = hosts.env("a", AETHERGRAPH_LEASE_S="600")
    status = run_python(START_AND_EXIT, f"{GRAPHS}:dp_chain", json.dumps({"n": 3, "log": str(log)}), run_id, env=env)
    assert status == "running"
    assert await outcome_of(run_id) == {"v": 3}
    runs = executions(log)
    # Steps the script's process never saw committed run on the worker; at most the step in flight when the
    # script ended runs twice, under the same idempotency key.
    assert all(pid == worker.pid for _, pid in runs["s2"] + runs["s3"])
    assert len(runs["s1"]) <= 2 and len({key for key, _ in runs["s1"]}) == 1
    _, chain = await journal_of(runtime, run_id)
    assert_consistent_chain(chain, {"v": 3})
    assert not any(isinstance(e, ev.RunCancelled) for e in chain)
    assert [(c.reason, c.worker) for c in chain if isinstance(c, ev.RunClaimed)] == [("takeover", worker.worker_id)]
    assert worker.stop() == 0, worker.output()


LIFECYCLE_GRAPHS = """
import os
from aethergraph import graph_fn, tool

@tool(name="lc_ship", outputs=["pid"])
def lc_ship(version: str) -> dict:
    return {"pid": os.getpid()}

@graph_fn(name="lc_ship_release", outputs=["shipped", "pid"])
async def lc_ship_release(version: str, *, context) -> dict:
    decision = await context.channel().ask_approval(f"ship {version}?")
    shipped = (await lc_ship(version))["pid"] if decision["approved"] else None
    return {"shipped": decision["approved"], "pid": shipped}
"""

RUN_AND_PRINT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import aethergraph, lc_graphs
print(json.dumps({"outputs": aethergraph.run(lc_graphs.lc_ship_release, {"version": "1.2"}, run_id=sys.argv[2]),
                  "pid": os.getpid()}))
"""


async def test_a_script_blocked_in_run_continues_its_own_run_when_answered_over_raw_nats(
    hosts: Hosts, runtime: ProcessHost, tmp_path: Path, bare_nats: nats.NATS
) -> None:
    """The README's ship_release, run with aethergraph.run() from a script with no terminal and no worker anywhere:
    a plain NATS publish answers it, and the script's own process continues the run and prints the outputs."""
    (tmp_path / "lc_graphs.py").write_text(LIFECYCLE_GRAPHS)
    run_id = new_run_id("blocked")
    env, _ = hosts.env("script")
    script = subprocess.Popen(  # noqa: ASYNC220 - started once, read from a thread
        [sys.executable, "-c", RUN_AND_PRINT, str(tmp_path), run_id],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        handle = await aethergraph.get_run(run_id)

        async def waiting() -> bool | None:
            try:
                return True if await handle.status() == "waiting" else None
            except RunNotFoundError:
                return None

        await eventually(waiting, "the script's run to wait", timeout_s=SAFETY_S)
        await bare_nats.publish(f"ag.cmd.resume.{run_id}", json.dumps({"payload": {"approved": True}}).encode())
        await bare_nats.flush()
        out, err = await asyncio.to_thread(script.communicate, timeout=SAFETY_S)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
    assert script.returncode == 0, err
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["outputs"] == {"shipped": True, "pid": printed["pid"]}  # the step after the wait ran in the script
    assert "is waiting" not in err  # announcing a suspension is the CLI's job, not the library's


async def test_resume_says_at_once_when_no_process_serves_the_graph(hosts: Hosts, tmp_path: Path) -> None:
    (tmp_path / "lc_graphs.py").write_text(LIFECYCLE_GRAPHS)
    run_id = new_run_id("orphan")
    env, _ = hosts.env("a")
    graph = f"{tmp_path / 'lc_graphs.py'}:lc_ship_release"
    assert run_python(START_AND_LEAVE, graph, json.dumps({"version": "2"}), run_id, env=env) == "waiting"
    outcome = await aethergraph.resume(run_id, {"approved": True}, timeout=SAFETY_S)
    assert outcome is not None and (outcome.status, outcome.reason) == ("queued", "no_process")
    assert "aethergraph worker" in outcome.message and "lc_ship_release" in outcome.message
    # A worker started later takes the queued command and finishes the run.
    worker = hosts.spawn("b", ["worker", str(tmp_path / "lc_graphs.py")])
    assert (await outcome_of(run_id))["shipped"] is True
    assert worker.stop() == 0, worker.output()
