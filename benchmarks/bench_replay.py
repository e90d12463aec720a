"""4. Replay read speed: reading a long run's events back with ``event_log.read_run``."""

from __future__ import annotations

import asyncio
import time

from nats.js.api import DeliverPolicy

from aethergraph import Settings
from aethergraph.bus.topology import run_events_filter
from aethergraph.core.ids import new_run_id
from aethergraph.runtime import Runtime

from .harness import DEFAULT_SYNC, BenchContext, Figure, isolated_server, rotate, value_figure
from .workload import chunks, step_events

NAME = "replay"
TITLE = "4. Replay read speed"
EVENTS = 20_000


async def _raw_read(runtime: Runtime, run_id: str, expected: int) -> float:
    """nats-py's ordered consumer alone (no decoding): the transport's share; seconds."""
    started = time.perf_counter()
    sub = await runtime.bus.js.subscribe(
        run_events_filter(run_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )

    async def drain() -> None:
        for _ in range(expected):
            await sub.next_msg(timeout=None)  # as read_run does: no per-message timer

    try:
        await asyncio.wait_for(drain(), timeout=60)
    finally:
        await sub.unsubscribe()
    return time.perf_counter() - started


async def _read_run(runtime: Runtime, run_id: str, expected: int) -> float:
    started = time.perf_counter()
    count = 0
    last = 0
    async for record in runtime.event_log.read_run(run_id):
        count += 1
        last = record.event.seq
    elapsed = time.perf_counter() - started
    if count != expected or last != expected:
        raise RuntimeError(f"read_run returned {count} events ending at seq {last}; expected {expected}")
    return elapsed


async def _measure(ctx: BenchContext) -> list[Figure]:
    repeats = ctx.pick(7, 3)
    sync = DEFAULT_SYNC
    with isolated_server(sync) as (server, workspace):
        runtime = await Runtime.open(Settings(nats_url=server.url, workspace=workspace, sync_interval=sync))
        try:
            run_id, other = new_run_id(), new_run_id()
            ctx.say(f"writing a {EVENTS:,}-event run interleaved with another run of the same size")
            writers = {run_id: runtime.event_log.writer(run_id), other: runtime.event_log.writer(other)}
            batches = {rid: chunks(step_events(rid, EVENTS), 1_000) for rid in writers}
            for index in range(len(batches[run_id])):
                for rid, writer in writers.items():
                    for event in batches[rid][index]:
                        writer.append(event)
                    await writer.flush()
            ctx.say("warm-up read")
            await _read_run(runtime, run_id, EVENTS)
            results: dict[str, list[float]] = {"read_run": [], "raw": []}
            for index in range(repeats):
                ctx.say(f"repeat {index + 1}/{repeats}: read {EVENTS:,} events (read_run, raw consumer)")
                for variant in rotate(list(results), index):
                    if variant == "read_run":
                        results[variant].append(await _read_run(runtime, run_id, EVENTS))
                    else:
                        results[variant].append(await _raw_read(runtime, run_id, EVENTS))
        finally:
            await runtime.close()
    return [
        value_figure(
            NAME,
            "read_run",
            f"`event_log.read_run(run_id)` of a {EVENTS:,}-event run (decoded events)",
            [EVENTS / elapsed for elapsed in results["read_run"]],
            unit="events/s",
            per_repeat_n=EVENTS,
            better="higher",
            sync_interval=sync,
        ),
        value_figure(
            NAME,
            "raw_ordered_consumer",
            "nats-py ordered consumer + `next_msg`, no decoding (transport share)",
            [EVENTS / elapsed for elapsed in results["raw"]],
            unit="events/s",
            per_repeat_n=EVENTS,
            better="higher",
            sync_interval=sync,
        ),
    ]


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    figures = asyncio.run(_measure(ctx))
    notes = [
        f"The stream holds the {EVENTS:,}-event run and another run of the same size written interleaved in "
        "1,000-event chunks, so the read is subject-filtered as in a shared stream.",
        "Timed from the call to the last event, including consumer creation and teardown.",
    ]
    return figures, notes
