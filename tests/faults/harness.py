"""The fault suite's harness: start a bus and processes, inject one kind of fault, check durability from outside.

Cluster-free and pytest-free, so the tests (``tests/faults``) and the larger
benchmark (``python -m benchmarks.faults``) share it. One *trial* is:

1. its own nats-server (the tests' launcher, ``helpers.start_nats_server``,
   with the ``sync_interval`` under test) and worker processes
   (``aethergraph worker tests/faults/graphs.py``), each its own host;
2. a driver process (``driver.py``) that starts graph_fn chains and static
   fan-outs with ``aethergraph.start_run`` and awaits their results;
3. a fault while the runs progress (:data:`FAULTS`);
4. waiting until every run ended, or nothing moved for ``stall_s``;
5. the checks (:func:`evaluate`), from outside the processes only: the step
   log every execution appends to (see ``graphs.py``) and each run's journal
   read with plain nats-py and the journal rule (``journal_chain``).

The checks, per run and step:

* the run completed: ``run.completed`` ends its journal chain with the right
  outputs (a run with no end is *stuck*);
* every step the body saw committed (a ``saw`` line) has its ``tool.returned``
  in the chain (else *committed-but-missing*);
* no execution of a step started after the step's committed outcome
  (``tool.returned``/``node.completed`` in the chain) was stored: the
  message's stream timestamp, the server's clock on this same host (else a
  *re-executed committed step*);
* a step ran at most once, plus once per faulted process (killed, paused, or
  fenced out of the run by a ``run.claimed``) that executed it, plus once per
  nats-server restart (else *over-executed*);
* every execution got its predecessor's committed result as input;
* no execution belongs to a run or node the harness did not start;
* a driver that was never killed got each run's outputs from ``result()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
from helpers import NatsServer, start_nats_server
from nats.js.api import DeliverPolicy
from process_hosts import Hosts, Proc

from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.wire import events as ev
from aethergraph.core.wire.codec import decode_event, encode_event

__all__ = ["FAULTS", "Report", "Size", "Trial", "evaluate", "run_trial"]

HERE = Path(__file__).resolve().parent
GRAPHS = HERE / "graphs.py"
DRIVER = HERE / "driver.py"
SAFETY_S = 60.0  # an upper bound for a process to start or stop, never a measurement

FAULTS = (
    "worker-kill-storm",
    "nats-server-restart",
    "stray-messages",
    "driver-paused-past-lease",
    "everything-at-once",
)


@dataclass(frozen=True)
class Size:
    """How much one trial runs, and how hard its fault hits."""

    chains: int = 4  # graph_fn chains
    steps: int = 8  # steps per chain
    step_sleep_s: float = 0.25
    fans: int = 1  # static fan-outs (nodes go to workers through the work queue)
    fan_width: int = 8
    fan_sleep_s: float = 0.4
    workers: int = 2
    fault_s: float = 6.0  # how long the storm lasts (kill storm, stray messages)
    kill_every_s: tuple[float, float] = (0.8, 1.6)  # kill storm: gap between kills
    restart_after_s: tuple[float, float] = (0.2, 0.8)  # kill storm: a killed worker's replacement starts after
    server_kills: int = 3  # nats-server restarts per trial
    server_down_s: tuple[float, float] = (0.2, 1.5)
    server_gap_s: tuple[float, float] = (0.8, 1.5)
    pause_s: float = 3.0  # the driver's SIGSTOP
    settle_s: float = 60.0  # after the fault: at most this long for the runs to end
    stall_s: float = 12.0  # ... or until nothing moved for this long


# --- the step log --------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    run_id: str
    step: str
    x: int
    pid: int
    t_us: int


def read_step_log(path: Path) -> tuple[list[Execution], dict[str, list[tuple[int, int, int]]]]:
    """(every execution in log order, per run the (k, pid, t_us) of every ``saw`` line)."""
    executions: list[Execution] = []
    saw: dict[str, list[tuple[int, int, int]]] = {}
    if not path.exists():
        return executions, saw
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "exec" and len(parts) == 6:
            executions.append(Execution(parts[1], parts[2], int(parts[3]), int(parts[4]), int(parts[5])))
        elif parts and parts[0] == "saw" and len(parts) == 5:
            saw.setdefault(parts[1], []).append((int(parts[2]), int(parts[3]), int(parts[4])))
    return executions, saw


# --- the journal, read with plain nats-py ------------------------------------------------


@dataclass
class Journal:
    """A run's stored messages (``None`` where one does not decode) and its journal chain.

    ``stored_us`` holds, for each stored message, when the server stored it
    (its stream timestamp, Unix microseconds): when an event was committed.
    """

    stored: list[ev.Event | None]
    chain: list[ev.Event]
    stored_us: list[int] = field(default_factory=list)

    def committed_at(self, event: ev.Event) -> int:
        """When ``event`` (one of ``stored``) was stored."""
        for index, candidate in enumerate(self.stored):
            if candidate is event:
                return self.stored_us[index]
        raise ValueError("not a stored event of this journal")

    @property
    def end(self) -> ev.Event | None:
        if self.chain and isinstance(self.chain[-1], (ev.RunCompleted, ev.RunFailed, ev.RunCancelled)):
            return self.chain[-1]
        return None

    def describe(self) -> str:
        if not self.chain:
            return f"no journal ({len(self.stored)} stored messages)"
        last = self.chain[-1]
        undecodable = sum(e is None for e in self.stored)
        outside = len(self.stored) - len(self.chain) - undecodable
        stored_last = next((e for e in reversed(self.stored) if e is not None), None)
        tail = ""
        if stored_last is not None and stored_last is not last:
            tail = (
                f"; last stored event {tag(stored_last)} seq {stored_last.seq} epoch {stored_last.epoch} "
                f"by {stored_last.worker}"
            )
        after = [e for e in self.stored if e is not None and e.seq == last.seq + 1]
        later = [e for e in self.stored if e is not None and last.seq + 1 < e.seq < 10_000]
        if after:
            gap = f"; seq {last.seq + 1} stored only outside the chain (epochs {sorted({e.epoch for e in after})})"
        elif later:
            gap = f"; a hole: seq {last.seq + 1} was never stored, seq {min(e.seq for e in later)}+ were"
        else:
            gap = ""
        return (
            f"chain ends at seq {last.seq} {tag(last)} (epoch {last.epoch}, by {last.worker}); "
            f"{len(self.stored)} stored, {outside} outside the chain, {undecodable} undecodable{tail}{gap}"
        )


def tag(event: ev.Event) -> str:
    """An event's type, e.g. ``tool.returned``."""
    return str(event.__struct_config__.tag)


def _decode(data: bytes) -> ev.Event | None:
    try:
        return decode_event(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError):
        return None


async def _quiet(_error: Exception) -> None:
    """nats-py logs every failed reconnect; the harness's clients expect the server to go away."""


async def connect(url: str) -> Any:
    """A plain nats-py client that reconnects for as long as it takes."""
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, error_cb=_quiet)


async def last_heartbeat(js: Any, worker_id: str) -> str:
    """What ``ag.lease.worker.<worker_id>`` holds now: its last message's headers and the start of its body."""
    try:
        msg = await js.get_last_msg("AG_LEASES", f"ag.lease.worker.{worker_id}")
    except Exception as exc:  # noqa: BLE001 - described, not raised
        return f"no heartbeat message ({type(exc).__name__})"
    return f"heartbeat message {msg.seq}: headers {msg.headers}, body {bytes(msg.data or b'')[:24]!r}"


async def read_journal(js: Any, run_id: str, *, timeout_s: float = 10.0) -> Journal:
    """Every message stored on ``ag.evt.<run_id>.>``, in stream order, and the chain they hold."""
    info = await js.stream_info("AG_EVENTS", subjects_filter=f"ag.evt.{run_id}.>")
    total = sum((info.state.subjects or {}).values())
    stored: list[ev.Event | None] = []
    stored_us: list[int] = []
    if total:
        sub = await js.subscribe(f"ag.evt.{run_id}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while True:
                msg = await sub.next_msg(timeout=timeout_s)
                stored.append(_decode(msg.data))
                stored_us.append(round(msg.metadata.timestamp.timestamp() * 1_000_000))
                if msg.metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    return Journal(stored, journal_chain(e for e in stored if e is not None), stored_us)


# --- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    graph: str  # "ft_chain" | "ft_fan"
    inputs: dict[str, Any]
    outputs: dict[str, Any]  # the right outputs
    width: int = 0  # ft_fan: its fan-out

    @property
    def steps(self) -> list[str]:
        if self.graph == "ft_chain":
            return [str(k) for k in range(1, self.inputs["n"] + 1)]
        return [f"w{i}" for i in range(self.width)]

    def expected_x(self, step: str) -> int:
        if self.graph == "ft_chain":
            k = int(step)
            return (k - 1) * k // 2
        return int(step[1:])


def committed_outcomes(spec: RunSpec, chain: Sequence[ev.Event]) -> dict[str, ev.Event]:
    """Per step, the committed outcome in the chain (``tool.returned`` / ``node.completed``)."""
    found: dict[str, ev.Event] = {}
    if spec.graph == "ft_chain":
        for e in chain:
            if isinstance(e, ev.ToolReturned) and e.tool == "ft_step":
                found[str(e.outputs.get("step"))] = e
        return found
    labels: dict[str | None, str] = {}
    for e in chain:
        if isinstance(e, (ev.NodeReady, ev.NodeStarted)) and e.tool == "ft_work":
            labels[e.node_id] = str(e.args.get("label"))
        elif isinstance(e, ev.NodeCompleted) and e.node_id in labels:
            found.setdefault(labels[e.node_id], e)
    return found


# --- the report -----------------------------------------------------------------------------


@dataclass
class Report:
    """What one trial (or several, merged) found."""

    fault: str
    sync_interval: str
    trials: int = 1
    runs: int = 0
    completed: int = 0
    stuck: list[str] = field(default_factory=list)  # no run.completed / run.failed at the end of the chain
    failed: list[str] = field(default_factory=list)  # ended otherwise than completed with the right outputs
    missing: list[str] = field(default_factory=list)  # the body saw it committed; not in the chain
    reexecuted: list[str] = field(default_factory=list)  # executed after its committed outcome
    over_executed: list[str] = field(default_factory=list)  # more executions than faults explain
    wrong_input: list[str] = field(default_factory=list)
    stray_executions: list[str] = field(default_factory=list)
    driver_errors: list[str] = field(default_factory=list)
    faults_injected: list[str] = field(default_factory=list)
    executions: int = 0
    takeovers: int = 0  # run.claimed events in the chains: a writer took a run over
    seconds: float = 0.0

    def problems(self) -> list[str]:
        out: list[str] = []
        for name in (
            "stuck",
            "failed",
            "missing",
            "reexecuted",
            "over_executed",
            "wrong_input",
            "stray_executions",
            "driver_errors",
        ):
            out += [f"{name}: {item}" for item in getattr(self, name)]
        return out

    def summary(self) -> str:
        problems = self.problems()
        head = (
            f"{self.fault} (sync_interval {self.sync_interval}): {self.completed}/{self.runs} runs completed, "
            f"{len(self.stuck)} stuck, {len(self.missing)} committed-but-missing, "
            f"{len(self.reexecuted)} re-executed committed steps, {self.takeovers} takeovers; "
            f"faults: {', '.join(self.faults_injected)}"
        )
        return "\n".join([head, *problems[:60], *(["..."] if len(problems) > 60 else [])])

    def merge(self, other: Report) -> None:
        self.trials += other.trials
        self.runs += other.runs
        self.completed += other.completed
        self.executions += other.executions
        self.takeovers += other.takeovers
        self.seconds += other.seconds
        for name in (
            "stuck",
            "failed",
            "missing",
            "reexecuted",
            "over_executed",
            "wrong_input",
            "stray_executions",
            "driver_errors",
            "faults_injected",
        ):
            getattr(self, name).extend(getattr(other, name))


def evaluate(
    fault: str,
    sync_interval: str,
    specs: Sequence[RunSpec],
    journals: dict[str, Journal],
    step_log: Path,
    *,
    faulted_pids: set[int],
    server_restarts: int,
    driver_results: dict[str, dict[str, Any]] | None,
    pid_of_worker: dict[str, int] | None = None,
    process_states: dict[str, str] | None = None,
    heartbeats: dict[str, str] | None = None,
) -> Report:
    """The checks of the module docstring; ``driver_results`` is ``None`` when the driver was killed.

    ``faulted_pids`` are the processes the fault killed or paused; a process
    whose writer a ``run.claimed`` fenced out of a run (its ``previous_worker``,
    mapped to a pid by ``pid_of_worker``) may also have left one execution of
    that run's step in flight. ``process_states`` describes each worker id's
    processes (for stuck runs: is their last writer alive?).
    """
    report = Report(fault=fault, sync_interval=sync_interval, runs=len(specs))
    executions, saw = read_step_log(step_log)
    report.executions = len(executions)
    by_step: dict[tuple[str, str], list[Execution]] = {}
    for execution in executions:
        by_step.setdefault((execution.run_id, execution.step), []).append(execution)
    known = {(spec.run_id, step) for spec in specs for step in spec.steps}
    for (run_id, step), runs in by_step.items():
        if (run_id, step) not in known:
            report.stray_executions.append(f"{run_id} step {step}: {len(runs)} execution(s) by pids {_pids(runs)}")

    for spec in specs:
        journal = journals[spec.run_id]
        report.takeovers += sum(isinstance(e, ev.RunClaimed) for e in journal.chain)
        end = journal.end
        if end is None:
            writer = journal.chain[-1].worker if journal.chain else ""
            state = (process_states or {}).get(writer, "not a process of this trial")
            if heartbeats and writer in heartbeats:
                state += f"; {heartbeats[writer]}"
            report.stuck.append(f"{spec.run_id} ({spec.graph}): {journal.describe()}; its last writer: {state}")
        elif isinstance(end, ev.RunCompleted) and end.outputs == spec.outputs:
            report.completed += 1
        else:
            detail = f"outputs {end.outputs}" if isinstance(end, ev.RunCompleted) else _end_detail(end)
            report.failed.append(f"{spec.run_id} ({spec.graph}): {tag(end)} {detail}, expected {spec.outputs}")

        committed = committed_outcomes(spec, journal.chain)
        fenced = {
            (pid_of_worker or {}).get(e.previous_worker or "", -1)
            for e in journal.chain
            if isinstance(e, ev.RunClaimed)
        }
        for k, pid, t_us in saw.get(spec.run_id, []):
            if str(k) not in committed:
                report.missing.append(
                    f"{spec.run_id} step {k}: the body (pid {pid}) saw it committed at {t_us}; "
                    f"no tool.returned in the chain ({journal.describe()})"
                )
        for step in spec.steps:
            runs = by_step.get((spec.run_id, step), [])
            outcome = committed.get(step)
            if outcome is not None:
                committed_us = journal.committed_at(outcome)
                late = [r for r in runs if r.t_us > committed_us]
                if late:
                    report.reexecuted.append(
                        f"{spec.run_id} step {step}: committed ({tag(outcome)} seq {outcome.seq} by "
                        f"{outcome.worker}, stored at {committed_us}), executed again by pids {_pids(late)} "
                        f"{[r.t_us - committed_us for r in late]} us later"
                    )
            allowed = 1 + len({r.pid for r in runs} & (faulted_pids | fenced)) + server_restarts
            if len(runs) > allowed:
                report.over_executed.append(
                    f"{spec.run_id} step {step}: {len(runs)} executions (pids {_pids(runs)}), at most {allowed} "
                    f"explained by the faults"
                )
            for r in runs:
                if r.x != spec.expected_x(step):
                    report.wrong_input.append(
                        f"{spec.run_id} step {step}: pid {r.pid} got x={r.x}, expected {spec.expected_x(step)}"
                    )

        if driver_results is not None:
            got = driver_results.get(spec.run_id)
            if got is None:
                report.driver_errors.append(f"{spec.run_id}: the driver reported no result")
            elif "error" in got:
                report.driver_errors.append(f"{spec.run_id}: the driver's result() raised {got['error']}")
            elif got.get("ok") != spec.outputs:
                report.driver_errors.append(f"{spec.run_id}: the driver's result() gave {got.get('ok')}")
    return report


def _pids(runs: Iterable[Execution]) -> list[int]:
    return [r.pid for r in runs]


def _end_detail(end: ev.Event) -> str:
    if isinstance(end, ev.RunFailed):
        return f"{end.error_type}: {end.message[:200]} (node {end.failed_node_id})"
    if isinstance(end, ev.RunCancelled):
        return f"reason {end.reason!r}"
    return ""


# --- a trial ----------------------------------------------------------------------------------


class FaultHosts(Hosts):
    """Worker processes of the fault graphs, and driver processes running ``driver.py``."""

    def script(self, name: str, argv: Sequence[str], **extra: str) -> Proc:
        env, worker_id = self.env(name, **extra)
        out, err = self.root / f"{name}.out", self.root / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                [sys.executable, *argv], env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )
        proc = Proc(name=name, popen=popen, out=out, err=err, worker_id=worker_id, safety_s=self.safety_s)
        self.procs.append(proc)
        return proc


class Trial:
    """One bus, its processes and its runs; :func:`run_trial` drives it through one fault."""

    def __init__(self, root: Path, *, size: Size, sync_interval: str, seed: int, lease_s: int = 1) -> None:
        self.root = root
        self.size = size
        self.sync_interval = sync_interval
        self.rng = random.Random(seed)
        self.tag = f"ft{seed % 1000:03d}{os.urandom(3).hex()}"
        root.mkdir(parents=True, exist_ok=True)
        self.server: NatsServer = start_nats_server(root / "nats", sync_interval=sync_interval)
        self.port = int(self.server.url.rpartition(":")[2])
        ours = {
            "AETHERGRAPH_NATS_URL": self.server.url,
            "AETHERGRAPH_LEASE_S": str(lease_s),
            "AETHERGRAPH_NODE_ACK_WAIT_S": "3",
            "AETHERGRAPH_LOCAL_NODE_CONCURRENCY": "0",  # a static run's nodes go to the workers
            "FT_FAN_WIDTH": str(size.fan_width),
        }
        keep = {*ours, "AETHERGRAPH_WORKSPACE", "AETHERGRAPH_WORKER_ID", "AETHERGRAPH_CONSOLE_INPUT"}
        drop = [name for name in os.environ if name.startswith("AETHERGRAPH_") and name not in keep]
        self.hosts = FaultHosts(root, GRAPHS, prefix=self.tag, safety_s=SAFETY_S, env=ours, drop_env=drop)
        self.step_log = root / "steps.log"
        self.results = root / "driver-results.jsonl"
        self.workers: list[Proc] = []
        self.driver: Proc | None = None
        self.faulted_pids: set[int] = set()
        self.driver_killed = False
        self.server_restarts = 0
        self.faults: list[str] = []
        self.heartbeats: dict[str, str] = {}  # the last heartbeat of each stuck run's last writer
        self._t0 = time.monotonic()
        self._names = 0
        self.specs = [
            RunSpec(
                f"{self.tag}c{i}",
                "ft_chain",
                {"n": size.steps, "log": str(self.step_log), "sleep_s": size.step_sleep_s},
                {"v": size.steps * (size.steps + 1) // 2},
            )
            for i in range(size.chains)
        ] + [
            RunSpec(
                f"{self.tag}f{i}",
                "ft_fan",
                {"run": f"{self.tag}f{i}", "log": str(self.step_log), "sleep_s": size.fan_sleep_s},
                {"total": size.fan_width * (size.fan_width - 1)},
                size.fan_width,
            )
            for i in range(size.fans)
        ]

    # processes

    def note(self, what: str) -> None:
        self.faults.append(f"{time.monotonic() - self._t0:.1f}s {what}")

    def start_worker(self, worker_id: str | None = None) -> Proc:
        """A new worker process; ``worker_id`` restarts a dead one under its id (as a StatefulSet would)."""
        self._names += 1
        extra = {"AETHERGRAPH_WORKER_ID": worker_id} if worker_id else {}
        worker = self.hosts.worker(f"w{self._names}", **extra)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.popen.poll() is None]

    def start_driver(self) -> Proc:
        spec = {
            "runs": [{"run_id": s.run_id, "graph": s.graph, "inputs": s.inputs} for s in self.specs],
            "results": str(self.results),
            "timeout_s": self.size.settle_s + 120,
        }
        spec_file = self.root / "driver-spec.json"
        spec_file.write_text(json.dumps(spec))
        self.driver = self.hosts.script("driver", [str(DRIVER), str(GRAPHS), str(spec_file)])
        return self.driver

    def kill9(self, proc: Proc) -> None:
        if proc.popen.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=SAFETY_S)
        self.faulted_pids.add(proc.pid)
        if proc is self.driver:
            self.driver_killed = True

    def kill_server(self) -> None:
        self.server.process.kill()
        self.server.process.wait(timeout=SAFETY_S)

    def restart_server(self) -> None:
        self.server = start_nats_server(self.server.directory, port=self.port, sync_interval=self.sync_interval)
        self.server_restarts += 1

    def process_states(self) -> dict[str, str]:
        """Per worker id, its processes: ``pid 123 killed``, ``pid 124 alive``, ``pid 125 exited 1``."""
        states: dict[str, list[str]] = {}
        for proc in self.hosts.procs:
            code = proc.popen.poll()
            if proc.pid in self.faulted_pids and code is not None:
                state = "killed"
            elif proc.pid in self.faulted_pids:
                state = "paused, then continued, alive"
            else:
                state = "alive" if code is None else f"exited {code}"
            states.setdefault(proc.worker_id, []).append(f"pid {proc.pid} {state}")
        return {worker_id: ", ".join(items) for worker_id, items in states.items()}

    def close(self) -> None:
        self.hosts.kill_all()
        self.server.stop()

    # progress, seen from outside

    def started_specs(self) -> list[RunSpec]:
        """The runs with at least one execution in the step log."""
        executions, _ = read_step_log(self.step_log)
        running = {e.run_id for e in executions}
        return [s for s in self.specs if s.run_id in running]

    def in_flight(self) -> int:
        """How many runs have steps left to execute, from the step log."""
        executions, saw = read_step_log(self.step_log)
        labels: dict[str, set[str]] = {}
        for e in executions:
            labels.setdefault(e.run_id, set()).add(e.step)
        left = 0
        for spec in self.specs:
            if spec.graph == "ft_chain":
                left += max((k for k, _, _ in saw.get(spec.run_id, [])), default=0) < spec.inputs["n"]
            else:
                left += len(labels.get(spec.run_id, set())) < spec.width
        return left

    async def wait_all_executing(self) -> None:
        """Until every run executed a step (the driver started them all)."""
        async with asyncio.timeout(SAFETY_S):
            while len(self.started_specs()) < len(self.specs):
                if self.driver is not None and self.driver.popen.poll() is not None:
                    raise AssertionError(f"the driver exited early:\n{self.driver.output()[-3000:]}")
                await asyncio.sleep(0.05)

    def driver_results(self) -> dict[str, dict[str, Any]] | None:
        if self.driver_killed:
            return None
        results: dict[str, dict[str, Any]] = {}
        if self.results.exists():
            for line in self.results.read_text().splitlines():
                item = json.loads(line)
                results[item["run_id"]] = item
        return results

    async def settle(self) -> dict[str, Journal]:
        """Wait until every run ended, or nothing moved for ``stall_s``; every run's journal then."""
        nc = await connect(self.server.url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + self.size.settle_s
            last_change = time.monotonic()
            seen: tuple[Any, ...] = ()
            while True:
                journals = {s.run_id: await read_journal(js, s.run_id) for s in self.specs}
                if all(j.end is not None for j in journals.values()):
                    break
                size = self.step_log.stat().st_size if self.step_log.exists() else 0
                state = (size, tuple(len(j.stored) for j in journals.values()))
                if state != seen:
                    seen, last_change = state, time.monotonic()
                now = time.monotonic()
                if now > deadline or now - last_change > self.size.stall_s:
                    break
                await asyncio.sleep(0.25)
            if not self.driver_killed and self.driver is not None:
                # The driver awaits every result; once the runs ended it writes them out and exits.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(self.driver.popen.wait, 10 if all(j.end for j in journals.values()) else 1)
            for journal in journals.values():
                if journal.end is None and journal.chain:
                    writer = journal.chain[-1].worker
                    self.heartbeats[writer] = await last_heartbeat(js, writer)
            return journals
        finally:
            await nc.close()


# --- the faults -------------------------------------------------------------------------------


async def worker_kill_storm(trial: Trial) -> None:
    """kill -9 the driver once every run executes, then random workers, each replaced after a moment
    (half of them by a process under the killed one's worker id)."""
    size, rng = trial.size, trial.rng
    assert trial.driver is not None
    trial.kill9(trial.driver)
    trial.note(f"kill -9 driver pid {trial.driver.pid} ({trial.in_flight()} runs in flight)")
    replacements: list[asyncio.Task[None]] = []

    async def replace(delay: float, worker_id: str | None) -> None:
        await asyncio.sleep(delay)
        worker = trial.start_worker(worker_id)
        trial.note(f"started worker pid {worker.pid}" + (" under the killed one's id" if worker_id else ""))

    end = time.monotonic() + size.fault_s
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(*size.kill_every_s))
        live = trial.live_workers()
        if not live:
            continue
        victim = rng.choice(live)
        trial.kill9(victim)
        trial.note(f"kill -9 worker pid {victim.pid} ({trial.in_flight()} runs in flight)")
        same_id = victim.worker_id if rng.random() < 0.5 else None  # half come back under the same id
        replacements.append(asyncio.create_task(replace(rng.uniform(*size.restart_after_s), same_id)))
    await asyncio.gather(*replacements)


async def nats_server_restarts(trial: Trial) -> None:
    """kill -9 nats-server and start it again on its port and store, ``server_kills`` times."""
    size, rng = trial.size, trial.rng
    for _ in range(size.server_kills):
        await asyncio.sleep(rng.uniform(*size.server_gap_s))
        down = rng.uniform(*size.server_down_s)
        trial.kill_server()
        trial.note(f"kill -9 nats-server, down {down:.2f}s ({trial.in_flight()} runs in flight)")
        await asyncio.sleep(down)
        await asyncio.to_thread(trial.restart_server)


async def pause_driver(trial: Trial) -> None:
    """SIGSTOP the driver past its lease (a worker takes its runs over), then SIGCONT."""
    assert trial.driver is not None
    pid = trial.driver.pid
    # Let every chain commit a step or two first, so the pause lands mid-run.
    async with asyncio.timeout(SAFETY_S):
        while True:
            _, saw = read_step_log(trial.step_log)
            if all(len(saw.get(s.run_id, [])) >= 2 for s in trial.specs if s.graph == "ft_chain"):
                break
            await asyncio.sleep(0.02)
    os.kill(pid, signal.SIGSTOP)
    trial.faulted_pids.add(pid)
    trial.note(f"SIGSTOP driver pid {pid} for {trial.size.pause_s:.1f}s ({trial.in_flight()} runs in flight)")
    try:
        await asyncio.sleep(trial.size.pause_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    trial.note(f"SIGCONT driver pid {pid}")


GARBAGE = (b"\x00\xff\xfe garbage", b"", b"{", b"[1, 2, 3]", b'{"type": "tool.returned"}', b"null", b"\xc3\x28")


def _stray_event(event_type: type[ev.Event], run_id: str, seq: int, epoch: int, **fields: Any) -> bytes:
    event = event_type(
        run_id=run_id, seq=seq, ts=time.time_ns() // 1000, worker="stray", parent=None, epoch=epoch, **fields
    )
    return encode_event(event)


async def _stray_round(js: Any, nc: Any, trial: Trial, rng: random.Random) -> int:
    """One round of stray messages on every subject family; returns how many were published."""
    published = 0

    async def put(subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        nonlocal published
        try:
            await js.publish(subject, data, headers=headers, timeout=2)
        except Exception:  # noqa: BLE001 - a refused stray message is fine
            await nc.publish(subject, data, headers=headers)
        published += 1

    live = [s for s in trial.specs if (await read_journal(js, s.run_id)).end is None]
    unknown = f"{trial.tag}zz{os.urandom(3).hex()}"
    for spec in live:
        run = spec.run_id
        chain = (await read_journal(js, run)).chain
        n, epoch = len(chain), chain[-1].epoch if chain else 1
        # Garbage bytes on the run's event subjects, including the work queue's.
        for kind in ("tool.returned", "run.completed", "tool.called", "run.claimed", "node.ready", "node.completed"):
            await put(f"ag.evt.{run}.{kind}", rng.choice(GARBAGE))
        await put(f"ag.evt.{run}.no.such.type", b'{"type": "no.such.type", "run_id": "x", "seq": 1}')
        # Well-formed events outside the chain: the next seq in a wrong epoch, a seq far ahead,
        # a second run.started, a run.claimed whose epoch is not its seq.
        returned = {"tool": "ft_step", "outputs": {"v": -1, "step": 1}, "node_id": "ft_step_1"}
        await put(f"ag.evt.{run}.tool.returned", _stray_event(ev.ToolReturned, run, n + 1, 10_000 + n, **returned))
        await put(f"ag.evt.{run}.tool.returned", _stray_event(ev.ToolReturned, run, n + 10_000, epoch, **returned))
        await put(f"ag.evt.{run}.run.started", _stray_event(ev.RunStarted, run, 1, 1, graph_id=spec.graph))
        await put(
            f"ag.evt.{run}.run.claimed",
            _stray_event(ev.RunClaimed, run, n + 1, 77_777, reason="takeover", previous_worker="stray"),
        )
        await put(f"ag.evt.{run}.run.completed", _stray_event(ev.RunCompleted, run, n + 1, 10_000 + n, outputs={}))
        if spec.graph == "ft_fan":
            stray_args = {"run": run, "label": "stray", "x": 1000, "log": str(trial.step_log), "sleep_s": 0.0}
            await put(
                f"ag.evt.{run}.node.ready",
                _stray_event(ev.NodeReady, run, n + 10_000, epoch, tool="ft_work", args=stray_args, node_id="stray_1"),
            )
            node_ids = [e.node_id for e in chain if isinstance(e, ev.NodeReady) and e.node_id]
            # Node reports: garbage, an unknown node, a real node's attempt that never was.
            await put(f"ag.cmd.report.{run}", rng.choice(GARBAGE))
            await put(
                f"ag.cmd.report.{run}",
                json.dumps({"run_id": run, "node_id": "no_such_node", "attempt": 1, "status": "completed"}).encode(),
            )
            if node_ids:
                completed = {"node_id": rng.choice(node_ids), "outputs": {"v": -1000}, "executor": "stray"}
                await put(
                    f"ag.evt.{run}.node.completed",
                    _stray_event(ev.NodeCompleted, run, n + 1, 10_000 + n, **completed),
                )
                forged = {
                    "run_id": run,
                    "node_id": rng.choice(node_ids),
                    "attempt": 99,
                    "status": "completed",
                    "outputs": {"v": -1000},
                }
                await put(f"ag.cmd.report.{run}", json.dumps(forged).encode())
            await put(f"ag.cmd.report.{run}", b'{"run_id": 5, "status": "exploded"}')
        # Resume commands: garbage, no wait to resume, an unknown wait, a bad payload.
        for body in (rng.choice(GARBAGE), b"{}", b'{"wait_id": "w999", "payload": 1}', b'{"payload": [1]}', b"[]"):
            await put(f"ag.cmd.resume.{run}", body)
        await put(f"ag.cmd.outcome.{run}", rng.choice(GARBAGE))
        await put(f"ag.cmd.schedule.{run}.w1", rng.choice(GARBAGE))
        # Lease subjects: a heartbeat of a process that never existed (its expiry leaves a marker),
        # a garbage run record of that process for this live run, garbage on a live worker's heartbeat.
        fake = f"{trial.tag}-fake-{os.urandom(2).hex()}"
        await put(f"ag.lease.worker.{fake}", rng.choice(GARBAGE), {"Nats-TTL": "1s"})
        await put(f"ag.lease.run.{fake}.{run}", rng.choice(GARBAGE))
    for worker in trial.live_workers()[:1]:
        await put(f"ag.lease.worker.{worker.worker_id}", rng.choice(GARBAGE))
    # Runs that do not exist, and subjects whose run id is not one.
    stray_args = {"run": unknown, "label": "w0", "x": 0, "log": str(trial.step_log), "sleep_s": 0.0}
    await put(
        f"ag.evt.{unknown}.node.ready",
        _stray_event(ev.NodeReady, unknown, 10_000, 1, tool="ft_work", args=stray_args, node_id="ft_work_1"),
    )
    await put(f"ag.evt.{unknown}.tool.returned", rng.choice(GARBAGE))
    for subject in (
        f"ag.cmd.resume.{unknown}",
        "ag.cmd.resume.bad$id",
        "ag.cmd.resume." + "x" * 200,
        "ag.cmd.resume.a.b",
        f"ag.cmd.report.{unknown}",
        f"ag.cmd.cancel.{unknown}",
        "ag.cmd.cancel.bad$id",
        "ag.evt.bad$id.run.started",
    ):
        await put(subject, rng.choice(GARBAGE))
    await put(f"ag.cmd.resume.{unknown}", b'{"payload": {"approved": true}}')
    await nc.publish("ag.proj.nobody.query", rng.choice(GARBAGE))
    return published


async def stray_messages(trial: Trial) -> None:
    """Stray and malformed messages with plain nats-py on every subject family, while the runs are in flight."""
    nc = await connect(trial.server.url)
    total = rounds_cut = 0
    try:
        js = nc.jetstream()
        end = time.monotonic() + trial.size.fault_s
        while time.monotonic() < end:
            try:
                total += await _stray_round(js, nc, trial, trial.rng)
            except (nats.errors.Error, TimeoutError, OSError):  # the server is down (everything-at-once)
                rounds_cut += 1
            await asyncio.sleep(0.3)
    finally:
        trial.note(f"{total} stray messages published" + (f", {rounds_cut} rounds cut short" if rounds_cut else ""))
        await nc.close()


async def everything_at_once(trial: Trial) -> None:
    """The kill storm, nats-server restarts and stray messages at the same time."""
    await asyncio.gather(worker_kill_storm(trial), nats_server_restarts(trial), stray_messages(trial))


FAULT_FUNCTIONS = {
    "worker-kill-storm": worker_kill_storm,
    "nats-server-restart": nats_server_restarts,
    "stray-messages": stray_messages,
    "driver-paused-past-lease": pause_driver,
    "everything-at-once": everything_at_once,
}


async def run_trial(fault: str, root: Path, *, size: Size, sync_interval: str = "1s", seed: int = 0) -> Report:
    """One trial of ``fault``: its own bus and processes, the fault while the runs progress, the checks."""
    started = time.monotonic()
    trial = Trial(root, size=size, sync_interval=sync_interval, seed=seed)
    try:
        for _ in range(size.workers):
            trial.start_worker()
        trial.start_driver()
        await trial.wait_all_executing()
        await FAULT_FUNCTIONS[fault](trial)
        journals = await trial.settle()
        report = evaluate(
            fault,
            sync_interval,
            trial.specs,
            journals,
            trial.step_log,
            faulted_pids=trial.faulted_pids,
            server_restarts=trial.server_restarts,
            driver_results=trial.driver_results(),
            pid_of_worker={proc.worker_id: proc.pid for proc in trial.hosts.procs},
            process_states=trial.process_states(),
            heartbeats=trial.heartbeats,
        )
    finally:
        trial.close()
    report.faults_injected = trial.faults
    report.seconds = time.monotonic() - started
    return report
