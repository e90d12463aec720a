"""2. Durable per-step overhead: a graph_fn of 200 sequential no-op tool steps."""

from __future__ import annotations

import asyncio
import time

from aethergraph import Settings, close_runtime, get_runtime
from aethergraph.core.run.executor import execute_run

from .harness import (
    DEFAULT_SYNC,
    SYNC_INTERVALS,
    BenchContext,
    CpuMeter,
    Figure,
    isolated_server,
    latency_figure,
    median,
    rotate,
    value_figure,
)
from .workload import (
    bench_chain,
    has_transport_path,
    memory_environment,
    plain_chain,
    raw_requests,
    sample_payload,
    step_samples,
    transport_requests,
)

NAME = "steps"
TITLE = "2. Durable per-step overhead"
STEPS = 200


async def _durable_run(steps: int) -> tuple[list[int], float]:
    """One journaled run of ``bench_chain``: per-step nanoseconds and the run's wall seconds."""
    step_samples.clear()
    started = time.perf_counter()
    result = await bench_chain(steps=steps)
    elapsed = time.perf_counter() - started
    if result != {"value": steps}:
        raise RuntimeError(f"bench_chain returned {result!r}")
    return list(step_samples), elapsed


async def _measure_durable(ctx: BenchContext, sync: str) -> list[Figure]:
    repeats = ctx.pick(30, 5)
    payload = sample_payload()
    with isolated_server(sync) as (server, workspace):
        runtime = await get_runtime(Settings(nats_url=server.url, workspace=workspace, sync_interval=sync))
        try:
            nc = runtime.bus.nc
            ctx.say(f"warm-up (sync_interval={sync})")
            for _ in range(2):
                await _durable_run(STEPS)
            await raw_requests(nc, STEPS, payload, "none")

            variants = ["run", "floor"] + (["transport"] if has_transport_path(runtime.event_log) else [])
            if "transport" in variants:
                await transport_requests(runtime.event_log, STEPS, payload, "none")
            steps: list[list[int]] = []
            floors: dict[str, list[list[int]]] = {"floor": [], "transport": []}
            run_wall: list[float] = []
            meters = {variant: CpuMeter(server.pid) for variant in variants}
            for index in range(repeats):
                if index % 5 == 0 or index == repeats - 1:
                    ctx.say(
                        f"repeat {index + 1}/{repeats}: {STEPS}-step run + {STEPS} raw publishes per floor "
                        f"(sync_interval={sync})"
                    )
                for variant in rotate(variants, index):
                    with meters[variant].measure(STEPS):
                        if variant == "run":
                            block, elapsed = await _durable_run(STEPS)
                            steps.append(block)
                            run_wall.append(elapsed)
                        elif variant == "floor":
                            floors[variant].append(await raw_requests(nc, STEPS, payload, "none"))
                        else:
                            floors[variant].append(await transport_requests(runtime.event_log, STEPS, payload, "none"))
        finally:
            await close_runtime()

    target = "≤250 µs p50" if sync == DEFAULT_SYNC else ""
    step_p50 = [median(block) / 1e3 for block in steps]
    client_cpu, server_cpu = meters["run"].per_op_us()
    figures = [
        latency_figure(
            NAME,
            "durable_step",
            f"durable step (`await tool(x)` in a graph_fn, {STEPS} sequential)",
            steps,
            sync_interval=sync,
            note=meters["run"].describe() + (f"; target {target}" if target else ""),
            extra={"client_cpu_us": client_cpu, "server_cpu_us": server_cpu},
        ),
        value_figure(
            NAME,
            "run_per_step",
            f"whole run / {STEPS} (incl. `run.started` and `run.completed`)",
            [elapsed / STEPS * 1e6 for elapsed in run_wall],
            unit="µs",
            per_repeat_n=STEPS,
            better="lower",
            sync_interval=sync,
        ),
    ]
    labels = {
        "floor": ("raw floor, same server: awaited `nc.request`, no headers", "ratio_to_floor", "target ≤1.5x"),
        "transport": (
            "transport floor, same server: event-log publish path, no headers",
            "ratio_to_transport_floor",
            "stricter: the floor of the path the runtime actually uses",
        ),
    }
    for variant in variants[1:]:
        label, ratio_key, ratio_note = labels[variant]
        floor_p50 = [median(block) / 1e3 for block in floors[variant]]
        figures.append(
            latency_figure(NAME, variant, label, floors[variant], sync_interval=sync, note=meters[variant].describe())
        )
        figures.append(
            value_figure(
                NAME,
                ratio_key,
                f"durable step p50 / {'raw' if variant == 'floor' else 'transport'} floor p50 (paired per repeat)",
                [step / floor for step, floor in zip(step_p50, floor_p50, strict=True)],
                unit="x",
                per_repeat_n=STEPS,
                better="lower",
                sync_interval=sync,
                note=ratio_note if sync == DEFAULT_SYNC or variant == "transport" else "",
            )
        )
    return figures


async def _measure_local(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    """The same graph without a bus: plain Python, and the runtime over an in-memory log."""
    repeats = ctx.pick(20, 5)
    loops = ctx.pick(50, 10)
    figures: list[Figure] = []
    notes: list[str] = []
    ctx.say("plain Python (no runtime)")
    await plain_chain(STEPS)
    plain: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            await plain_chain(STEPS)
        plain.append((time.perf_counter() - started) / (loops * STEPS) * 1e6)
    figures.append(
        value_figure(
            NAME,
            "plain",
            "same function, no runtime (undecorated tool, plain Python)",
            plain,
            unit="µs",
            per_repeat_n=loops * STEPS,
            better="lower",
            sync_interval=None,
        )
    )
    ctx.say("runtime over an in-memory event log (no bus)")
    spec = bench_chain.spec
    try:
        await execute_run(spec, {"steps": STEPS}, env=memory_environment())
        memory: list[list[int]] = []
        for _ in range(repeats):
            step_samples.clear()
            await execute_run(spec, {"steps": STEPS}, env=memory_environment())
            memory.append(list(step_samples))
    except Exception as exc:  # noqa: BLE001 - an internal port changed: report it, keep the suite going
        notes.append(f"The in-memory-log variant could not run against this version of the core: {exc!r}.")
    else:
        figures.append(
            latency_figure(
                NAME,
                "in_memory",
                "runtime over an in-memory event log (encodes, no bus)",
                memory,
                sync_interval=None,
                note="the runtime's own CPU per step",
            )
        )
    return figures, notes


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    for sync in SYNC_INTERVALS:
        figures.extend(asyncio.run(_measure_durable(ctx, sync)))
    local, notes = asyncio.run(_measure_local(ctx))
    figures.extend(local)
    notes = [
        f"Per-step samples are the wall time of each `await bench_incr(x)` inside the graph_fn ({STEPS} per run): "
        "a pipelined `tool.called`, the tool, and an awaited `tool.returned` (one round trip).",
        "The floor is measured on the same server, interleaved with the runs, so the ratio is paired per repeat.",
        "CPU/op is user+system CPU of this process and of nats-server over the measured runs, divided by steps.",
        *notes,
    ]
    return figures, notes
