"""7. Suspended-run memory: a worker process's RSS with 0 and with N runs suspended on waits."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.msg import Msg

from aethergraph.bus.commands import ResumeCommand
from aethergraph.bus.topology import COMMANDS_STREAM, resume_subject

from .harness import DEFAULT_SYNC, BenchContext, Figure, isolated_server, temp_workspace, value_figure
from .processes import Proc, process_env, spawn

NAME = "suspended_memory"
TITLE = "7. Suspended-run memory"
# Resumes are paced at most RESUME_WAVE per RESUME_WAVE_S: every resume makes the worker read the run's
# journal, each read leaves an ordered consumer on the server for about 5 s, and nats-server refuses a
# 1,001st consumer on the stream (the worker then retries the command 2 s later). Faster resumes would
# measure that limit, not memory.
RESUME_WAVE = 100
RESUME_WAVE_S = 0.7
MIB = 1024 * 1024


def _read(proc: Proc, ctx: BenchContext, phase: str, timeout_s: float = 600) -> dict[str, Any]:
    """Read the child's JSON lines until ``phase`` (relaying progress lines)."""
    stdout = proc.process.stdout
    assert stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = stdout.readline()
        if not line:
            proc.check_alive("the holding worker")
            raise RuntimeError(f"the holding worker closed its output before phase {phase!r}")
        message: dict[str, Any] = json.loads(line)
        if "progress" in message:
            ctx.say(f"  worker: {message['progress']}")
        elif "error" in message:
            raise RuntimeError(f"the holding worker: {message['error']}")
        elif message.get("phase") == phase:
            return message
    raise TimeoutError(f"no phase {phase!r} from the holding worker within {timeout_s:.0f}s")


def _start_suspended(proc: Proc, ctx: BenchContext, count: int) -> dict[str, Any]:
    """Have the worker process start ``count`` runs that each suspend; its report once all have."""
    _send(proc, f"start {count}")
    report = _read(proc, ctx, "suspended")
    if report["suspended"] != count:
        raise RuntimeError(f"only {report['suspended']} of {count} runs suspended")
    return report


def _send(proc: Proc, line: str) -> None:
    stdin = proc.process.stdin
    assert stdin is not None
    stdin.write(line + "\n")
    stdin.flush()


async def _resume_all(ctx: BenchContext, nats_url: str, run_ids: list[str]) -> float:
    """Answer every run's first wait, in waves; wait until each run suspended again. Returns seconds."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    waiting = 0
    arrived = asyncio.Event()
    target = 0

    async def on_waiting(_msg: Msg) -> None:
        nonlocal waiting
        waiting += 1
        if waiting >= target:
            arrived.set()

    sub = await nc.subscribe("ag.evt.*.run.waiting", cb=on_waiting)
    await nc.flush()
    body = msgspec.json.encode(ResumeCommand(payload=1))
    started = time.perf_counter()
    try:
        for first in range(0, len(run_ids), RESUME_WAVE):
            wave = run_ids[first : first + RESUME_WAVE]
            target = first + len(wave)
            arrived.clear()
            wave_started = time.perf_counter()
            await asyncio.gather(*(js.publish(resume_subject(run_id), body, stream=COMMANDS_STREAM) for run_id in wave))
            if waiting < target:
                await asyncio.wait_for(arrived.wait(), timeout=300)
            await asyncio.sleep(max(0.0, RESUME_WAVE_S - (time.perf_counter() - wave_started)))
            if (first // RESUME_WAVE) % 20 == 19:
                ctx.say(f"  {target:,}/{len(run_ids):,} runs resumed and suspended again")
        return time.perf_counter() - started
    finally:
        await sub.unsubscribe()
        await nc.close()


def _one(ctx: BenchContext, nats_url: str, scratch: Path, count: int, index: int) -> dict[str, Any]:
    ids_file = scratch / f"run-ids-{index}.txt"
    env = process_env(nats_url, scratch / f"hold-{index}-workspace")
    proc = spawn(
        ["-m", "benchmarks.hold_worker", str(ids_file)],
        env,
        scratch / f"hold-{index}.log",
        stdin=subprocess.PIPE,
        stdout_pipe=True,
    )
    try:
        result: dict[str, Any] = {"pid": proc.pid}
        result["start"] = _read(proc, ctx, "start", 60)
        result["idle"] = _read(proc, ctx, "idle", 300)
        ctx.say(
            f"worker pid {proc.pid} idle after warm-up: RSS {result['idle']['rss'] / MIB:.1f} MiB; "
            f"starting {count:,} runs in it that each suspend"
        )
        result["suspended"] = _start_suspended(proc, ctx, count)
        ctx.say(
            f"{count:,} runs suspended in {result['suspended']['seconds']:.1f} s: RSS "
            f"{result['suspended']['rss'] / MIB:.1f} MiB; resuming each to its second wait "
            f"(at most {RESUME_WAVE} per {RESUME_WAVE_S:g} s)"
        )
        run_ids = ids_file.read_text().split()
        result["resume_seconds"] = asyncio.run(_resume_all(ctx, nats_url, run_ids))
        del run_ids
        _send(proc, "measure resumed")
        result["resumed"] = _read(proc, ctx, "resumed", 60)
        ctx.say(
            f"after {count:,} resumes: RSS {result['resumed']['rss'] / MIB:.1f} MiB; "
            f"starting {count:,} more runs ({2 * count:,} suspended)"
        )
        result["doubled"] = _start_suspended(proc, ctx, count)
        ctx.say(f"{2 * count:,} runs suspended: RSS {result['doubled']['rss'] / MIB:.1f} MiB")
        _send(proc, "exit")
        proc.process.wait(timeout=60)
        result["failed_handlings"] = proc.log_text().count("could not be handled")
        return result
    finally:
        proc.stop()


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    count = ctx.pick(10_000, 1_000)
    repeats = ctx.pick(3, 1)
    results: list[dict[str, Any]] = []
    with isolated_server(DEFAULT_SYNC) as (server, _workspace), temp_workspace("ag-bench-memory-") as scratch:
        for index in range(repeats):
            ctx.say(f"repeat {index + 1}/{repeats}: a fresh worker process")
            results.append(_one(ctx, server.url, scratch, count, index))

    def rss(phase: str) -> list[float]:
        return [result[phase]["rss"] / MIB for result in results]

    def growth(phase: str, since: str, key: str) -> list[float]:
        return [(result[phase][key] - result[since][key]) / count for result in results]

    def rss_figure(key: str, label: str, phase: str, held: int) -> Figure:
        # per_repeat_n: the runs the worker holds (or has held) at this point.
        figure = value_figure(
            NAME, key, label, rss(phase), unit="MiB", better="lower", per_repeat_n=held, sync_interval=sync
        )
        figure.extra = {
            "rss_bytes": [result[phase]["rss"] for result in results],
            "allocated_blocks": [result[phase]["blocks"] for result in results],
            "asyncio_tasks": [result[phase]["tasks"] for result in results],
            "gc_objects": [result[phase]["gc_objects"] for result in results],
        }
        return figure

    def growth_figure(key: str, label: str, phase: str, since: str) -> Figure:
        blocks = growth(phase, since, "blocks")
        return value_figure(
            NAME,
            key,
            label,
            growth(phase, since, "rss"),
            unit="B",
            better="lower",
            per_repeat_n=count,
            sync_interval=sync,
            note="Python allocated blocks per run: " + ", ".join(f"{value:.2f}" for value in blocks),
            extra={"allocated_blocks_per_run": blocks},
        )

    sync = DEFAULT_SYNC
    figures = [
        rss_figure("rss_idle", "worker RSS, 0 runs suspended (after warm-up)", "idle", 0),
        rss_figure("rss_suspended", f"worker RSS, {count:,} runs started here and suspended", "suspended", count),
        growth_figure("per_run", f"RSS growth per suspended run (0 -> {count:,})", "suspended", "idle"),
        rss_figure("rss_resumed", f"worker RSS after resuming those {count:,} to their second wait", "resumed", count),
        rss_figure(
            "rss_doubled",
            f"worker RSS, {count:,} more started and suspended ({2 * count:,} held)",
            "doubled",
            2 * count,
        ),
        growth_figure(
            "per_run_second", f"RSS growth per suspended run ({count:,} -> {2 * count:,})", "doubled", "resumed"
        ),
        value_figure(
            NAME,
            "start_rate",
            "runs started and suspended by the worker (batches of 250)",
            [count / result["suspended"]["seconds"] for result in results],
            unit="runs/s",
            better="higher",
            per_repeat_n=count,
            sync_interval=sync,
        ),
    ]
    notes = [
        "Each repeat is a fresh worker process (`benchmarks/hold_worker.py`: `aethergraph.host.worker.Worker`, "
        "as `serve_worker` runs it) on the benchmark's nats-server. After a warm-up (20 runs taken through their "
        "whole life in it) it starts the runs itself with its own `RunDriver`: each run commits `run.started` and "
        "`wait.requested`, suspends (`run.waiting`) and releases its ownership record. The run ids go to a file, "
        "not to the worker's memory.",
        "RSS is `VmRSS` from /proc/<pid>/status after 1 s idle and two `gc.collect()`s; 'allocated blocks' is "
        "`sys.getallocatedblocks()` at the same moment (live Python objects and buffers).",
        "Then the benchmark process publishes one resume command per run, at most "
        f"{RESUME_WAVE} per {RESUME_WAVE_S:g} s; the worker commits each answer and continues the run by replay to "
        "its second wait, where it suspends again. Commands the worker failed to handle (and retried): "
        + ", ".join(str(result["failed_handlings"]) for result in results)
        + f". Finally it starts {count:,} more runs, so it holds {2 * count:,}.",
    ]
    return figures, notes
