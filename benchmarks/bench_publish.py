"""1. Event log publish: awaited appends, pipelined appends, and the raw JetStream ack floor."""

from __future__ import annotations

import asyncio
import time

from aethergraph import Settings
from aethergraph.bus.event_log import JetStreamEventLog
from aethergraph.core.ids import new_run_id
from aethergraph.host.process import ProcessHost

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
    RAW_HEADER_MODES,
    has_transport_path,
    raw_requests,
    sample_payload,
    step_events,
    transport_requests,
)

NAME = "publish"
TITLE = "1. Event log publish"

_TRANSPORT_LABELS = {
    "none": "transport: event-log publish path, no headers",
    "msgid": "transport: event-log publish path + `Nats-Msg-Id`",
    "fenced": "transport: event-log publish path + `Nats-Msg-Id` + fencing pair",
}
_RAW_LABELS = {
    "none": "raw floor: awaited `nc.request`, no headers",
    "msgid": "raw: awaited `nc.request` + `Nats-Msg-Id`",
    "fenced": "raw: awaited `nc.request` + `Nats-Msg-Id` + expected-last-subject-seq pair",
}


async def awaited_appends(log: JetStreamEventLog, count: int) -> list[int]:
    """``count`` appends to one new run, each awaited before the next; nanoseconds each."""
    run_id = new_run_id()
    writer = log.writer(run_id)
    events = step_events(run_id, count)
    clock = time.perf_counter_ns
    samples: list[int] = []
    for event in events:
        started = clock()
        await writer.append(event)
        samples.append(clock() - started)
    return samples


async def pipelined_appends(log: JetStreamEventLog, count: int) -> float:
    """Append ``count`` events to one new run without waiting, then await them all; seconds."""
    run_id = new_run_id()
    writer = log.writer(run_id)
    events = step_events(run_id, count)
    started = time.perf_counter()
    futures = [writer.append(event) for event in events]
    await writer.flush()
    rest = [future for future in futures if not future.done()]
    if rest:
        await asyncio.gather(*rest)
    elapsed = time.perf_counter() - started
    for future in futures:
        future.result()  # raises if the bus refused any event
    return elapsed


def _label(variant: str) -> str:
    kind, _, mode = variant.partition(":")
    if kind == "request":
        return _RAW_LABELS[mode]
    return _TRANSPORT_LABELS[mode]


async def _measure(ctx: BenchContext, sync: str) -> tuple[list[Figure], list[str]]:
    repeats = ctx.pick(9, 3)
    awaited_n = ctx.pick(1000, 200)
    pipelined_n = ctx.pick(20_000, 5_000) if sync != "always" else ctx.pick(5_000, 1_000)
    payload = sample_payload()
    notes: list[str] = []
    with isolated_server(sync) as (server, workspace):
        runtime = await ProcessHost.open(Settings(nats_url=server.url, workspace=workspace, sync_interval=sync))
        try:
            log, nc = runtime.event_log, runtime.bus.nc
            transport = has_transport_path(log)
            if not transport:
                notes.append("The event log has no ack router to drive directly; transport variants skipped.")
            variants = ["append", *(f"request:{mode}" for mode in RAW_HEADER_MODES)]
            if transport:
                variants += [f"transport:{mode}" for mode in RAW_HEADER_MODES]

            async def block(variant: str, count: int) -> list[int]:
                kind, _, mode = variant.partition(":")
                if kind == "append":
                    return await awaited_appends(log, count)
                if kind == "request":
                    return await raw_requests(nc, count, payload, mode)
                return await transport_requests(log, count, payload, mode)

            ctx.say(f"warm-up (sync_interval={sync})")
            for variant in variants:
                await block(variant, 200)
            await pipelined_appends(log, 2_000)

            samples: dict[str, list[list[int]]] = {variant: [] for variant in variants}
            meters = {variant: CpuMeter(server.pid) for variant in [*variants, "pipelined"]}
            pipelined_s: list[float] = []
            for index in range(repeats):
                ctx.say(
                    f"repeat {index + 1}/{repeats}: {len(variants)} x {awaited_n} awaited publishes, "
                    f"{pipelined_n:,} pipelined (sync_interval={sync})"
                )
                for variant in rotate(variants, index):
                    with meters[variant].measure(awaited_n):
                        samples[variant].append(await block(variant, awaited_n))
                with meters["pipelined"].measure(pipelined_n):
                    pipelined_s.append(await pipelined_appends(log, pipelined_n))
        finally:
            await runtime.close()

    figures = [
        latency_figure(
            NAME,
            "append_awaited",
            "awaited append (one at a time, `writer.append` -> ack)",
            samples["append"],
            sync_interval=sync,
            note=meters["append"].describe(),
        ),
        value_figure(
            NAME,
            "append_pipelined",
            "pipelined append of N events, then await all",
            [pipelined_n / elapsed for elapsed in pipelined_s],
            unit="events/s",
            per_repeat_n=pipelined_n,
            better="higher",
            sync_interval=sync,
            note=meters["pipelined"].describe(),
        ),
    ]
    for variant in variants[1:]:
        kind, _, mode = variant.partition(":")
        figures.append(
            latency_figure(
                NAME,
                f"raw_{mode}" if kind == "request" else f"transport_{mode}",
                _label(variant),
                samples[variant],
                sync_interval=sync,
                note=meters[variant].describe(),
            )
        )
    p50 = {variant: [median(block) / 1e3 for block in blocks] for variant, blocks in samples.items()}

    def paired(key: str, label: str, a: str, b: str, *, ratio: bool = False, note: str = "") -> Figure:
        values = [x / y if ratio else x - y for x, y in zip(p50[a], p50[b], strict=True)]
        return value_figure(
            NAME,
            key,
            label,
            values,
            unit="x" if ratio else "µs",
            per_repeat_n=awaited_n,
            better="lower",
            sync_interval=sync,
            note=note,
        )

    figures.append(
        paired(
            "append_vs_floor",
            "awaited append / raw floor (p50s, paired per repeat)",
            "append",
            "request:none",
            ratio=True,
        )
    )
    base = "transport" if "transport:none" in p50 else "request"
    figures.append(
        paired(
            "msgid_cost", f"cost of `Nats-Msg-Id` ({base} msgid - {base} none, p50s)", f"{base}:msgid", f"{base}:none"
        )
    )
    figures.append(
        paired(
            "fence_cost",
            f"cost of the fencing pair ({base} fenced - {base} msgid, p50s)",
            f"{base}:fenced",
            f"{base}:msgid",
            note="`Nats-Expected-Last-Subject-Sequence` + `-Subject: ag.evt.<run>.>`",
        )
    )
    return figures, notes


async def _measure_depth(ctx: BenchContext) -> list[Figure]:
    """Does the subject-filtered fencing lookup slow down when a run's last event is deep in the stream?"""
    sync = DEFAULT_SYNC
    runs = ctx.pick(300, 100)
    fill = ctx.pick(400_000, 50_000)
    per_run = 20
    with isolated_server(sync) as (server, workspace):
        runtime = await ProcessHost.open(Settings(nats_url=server.url, workspace=workspace, sync_interval=sync))
        try:
            log = runtime.event_log
            old = {}
            for _ in range(runs):
                run_id = new_run_id()
                old[run_id] = log.writer(run_id)
                await old[run_id].append(step_events(run_id, 1)[0])
            ctx.say(f"filling the stream with {fill:,} events of {fill // per_run:,} other runs")
            for _ in range(fill // 2_000):
                writers = []
                for _ in range(2_000 // per_run):
                    run_id = new_run_id()
                    writer = log.writer(run_id)
                    for event in step_events(run_id, per_run):
                        writer.append(event)
                    writers.append(writer)
                for writer in writers:
                    await writer.flush()
            ctx.say(f"{runs} fenced appends to runs behind {fill:,} events, {runs} to fresh runs (interleaved)")
            deep: list[int] = []
            fresh: list[int] = []
            clock = time.perf_counter_ns
            for index, (run_id, writer) in enumerate(old.items()):
                for variant in rotate(["deep", "fresh"], index):
                    if variant == "deep":
                        event = step_events(run_id, 2)[1]
                        started = clock()
                        await writer.append(event)
                        deep.append(clock() - started)
                    else:
                        fresh_id = new_run_id()
                        event = step_events(fresh_id, 1)[0]
                        fresh_writer = log.writer(fresh_id)
                        started = clock()
                        await fresh_writer.append(event)
                        fresh.append(clock() - started)
        finally:
            await runtime.close()
    # One sample per run: split into five groups so the table can show a spread.
    groups = 5
    return [
        latency_figure(
            NAME,
            "fenced_deep",
            f"awaited append to a run whose last event is behind {fill:,} events of other runs",
            [deep[index::groups] for index in range(groups)],
            sync_interval=sync,
            note="the fencing lookup must find the run's last event deep in the stream",
        ),
        latency_figure(
            NAME,
            "fenced_fresh",
            "awaited first append to a fresh run, same stream, interleaved",
            [fresh[index::groups] for index in range(groups)],
            sync_interval=sync,
        ),
    ]


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    extra_notes: list[str] = []
    for sync in SYNC_INTERVALS:
        sync_figures, sync_notes = asyncio.run(_measure(ctx, sync))
        figures.extend(sync_figures)
        extra_notes.extend(note for note in sync_notes if note not in extra_notes)
    figures.extend(asyncio.run(_measure_depth(ctx)))
    notes = [
        "Events are ~200-byte `tool.called`/`tool.returned` pairs; raw requests carry a payload of the same size.",
        "Every append carries one fencing pair: against the whole run when the writer has nothing in flight "
        "(every awaited append), against the run's claim subject when it is pipelined behind others.",
        "'raw' rows use nats-py's `nc.request` (headers given as a dict, encoded by nats-py); 'transport' rows "
        "publish pre-encoded headers through the event log's own outbound path and ack inbox, so their "
        "differences isolate what each header costs on the wire and in nats-server.",
        "Variants are interleaved and take turns going first in each repeat, so drift hits them alike.",
        "The deep/fresh pair checks that fencing does not slow down as the stream grows: each sample is one "
        "run's append (its last event written before the fill, or no event at all); the five 'repeats' are "
        "interleaved fifths of the samples.",
        *extra_notes,
    ]
    return figures, notes
