"""8. Crash takeover: kill -9 of the process driving a run, to the first step a worker executes for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aethergraph import Settings
from aethergraph.core.events import RunClaimed
from aethergraph.core.executor import load_journal
from aethergraph.core.ids import new_run_id
from aethergraph.host.process import ProcessHost
from aethergraph.host.runs import RunHandle

from .graphs_durable import TICK_SLEEP_ENV, TICKS_FILE_ENV
from .harness import DEFAULT_SYNC, BenchContext, Figure, isolated_server, latency_figure, temp_workspace
from .processes import Proc, poll, process_env, spawn, start_worker

NAME = "takeover"
TITLE = "8. Crash takeover"
LEASE_S = "1"
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


@dataclass(kw_only=True)
class Trial:
    kill_ns: int
    first_step_ns: int  # the worker's first executed step of the run (bench_tick started)
    death_seen_ns: int  # the driver's heartbeat expiry marker delivered to the benchmark process
    claimed_ns: int  # run.claimed (reason takeover) created by the worker (µs resolution)
    steps_before: int  # steps the driver started before it was killed
    repeated: bool  # the worker's first step is the one in flight at the kill


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


async def _trial(
    runtime: ProcessHost, deaths: dict[str, int], nats_url: str, scratch: Path, worker: Proc, index: int
) -> Trial:
    run_id = new_run_id()
    driver_id = f"benchdriver{index}"
    ticks = scratch / "ticks.txt"
    env = process_env(
        nats_url,
        scratch / f"driver-{index}-workspace",
        AETHERGRAPH_LEASE_S=LEASE_S,
        AETHERGRAPH_WORKER_ID=driver_id,
        **{TICKS_FILE_ENV: str(ticks), TICK_SLEEP_ENV: TICK_SLEEP_S},
    )
    driver = spawn(["-c", _DRIVER, str(STEPS), run_id], env, scratch / f"driver-{index}.log")
    try:

        def driver_steps() -> int | None:
            driver.check_alive("the driver")
            done = [tick for tick in _ticks(ticks, run_id) if tick[0] == driver.pid]
            return len(done) if len(done) >= KILL_AFTER else None

        await _poll(driver_steps, timeout_s=60, what=f"{KILL_AFTER} steps of the driver")
        kill_ns = time.time_ns()
        driver.kill9()
    finally:
        driver.stop()
    steps_before = len(_ticks(ticks, run_id))

    def worker_step() -> tuple[int, int, int] | None:
        worker.check_alive("the worker")
        return next((tick for tick in _ticks(ticks, run_id) if tick[0] == worker.pid), None)

    _, first_step_ns, first_i = await _poll(worker_step, timeout_s=60, what="the worker's first step of the run")
    outputs = await RunHandle(run_id, runtime.env).result(timeout=60)
    if outputs != {"i": STEPS - 1}:
        raise RuntimeError(f"run {run_id} ended with {outputs}, expected {{'i': {STEPS - 1}}}")
    chain, _ = await load_journal(runtime, run_id)
    claims = [event for event in chain if isinstance(event, RunClaimed)]
    if [claim.reason for claim in claims] != ["takeover"] or claims[0].previous_worker != driver_id:
        raise RuntimeError(f"run {run_id}: expected one takeover claim from {driver_id}, got {claims}")
    death_seen_ns = await _poll(lambda: deaths.get(driver_id), timeout_s=10, what=f"the expiry marker of {driver_id}")
    return Trial(
        kill_ns=kill_ns,
        first_step_ns=first_step_ns,
        death_seen_ns=death_seen_ns,
        claimed_ns=claims[0].ts * 1000,
        steps_before=steps_before,
        repeated=first_i == steps_before - 1,
    )


async def _measure(ctx: BenchContext, nats_url: str, workspace: Path, scratch: Path, worker: Proc) -> list[Trial]:
    trials = ctx.pick(10, 2)
    runtime = await ProcessHost.open(Settings(nats_url=nats_url, workspace=workspace, sync_interval=DEFAULT_SYNC))
    deaths: dict[str, int] = {}

    async def on_death(worker_id: str) -> None:
        deaths.setdefault(worker_id, time.time_ns())

    stop_watching = await runtime.leases.watch_deaths(on_death)
    results: list[Trial] = []
    try:
        for index in range(trials):
            ctx.say(
                f"trial {index + 1}/{trials}: driver process runs {STEPS} steps of {TICK_SLEEP_S} s; "
                f"kill -9 after {KILL_AFTER}"
            )
            trial = await _trial(runtime, deaths, nats_url, scratch, worker, index)
            ctx.say(f"  takeover's first step {(trial.first_step_ns - trial.kill_ns) / 1e6:.0f} ms after the kill")
            results.append(trial)
    finally:
        await stop_watching()
        await runtime.close()
    return results


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    with isolated_server(DEFAULT_SYNC) as (server, workspace), temp_workspace("ag-bench-takeover-") as scratch:
        ctx.say(f"starting a worker process (AETHERGRAPH_LEASE_S={LEASE_S})")
        worker = start_worker(
            server.url,
            scratch,
            "worker",
            AETHERGRAPH_LEASE_S=LEASE_S,
            **{TICKS_FILE_ENV: str(scratch / "ticks.txt"), TICK_SLEEP_ENV: TICK_SLEEP_S},
        )
        try:
            trials = asyncio.run(_measure(ctx, server.url, workspace, scratch, worker))
        finally:
            worker.stop()

    def figure(key: str, label: str, values: list[int], note: str = "") -> Figure:
        return latency_figure(
            NAME,
            key,
            label,
            [[value] for value in values],
            unit="ms",
            scale=1e-6,
            sync_interval=DEFAULT_SYNC,
            note=note,
        )

    repeated = sum(trial.repeated for trial in trials)
    figures = [
        figure(
            "kill_to_first_step",
            f"kill -9 of the driving process -> first step executed by the worker (lease {LEASE_S} s)",
            [trial.first_step_ns - trial.kill_ns for trial in trials],
            f"the step in flight at the kill ran again first in {repeated} of {len(trials)} trials",
        ),
        figure(
            "stage_expiry",
            "stage: kill -> the driver's heartbeat expiry marker delivered",
            [trial.death_seen_ns - trial.kill_ns for trial in trials],
            "seen by the benchmark process's own watch",
        ),
        figure(
            "stage_claimed",
            "stage: kill -> worker creates `run.claimed` (reason takeover)",
            [trial.claimed_ns - trial.kill_ns for trial in trials],
        ),
        figure(
            "stage_step",
            "stage: `run.claimed` -> first step executed",
            [trial.first_step_ns - trial.claimed_ns for trial in trials],
            "commit the claim, re-run the body over the recorded steps",
        ),
    ]
    notes = [
        f"Each trial: a driver process (`aethergraph.run(bench_takeover, ...)`, `AETHERGRAPH_LEASE_S={LEASE_S}`) "
        f"runs a graph of {STEPS} steps, each an async tool that appends `time.time_ns()` and its pid to a file "
        f"and sleeps {TICK_SLEEP_S} s; after {KILL_AFTER} steps it is killed with SIGKILL. A worker process "
        "(`python -m aethergraph worker`, same lease) learns of the death from the expiry of the driver's last "
        "heartbeat, claims the run and continues it by replay; the figure is its first step's timestamp minus "
        "`time.time_ns()` just before the kill. Every run was checked to finish with the right output under "
        "exactly one takeover claim.",
        "A heartbeat is published every lease/4 (250 ms) with a per-message TTL of the lease (1 s), so the last "
        "one expires 0.75-1 s after the kill.",
    ]
    return figures, notes
