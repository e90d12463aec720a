"""13. Broker outage: nats-server killed -9 under running runs, restarted; how soon every run moves again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field

from aethergraph import Settings, graph_fn, tool
from aethergraph.bus.embedded import ensure_embedded_server, running_server
from aethergraph.core.ids import new_run_id
from aethergraph.runtime import ProcessHost, load_target

from .harness import SYNC_INTERVALS, BenchContext, Figure, isolated_server, latency_figure

NAME = "outage"
TITLE = "13. Broker outage"
RUNS = 40
STEPS = 400
STEP_SLEEP_S = 0.01
DOWN_S = 0.5

# Commit times (ns) the graph bodies saw, per run: appended after each ``await`` of a step returns.
_COMMITS: dict[str, list[int]] = {}


@tool(name="bench_outage_step", outputs=["v"])
async def bench_outage_step(x: int) -> dict[str, int]:
    await asyncio.sleep(STEP_SLEEP_S)
    return {"v": x + 1}


@graph_fn(name="bench_outage_chain", outputs=["v"])
async def bench_outage_chain(steps: int, *, context: object) -> dict[str, int]:
    run_id = context.run_id  # type: ignore[attr-defined]
    x = 0
    for _ in range(steps):
        x = (await bench_outage_step(x))["v"]
        _COMMITS.setdefault(run_id, []).append(time.time_ns())
    return {"v": x}


@dataclass(kw_only=True)
class Trial:
    back_ns: int  # the restarted server accepts clients
    moving_ns: list[int] = field(default_factory=list)  # per run: back -> its first commit after


async def _trial(runtime: ProcessHost, workspace_url: str, pid: int, workspace: object) -> tuple[Trial, int]:
    spec = load_target(bench_outage_chain)
    run_ids = [new_run_id() for _ in range(RUNS)]
    tasks = [runtime.driver.start(spec, {"steps": STEPS}, run_id) for run_id in run_ids]
    while min(len(_COMMITS.get(run_id, [])) for run_id in run_ids) < 5:  # noqa: ASYNC110 - a sampling loop
        await asyncio.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    await asyncio.to_thread(os.waitpid, pid, 0)
    await asyncio.sleep(DOWN_S)
    server = await asyncio.to_thread(ensure_embedded_server, workspace)  # type: ignore[arg-type]
    if server.url != workspace_url:
        raise RuntimeError(f"the restarted server listens on {server.url}, not {workspace_url}")
    trial = Trial(back_ns=time.time_ns())
    results = await asyncio.gather(*tasks)
    for run_id, outputs in zip(run_ids, results, strict=True):
        if outputs != {"v": STEPS}:
            raise RuntimeError(f"run {run_id} ended with {outputs}")
        after = [stamp for stamp in _COMMITS[run_id] if stamp > trial.back_ns]
        trial.moving_ns.append(after[0] - trial.back_ns)
    return trial, server.pid


async def _measure(ctx: BenchContext, sync: str) -> list[Trial]:
    trials: list[Trial] = []
    with isolated_server(sync) as (server, workspace):
        runtime = await ProcessHost.open(Settings(nats_url=server.url, workspace=workspace, sync_interval=sync))
        pid = server.pid
        try:
            for index in range(ctx.pick(5, 2)):
                ctx.say(f"sync {sync}, trial {index + 1}: {RUNS} runs, nats-server kill -9, down {DOWN_S} s")
                trial, pid = await _trial(runtime, server.url, pid, workspace)
                ctx.say(f"  every run moving again {max(trial.moving_ns) / 1e6:.0f} ms after the server was back")
                trials.append(trial)
        finally:
            await runtime.close()
            if running_server(workspace) is None:
                ensure_embedded_server(workspace, sync_interval=sync)  # for isolated_server to stop
    return trials


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    for sync in SYNC_INTERVALS:
        trials = asyncio.run(_measure(ctx, sync))
        figures.append(
            latency_figure(
                NAME,
                f"every_run_moving_{sync}",
                f"server back -> every one of {RUNS} runs has committed a step again (the slowest run)",
                [[max(trial.moving_ns)] for trial in trials],
                unit="ms",
                scale=1e-6,
                sync_interval=sync,
            )
        )
        figures.append(
            latency_figure(
                NAME,
                f"run_moving_{sync}",
                "server back -> a run's first committed step (each run of each trial)",
                [trial.moving_ns for trial in trials],
                unit="ms",
                scale=1e-6,
                sync_interval=sync,
            )
        )
    notes = [
        f"Each trial: one process drives {RUNS} runs of a {STEPS}-step graph_fn (each step an async tool that "
        f"sleeps {STEP_SLEEP_S} s). Once every run has committed 5 steps, the embedded nats-server is killed with "
        f"SIGKILL, stays down {DOWN_S} s, and is restarted on its workspace (it takes its old port back). The "
        "clock starts when the restarted server accepts clients; a run is moving again at the first step its "
        "graph body sees committed after that. Every run must then complete with the right output.",
        "In between, the client reconnects (nats-py retries every 0.25 s), each run's writer reads its run back, "
        "republishes the events that were lost with the connection, and goes on.",
    ]
    return figures, notes
