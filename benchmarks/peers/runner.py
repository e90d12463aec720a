"""Running one repeat of one workload for one peer: a subprocess in the peer's interpreter, JSON back.

Every repeat is a fresh process (and, for AetherGraph, a fresh nats-server on
a temporary workspace with the ``sync_interval`` under test; for the SQLite
peers, a fresh database file in a temporary folder). What a repeat yields is
a flat ``{metric: value}`` dict, the sample that the report summarises over
repeats.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..harness import isolated_server, scrubbed_environ
from .workloads.peer_common import KILL_ENV, RESULT_PREFIX, SIDE_ENV, median, percentile

HERE = Path(__file__).resolve().parent
WORKLOADS_DIR = HERE / "workloads"
REPO = HERE.parent.parent
TIMEOUT_S = 900


@dataclass(frozen=True, kw_only=True)
class Peer:
    key: str
    label: str
    script: str
    venv: str | None = None  # requirements name; None: the interpreter running the benchmark
    sync: str | None = None  # AetherGraph: the embedded server's sync_interval
    durable: bool = True


PEERS: dict[str, Peer] = {
    peer.key: peer
    for peer in (
        Peer(
            key="aethergraph", label="AetherGraph (sync_interval 1s, default)", script="peer_aethergraph.py", sync="1s"
        ),
        Peer(
            key="aethergraph_always",
            label="AetherGraph (sync_interval always)",
            script="peer_aethergraph.py",
            sync="always",
        ),
        Peer(key="langgraph", label="LangGraph + SqliteSaver", script="peer_langgraph.py", venv="langgraph"),
        Peer(key="dbos", label="DBOS Transact + SQLite", script="peer_dbos.py", venv="dbos"),
        Peer(key="asyncio", label="plain asyncio (no durability)", script="peer_asyncio.py", durable=False),
    )
}


@dataclass(frozen=True, kw_only=True)
class Sizes:
    steps: int = 200  # W1, W5
    seq_runs: int = 3
    seq_warmup: int = 1
    width: int = 50  # W2
    fanout_runs: int = 5
    fanout_warmup: int = 2
    workflows: int = 200  # W3
    wf_steps: int = 10
    concurrent_runs: int = 2
    concurrent_warmup: int = 1
    concurrent_warmup_workflows: int = 20  # the warm-up batch: every code path once, not the full load
    held: int = 1000  # W4
    single: int = 20
    other: int = 10
    kill_at: int = 100  # W5


FULL = Sizes()
QUICK = Sizes(seq_runs=1, fanout_runs=2, fanout_warmup=1, concurrent_runs=1, held=100, single=5, other=5)
TINY = Sizes(
    steps=20,
    seq_runs=1,
    width=5,
    fanout_runs=1,
    fanout_warmup=1,
    workflows=5,
    wf_steps=3,
    concurrent_runs=1,
    held=8,
    single=2,
    other=2,
    kill_at=10,
)


class PeerError(RuntimeError):
    pass


@contextlib.contextmanager
def peer_environment(peer: Peer, python: Path, scratch: Path) -> Iterator[dict[str, str]]:
    """The subprocess environment: for AetherGraph, with a fresh nats-server of its own."""
    env = scrubbed_environ()
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    if peer.sync is None:
        yield env
        return
    with isolated_server(peer.sync) as (server, _):
        env["AETHERGRAPH_NATS_URL"] = server.url
        env["AETHERGRAPH_WORKSPACE"] = str(scratch / "ag-workspace")
        env["AETHERGRAPH_SYNC_INTERVAL"] = peer.sync
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(WORKLOADS_DIR)])
        yield env


def _parse(peer: Peer, workload: str, proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise PeerError(
        f"{peer.key} {workload}: no result (exit {proc.returncode}); stderr ends with:\n{proc.stderr[-3000:]}"
    )


def invoke(
    peer: Peer,
    python: Path,
    workload: str,
    params: dict[str, Any],
    env: dict[str, str],
    cwd: Path,
    *,
    expect_kill: bool = False,
) -> dict[str, Any]:
    proc = subprocess.run(
        [str(python), str(WORKLOADS_DIR / peer.script), workload, json.dumps(params)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if expect_kill:
        if proc.returncode != -signal.SIGKILL:
            raise PeerError(f"{peer.key} {workload}: expected SIGKILL, exit {proc.returncode}:\n{proc.stderr[-3000:]}")
        return {}
    return _parse(peer, workload, proc)


# --- the workloads: one repeat each --------------------------------------------------------


def w1_seq(peer: Peer, python: Path, sizes: Sizes, env: dict[str, str], work: Path) -> dict[str, Any]:
    p = {"steps": sizes.steps, "runs": sizes.seq_runs, "warmup": sizes.seq_warmup, "workdir": str(work)}
    out = invoke(peer, python, "seq", p, env, work)
    run_s = median(out["run_s"])
    sample = {"per_step_us": run_s / sizes.steps * 1e6, "steps_per_s": sizes.steps / run_s}
    if out.get("floor_us"):
        # Means against means (a workflow's time / its steps, 200 acks' time / 200) and p50 against p50
        # (each step timed inside the graph, each ack timed alone).
        sample["floor_mean_us"] = median(out["floor_mean_us"])
        sample["per_step_over_floor"] = sample["per_step_us"] / sample["floor_mean_us"]
        sample["step_p50_us"] = median(out["step_p50_us"])
        sample["floor_us"] = median(out["floor_us"])
        sample["step_p50_over_floor_p50"] = sample["step_p50_us"] / sample["floor_us"]
    return {"sample": sample, "settings": out["settings"]}


def w2_fanout(peer: Peer, python: Path, sizes: Sizes, env: dict[str, str], work: Path) -> dict[str, Any]:
    p = {"width": sizes.width, "runs": sizes.fanout_runs, "warmup": sizes.fanout_warmup, "workdir": str(work)}
    out = invoke(peer, python, "fanout", p, env, work)
    if not out["ok"]:
        raise PeerError(f"{peer.key} fanout: wrong result")
    run_s = median(out["run_s"])
    sample = {"run_ms": run_s * 1e3, "steps_per_s": (sizes.width + 1) / run_s}
    if "static_run_s" in out:  # AetherGraph: the same fan-out as a @graphify static graph
        sample["static_run_ms"] = median(out["static_run_s"]) * 1e3
    return {"sample": sample, "settings": out["settings"]}


def w3_concurrent(peer: Peer, python: Path, sizes: Sizes, env: dict[str, str], work: Path) -> dict[str, Any]:
    p = {
        "workflows": sizes.workflows,
        "steps": sizes.wf_steps,
        "runs": sizes.concurrent_runs,
        "warmup": sizes.concurrent_warmup,
        "warmup_workflows": sizes.concurrent_warmup_workflows,
        "workdir": str(work),
    }
    out = invoke(peer, python, "concurrent", p, env, work)
    wall = median(out["run_s"])
    return {
        "sample": {
            "wall_s": wall,
            "workflows_per_s": sizes.workflows / wall,
            "steps_per_s": sizes.workflows * sizes.wf_steps / wall,
        },
        "settings": out["settings"],
    }


def w4_hold(peer: Peer, python: Path, sizes: Sizes, env: dict[str, str], work: Path) -> dict[str, Any]:
    p = {"workflows": sizes.held, "single": sizes.single, "other": sizes.other, "workdir": str(work)}
    held = invoke(peer, python, "hold", p, env, work)
    other = invoke(peer, python, "other", p, env, work)
    expected = sizes.held - sizes.other
    if held["completed"] != expected or held.get("correct", expected) != expected:
        raise PeerError(f"{peer.key} hold: {held['completed']} completed, {held.get('correct')} correct of {expected}")
    single = [value / 1e6 for value in held["single_ns"]]
    burst = [value / 1e6 for value in held["burst_ns"]]
    sample: dict[str, Any] = {
        "rss_base_mib": held["rss_base"] / 2**20,
        "rss_suspended_mib": held["rss_suspended"] / 2**20,
        "rss_per_workflow_kib": (held["rss_suspended"] - held["rss_base"]) / sizes.held / 1024,
        "suspend_per_s": sizes.held / held["suspend_s"],
        "single_p50_ms": percentile(single, 0.5),
        "single_p99_ms": percentile(single, 0.99),
        "burst_p50_ms": percentile(burst, 0.5),
        "burst_p99_ms": percentile(burst, 0.99),
        "burst_total_s": held["burst_total_s"],
        "other_process_ok": other["ok"],
        "other_process_of": sizes.other,
        "other_supported": other["supported"],
    }
    if other.get("latency_ns"):
        sample["other_p50_ms"] = median(other["latency_ns"]) / 1e6
    return {"sample": sample, "settings": held["settings"], "other_note": other.get("note", "")}


def _side_lines(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [(int(pid), int(step)) for pid, step in (line.split() for line in path.read_text().splitlines() if line)]


def _crash_and_recover(
    peer: Peer, python: Path, sizes: Sizes, env: dict[str, str], work: Path, crash_id: str, recover_id: str
) -> dict[str, Any]:
    """One W5 trial: a process killed inside step ``kill_at + 1``, then at once a fresh one finishes the workflow.

    ``crash_id`` / ``recover_id``: the two processes' ``AETHERGRAPH_WORKER_ID`` (other peers ignore them).
    """
    from aethergraph.core.ids import new_run_id  # AetherGraph run ids have a format; the others take any string

    work.mkdir(exist_ok=True)
    side = work / "side.txt"
    p = {"steps": sizes.steps, "kill_at": sizes.kill_at, "workdir": str(work), "run_id": new_run_id()}
    crash_env = {**env, "AETHERGRAPH_WORKER_ID": crash_id, SIDE_ENV: str(side), KILL_ENV: str(sizes.kill_at)}
    invoke(peer, python, "crash", p, crash_env, work, expect_kill=True)
    crashed = _side_lines(side)
    first_pid = crashed[0][0] if crashed else -1
    restart_ns = time.time_ns()
    out = invoke(peer, python, "recover", p, {**env, "AETHERGRAPH_WORKER_ID": recover_id, SIDE_ENV: str(side)}, work)
    lines = _side_lines(side)
    after = [step for pid, step in lines if pid != first_pid]
    before = [step for pid, step in lines if pid == first_pid]
    rerun = sum(1 for step in after if step <= sizes.kill_at)
    missing = sorted(set(range(1, sizes.steps + 1)) - {step for _, step in lines})
    result_ok = out["result"] == sizes.steps and not missing
    if not result_ok:
        raise PeerError(f"{peer.key} recover: result {out['result']}, steps never executed: {missing[:10]}")
    return {
        "sample": {
            "restart_to_done_ms": (out["done_wall_ns"] - restart_ns) / 1e6,
            "ready_to_done_ms": (out["done_wall_ns"] - out["ready_wall_ns"]) / 1e6,
            "steps_before_kill": len(before),
            "rerun_steps_1_to_kill": rerun,
            "rerun_in_flight": sum(1 for step in after if step == sizes.kill_at + 1),
            "steps_after_restart": len(after),
        },
        "settings": out["settings"],
    }


def w5_recover(peer: Peer, python: Path, sizes: Sizes, env: dict[str, str], work: Path) -> dict[str, Any]:
    # The restarted process is the same service coming back (as DBOS's executor id): for AetherGraph the same
    # worker id, so it takes its own runs back at start instead of waiting for the dead process's lease.
    out = _crash_and_recover(peer, python, sizes, env, work / "same-id", "w5-service", "w5-service")
    if peer.sync is not None:
        # AetherGraph also with a new identity: the fresh process adopts the run because the server lists no
        # connection under the dead process's name (its lease, 1 s, has not expired).
        fresh = _crash_and_recover(peer, python, sizes, env, work / "new-id", "w5-crashed", "w5-fresh")["sample"]
        out["sample"]["restart_to_done_new_id_ms"] = fresh["restart_to_done_ms"]
        out["sample"]["ready_to_done_new_id_ms"] = fresh["ready_to_done_ms"]
        out["sample"]["rerun_new_id"] = fresh["rerun_steps_1_to_kill"]
    return out


WORKLOADS = {
    "W1": ("sequential", w1_seq),
    "W2": ("fan-out/fan-in", w2_fanout),
    "W3": ("concurrency", w3_concurrent),
    "W4": ("human in the loop", w4_hold),
    "W5": ("recovery", w5_recover),
}


def run_repeat(peer: Peer, python: Path, workload: str, sizes: Sizes) -> dict[str, Any]:
    """One repeat of ``workload`` for ``peer`` in fresh processes, a fresh server and fresh files."""
    _, fn = WORKLOADS[workload]
    with tempfile.TemporaryDirectory(prefix=f"peers-{peer.key}-{workload}-") as tmp:
        work = Path(tmp)
        with peer_environment(peer, python, work) as env:
            return fn(peer, python, sizes, env, work)


def interpreter(peer: Peer) -> Path:
    """The peer's python: its own venv, or the interpreter running this benchmark."""
    if peer.venv is None:
        return Path(sys.executable)
    from .venvs import ensure_venv

    return ensure_venv(peer.venv)
