"""8. Crash takeover: kill -9 of the process driving a run, to the first step another process executes for it.

Three ways a run changes hands:

* ``disconnect``: a worker already running hears from the embedded server that
  the driver's connection closed (the lease is 30 s, so nothing else can explain it);
* ``lease``: the same on a server that does not report connections
  (``nats-server -js``, as an external server without AetherGraph's accounts):
  the worker waits for the driver's heartbeat to expire (lease 1 s, the default);
* ``fresh``: no worker runs at the kill; a new process with a new worker id
  (``python -m aethergraph worker``) starts right after it, finds the driver's
  ownership record, a heartbeat that has not expired (lease 30 s) and no
  connection under the driver's name, and adopts the run at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aethergraph import Settings
from aethergraph.bus.embedded import launch_server
from aethergraph.core.ids import new_run_id
from aethergraph.core.journal.run_journal import load_journal
from aethergraph.core.wire.events import RunClaimed, RunCompleted
from aethergraph.host.process import ProcessHost
from aethergraph.host.runs import RunHandle

from .graphs_durable import TICK_SLEEP_ENV, TICKS_FILE_ENV
from .harness import DEFAULT_SYNC, BenchContext, Figure, isolated_server, latency_figure, temp_workspace
from .processes import GRAPHS_MODULE, Proc, poll, process_env, spawn, start_worker

NAME = "takeover"
TITLE = "8. Crash takeover"
STEPS = 100
KILL_AFTER = 20
TICK_SLEEP_S = "0.01"
T = TypeVar("T")

_DRIVER = """
import sys
import aethergraph
from benchmarks import graphs_durable
aethergraph.run(graphs_durable.bench_takeover, {"steps": int(sys.argv[1])}, run_id=sys.argv[2])
"""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    key: str
    lease_s: str
    server: str  # "embedded" (reports connections) or "plain" (nats-server -js)
    resident: bool  # a worker runs beside the driver; else a fresh process starts after the kill


SCENARIOS = (
    Scenario(key="disconnect", lease_s="30", server="embedded", resident=True),
    Scenario(key="lease", lease_s="1", server="plain", resident=True),
    Scenario(key="fresh", lease_s="30", server="embedded", resident=False),
)


@dataclass(kw_only=True)
class Trial:
    kill_ns: int
    started_ns: int  # the fresh process was spawned (resident: the kill)
    first_step_ns: int  # the taker's first executed step of the run (bench_tick started)
    death_seen_ns: int | None  # the benchmark process's own death watch reported the driver (resident only)
    claimed_ns: int  # run.claimed (reason takeover) created by the taker (µs resolution)
    completed_ns: int  # run.completed (µs resolution)
    steps_before: int  # steps the driver started before it was killed
    repeated: bool  # the taker's first step is the one in flight at the kill


def _ticks(path: Path, run_id: str) -> list[tuple[int, int, int]]:
    """``(pid, time_ns, i)`` of every executed step of ``run_id``, in order."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[0] == run_id:
            out.append((int(parts[1]), int(parts[2]), int(parts[3])))
    return out


async def _poll(check: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    """:func:`processes.poll` on a thread, so this loop keeps receiving events meanwhile."""
    return await asyncio.to_thread(poll, check, timeout_s=timeout_s, what=what)


@contextlib.contextmanager
def plain_server(scratch: Path, sync_interval: str) -> Iterator[str]:
    """``nats-server`` with JetStream and nothing else (no accounts, no connection events), stopped afterwards."""
    directory = scratch / "plain-nats"
    directory.mkdir()
    config = directory / "server.conf"
    store = json.dumps(str(directory / "jetstream"))
    config.write_text(
        f"listen: 127.0.0.1:-1\nports_file_dir: {json.dumps(str(directory))}\n"
        f"jetstream {{\n  store_dir: {store}\n  sync_interval: {sync_interval}\n}}\n"
    )
    process, url = launch_server(config, directory, directory / "server.log")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class _Bench:
    """One scenario's processes and the benchmark's own runtime on their server."""

    def __init__(self, scenario: Scenario, nats_url: str, scratch: Path, runtime: ProcessHost) -> None:
        self.scenario = scenario
        self.nats_url = nats_url
        self.scratch = scratch
        self.runtime = runtime
        self.ticks = scratch / "ticks.txt"
        self.deaths: dict[str, int] = {}
        self.worker: Proc | None = None

    def env(self, name: str, **extra: str) -> dict[str, str]:
        return process_env(
            self.nats_url,
            self.scratch / f"{name}-workspace",
            AETHERGRAPH_LEASE_S=self.scenario.lease_s,
            **{TICKS_FILE_ENV: str(self.ticks), TICK_SLEEP_ENV: TICK_SLEEP_S},
            **extra,
        )

    def start_resident(self) -> None:
        tick_env = {TICKS_FILE_ENV: str(self.ticks), TICK_SLEEP_ENV: TICK_SLEEP_S}
        self.worker = start_worker(
            self.nats_url, self.scratch, "worker", AETHERGRAPH_LEASE_S=self.scenario.lease_s, **tick_env
        )

    async def kill_a_driver(self, run_id: str, index: int) -> tuple[int, int]:
        """Start a driver of ``run_id``, kill it with SIGKILL after KILL_AFTER steps: (kill time, steps started)."""
        env = self.env(f"driver-{index}", AETHERGRAPH_WORKER_ID=self.driver_id(index))
        driver = spawn(["-c", _DRIVER, str(STEPS), run_id], env, self.scratch / f"driver-{index}.log")
        try:

            def driver_steps() -> int | None:
                driver.check_alive("the driver")
                done = [tick for tick in _ticks(self.ticks, run_id) if tick[0] == driver.pid]
                return len(done) if len(done) >= KILL_AFTER else None

            await _poll(driver_steps, timeout_s=60, what=f"{KILL_AFTER} steps of the driver")
            kill_ns = time.time_ns()
            driver.kill9()
        finally:
            driver.stop()
        return kill_ns, len(_ticks(self.ticks, run_id))

    def driver_id(self, index: int) -> str:
        return f"bench{self.scenario.key}driver{index}"

    async def trial(self, index: int) -> Trial:
        run_id = new_run_id()
        kill_ns, steps_before = await self.kill_a_driver(run_id, index)
        started_ns = kill_ns
        taker = self.worker
        if taker is None:
            started_ns = time.time_ns()
            env = self.env(f"fresh-{index}", AETHERGRAPH_WORKER_ID=f"benchfresh{index}")
            taker = spawn(["-m", "aethergraph", "worker", GRAPHS_MODULE], env, self.scratch / f"fresh-{index}.log")
        try:

            def taker_step() -> tuple[int, int, int] | None:
                assert taker is not None
                taker.check_alive("the worker")
                return next((tick for tick in _ticks(self.ticks, run_id) if tick[0] == taker.pid), None)

            _, first_step_ns, first_i = await _poll(taker_step, timeout_s=60, what="the taker's first step of the run")
            outputs = await RunHandle(run_id, self.runtime.env).result(timeout=60)
        finally:
            if taker is not self.worker:
                taker.stop()
        if outputs != {"i": STEPS - 1}:
            raise RuntimeError(f"run {run_id} ended with {outputs}, expected {{'i': {STEPS - 1}}}")
        chain, _ = await load_journal(self.runtime, run_id)
        claims = [event for event in chain if isinstance(event, RunClaimed)]
        driver_id = self.driver_id(index)
        if [claim.reason for claim in claims] != ["takeover"] or claims[0].previous_worker != driver_id:
            raise RuntimeError(f"run {run_id}: expected one takeover claim from {driver_id}, got {claims}")
        death_seen_ns = None
        if self.worker is not None:
            what = f"the benchmark's own watch to report {driver_id}"
            death_seen_ns = await _poll(lambda: self.deaths.get(driver_id), timeout_s=10, what=what)
        return Trial(
            kill_ns=kill_ns,
            started_ns=started_ns,
            first_step_ns=first_step_ns,
            death_seen_ns=death_seen_ns,
            claimed_ns=claims[0].ts * 1000,
            completed_ns=chain[-1].ts * 1000 if isinstance(chain[-1], RunCompleted) else 0,
            steps_before=steps_before,
            repeated=first_i == steps_before - 1,
        )


async def _measure(ctx: BenchContext, scenario: Scenario, nats_url: str, workspace: Path, scratch: Path) -> list[Trial]:
    trials = ctx.pick(10, 2)
    runtime = await ProcessHost.open(Settings(nats_url=nats_url, workspace=workspace, sync_interval=DEFAULT_SYNC))
    bench = _Bench(scenario, nats_url, scratch, runtime)

    async def on_death(worker_id: str) -> None:
        bench.deaths.setdefault(worker_id, time.time_ns())

    stop_watching = await runtime.leases.watch_deaths(on_death)
    results: list[Trial] = []
    try:
        if scenario.resident:
            ctx.say(f"[{scenario.key}] starting a worker process (AETHERGRAPH_LEASE_S={scenario.lease_s})")
            bench.start_resident()
        for index in range(trials):
            ctx.say(f"[{scenario.key}] trial {index + 1}/{trials}: {STEPS} steps, kill -9 after {KILL_AFTER}")
            trial = await bench.trial(index)
            ctx.say(f"  the taker's first step {(trial.first_step_ns - trial.kill_ns) / 1e6:.0f} ms after the kill")
            results.append(trial)
    finally:
        if bench.worker is not None:
            bench.worker.stop()
        await stop_watching()
        await runtime.close()
    return results


def _run_scenario(ctx: BenchContext, scenario: Scenario) -> list[Trial]:
    with temp_workspace("ag-bench-takeover-") as scratch:
        if scenario.server == "plain":
            with plain_server(scratch, DEFAULT_SYNC) as url:
                return asyncio.run(_measure(ctx, scenario, url, scratch / "bench-workspace", scratch))
        with isolated_server(DEFAULT_SYNC) as (server, workspace):
            return asyncio.run(_measure(ctx, scenario, server.url, workspace, scratch))


def _figure(key: str, label: str, values: list[int], note: str = "") -> Figure:
    return latency_figure(
        NAME, key, label, [[value] for value in values], unit="ms", scale=1e-6, sync_interval=DEFAULT_SYNC, note=note
    )


def _resident_figures(scenario: Scenario, trials: list[Trial], how: str) -> list[Figure]:
    key, lease = scenario.key, scenario.lease_s
    repeated = sum(trial.repeated for trial in trials)
    return [
        _figure(
            f"{key}_kill_to_first_step",
            f"kill -9 of the driving process -> first step executed by a running worker ({how}, lease {lease} s)",
            [trial.first_step_ns - trial.kill_ns for trial in trials],
            f"the step in flight at the kill ran again first in {repeated} of {len(trials)} trials",
        ),
        _figure(
            f"{key}_stage_death_seen",
            f"stage ({key}): kill -> the benchmark process's own death watch reports the driver",
            [(trial.death_seen_ns or 0) - trial.kill_ns for trial in trials],
        ),
        _figure(
            f"{key}_stage_claimed",
            f"stage ({key}): kill -> worker creates `run.claimed` (reason takeover)",
            [trial.claimed_ns - trial.kill_ns for trial in trials],
        ),
        _figure(
            f"{key}_stage_step",
            f"stage ({key}): `run.claimed` -> first step executed",
            [trial.first_step_ns - trial.claimed_ns for trial in trials],
            "commit the claim, re-run the body over the recorded steps",
        ),
    ]


def _fresh_figures(trials: list[Trial]) -> list[Figure]:
    remaining = STEPS - KILL_AFTER
    return [
        _figure(
            "fresh_start_to_first_step",
            "a fresh process (new worker id, lease 30 s) started after the kill -> its first step of the run",
            [trial.first_step_ns - trial.started_ns for trial in trials],
            "includes the interpreter's start, imports and connecting",
        ),
        _figure(
            "fresh_stage_claimed",
            "stage (fresh): process started -> it creates `run.claimed` (reason takeover)",
            [trial.claimed_ns - trial.started_ns for trial in trials],
        ),
        _figure(
            "fresh_start_to_end",
            f"a fresh process started after the kill -> `run.completed` (about {remaining} steps of "
            f"{TICK_SLEEP_S} s left)",
            [trial.completed_ns - trial.started_ns for trial in trials],
        ),
    ]


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    results = {scenario.key: _run_scenario(ctx, scenario) for scenario in SCENARIOS}
    figures = [
        *_resident_figures(SCENARIOS[0], results["disconnect"], "disconnect reported by the embedded server"),
        *_resident_figures(SCENARIOS[1], results["lease"], "heartbeat expiry, server without connection events"),
        *_fresh_figures(results["fresh"]),
    ]
    notes = [
        f"Each trial: a driver process (`aethergraph.run(bench_takeover, ...)`) runs a graph of {STEPS} steps, each "
        f"an async tool that appends `time.time_ns()` and its pid to a file and sleeps {TICK_SLEEP_S} s; after "
        f"{KILL_AFTER} steps it is killed with SIGKILL. Every run was checked to finish with the right output "
        "under exactly one takeover claim.",
        "disconnect: the embedded server (AetherGraph's configuration) reports the driver's closed connection to "
        "the worker (`python -m aethergraph worker`, `AETHERGRAPH_LEASE_S=30`); the worker waits a 0.5 s grace for "
        "a reconnection, checks the server's connection list and takes the run over. The lease cannot explain it.",
        "lease: a plain `nats-server -js` (no accounts, so no connection events): the worker learns of the death "
        "from the expiry of the driver's last heartbeat (`AETHERGRAPH_LEASE_S=1`: one every 250 ms with a 1 s "
        "TTL, so it expires 0.75-1 s after the kill).",
        "fresh: no worker runs at the kill; right after it a new `python -m aethergraph worker` with a new worker "
        "id starts (`AETHERGRAPH_LEASE_S=30`). At startup it reads the ownership records, the live heartbeats and "
        "the server's connection list: the driver has a heartbeat but no connection, so its run is an orphan.",
    ]
    return figures, notes
