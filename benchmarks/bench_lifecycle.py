"""15. Run lifecycle: how long ``start_run`` takes to return, and a submitted run's way to a worker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aethergraph import Settings
from aethergraph.core.ids import new_run_id
from aethergraph.runtime import ProcessHost, load_target

from . import graphs_durable
from .harness import (
    DEFAULT_SYNC,
    BenchContext,
    Figure,
    isolated_server,
    latency_figure,
    median,
    temp_workspace,
    value_figure,
)
from .processes import start_worker
from .workload import raw_requests, sample_payload

NAME = "lifecycle"
TITLE = "15. Run lifecycle"


async def _start_latencies(runtime: ProcessHost, count: int) -> list[int]:
    """``start_run`` of a one-step graph, one at a time: nanoseconds until it returned (the run then ends)."""
    spec = load_target(graphs_durable.bench_first_step)
    samples = []
    for _ in range(count):
        run_id = new_run_id()
        began = time.perf_counter_ns()
        task = await runtime.driver.start_durably(spec, {}, run_id)
        samples.append(time.perf_counter_ns() - began)
        await task
    return samples


async def _submit_latencies(runtime: ProcessHost, count: int, worker_pid: int) -> list[int]:
    """``submit`` of a one-step graph, one at a time: nanoseconds until a worker's first step starts."""
    spec = load_target(graphs_durable.bench_first_step)
    samples = []
    for _ in range(count):
        began = time.time_ns()
        handle = await runtime.submit_run(spec, {}, new_run_id())
        outputs = await handle.result(timeout=60)
        if outputs["pid"] != worker_pid:
            raise RuntimeError(f"run {handle.run_id} ran in {outputs['pid']}, not in the worker {worker_pid}")
        samples.append(int(outputs["t_ns"]) - began)
    return samples


async def _measure(ctx: BenchContext, url: str, workspace: Path, worker_pid: int) -> dict[str, list[list[int]]]:
    repeats, count = ctx.pick(5, 2), ctx.pick(40, 10)
    runtime = await ProcessHost.open(Settings(nats_url=url, workspace=workspace, sync_interval=DEFAULT_SYNC))
    results: dict[str, list[list[int]]] = {"start": [], "submit": [], "floor": []}
    try:
        await _start_latencies(runtime, 5)  # warm-up
        await _submit_latencies(runtime, 3, worker_pid)
        for repeat in range(repeats):
            ctx.say(f"repeat {repeat + 1}/{repeats}: {count} start_run, {count} submit, one raw ack floor")
            results["start"].append(await _start_latencies(runtime, count))
            results["submit"].append(await _submit_latencies(runtime, count, worker_pid))
            results["floor"].append(await raw_requests(runtime.bus.nc, 50, sample_payload(), "none"))
    finally:
        await runtime.close()
    return results


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    with isolated_server(DEFAULT_SYNC) as (server, workspace), temp_workspace("ag-bench-lifecycle-") as scratch:
        worker = start_worker(server.url, scratch, "worker")
        try:
            results = asyncio.run(_measure(ctx, server.url, workspace, worker.pid))
        finally:
            worker.stop()
    ratios = [median(start) / median(floor) for start, floor in zip(results["start"], results["floor"], strict=True)]
    figures = [
        latency_figure(
            NAME,
            "start_run_returns",
            "`start_run` called -> returned (its `run.started` acknowledged)",
            results["start"],
            sync_interval=DEFAULT_SYNC,
            note="target ≤1 raw ack at p50",
        ),
        latency_figure(
            NAME,
            "raw_ack",
            "for scale: one awaited `nc.request` (raw JetStream ack)",
            results["floor"],
            sync_interval=DEFAULT_SYNC,
        ),
        value_figure(
            NAME,
            "start_run_per_ack",
            "`start_run` p50 / raw ack p50, per repeat",
            ratios,
            unit="x",
            per_repeat_n=len(results["start"][0]),
            better="lower",
            sync_interval=DEFAULT_SYNC,
        ),
        latency_figure(
            NAME,
            "submit_to_first_step",
            "`submit` called -> the run's first step starts in a worker process",
            results["submit"],
            unit="ms",
            scale=1e-6,
            sync_interval=DEFAULT_SYNC,
        ),
    ]
    notes = [
        "`start_run` (here `RunDriver.start_durably`, what it calls) of a graph_fn with one step, one at a time, "
        "in the benchmark process; the clock stops when it returns, i.e. once the run's `run.started` is "
        "acknowledged and its ownership recorded (two writes sent together, the record first, each awaited; one "
        "round trip).",
        "`submit` of the same graph, one at a time, with one worker process (`aethergraph worker "
        "benchmarks.graphs_durable`) idle beside it: the submitter journals `run.started` (queued) and the queue "
        "record, the worker hears of the record, claims the run and starts its first step, which stamps the wall "
        "clock (same machine, same clock).",
    ]
    return figures, notes
