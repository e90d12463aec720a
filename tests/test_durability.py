"""Durability claims, tested by killing processes (kill -9), never by reasoning.

* kill -9 of nats-server mid-run, then a restart: every step the graph saw
  committed is in the journal.
* kill -9 of the process running a graph, then another process (its own
  workspace, sharing only the NATS server) continues the run by replay:
  committed steps do not run again, the step in flight runs again under the
  same idempotency key, and the outputs are right.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import eventually, read_events, run_python, start_nats_server, subprocess_env, wait_until

from aethergraph import graph_fn, tool
from aethergraph.bus.embedded import ensure_embedded_server, running_server
from aethergraph.core.errors import BusUnavailableError
from aethergraph.core.ids import new_run_id
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.run.resume import journal_state
from aethergraph.core.settings import Settings
from aethergraph.core.wire import events as ev
from aethergraph.runtime import ProcessHost, load_target

GRAPHS = """
import os, sys, time
from pathlib import Path
from aethergraph import graph_fn, tool, NodeContext

LOG = Path(os.environ["AG_TEST_LOG"])

@tool(name="step", outputs=["v"])
async def step(x: int, *, context: NodeContext) -> dict:
    # the side effect, keyed by the step's idempotency key
    with LOG.open("a") as f:
        f.write(f"run {x} {context.idempotency_key()}\\n")
    time.sleep(float(os.environ.get("AG_TEST_STEP_SLEEP", "0")))
    return {"v": x + 1}

@graph_fn(name="counter", outputs=["v"])
async def counter(n: int, *, context: NodeContext) -> dict:
    x = 0
    for _ in range(n):
        x = (await step(x))["v"]
        with LOG.open("a") as f:      # the graph saw this step committed
            f.write(f"committed {x}\\n")
    return {"v": x}
"""

START = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
import aethergraph, graphs
print(aethergraph.run(graphs.counter, {"n": int(sys.argv[2])}, run_id=sys.argv[3]))
"""

RESUME = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
import graphs
from aethergraph.core.run.executor import resume_run
from aethergraph.runtime import get_runtime, close_runtime

async def main():
    try:
        return await resume_run(graphs.counter.spec, sys.argv[2], env=(await get_runtime()).env)
    finally:
        await close_runtime()
print(json.dumps(asyncio.run(main())))
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _kill_when(worker: subprocess.Popen[str], ready: Callable[[], bool], victim_pid: int, what: str) -> None:
    """Wait until ``ready()``, kill -9 ``victim_pid``, and wait for the worker to end (killing it if need be)."""
    try:
        wait_until(lambda: ready() or None, timeout_s=60, what=what)
        os.kill(victim_pid, signal.SIGKILL)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _start_worker(module_dir: Path, run_id: str, n: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", START, str(module_dir), str(n), run_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _journal_of(workspace: Path, run_id: str) -> list[ev.Event]:
    rt = await ProcessHost.open(Settings(nats_url=None, workspace=workspace))
    try:
        return journal_chain(record.event for record in await read_events(rt, run_id))
    finally:
        await rt.close()


async def test_kill_9_of_nats_server_then_a_restart_the_run_goes_on(tmp_path: Path, stop_servers: list[Path]) -> None:
    """The process driving a run rides out its server's death: when the server is back, it carries on."""
    workspace = tmp_path / "ws"
    stop_servers.append(workspace)
    (tmp_path / "graphs.py").write_text(GRAPHS)
    log = tmp_path / "effects.log"
    env = subprocess_env(AG_TEST_LOG=str(log), AG_TEST_STEP_SLEEP="0.002", AETHERGRAPH_WORKSPACE=str(workspace))
    env.pop("AETHERGRAPH_NATS_URL", None)
    server = ensure_embedded_server(workspace)
    run_id = "killserver" + os.urandom(4).hex()
    n = 600
    worker = _start_worker(tmp_path, run_id, n, env)
    try:
        wait_until(
            lambda: len([x for x in _lines(log) if x.startswith("committed")]) >= 200 or None,
            timeout_s=60,
            what="200 committed steps",
        )
        os.kill(server.pid, signal.SIGKILL)
        os.waitpid(server.pid, 0)  # noqa: ASYNC222 - started from this process: reap it
        restarted = ensure_embedded_server(workspace)  # on the same port: the worker reconnects
        assert restarted.pid != server.pid and restarted.url == server.url
        out, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
    assert f"'v': {n}" in out
    committed = [int(x.split()[1]) for x in _lines(log) if x.startswith("committed")]
    assert committed == list(range(1, n + 1))
    journal = await _journal_of(workspace, run_id)
    returned = [e.outputs["v"] for e in journal if isinstance(e, ev.ToolReturned)]
    # Every step the graph saw committed is in the journal, in order, and the run completed.
    assert returned == committed
    assert isinstance(journal[-1], ev.RunCompleted) and journal[-1].outputs == {"v": n}


async def test_a_server_that_stays_down_fails_the_process_after_the_outage_tolerance(
    tmp_path: Path, stop_servers: list[Path]
) -> None:
    workspace = tmp_path / "ws"
    stop_servers.append(workspace)
    (tmp_path / "graphs.py").write_text(GRAPHS)
    log = tmp_path / "effects.log"
    env = subprocess_env(
        AG_TEST_LOG=str(log),
        AG_TEST_STEP_SLEEP="0.002",
        AETHERGRAPH_WORKSPACE=str(workspace),
        AETHERGRAPH_OUTAGE_TOLERANCE_S="1.5",
    )
    env.pop("AETHERGRAPH_NATS_URL", None)
    server = ensure_embedded_server(workspace)
    run_id = "downserver" + os.urandom(4).hex()
    worker = _start_worker(tmp_path, run_id, 100_000, env)
    _kill_when(
        worker,
        lambda: len([x for x in _lines(log) if x.startswith("committed")]) >= 200,
        server.pid,
        "200 committed steps",
    )
    assert worker.returncode != 0  # the run could not go on without its bus
    assert worker.stderr is not None and "AETHERGRAPH_OUTAGE_TOLERANCE_S" in worker.stderr.read()
    committed = [int(x.split()[1]) for x in _lines(log) if x.startswith("committed")]
    assert running_server(workspace) is None
    journal = await _journal_of(workspace, run_id)
    returned = [e.outputs["v"] for e in journal if isinstance(e, ev.ToolReturned)]
    assert returned[: len(committed)] == committed
    assert committed == list(range(1, len(committed) + 1))


async def test_kill_9_of_a_worker_then_another_process_finishes_the_run(runtime: ProcessHost, tmp_path: Path) -> None:
    (tmp_path / "graphs.py").write_text(GRAPHS)
    log = tmp_path / "effects.log"
    env = subprocess_env(AG_TEST_LOG=str(log), AG_TEST_STEP_SLEEP="0.01", AETHERGRAPH_WORKSPACE=str(tmp_path / "a"))
    run_id = "killworker" + os.urandom(4).hex()
    n = 60
    worker = _start_worker(tmp_path, run_id, n, env)
    _kill_when(worker, lambda: len(_lines(log)) >= 40, worker.pid, "20 steps of the first worker")
    assert worker.returncode == -signal.SIGKILL
    before = _lines(log)
    committed_before = [x for x in before if x.startswith("committed")]
    assert 0 < len(committed_before) < n

    # "Another host": its own workspace folder, sharing only the NATS server.
    other_env = subprocess_env(AG_TEST_LOG=str(log), AETHERGRAPH_WORKSPACE=str(tmp_path / "b"))
    assert run_python(RESUME, str(tmp_path), run_id, env=other_env) == {"v": n}

    runs = [x.split() for x in _lines(log) if x.startswith("run ")]
    by_input: dict[int, list[str]] = {}
    for _, x, key in runs:
        by_input.setdefault(int(x), []).append(key)
    assert sorted(by_input) == list(range(n))
    # Committed steps never ran again; at most the step in flight at the kill ran twice,
    # and then under the same idempotency key.
    repeated = {x: keys for x, keys in by_input.items() if len(keys) > 1}
    assert len(repeated) <= 1
    for keys in repeated.values():
        assert len(set(keys)) == 1 and len(keys) == 2
        assert next(iter(repeated)) >= len(committed_before) - 1

    journal = journal_chain(record.event for record in await read_events(runtime, run_id))
    claims = [e for e in journal if isinstance(e, ev.RunClaimed)]
    assert [c.reason for c in claims] == ["resume"]
    assert isinstance(journal[-1], ev.RunCompleted) and journal[-1].outputs == {"v": n}
    assert len({e.worker for e in journal}) == 2
    assert [e.outputs["v"] for e in journal if isinstance(e, ev.ToolReturned)] == list(range(1, n + 1))


def test_resume_of_a_finished_run_runs_nothing(tmp_path: Path) -> None:
    (tmp_path / "graphs.py").write_text(GRAPHS)
    log = tmp_path / "effects.log"
    env = subprocess_env(AG_TEST_LOG=str(log), AETHERGRAPH_WORKSPACE=str(tmp_path / "a"))
    run_id = "finished" + os.urandom(4).hex()
    worker = _start_worker(tmp_path, run_id, 3, env)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1].replace("'", '"')) == {"v": 3}
    effects = _lines(log)
    assert run_python(RESUME, str(tmp_path), run_id, env=env) == {"v": 3}
    assert _lines(log) == effects


@tool(name="dur_slow_step", outputs=["v"])
async def dur_slow_step(x: int) -> dict[str, int]:
    await asyncio.sleep(0.01)
    return {"v": x + 1}


@graph_fn(name="dur_slow_chain", outputs=["v"])
async def dur_slow_chain(n: int) -> dict[str, int]:
    x = 0
    for _ in range(n):
        x = (await dur_slow_step(x))["v"]
    return {"v": x}


async def test_a_run_given_up_on_an_outage_is_failed_when_the_server_returns(tmp_path: Path) -> None:
    """A live process never lets go of a run silently: past the outage tolerance it fails the run, with the reason."""
    server = start_nats_server(tmp_path / "nats")
    port = int(server.url.rpartition(":")[2])
    rt = await ProcessHost.open(Settings(nats_url=server.url, workspace=tmp_path / "ws", outage_tolerance_s=1.0))
    try:
        run_id = new_run_id()
        task = rt.driver.start(load_target(dur_slow_chain), {"n": 100_000}, run_id)
        await eventually(lambda: _has_returned_steps(rt, run_id), "a few committed steps")
        server.process.kill()
        server.process.wait()
        with pytest.raises(BusUnavailableError, match="AETHERGRAPH_OUTAGE_TOLERANCE_S"):
            await task
        # The run is not released: its failure is journaled once the server is back (same store, same port).
        restarted = start_nats_server(tmp_path / "nats", port=port)
        try:
            status = await eventually(lambda: _ended_status(rt, run_id), "run.failed after the outage")
            assert status == "failed"
            journal = journal_chain(record.event for record in await read_events(rt, run_id))
            failed = journal[-1]
            assert isinstance(failed, ev.RunFailed) and failed.error_type.endswith("BusUnavailableError")
            assert "AETHERGRAPH_OUTAGE_TOLERANCE_S" in failed.message
            assert run_id not in {owned.run_id for owned in await rt.leases.owned_runs(rt.worker_id)}
        finally:
            await rt.close()
            restarted.stop()
    finally:
        server.stop()


async def _has_returned_steps(rt: ProcessHost, run_id: str) -> bool | None:
    events = [record.event for record in await read_events(rt, run_id)]
    return True if sum(isinstance(e, ev.ToolReturned) for e in events) >= 3 else None


async def _ended_status(rt: ProcessHost, run_id: str) -> str | None:
    state = journal_state(run_id, journal_chain(record.event for record in await read_events(rt, run_id)))
    return state.status if state.ended is not None else None
