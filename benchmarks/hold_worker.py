"""A worker process that also starts runs itself, for the ``suspended_memory`` benchmark.

``python -m benchmarks.hold_worker RUN_IDS_FILE`` serves as a worker (the
same ``Worker`` that ``aethergraph.serve_worker`` runs) for
``benchmarks.graphs_durable`` and takes commands on standard input, one per
line, answering each with one JSON line on standard output:

* ``start N``: start N runs of ``bench_hold`` here, each of which suspends on
  its first wait; append their ids to RUN_IDS_FILE (they are not kept in
  memory); answer once all N are suspended;
* ``measure``: collect garbage and report this process's memory;
* ``exit``: stop serving and exit.

Before the first command it warms up: a few runs go through their whole life
here (start, suspend, resumed twice by this worker, complete), then it reports
its memory with 0 runs suspended. Settings come from ``AETHERGRAPH_*``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from aethergraph.core.ids import new_run_id
from aethergraph.host.runs import RunHandle, Suspended
from aethergraph.host.worker import Worker
from aethergraph.runtime import close_runtime, get_runtime, load_target

from . import graphs_durable
from .processes import rss_bytes

BATCH = 250
WARMUP_RUNS = 20
SETTLE_S = 1.0


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _memory(phase: str, **fields: Any) -> None:
    # Let what just finished wind down first (the handle that resumed this coroutine still holds
    # the last gather's future, and through it that batch's tasks; consumers are being torn down).
    await asyncio.sleep(SETTLE_S)
    gc.collect()
    gc.collect()
    _say(
        phase=phase,
        rss=rss_bytes(os.getpid()),
        blocks=sys.getallocatedblocks(),
        tasks=len(asyncio.all_tasks()),
        gc_objects=len(gc.get_objects()),
        **fields,
    )


async def _start_suspended(count: int, ids_file: Path) -> int:
    """Start ``count`` runs of ``bench_hold`` in batches; each must suspend. Returns how many did."""
    runtime = await get_runtime()
    spec = load_target(graphs_durable.bench_hold)
    inputs = spec.bind((), {})
    suspended = 0
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        size = min(BATCH, count - first)
        run_ids = [new_run_id() for _ in range(size)]
        ends = await asyncio.gather(*(runtime.driver.start(spec, inputs, run_id) for run_id in run_ids))
        suspended += sum(1 for end in ends if isinstance(end, Suspended))
        _append_lines(ids_file, run_ids)
        del ends, run_ids
        if (first // BATCH) % 8 == 7:
            _say(progress=f"{first + size:,}/{count:,} runs suspended ({time.perf_counter() - started:.0f} s)")
    return suspended


def _append_lines(path: Path, lines: list[str]) -> None:
    with open(path, "a") as out:
        out.write("".join(f"{line}\n" for line in lines))


async def _warm_up() -> None:
    """A few runs through their whole life here, so every code path has run once before measuring."""
    runtime = await get_runtime()
    spec = load_target(graphs_durable.bench_hold)
    run_ids = [new_run_id() for _ in range(WARMUP_RUNS)]
    ends = await asyncio.gather(*(runtime.driver.start(spec, spec.bind((), {}), run_id) for run_id in run_ids))
    assert all(isinstance(end, Suspended) for end in ends), ends
    waiting_again = 0
    all_waiting = asyncio.Event()

    async def on_waiting(_msg: Msg) -> None:
        nonlocal waiting_again
        waiting_again += 1
        if waiting_again == len(run_ids):
            all_waiting.set()

    sub = await runtime.bus.nc.subscribe("ag.evt.*.run.waiting", cb=on_waiting)
    try:
        for run_id in run_ids:
            await runtime.commands.publish_resume(run_id, wait_id=None, payload=1)
        await asyncio.wait_for(all_waiting.wait(), timeout=60)  # each continued to its second wait
    finally:
        await sub.unsubscribe()
    for run_id in run_ids:
        await runtime.commands.publish_resume(run_id, wait_id=None, payload=2)
    for run_id in run_ids:
        outputs = await RunHandle(run_id, runtime.env).result(timeout=60)
        assert outputs == {"answers": [1, 2]}, outputs


async def main(ids_file: Path) -> None:
    await _memory("start")
    runtime = await get_runtime(inline_answers=False)
    runtime.driver.on_suspend = None  # no console announcement per suspended run
    worker = Worker(runtime.driver, runtime.commands)
    serving = asyncio.create_task(worker.serve())
    try:
        await asyncio.wait_for(worker.ready.wait(), timeout=60)
        await _memory("connected")
        await _warm_up()
        await _memory("idle")
        while True:
            line = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if not line or line == "exit":
                break
            command, _, argument = line.partition(" ")
            if command == "start":
                count = int(argument)
                began = time.perf_counter()
                suspended = await _start_suspended(count, ids_file)
                elapsed = time.perf_counter() - began
                await _memory("suspended", runs=count, suspended=suspended, seconds=elapsed)
            elif command == "measure":
                await _memory(argument or "measured", driving=len(runtime.driver.tasks))
            else:
                _say(error=f"unknown command {line!r}")
    finally:
        worker.stop()
        await serving
        await close_runtime()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
