"""Static graphs across real OS processes: workers racing on one work queue, kill -9, dual-stage resume, CLI.

Every "host" is its own process with its own ``AETHERGRAPH_WORKSPACE``; hosts
share only the NATS server. The graphs live in ``tests/procs/static_graphs.py``
and are imported by the subprocesses only; every execution of a node is a
line in a count file, so executions are counted from outside the processes.
Processes are parked inside a node by ``SP_HOLDER`` (see that module), never
by sleeping, and killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import process_hosts
import pytest
from helpers import chain_of, eventually, outcome_of, wait_until
from process_hosts import lines, wait_ready

import aethergraph
from aethergraph.core.ids import node_run_id
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost

pytestmark = pytest.mark.slow

GRAPHS = Path(__file__).resolve().parent / "procs" / "static_graphs.py"
WIDTH = 60  # tests/procs/static_graphs.py: WIDTH
SAFETY_S = 90  # an upper bound for anything to happen, never a measurement
ACK_WAIT_S = "2"  # node_ack_wait_s of every process here: a dead worker's node moves on after about 2 s


class Hosts(process_hosts.Hosts):
    """Hosts running the graphs of ``tests/procs/static_graphs.py`` with a short node ack wait."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            root,
            GRAPHS,
            prefix="sp",
            safety_s=SAFETY_S,
            env={"AETHERGRAPH_NODE_ACK_WAIT_S": ACK_WAIT_S},
            drop_env=("SP_HOLDER", "SP_VARIANT"),
        )


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    h = Hosts(tmp_path)
    try:
        yield h
    finally:
        h.kill_all()


def by_label(log: Path, kind: str) -> dict[str, list[int]]:
    """Per node label, the pids of every ``kind`` line (``run``, ``done``, ``hold``...)."""
    found: dict[str, list[int]] = {}
    for parts in lines(log):
        if parts[0] == kind:
            found.setdefault(parts[1], []).append(int(parts[2]))
    return found



def new_run_id(prefix: str) -> str:
    return f"sp{prefix}{os.urandom(5).hex()}"


def completed_once(chain: list[ev.Event]) -> list[ev.NodeCompleted]:
    """The wide graph's ``node.completed`` events, after checking every node has exactly one."""
    completed = [e for e in chain if isinstance(e, ev.NodeCompleted)]
    assert Counter(e.node_id for e in completed) == Counter({e.node_id: 1 for e in completed})
    assert len(completed) == WIDTH + 1
    return completed


WIDE_TOTAL = sum(i + 1 for i in range(WIDTH))
WIDE_LABELS = sorted(f"w{i}" for i in range(WIDTH))


# --- several workers on one work queue -----------------------------------------------------


async def test_two_workers_racing_on_one_wide_graph_never_run_a_node_twice(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"
    workers = [hosts.worker(name, AETHERGRAPH_NODE_CONCURRENCY="4") for name in ("a", "b")]
    wait_ready(*workers)
    run_ids = [new_run_id("race"), new_run_id("race")]
    # Two runs of the same graph at once, driven by a third process that executes one node at a time.
    drivers = [
        hosts.driver(
            f"d{k}",
            "sp_wide",
            {"log": str(log), "sleep_s": 0.02},
            run_id,
            AETHERGRAPH_NODE_CONCURRENCY="1",
            AETHERGRAPH_LOCAL_NODE_CONCURRENCY="0",
        )
        for k, run_id in enumerate(run_ids)
    ]
    for run_id in run_ids:
        assert await outcome_of(run_id) == {"total": WIDE_TOTAL, "count": WIDTH}
    for driver in drivers:
        assert driver.exit_code() == 0, driver.output()

    # Both runs' nodes write the same labels: every label ran exactly twice (once per run), never more.
    runs, done = by_label(log, "run"), by_label(log, "done")
    assert sorted(runs) == WIDE_LABELS
    assert {label: len(pids) for label, pids in runs.items()} == dict.fromkeys(WIDE_LABELS, 2)
    assert {label: len(pids) for label, pids in done.items()} == dict.fromkeys(WIDE_LABELS, 2)
    executors = Counter(pid for pids in runs.values() for pid in pids)
    assert {w.pid for w in workers} <= set(executors), f"both workers should have executed nodes: {executors}"

    worker_ids = {w.worker_id for w in workers} | {d.worker_id for d in drivers}
    for run_id in run_ids:
        chain = await chain_of(runtime, run_id)
        ready = Counter(e.node_id for e in chain if isinstance(e, ev.NodeReady))
        completed = Counter(e.node_id for e in chain if isinstance(e, ev.NodeCompleted))
        assert set(ready.values()) == {1} and set(completed.values()) == {1}
        assert len(completed) == WIDTH + 1
        assert not [e for e in chain if isinstance(e, ev.NodeFailed)]
        assert {e.executor for e in chain if isinstance(e, ev.NodeCompleted)} <= worker_ids
    for worker in workers:
        assert worker.stop() == 0, worker.output()


async def test_kill_9_of_a_worker_mid_node_another_worker_finishes_and_nothing_completed_runs_twice(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("kill")
    holder = hosts.worker("holder", AETHERGRAPH_NODE_CONCURRENCY="2", SP_HOLDER="2")
    wait_ready(holder)
    driver = hosts.driver(
        "driver",
        "sp_wide",
        {"log": str(log), "sleep_s": 0.05},
        run_id,
        AETHERGRAPH_NODE_CONCURRENCY="1",
        AETHERGRAPH_LOCAL_NODE_CONCURRENCY="0",
    )

    def held() -> list[str] | None:
        labels = [label for label, pids in by_label(log, "hold").items() if holder.pid in pids]
        return labels if len(labels) == 2 else None

    held_labels = wait_until(held, timeout_s=SAFETY_S, what="the holder worker to park in two nodes")
    rescuer = hosts.worker("rescuer", AETHERGRAPH_NODE_CONCURRENCY="4")
    wait_ready(rescuer)
    holder.kill9()

    assert await outcome_of(run_id) == {"total": WIDE_TOTAL, "count": WIDTH}
    assert driver.exit_code() == 0, driver.output()

    runs, done = by_label(log, "run"), by_label(log, "done")
    assert sorted(done) == WIDE_LABELS
    # Every node finished exactly once; only the two held nodes ran twice (the holder never finished them).
    assert all(len(pids) == 1 for pids in done.values()), done
    twice = sorted(label for label, pids in runs.items() if len(pids) > 1)
    assert twice == sorted(held_labels)
    for label in held_labels:
        assert runs[label][0] == holder.pid
        assert done[label][0] in (driver.pid, rescuer.pid)
    assert holder.pid not in {pid for pids in done.values() for pid in pids}

    chain = await chain_of(runtime, run_id)
    completed = completed_once(chain)
    assert holder.worker_id not in {e.executor for e in completed}
    # The redelivered nodes were not dispatched again by the scheduler: the work queue moved them.
    assert Counter(e.node_id for e in chain if isinstance(e, ev.NodeReady)) == Counter(
        {e.node_id: 1 for e in completed}
    )
    assert rescuer.stop() == 0, rescuer.output()


async def test_kill_9_of_the_scheduler_mid_local_node_a_worker_takes_the_run_and_runs_only_that_node_again(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    """The driver runs nodes of its own run in place (``node.started``, no work item): killed inside one,
    the run is taken over by another process, which runs that node again and nothing else."""
    log = tmp_path / "count.log"
    run_id = new_run_id("local")
    driver = hosts.driver("driver", "sp_wide", {"log": str(log), "sleep_s": 0.01}, run_id, SP_HOLDER="1")

    def held() -> str | None:
        labels = [label for label, pids in by_label(log, "hold").items() if driver.pid in pids]
        return labels[0] if labels else None

    held_label = wait_until(held, timeout_s=SAFETY_S, what="the driver to park in one of its local nodes")
    held_node = f"sp_work_{int(held_label[1:]) + 1}"

    async def others_committed() -> bool | None:
        chain = await chain_of(runtime, run_id)
        completed = {e.node_id for e in chain if isinstance(e, ev.NodeCompleted)}
        return True if len(completed) == WIDTH - 1 and held_node not in completed else None

    # Every other node's outcome is journaled: only the held node is left when the driver dies.
    await eventually(others_committed, "every node but the held one to be journaled as completed")
    rescuer = hosts.worker("rescuer", AETHERGRAPH_NODE_CONCURRENCY="4")
    wait_ready(rescuer)
    driver.kill9()

    assert await outcome_of(run_id) == {"total": WIDE_TOTAL, "count": WIDTH}
    runs, done = by_label(log, "run"), by_label(log, "done")
    assert sorted(done) == WIDE_LABELS
    assert all(len(pids) == 1 for pids in done.values()), done
    assert sorted(label for label, pids in runs.items() if len(pids) > 1) == [held_label]
    assert runs[held_label] == [driver.pid, rescuer.pid]
    assert done[held_label] == [rescuer.pid]

    chain = await chain_of(runtime, run_id)
    dispatches = [e for e in chain if isinstance(e, ev.NodeReady | ev.NodeStarted) and e.node_id == held_node]
    # Started in place by the driver, then again (same attempt: a node run would continue by replay).
    assert isinstance(dispatches[0], ev.NodeStarted) and dispatches[0].worker == driver.worker_id
    assert len(dispatches) == 2 and {e.attempt for e in dispatches} == {1}
    completed = completed_once(chain)
    assert driver.worker_id not in {e.executor for e in completed if e.node_id == held_node}
    assert any(isinstance(e, ev.NodeStarted) and e.worker == driver.worker_id for e in chain if e.node_id != held_node)
    assert rescuer.stop() == 0, rescuer.output()


# --- a dual-stage node resumed from another process ---------------------------------------------


async def test_dual_stage_node_waits_with_no_process_and_a_worker_of_another_host_continues_it(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("dual")
    done = hosts.cli(
        "a", "run", f"{GRAPHS}:sp_dual", "--inputs-json", json.dumps({"log": str(log)}), "--run-id", run_id
    )
    assert done.returncode == 3, done.stdout + done.stderr  # left waiting: the driver process is gone
    wait_run_id = node_run_id(run_id, "sp_gate_1", 1)
    assert f"aethergraph resume {run_id} --wait-id {wait_run_id}/w3" in done.stderr  # by the top-level run

    handle = await aethergraph.get_run(run_id)
    assert await handle.status() == "waiting"
    chain = await chain_of(runtime, run_id)
    [waiting] = [e for e in chain if isinstance(e, ev.RunWaiting)]
    assert waiting.wait_run_id == wait_run_id and waiting.kind == "review"
    assert [e.node_id for e in chain if isinstance(e, ev.NodeCompleted)] == ["sp_work_1"]
    assert by_label(log, "setup") == {"gate-1": [by_label(log, "run")["first"][0]]}

    worker = hosts.worker("b")
    wait_ready(worker)
    outcome = await aethergraph.resume(wait_run_id, {"ok": True, "note": "fine"}, timeout=SAFETY_S)
    assert outcome is not None and outcome.status == "accepted", outcome
    assert outcome.worker == worker.worker_id

    assert await outcome_of(run_id) == {"before": 1, "ok": True, "note": "fine", "after": 2}
    assert await handle.status() == "succeeded"
    # setup ran once (in process a), on_resume once (on the worker); no node ran twice.
    assert len(by_label(log, "setup")["gate-1"]) == 1
    assert by_label(log, "resumed") == {"gate-1": [worker.pid]}
    assert {label: len(pids) for label, pids in by_label(log, "run").items()} == {"first": 1, "after": 1}
    assert by_label(log, "run")["after"] == [worker.pid]

    chain = await chain_of(runtime, run_id)
    assert [e.node_id for e in chain if isinstance(e, ev.NodeCompleted)] == ["sp_work_1", "sp_gate_1", "sp_work_2"]
    assert isinstance(chain[-1], ev.RunCompleted)
    node_chain = await chain_of(runtime, wait_run_id)
    [resumed] = [e for e in node_chain if isinstance(e, ev.WaitResumed)]
    assert resumed.payload == {"ok": True, "note": "fine"}
    assert node_chain[0].parent_run_id == run_id and node_chain[0].parent_node_id == "sp_gate_1"  # type: ignore[attr-defined]
    assert worker.stop() == 0, worker.output()


async def test_dual_stage_review_that_says_no_skips_the_dependent(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("dualno")
    worker = hosts.worker("b")
    wait_ready(worker)
    done = hosts.cli(
        "a", "run", f"{GRAPHS}:sp_dual", "--inputs-json", json.dumps({"log": str(log)}), "--run-id", run_id
    )
    assert done.returncode == 3, done.stdout + done.stderr
    outcome = await aethergraph.resume(node_run_id(run_id, "sp_gate_1", 1), {"ok": False}, timeout=SAFETY_S)
    assert outcome is not None and outcome.status == "accepted"
    assert await outcome_of(run_id) == {"before": 1, "ok": False, "note": "", "after": None}
    chain = await chain_of(runtime, run_id)
    [skipped] = [e for e in chain if isinstance(e, ev.NodeSkipped)]
    assert (skipped.node_id, skipped.reason) == ("sp_work_2", "condition")
    assert "after" not in by_label(log, "run")
    assert worker.stop() == 0, worker.output()


# --- the command line and a changed graph --------------------------------------------------------


def test_cli_graph_prints_mermaid_dot_and_json(hosts: Hosts) -> None:
    mermaid = hosts.cli("g", "graph", f"{GRAPHS}:sp_retry")
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith("flowchart LR")
    for edge in ("sp_work_1 --> sp_flaky_1", "sp_flaky_1 --> sp_work_3", "sp_work_3 --> out_v", "in_log --> sp_work_2"):
        assert edge in mermaid.stdout, mermaid.stdout

    dot = hosts.cli("g", "graph", f"{GRAPHS}:sp_retry", "--format", "dot")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith('digraph "sp_retry"')
    assert '"sp_work_1" -> "sp_flaky_1";' in dot.stdout and '"sp_flaky_1" -> "sp_work_3";' in dot.stdout

    as_json = hosts.cli("g", "graph", f"{GRAPHS}:sp_wide", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["name"] == "sp_wide" and len(data["nodes"]) == WIDTH + 1
    assert data["order"][-1] == "sp_sum_1"
    [reduce_node] = [node for node in data["nodes"] if node["id"] == "sp_sum_1"]
    assert reduce_node["dependencies"] == [f"sp_work_{i}" for i in range(1, WIDTH + 1)]
    assert set(data["io"]["inputs"]) == {"log", "sleep_s"}

    wrong = hosts.cli("g", "graph", f"{GRAPHS}:sp_sum")
    assert wrong.returncode == 2
    assert "not a static graph" in wrong.stderr
    bad_format = hosts.cli("g", "graph", f"{GRAPHS}:sp_wide", "--format", "png")
    assert bad_format.returncode == 2 and "--format must be" in bad_format.stderr


async def test_cli_run_fails_then_cli_retry_runs_only_the_failed_nodes(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    log, flag = tmp_path / "count.log", tmp_path / "flag"
    run_id = new_run_id("retry")
    inputs = {"log": str(log), "flag": str(flag)}
    failed = hosts.cli("a", "run", f"{GRAPHS}:sp_retry", "--inputs-json", json.dumps(inputs), "--run-id", run_id)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "sp_flaky_1" in failed.stdout + failed.stderr
    assert await (await aethergraph.get_run(run_id)).status() == "failed"

    flag.touch()
    retried = hosts.cli("b", "retry", run_id, "-m", str(GRAPHS))
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"run {run_id} succeeded" in retried.stdout
    assert await outcome_of(run_id) == {"v": 11}
    runs = {label: len(pids) for label, pids in by_label(log, "run").items()}
    assert runs == {"a": 1, "b": 1, "flaky": 2, "c": 1}

    chain = await chain_of(runtime, run_id)
    claims = [e for e in chain if isinstance(e, ev.RunClaimed)]
    assert [c.reason for c in claims] == ["retry"]
    assert [e.node_id for e in chain if isinstance(e, ev.NodeFailed)] == ["sp_flaky_1"]
    assert isinstance(chain[-1], ev.RunCompleted) and chain[-1].outputs == {"v": 11}


async def test_cli_cancel_of_a_run_held_in_a_node_and_of_a_finished_run(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    log = tmp_path / "count.log"
    run_id = new_run_id("cancel")
    driver = hosts.driver("d", "sp_chain", {"log": str(log)}, run_id, SP_HOLDER="1")
    wait_until(lambda: by_label(log, "hold") or None, timeout_s=SAFETY_S, what="the driver to park in the first node")
    cancelled = hosts.cli("c", "cancel", run_id, "--reason", "test says stop")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert f"run {run_id} is cancelled" in cancelled.stdout
    assert driver.exit_code() != 0
    assert await (await aethergraph.get_run(run_id)).status() == "cancelled"
    chain = await chain_of(runtime, run_id)
    assert not [e for e in chain if isinstance(e, ev.NodeCompleted)]
    assert "done" not in {parts[0] for parts in lines(log)}

    again = hosts.cli("c", "cancel", run_id)  # cancelling a cancelled run changes nothing
    assert again.returncode == 0 and f"run {run_id} is cancelled" in again.stdout
    assert [type(e) for e in await chain_of(runtime, run_id)].count(ev.RunCancelled) == 1


async def test_a_run_started_by_one_version_of_a_graph_is_not_continued_by_another(
    runtime: ProcessHost, hosts: Hosts, tmp_path: Path
) -> None:
    """kill -9 of the driver mid-node; a worker with a changed graph of the same name refuses the run,
    a worker with the graph the run started with finishes it."""
    log = tmp_path / "count.log"
    run_id = new_run_id("nd")
    newer = hosts.worker("newer", SP_VARIANT="2")
    wait_ready(newer)
    driver = hosts.driver("d", "sp_chain", {"log": str(log)}, run_id, SP_HOLDER="1")
    wait_until(lambda: by_label(log, "hold") or None, timeout_s=SAFETY_S, what="the driver to park in the first node")
    driver.kill9()

    wait_until(
        lambda: True if "NonDeterminismError" in newer.output() or "digest" in newer.output() else None,
        timeout_s=SAFETY_S,
        what="the newer worker to refuse the run",
    )
    assert await (await aethergraph.get_run(run_id)).status() == "running"
    chain = await chain_of(runtime, run_id)
    assert not [e for e in chain if isinstance(e, ev.RunClaimed)]

    same = hosts.worker("same")
    wait_ready(same)
    assert await outcome_of(run_id) == {"v": 3}
    chain = await chain_of(runtime, run_id)
    [claim] = [e for e in chain if isinstance(e, ev.RunClaimed)]
    assert claim.reason == "takeover" and claim.worker == same.worker_id
    done = by_label(log, "done")
    assert sorted(done) == ["c1", "c2", "c3"] and all(len(p) == 1 for p in done.values())
    assert "c2b" not in by_label(log, "run")
    for worker in (newer, same):
        assert worker.stop() == 0, worker.output()


async def test_a_process_that_follows_no_reports_reads_the_stored_ones(runtime: ProcessHost) -> None:
    """A worker deciding whether a redelivered node already ran reads the run's stored reports; in a process
    whose schedulers follow no run (a plain worker) that read must answer, not wait out its timeout (it once
    did, and the worker then ran the committed node again)."""
    from aethergraph.core.settings import load_settings
    from aethergraph.core.wire.node_report import NodeReport

    run_id = f"rep{os.urandom(5).hex()}"
    report = NodeReport(run_id=run_id, node_id="work_1", attempt=1, status="completed", outputs={"v": 1})
    await runtime.node_reports.publish(report)
    fresh = await ProcessHost.open(load_settings())
    try:
        async with asyncio.timeout(60):  # a hang guard; without the fix the read failed after 10 s
            stored = await fresh.node_reports.stored(run_id)
    finally:
        await fresh.close()
    assert stored == [report]
