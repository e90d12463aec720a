"""10. Static graphs: DAG throughput with every event durable, and scheduling latency between dependent nodes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aethergraph import Settings, close_runtime, get_runtime, graphify, tool
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.wire.events import NodeCompleted, NodeReady, NodeStarted
from aethergraph.runtime import ProcessHost, start_run

from .harness import (
    DEFAULT_SYNC,
    SYNC_INTERVALS,
    BenchContext,
    CpuMeter,
    Figure,
    isolated_server,
    latency_figure,
    value_figure,
)

NAME = "static"
TITLE = "10. Static graphs (@graphify)"


@tool(name="bench_static_noop", outputs=["v"])
def bench_static_noop(i: int) -> dict[str, Any]:
    return {"v": i}


@tool(name="bench_static_step", outputs=["v"])
def bench_static_step(x: int) -> dict[str, Any]:
    return {"v": x + 1}


@tool(name="bench_static_reduce", outputs=["total"])
def bench_static_reduce(values: list[int]) -> dict[str, Any]:
    return {"total": sum(values)}


def wide_graph(width: int) -> Any:
    """``width`` independent no-op nodes, then one node reducing all their outputs: ``width + 1`` nodes."""

    def body(seed):  # type: ignore[no-untyped-def]
        nodes = [bench_static_noop(i=i) for i in range(width)]
        return {"total": bench_static_reduce(values=[node.v for node in nodes]).total}

    return graphify(name=f"bench_static_wide_{width}", inputs=["seed"], outputs=["total"])(body)


def chain_graph(length: int) -> Any:
    """``length`` nodes, each taking the previous one's output."""

    def body(start):  # type: ignore[no-untyped-def]
        node = bench_static_step(x=start)
        for _ in range(length - 1):
            node = bench_static_step(x=node.v)
        return {"v": node.v}

    return graphify(name=f"bench_static_chain_{length}", inputs=["start"], outputs=["v"])(body)


async def _journal(runtime: ProcessHost, run_id: str) -> list[Any]:
    return journal_chain([record.event async for record in runtime.event_log.read_run(run_id)])


def _edge_latencies(chain: list[Any], graph: Any) -> tuple[list[int], list[int], list[int]]:
    """Per dependency edge (upstream u -> dependent d whose last-finishing dependency is u), in µs:

    * completed -> started: d's executor start (``started_us`` in d's node.completed) minus the ``ts`` of
      u's node.completed (when the scheduler journaled u's outcome);
    * completed -> ready: the ``ts`` of d's dispatch (node.ready, or node.started for a local node) minus
      the ``ts`` of u's node.completed;
    * finished -> started: d's executor start minus the end of u's execution on its worker
      (``started_us + duration_us`` of u): report, scheduler, dispatch (and the work-queue delivery).
    """
    completed = {e.node_id: e for e in chain if isinstance(e, NodeCompleted)}
    ready = {e.node_id: e for e in chain if isinstance(e, NodeReady | NodeStarted)}
    started: list[int] = []
    readied: list[int] = []
    finished: list[int] = []
    for node_id in graph.order:
        deps = graph.dependencies(node_id)
        if not deps:
            continue
        upstream = max((completed[dep] for dep in deps), key=lambda e: e.seq)
        node = completed[node_id]
        started.append(node.started_us - upstream.ts)
        readied.append(ready[node_id].ts - upstream.ts)
        finished.append(node.started_us - (upstream.started_us + upstream.duration_us))
    return started, readied, finished


async def _one_run(
    runtime: ProcessHost, builder: Any, inputs: dict[str, Any], expected: dict[str, Any]
) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    handle = await start_run(builder, inputs)
    outputs = await handle.result()
    elapsed = time.perf_counter() - started
    if outputs != expected:
        raise RuntimeError(f"{builder.name} returned {outputs!r}, expected {expected!r}")
    return elapsed, await _journal(runtime, handle.run_id)


async def _measure(
    ctx: BenchContext, sync: str, width: int, length: int, repeats: int, *, queue_only: bool = False
) -> list[Figure]:
    """Figures of one sync interval; ``queue_only`` sends every node through the work queue (no local nodes)."""
    wide, chain = wide_graph(width), chain_graph(length)
    build_s = []
    for builder in (wide, chain):
        t0 = time.perf_counter()
        builder.build()
        build_s.append(time.perf_counter() - t0)
    wide_graph_, chain_graph_ = wide.build(), chain.build()
    wide_expected = {"total": sum(range(width))}
    chain_expected = {"v": length}
    with isolated_server(sync) as (server, workspace):
        settings = Settings(nats_url=server.url, workspace=workspace, sync_interval=sync)
        if queue_only:
            settings = settings.model_copy(update={"local_node_concurrency": 0})
        await get_runtime(settings)
        runtime = await get_runtime()
        try:
            placement = "work queue only" if queue_only else "default placement"
            ctx.say(f"warm-up (sync_interval={sync}, {placement})")
            await _one_run(runtime, chain_graph(50), {"start": 0}, {"v": 50})
            await _one_run(runtime, wide_graph(200), {"seed": 0}, {"total": sum(range(200))})
            wide_rates: list[float] = []
            chain_rates: list[float] = []
            chain_started: list[list[int]] = []
            chain_ready: list[list[int]] = []
            chain_finished: list[list[int]] = []
            reduce_started: list[int] = []
            wide_cpu, chain_cpu = CpuMeter(server.pid), CpuMeter(server.pid)
            for index in range(repeats):
                ctx.say(
                    f"repeat {index + 1}/{repeats}: {width + 1:,}-node wide DAG, {length:,}-node chain "
                    f"({sync}, {placement})"
                )
                with wide_cpu.measure(width + 1):
                    elapsed, journal = await _one_run(runtime, wide, {"seed": index}, wide_expected)
                wide_rates.append((width + 1) / elapsed)
                started, _, _ = _edge_latencies(journal, wide_graph_)
                reduce_started.append(started[0])
                with chain_cpu.measure(length):
                    elapsed, journal = await _one_run(runtime, chain, {"start": 0}, chain_expected)
                chain_rates.append(length / elapsed)
                started, readied, finished = _edge_latencies(journal, chain_graph_)
                chain_started.append(started)
                chain_ready.append(readied)
                chain_finished.append(finished)
        finally:
            await close_runtime()

    target = "; target ≥ 2,000 nodes/s" if sync == DEFAULT_SYNC and not queue_only else ""
    suffix, prefix = ("_queue", "work queue only (`local_node_concurrency=0`): ") if queue_only else ("", "")

    def throughput(key: str, label: str, rates: list[float], nodes: int, cpu: CpuMeter) -> Figure:
        note = cpu.describe().replace("/op", "/node") + target
        return value_figure(
            NAME,
            key + suffix,
            prefix + label,
            rates,
            unit="nodes/s",
            per_repeat_n=nodes,
            better="higher",
            sync_interval=sync,
            note=note,
        )

    wide_figure = throughput(
        "wide_nodes_per_s",
        f"wide DAG: {width:,} no-op nodes + 1 reduce, start to result",
        wide_rates,
        width + 1,
        wide_cpu,
    )
    chain_figure = throughput(
        "chain_nodes_per_s",
        f"chain: {length:,} nodes, each on the previous one's output",
        chain_rates,
        length,
        chain_cpu,
    )
    if queue_only:
        return [
            wide_figure,
            chain_figure,
            latency_figure(
                NAME,
                "completed_to_started_queue",
                "work queue only: chain, upstream `node.completed` journaled -> dependent starts executing",
                chain_started,
                scale=1.0,
                sync_interval=sync,
            ),
        ]
    figures = [
        wide_figure,
        chain_figure,
        latency_figure(
            NAME,
            "completed_to_started",
            "chain: upstream `node.completed` journaled -> dependent starts executing",
            chain_started,
            scale=1.0,
            sync_interval=sync,
        ),
        latency_figure(
            NAME,
            "completed_to_ready",
            "chain: upstream `node.completed` -> dependent dispatched (scheduler only)",
            chain_ready,
            scale=1.0,
            sync_interval=sync,
        ),
        latency_figure(
            NAME,
            "finished_to_started",
            "chain: upstream finished executing -> dependent starts (report, schedule, dispatch)",
            chain_finished,
            scale=1.0,
            sync_interval=sync,
        ),
        value_figure(
            NAME,
            "reduce_started",
            f"wide DAG: last of {width:,} `node.completed` -> the reduce starts",
            [float(value) for value in reduce_started],
            unit="µs",
            per_repeat_n=1,
            better="lower",
            sync_interval=sync,
        ),
    ]
    if sync == DEFAULT_SYNC:
        figures.append(
            value_figure(
                NAME,
                "build_wide",
                f"`.build()` of the {width + 1:,}-node wide DAG (once per graph)",
                [build_s[0] * 1e3],
                unit="ms",
                per_repeat_n=width + 1,
                better="lower",
                sync_interval=None,
            )
        )
    return figures


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    width = ctx.pick(10_000, 1_000)
    length = ctx.pick(1_000, 200)
    figures: list[Figure] = []
    for sync in SYNC_INTERVALS:
        # `always` fsyncs every event: fewer repeats keep the suite's run time in bounds.
        repeats = ctx.pick(5, 2) if sync == DEFAULT_SYNC else ctx.pick(3, 1)
        figures.extend(asyncio.run(_measure(ctx, sync, width, length, repeats)))
        if sync == DEFAULT_SYNC:
            figures.extend(asyncio.run(_measure(ctx, sync, width, length, repeats, queue_only=True)))
    notes = [
        "One process schedules and executes, against its own nats-server. With the default placement the "
        "scheduler runs up to `local_node_concurrency` (16) ready nodes in place: such a node costs a "
        "`node.started` and a `node.completed` event and nothing else; the other nodes go through the work "
        "queue `ag-work` (the process's own executor takes them too): a `node.ready` event, a work-queue "
        "delivery and ack, and a `node.completed` event (the report is handed to the scheduler in-process, not "
        "stored). The `_queue` figures send every node through the work queue, as a run whose scheduler's "
        "process is busy or lacks the tool does. Throughput is nodes divided by the wall time from `start_run` "
        "to the result (including `run.started` and `run.completed`).",
        "Latencies come from the journal of each chain run (one sample per edge, 999 per run in full mode), in "
        "µs on one host clock: `node.completed` ts is when the scheduler journaled the upstream's outcome; the "
        "dependent's start is `started_us` in its own `node.completed` (the executor's clock when the tool "
        "was called); the upstream's finish is its `started_us + duration_us`.",
    ]
    return figures, notes
