"""Graphs for the durable-execution benchmarks, imported by the benchmark and by its worker processes.

A worker serves them with ``python -m aethergraph worker benchmarks.graphs_durable``
(run from the repository root). Clocks that cross processes are wall clocks
(``time.time_ns()``): every process of a benchmark runs on the same machine,
so they read the same clock.
"""

from __future__ import annotations

import asyncio
import os
import time

from aethergraph import NodeContext, Wait, graph_fn, tool

# Where ``bench_tick`` appends one line per execution: "<run_id> <pid> <time_ns> <i>".
TICKS_FILE_ENV = "AG_BENCH_TICKS"
TICK_SLEEP_ENV = "AG_BENCH_TICK_SLEEP"


# --- resume: wait, then one tool that stamps when it starts ---------------------


@tool(name="bench_resume_mark", outputs=["t_ns", "pid"])
def bench_resume_mark(answer: int) -> dict[str, int]:
    """The continuation's first step: the wall clock when it starts executing, and where."""
    return {"t_ns": time.time_ns(), "pid": os.getpid()}


@graph_fn(name="bench_resume_wait", outputs=["t_ns", "pid"])
async def bench_resume_wait(*, context: NodeContext) -> dict[str, int]:
    answer = await context.wait(Wait(kind="bench", prompt="resume me"))
    marked = await bench_resume_mark(answer)
    return {"t_ns": int(marked["t_ns"]), "pid": int(marked["pid"])}


# --- suspended_memory: two waits in a row ---------------------------------------


@graph_fn(name="bench_hold", outputs=["answers"])
async def bench_hold(*, context: NodeContext) -> dict[str, list[object]]:
    first = await context.wait(Wait(kind="bench", prompt="first"))
    second = await context.wait(Wait(kind="bench", prompt="second"))
    return {"answers": [first, second]}


# --- replay: many small steps, then a wait (so the run stays unfinished) --------


@tool(name="bench_replay_step", outputs=["value"])
def bench_replay_step(x: int) -> int:
    return x + 1


@graph_fn(name="bench_replay_chain", outputs=["value"])
async def bench_replay_chain(steps: int, *, context: NodeContext) -> dict[str, int]:
    x = 0
    for _ in range(steps):
        x = (await bench_replay_step(x))["value"]
    await context.wait(Wait(kind="bench", prompt="never answered: replay stops here"))
    return {"value": x}


# --- takeover: a long run of slow steps that say who ran them -------------------


def _record_tick(run_id: str, i: int) -> None:
    # Written synchronously: the line is in the file before the step goes on.
    with open(os.environ[TICKS_FILE_ENV], "a") as ticks:
        ticks.write(f"{run_id} {os.getpid()} {time.time_ns()} {i}\n")


@tool(name="bench_tick", outputs=["i"])
async def bench_tick(i: int, *, context: NodeContext) -> int:
    """Say which process executes this step, and when it started; then take a while."""
    _record_tick(context.run_id, i)
    await asyncio.sleep(float(os.environ.get(TICK_SLEEP_ENV, "0.01")))
    return i


@graph_fn(name="bench_takeover", outputs=["i"])
async def bench_takeover(steps: int) -> dict[str, int]:
    i = 0
    for i in range(steps):
        await bench_tick(i)
    return {"i": i}


# --- lifecycle: a run whose first step stamps when it starts --------------------


@tool(name="bench_first_mark", outputs=["t_ns", "pid"])
def bench_first_mark() -> dict[str, int]:
    """The run's first step: the wall clock when it starts executing, and where."""
    return {"t_ns": time.time_ns(), "pid": os.getpid()}


@graph_fn(name="bench_first_step", outputs=["t_ns", "pid"])
async def bench_first_step() -> dict[str, int]:
    marked = await bench_first_mark()
    return {"t_ns": int(marked["t_ns"]), "pid": int(marked["pid"])}
