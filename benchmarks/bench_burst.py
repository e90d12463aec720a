"""14. A burst of static runs: 10,000 started at once from one process, each awaited by a follower.

Issue 16 ("no run ever stuck"): each static run used to follow its node
reports through its own JetStream consumer, and each ``result()`` of a run
driven elsewhere through another; past nats-server's 1,000 consumers per
stream, runs stayed ``running`` forever and ``result()`` calls failed. This
benchmark starts ``RUNS`` runs of a three-node graph at once, awaits each one
through a handle without its task (so ``result()`` follows the run's events,
as a caller in another process would), samples the consumer counts of
``AG_COMMANDS``, ``AG_EVENTS`` and the whole account (every stream, the
lease, KV and artifact streams included) every 50 ms throughout, and checks
every run's outputs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.errors

from aethergraph import Settings, close_runtime, get_runtime, graphify, tool
from aethergraph.bus.topology import COMMANDS_STREAM, EVENTS_STREAM
from aethergraph.host.process import ProcessHost
from aethergraph.host.runs import RunHandle
from aethergraph.runtime import start_run

from .harness import DEFAULT_SYNC, BenchContext, CpuMeter, Figure, isolated_server, value_figure

NAME = "burst"
TITLE = "14. A burst of static runs (consumers on the server)"


@tool(name="bench_burst_first", outputs=["x"])
async def bench_burst_first(n: int) -> dict[str, Any]:
    return {"x": n}


@tool(name="bench_burst_double", outputs=["y"])
def bench_burst_double(x: int) -> dict[str, Any]:
    return {"y": 2 * x}


@tool(name="bench_burst_add", outputs=["z"])
def bench_burst_add(x: int, y: int) -> dict[str, Any]:
    return {"z": x + y}


@graphify(name="bench_burst_three", inputs=["n"], outputs=["z"])
def bench_burst_three(n):  # type: ignore[no-untyped-def]
    first = bench_burst_first(n=n)
    return {"z": bench_burst_add(x=first.x, y=bench_burst_double(x=first.x).y).z}


async def _consumers(runtime: ProcessHost) -> tuple[int, int, int]:
    """Consumers on AG_COMMANDS, on AG_EVENTS, and on every stream of the account."""
    js = runtime.bus.js
    commands, events, account = await asyncio.gather(
        js.stream_info(COMMANDS_STREAM), js.stream_info(EVENTS_STREAM), js.account_info()
    )
    return commands.state.consumer_count, events.state.consumer_count, account.consumers


async def _burst(runtime: ProcessHost, runs: int, cpu: CpuMeter) -> tuple[float, list[int], int, int]:
    """Seconds from the first start to the last result, peak consumers, runs not done, consumer samples missed."""
    peaks = list(await _consumers(runtime))
    missed = [0]
    sampling = True

    async def sample() -> None:
        while sampling:
            try:
                counts = await _consumers(runtime)
            except nats.errors.TimeoutError:  # a server busy with the burst answered too late: sample again
                missed[0] += 1
                continue
            for i, count in enumerate(counts):
                peaks[i] = max(peaks[i], count)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    with cpu.measure(runs):
        started = time.perf_counter()
        handles = [await start_run(bench_burst_three, {"n": i}) for i in range(runs)]
        followers = [asyncio.ensure_future(RunHandle(h.run_id, runtime.env).result()) for h in handles]
        done, pending = await asyncio.wait(followers, timeout=600)
        elapsed = time.perf_counter() - started
    sampling = False
    await sampler
    for task in pending:
        task.cancel()
    await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
    wrong = sum(1 for i, task in enumerate(followers) if task not in done or task.result() != {"z": 3 * i})
    return elapsed, peaks, wrong + len(pending), missed[0]


async def _measure(ctx: BenchContext, runs: int, repeats: int) -> list[Figure]:
    with isolated_server(DEFAULT_SYNC) as (server, workspace):
        await get_runtime(Settings(nats_url=server.url, workspace=workspace, sync_interval=DEFAULT_SYNC))
        runtime = await get_runtime()
        try:
            ctx.say("warm-up: 200 runs")
            await _burst(runtime, 200, CpuMeter(server.pid))
            missed = 0
            rates: list[float] = []
            commands: list[float] = []
            events: list[float] = []
            everywhere: list[float] = []
            not_done: list[float] = []
            stuck = 0
            cpu = CpuMeter(server.pid)
            for index in range(repeats):
                ctx.say(f"repeat {index + 1}/{repeats}: {runs:,} static runs of 3 nodes at once, each followed")
                elapsed, peaks, wrong, late = await _burst(runtime, runs, cpu)
                missed += late
                rates.append(runs / elapsed)
                commands.append(float(peaks[0]))
                events.append(float(peaks[1]))
                everywhere.append(float(peaks[2]))
                not_done.append(float(wrong))
                stuck += wrong
        finally:
            await close_runtime()
    if stuck:
        raise RuntimeError(f"{stuck} of {runs * repeats} runs did not complete with the right outputs")
    note = cpu.describe().replace("/op", "/run") + "; every run completed with the right outputs"
    sampled = f"; {missed} samples of the consumer counts timed out (the server was busy) and were taken again"
    return [
        value_figure(
            NAME,
            "runs_per_s",
            f"{runs:,} static runs (3 nodes) started at once, start to the last follower's result",
            rates,
            unit="runs/s",
            per_repeat_n=runs,
            better="higher",
            sync_interval=DEFAULT_SYNC,
            note=note,
        ),
        value_figure(
            NAME,
            "peak_consumers_commands",
            f"peak consumers on AG_COMMANDS during the burst of {runs:,} runs (sampled every 50 ms)",
            commands,
            unit="consumers",
            per_repeat_n=runs,
            better="lower",
            sync_interval=DEFAULT_SYNC,
            note="was one per running static run (nats-server refuses the 1,001st)" + sampled,
        ),
        value_figure(
            NAME,
            "peak_consumers_events",
            f"peak consumers on AG_EVENTS during the burst, with {runs:,} `result()` followers",
            events,
            unit="consumers",
            per_repeat_n=runs,
            better="lower",
            sync_interval=DEFAULT_SYNC,
            note="was one per follower; the durable ones (ag-work) remain",
        ),
        value_figure(
            NAME,
            "peak_consumers_account",
            f"peak consumers on every stream of the account during the burst of {runs:,} runs",
            everywhere,
            unit="consumers",
            per_repeat_n=runs,
            better="lower",
            sync_interval=DEFAULT_SYNC,
            note="`account_info().consumers`: AG_EVENTS, AG_COMMANDS, AG_LEASES and the bucket streams together",
        ),
        value_figure(
            NAME,
            "runs_not_done",
            f"runs of the {runs:,} not completed with the right outputs (stuck, failed or wrong)",
            not_done,
            unit="runs",
            per_repeat_n=runs,
            better="lower",
            sync_interval=DEFAULT_SYNC,
            note="counted per repeat; the benchmark then fails rather than publish figures with runs left behind",
        ),
    ]


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    figures = asyncio.run(_measure(ctx, ctx.pick(10_000, 1_000), ctx.pick(3, 1)))
    notes = [
        "One process starts every run (`start_run` in a loop) and awaits each through a `RunHandle` without "
        "its task, so `result()` follows the run's events as a caller in another process does: N runs and N "
        "followers at once. Nodes run in the process (16 in place, the rest through `ag-work`). Consumers are "
        "read with `stream_info().state.consumer_count` (and `account_info().consumers` for every stream) every "
        "50 ms; the figure is the peak over the burst."
    ]
    return figures, notes
