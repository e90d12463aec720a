"""6. Resume latency: a resume command published, to the continuation's first step in a worker process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nats.aio.msg import Msg

import aethergraph
from aethergraph import Settings
from aethergraph.core.ids import new_run_id
from aethergraph.core.wire.codec import decode_event
from aethergraph.core.wire.events import RunClaimed, RunCompleted, ToolCalled, WaitResumed
from aethergraph.host.process import ProcessHost
from aethergraph.host.runs import Suspended
from aethergraph.runtime import close_runtime, get_runtime, load_target

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
from .processes import process_env, spawn, start_worker
from .workload import raw_requests, sample_payload

NAME = "resume"
TITLE = "6. Resume latency"
TARGET_MS = 5.0
# Each round, in this order: a raw publish to a worker idle for IDLE_S, a raw publish right after
# the previous resume completed (a busy worker), and ``aethergraph.resume`` after IDLE_S.
VARIANTS = ("idle", "warm", "api")
IDLE_S = 0.02
FLOOR_N = 50  # raw JetStream acknowledgements per repeat, for scale
# The idle gaps also keep the benchmark under nats-server's limit of 1,000 consumers on the stream:
# every journal read (the worker reads the run's journal for each resume, and ``aethergraph.resume``
# reads it first too) leaves its ordered consumer on the server for about 5 s after it ends.


@dataclass(kw_only=True)
class Sample:
    """One resume: wall-clock nanoseconds, all read from the one clock of this machine."""

    variant: str
    run_id: str
    sent_ns: int  # just before publishing (or calling aethergraph.resume)
    completed_seen_ns: int = 0  # run.completed delivered to this process
    tool_ns: int = 0  # the continuation's first tool started (in the worker)
    tool_pid: int = 0
    claimed_ns: int = 0  # run.claimed created by the worker (µs resolution)
    resumed_ns: int = 0  # wait.resumed created by the worker (µs resolution)
    called_ns: int = 0  # tool.called created by the worker (µs resolution)


class EventWatch:
    """Every run event, stamped on arrival: when each resumed run's stages happened, and its end.

    A core NATS subscription on ``ag.evt.*.>`` (no consumer, nothing read back
    from the stream afterwards) fills in the :class:`Sample` of each run being
    resumed from the ``ts`` the worker stamped on its events, and resolves the
    sample's future when ``run.completed`` arrives.
    """

    def __init__(self) -> None:
        self.samples: dict[str, Sample] = {}
        self.completed: dict[str, asyncio.Future[None]] = {}

    async def deliver(self, msg: Msg) -> None:
        seen = time.time_ns()
        sample = self.samples.get(msg.subject.split(".", 3)[2])
        if sample is None:
            return
        event = decode_event(msg.data)
        if isinstance(event, RunClaimed):
            sample.claimed_ns = event.ts * 1000
        elif isinstance(event, WaitResumed):
            sample.resumed_ns = event.ts * 1000
        elif isinstance(event, ToolCalled):
            sample.called_ns = event.ts * 1000
        elif isinstance(event, RunCompleted):
            sample.completed_seen_ns = seen
            sample.tool_ns = int(event.outputs["t_ns"])
            sample.tool_pid = int(event.outputs["pid"])
            future = self.completed.pop(event.run_id, None)
            if future is not None and not future.done():
                future.set_result(None)

    def expect(self, sample: Sample) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.samples[sample.run_id] = sample
        self.completed[sample.run_id] = future
        return future


async def _start_waiting_runs(runtime: ProcessHost, count: int) -> list[str]:
    """``count`` runs of ``bench_resume_wait`` started here, each suspended on its wait.

    Their ends come from the driver's tasks, not from reading the journals back
    (that would be ``count`` more consumers on the server; see ``IDLE_S``).
    """
    spec = load_target(graphs_durable.bench_resume_wait)
    run_ids = [new_run_id() for _ in range(count)]
    ends = await asyncio.gather(*(runtime.driver.start(spec, spec.bind((), {}), run_id) for run_id in run_ids))
    if not all(isinstance(end, Suspended) for end in ends):
        raise RuntimeError(f"expected {count} suspended runs, got {ends[:3]}...")
    return run_ids


async def _resume_one(runtime: ProcessHost, watch: EventWatch, run_id: str, variant: str, payload: int) -> Sample:
    if variant != "warm":
        await asyncio.sleep(IDLE_S)
    sample = Sample(variant=variant, run_id=run_id, sent_ns=0)
    completed = watch.expect(sample)
    sample.sent_ns = time.time_ns()
    if variant != "api":
        await runtime.commands.publish_resume(run_id, wait_id=None, payload=payload)
    else:
        await aethergraph.resume(run_id, payload, wait=False)
    await asyncio.wait_for(completed, timeout=30)
    if not (sample.claimed_ns and sample.resumed_ns and sample.called_ns):
        raise RuntimeError(f"run {run_id} completed without the expected run.claimed / wait.resumed / tool.called")
    return sample


async def _measure(
    ctx: BenchContext, nats_url: str, workspace: Path, worker_pid: int
) -> tuple[list[list[Sample]], list[list[int]]]:
    repeats = ctx.pick(5, 3)
    per_variant = ctx.pick(40, 10)  # per repeat and variant: 200 (quick: 30) resumes of each kind
    warmup = 10
    runtime = await get_runtime(Settings(nats_url=nats_url, workspace=workspace, sync_interval=DEFAULT_SYNC))
    runtime.driver.on_suspend = None  # not the console announcement for each of the runs below
    watch = EventWatch()
    sub = await runtime.bus.nc.subscribe("ag.evt.*.>", cb=watch.deliver)
    try:
        total = warmup + repeats * per_variant * len(VARIANTS)
        ctx.say(f"starting {total} runs here that each suspend on a wait")
        run_ids = await _start_waiting_runs(runtime, total)
        ctx.say(f"warm-up: {warmup} resumes")
        for index in range(warmup):
            await _resume_one(runtime, watch, run_ids.pop(), VARIANTS[index % len(VARIANTS)], index)
        results: list[list[Sample]] = []
        floors: list[list[int]] = []
        for repeat in range(repeats):
            ctx.say(
                f"repeat {repeat + 1}/{repeats}: {per_variant * len(VARIANTS)} sequential resumes "
                "(raw publish to an idle worker, to a busy one, aethergraph.resume)"
            )
            samples: list[Sample] = []
            for index in range(per_variant):
                for variant in VARIANTS:
                    samples.append(await _resume_one(runtime, watch, run_ids.pop(), variant, index))
            results.append(samples)
            floors.append(await raw_requests(runtime.bus.nc, FLOOR_N, sample_payload(), "none"))
        for samples in results:
            for sample in samples:
                if sample.tool_pid != worker_pid:
                    raise RuntimeError(f"run {sample.run_id} continued in pid {sample.tool_pid}, not the worker")
    finally:
        await sub.unsubscribe()
        await close_runtime()
    return results, floors


async def _start_parked_runs(nats_url: str, workspace: Path, count: int) -> list[str]:
    """``count`` waiting runs started by a runtime that is closed again: nothing in this process holds them."""
    runtime = await ProcessHost.open(Settings(nats_url=nats_url, workspace=workspace, sync_interval=DEFAULT_SYNC))
    runtime.driver.on_suspend = None
    try:
        return await _start_waiting_runs(runtime, count)
    finally:
        await runtime.close()


def _measure_callers(
    ctx: BenchContext, nats_url: str, workspace: Path, scratch: Path, worker_pid: int
) -> list[list[dict[str, int]]]:
    """Per repeat, one sample per fresh process: its first resume (new process) and its second (hot).

    Each process is started and has imported aethergraph before it is given
    its run ids, so the clock covers the two calls and nothing before them.
    """
    repeats, per_repeat = ctx.pick(5, 2), ctx.pick(20, 5)
    run_ids = asyncio.run(_start_parked_runs(nats_url, workspace, 2 * (repeats * per_repeat + 2)))
    env = process_env(nats_url, scratch / "caller-workspace")
    results: list[list[dict[str, int]]] = []
    for repeat in range(-1, repeats):  # repeat -1: two warm-up processes
        ctx.say(f"resumes from new processes: repeat {repeat + 1}/{repeats}" if repeat >= 0 else "warm-up")
        samples: list[dict[str, int]] = []
        for _ in range(per_repeat if repeat >= 0 else 2):
            caller = spawn(
                ["-m", "benchmarks.resume_caller"], env, scratch / "caller.log", stdin=subprocess.PIPE, stdout_pipe=True
            )
            try:
                assert caller.process.stdin is not None and caller.process.stdout is not None
                if caller.process.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"the resuming process did not start: {caller.log_text()[-2000:]}")
                time.sleep(IDLE_S)
                caller.process.stdin.write(f"{run_ids.pop()} {run_ids.pop()}\n")
                caller.process.stdin.flush()
                line = caller.process.stdout.readline()
                if not line:
                    raise RuntimeError(f"the resuming process failed: {caller.log_text()[-2000:]}")
                first, hot = json.loads(line)
            finally:
                caller.stop()
            if {first["pid"], hot["pid"]} != {worker_pid}:
                raise RuntimeError(f"a run continued in pid {first['pid']}/{hot['pid']}, not in the worker")
            samples.append({**{f"new_{k}": v for k, v in first.items()}, **{f"hot_{k}": v for k, v in hot.items()}})
        if repeat >= 0:
            results.append(samples)
    return results


def _caller_figures(results: list[list[dict[str, int]]]) -> list[Figure]:
    def figure(key: str, label: str, field: str, note: str = "") -> Figure:
        values = [[sample[field] for sample in samples] for samples in results]
        return latency_figure(NAME, key, label, values, unit="ms", scale=1e-6, sync_interval=DEFAULT_SYNC, note=note)

    return [
        figure(
            "new_process_total",
            "new process: `resume(run_id, payload)` then `(await get_run(run_id)).result()`, from the first call",
            "new_total_ns",
            "issue 16 target p50 ≤2 ms, p99 ≤10 ms; includes opening the process's connection",
        ),
        figure(
            "new_process_resume", "new process: the `resume()` call alone (to its `accepted` outcome)", "new_resume_ns"
        ),
        figure(
            "new_process_tool",
            "new process: `resume()` called -> continuation's first tool starts in the worker",
            "new_tool_after_ns",
        ),
        figure(
            "hot_total",
            "the same process resuming a second run (connection open): `resume()` then `result()`",
            "hot_total_ns",
        ),
    ]


def _figure(
    key: str,
    label: str,
    results: list[list[Sample]],
    variant: str,
    value: Callable[[Sample], int],
    note: str = "",
) -> Figure:
    repeats = [[value(sample) for sample in samples if sample.variant == variant] for samples in results]
    return latency_figure(NAME, key, label, repeats, unit="ms", scale=1e-6, sync_interval=DEFAULT_SYNC, note=note)


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    with isolated_server(DEFAULT_SYNC) as (server, workspace), temp_workspace("ag-bench-resume-") as scratch:
        ctx.say("starting a worker process: python -m aethergraph worker benchmarks.graphs_durable")
        worker = start_worker(server.url, scratch, "worker")
        try:
            results, floors = asyncio.run(_measure(ctx, server.url, workspace, worker.pid))
            callers = _measure_callers(ctx, server.url, workspace, scratch, worker.pid)
            worker.check_alive("the worker")
        finally:
            worker.stop()

    def tool_start(sample: Sample) -> int:
        return sample.tool_ns - sample.sent_ns

    def with_verdict(figure: Figure) -> Figure:
        verdict = "met" if (figure.p50 or 0) <= TARGET_MS else "missed"
        figure.note = f"target ≤{TARGET_MS:g} ms p50: {verdict}" + (f"; {figure.note}" if figure.note else "")
        return figure

    figures = [
        with_verdict(
            _figure(
                "publish_to_tool",
                f"resume published -> continuation's first tool starts in the worker (worker idle {IDLE_S * 1e3:g} ms)",
                results,
                "idle",
                tool_start,
            )
        ),
        with_verdict(
            _figure(
                "publish_to_tool_warm",
                "the same, published as soon as the previous resume completed",
                results,
                "warm",
                tool_start,
            )
        ),
        _figure(
            "publish_to_completed",
            "resume published -> `run.completed` delivered back to the publisher (worker idle)",
            results,
            "idle",
            lambda s: s.completed_seen_ns - s.sent_ns,
        ),
        _figure(
            "api_to_tool",
            "`aethergraph.resume(run_id, payload, wait=False)` called -> first tool starts (worker idle)",
            results,
            "api",
            tool_start,
            "includes the call's own journal read and check",
        ),
        _figure(
            "stage_claimed",
            "stage (worker idle): published -> worker creates `run.claimed`",
            results,
            "idle",
            lambda s: s.claimed_ns - s.sent_ns,
            "command delivery, journal read (two direct gets), ownership record alongside the claim",
        ),
        _figure(
            "stage_resumed",
            "stage (worker idle): `run.claimed` -> `wait.resumed` created",
            results,
            "idle",
            lambda s: s.resumed_ns - s.claimed_ns,
            "the claim's acknowledgement",
        ),
        _figure(
            "stage_tool",
            "stage (worker idle): `wait.resumed` created -> first tool starts",
            results,
            "idle",
            lambda s: s.tool_ns - s.resumed_ns,
            "its acknowledgement, re-running the body (the outcome is not awaited)",
        ),
        latency_figure(
            NAME,
            "raw_floor",
            "for scale, same server: one awaited `nc.request` (raw JetStream ack), no headers",
            floors,
            sync_interval=DEFAULT_SYNC,
            note=f"{FLOOR_N} after each repeat's resumes",
        ),
        value_figure(
            NAME,
            "ratio_to_floor",
            "resume (worker idle) p50 / raw ack p50, per repeat",
            [
                median([tool_start(s) for s in samples if s.variant == "idle"]) / median(floor)
                for samples, floor in zip(results, floors, strict=True)
            ],
            unit="x",
            per_repeat_n=len(results[0]) // len(VARIANTS),
            better="lower",
            sync_interval=DEFAULT_SYNC,
            note="how many acknowledgement round trips a resume costs",
        ),
        *_caller_figures(callers),
    ]
    notes = [
        "One resume at a time: each run was started (and suspended on `context.wait(Wait(kind='bench'))`) by the "
        "benchmark process; a separate worker process (`python -m aethergraph worker`) takes the command from the "
        "shared consumer, commits the answer and continues the run by replay, whose first step is a tool that "
        "stamps `time.time_ns()` as it starts. Latency = that stamp - `time.time_ns()` just before the command "
        "was published (`runtime.commands.publish_resume`, one awaited JetStream publish); both processes read "
        "the same wall clock.",
        "`run.completed` and the stage events are observed by a core NATS subscription (`ag.evt.*.>`) in the "
        "benchmark process; stages come from the `ts` (µs) the worker stamps on each event as it creates it.",
        f"Each round: a raw publish after {IDLE_S * 1e3:g} ms of nothing (an idle worker, the usual case), a raw "
        "publish as soon as that resume completed (a busy worker, warm caches), and `aethergraph.resume` after "
        f"{IDLE_S * 1e3:g} ms.",
        "New process (issue 16's user path): for each sample a fresh `python -m benchmarks.resume_caller` is "
        "started and has imported aethergraph (not the graph: the worker continues the run); the clock starts at "
        "its `aethergraph.resume(run_id, payload)` call (so it includes that call opening the process's "
        "connection: settings, connect, JetStream and stream checks) and stops when "
        "`(await aethergraph.get_run(run_id)).result()` returns the outputs. Hot: the same process then does the "
        f"same for a second run. One process at a time, {IDLE_S * 1e3:g} ms after it is ready.",
    ]
    return figures, notes
