"""4. Replay speed: reading a long run's events back, and continuing a run by replaying its journal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nats.js.api import DeliverPolicy

from aethergraph import Settings
from aethergraph.bus.topology import run_events_filter
from aethergraph.core.errors import RunSuspended
from aethergraph.core.ids import new_run_id
from aethergraph.core.journal.run_journal import load_journal
from aethergraph.core.run.executor import claim_run, drive_run
from aethergraph.core.wire.events import RunStarted, ToolCalled
from aethergraph.host.runs import Suspended
from aethergraph.runtime import ProcessHost, load_target

from . import graphs_durable
from .harness import DEFAULT_SYNC, BenchContext, CpuMeter, Figure, isolated_server, median, rotate, value_figure
from .workload import chunks, step_events

NAME = "replay"
TITLE = "4. Replay speed"
EVENTS = 20_000
STEPS = 5_000
TARGET_ENTRIES_PER_S = 50_000
SHORT_RUNS = 2_000  # 4-event journals, read as a worker reads one on each resume
SHORT_EVENTS = 4
SHORT_READS = 1_000


async def _raw_read(runtime: ProcessHost, run_id: str, expected: int) -> float:
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


async def _read_run(runtime: ProcessHost, run_id: str, expected: int) -> float:
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


async def _replay_once(runtime: ProcessHost, run_id: str) -> tuple[int, float, float, float]:
    """Continue the run by replay up to its open wait: (journal entries, read s, claim s, body s).

    What a worker does to continue a run (``resume_run``), in timed pieces:
    read the journal from the stream, commit a fenced ``run.claimed``, then
    re-run the graph body, which takes every recorded step's outcome from the
    journal and suspends again at the unanswered wait (committing
    ``run.waiting``).
    """
    spec = load_target(graphs_durable.bench_replay_chain)
    started = time.perf_counter()
    chain, last_stream_seq = await load_journal(runtime, run_id)
    read = time.perf_counter()
    first = chain[0]
    assert isinstance(first, RunStarted)
    scope = await claim_run(spec, first, chain, last_stream_seq, runtime.env, reason="replay")
    claimed = time.perf_counter()
    try:
        await drive_run(spec, first.inputs, scope, first.seq)
    except RunSuspended:
        pass
    else:
        raise RuntimeError(f"run {run_id} finished instead of suspending at its wait")
    done = time.perf_counter()
    return len(chain), read - started, claimed - read, done - claimed


async def _measure_resume(ctx: BenchContext, runtime: ProcessHost, repeats: int) -> list[Figure]:
    sync = DEFAULT_SYNC
    run_id = new_run_id()
    ctx.say(f"journaling a run of {STEPS:,} tool steps that then waits (executed live, {STEPS:,} durable steps)")
    runtime.driver.on_suspend = None
    spec = load_target(graphs_durable.bench_replay_chain)
    end = await runtime.driver.start(spec, spec.bind((), {"steps": STEPS}), run_id)
    if not isinstance(end, Suspended):
        raise RuntimeError(f"the {STEPS:,}-step run did not suspend at its wait: {end!r}")
    ctx.say("warm-up replay")
    await _replay_once(runtime, run_id)
    entries: list[int] = []
    reads: list[float] = []
    claims: list[float] = []
    bodies: list[float] = []
    for index in range(repeats):
        ctx.say(f"repeat {index + 1}/{repeats}: continue the {STEPS:,}-step run by replay")
        count, read, claim, body = await _replay_once(runtime, run_id)
        entries.append(count)
        reads.append(read)
        claims.append(claim)
        bodies.append(body)
    chain, _ = await load_journal(runtime, run_id)
    live_steps = sum(1 for event in chain if isinstance(event, ToolCalled))
    if live_steps != STEPS:
        raise RuntimeError(f"replay executed steps live: the journal holds {live_steps} tool calls, not {STEPS}")
    totals = [entries[i] / (reads[i] + claims[i] + bodies[i]) for i in range(repeats)]
    verdict = "met" if median(totals) >= TARGET_ENTRIES_PER_S else "missed"
    return [
        value_figure(
            NAME,
            "resume_total",
            f"continue a {STEPS:,}-step run by replay: read + claim + re-run the body (journal entries)",
            totals,
            unit="events/s",
            per_repeat_n=entries[0],
            better="higher",
            sync_interval=sync,
            note=f"target ≥{TARGET_ENTRIES_PER_S:,} entries/s: {verdict}",
            extra={"entries": entries, "read_s": reads, "claim_s": claims, "body_s": bodies},
        ),
        value_figure(
            NAME,
            "resume_read",
            "part: `load_journal` (`read_run` + journal chain) of that run",
            [entries[i] / reads[i] for i in range(repeats)],
            unit="events/s",
            per_repeat_n=entries[0],
            better="higher",
            sync_interval=sync,
        ),
        value_figure(
            NAME,
            "resume_claim",
            "part: `claim_run`: commit the fenced `run.claimed`, build the replay cursor",
            [claim * 1e3 for claim in claims],
            unit="ms",
            per_repeat_n=1,
            better="lower",
            sync_interval=sync,
        ),
        value_figure(
            NAME,
            "resume_body",
            f"part: re-run the graph body over the {STEPS:,} recorded steps (to the open wait)",
            [STEPS / body for body in bodies],
            unit="steps/s",
            per_repeat_n=STEPS,
            better="higher",
            sync_interval=sync,
            note="incl. committing `run.waiting` at the wait",
        ),
    ]


async def _short_reads(ctx: BenchContext, runtime: ProcessHost, server_pid: int, repeats: int) -> list[Figure]:
    """Reads of 4-event journals in a stream of about 50,000 events, 32 at a time: wall and nats-server CPU.

    Beside ``read_run`` (exactly sized direct gets), one direct get asking for
    up to 64 events, as reads were made before: nats-server then searches the
    rest of the stream for the events that are not there.
    """
    ctx.say(f"writing {SHORT_RUNS:,} runs of {SHORT_EVENTS} events")
    short_ids = [new_run_id() for _ in range(SHORT_RUNS)]
    for batch in chunks(short_ids, 250):
        writers = [runtime.event_log.writer(rid) for rid in batch]
        for writer, rid in zip(writers, batch, strict=True):
            for event in step_events(rid, SHORT_EVENTS):
                writer.append(event)
        for writer in writers:
            await writer.flush()
    direct = runtime.event_log._direct

    async def read_run(rid: str) -> None:
        count = sum([1 async for _ in runtime.event_log.read_run(rid)])
        if count != SHORT_EVENTS:
            raise RuntimeError(f"read_run returned {count} events of run {rid}; expected {SHORT_EVENTS}")

    async def one_get_of_64(rid: str) -> None:
        replies = await direct.get({"seq": 1, "next_by_subj": run_events_filter(rid), "batch": 64}, rid)
        if len(replies) != SHORT_EVENTS:
            raise RuntimeError(f"the direct get returned {len(replies)} events of run {rid}")

    readers = {"read_run": read_run, "one_get_of_64": one_get_of_64}
    walls: dict[str, list[float]] = {name: [] for name in readers}
    server_us: dict[str, list[float]] = {name: [] for name in readers}
    gate = asyncio.Semaphore(32)

    async def gated(reader: Callable[[str], Awaitable[None]], rid: str) -> None:
        async with gate:
            await reader(rid)

    for index in range(repeats):
        ctx.say(f"repeat {index + 1}/{repeats}: {SHORT_READS:,} reads of a {SHORT_EVENTS}-event journal, two ways")
        for name in rotate(list(readers), index):
            picks = [short_ids[(index * 7919 + k * 104_729) % SHORT_RUNS] for k in range(SHORT_READS)]
            meter = CpuMeter(server_pid)
            started = time.perf_counter()
            with meter.measure(SHORT_READS):
                await asyncio.gather(*(gated(readers[name], rid) for rid in picks))
            walls[name].append((time.perf_counter() - started) / SHORT_READS * 1e6)
            server_us[name].append(meter.per_op_us()[1])
    stream_events = (await runtime.bus.js.stream_info("AG_EVENTS")).state.messages
    where = f"a stream of {stream_events:,} events"
    labels = {
        "read_run": f"`read_run` of a {SHORT_EVENTS}-event journal in {where}, 32 at a time",
        "one_get_of_64": "one direct get asking for up to 64 events (the former read), same journals",
    }
    figures: list[Figure] = []
    for name in readers:
        for what, values, unit in (("wall", walls[name], "µs/read"), ("server_cpu", server_us[name], "µs/read")):
            figures.append(
                value_figure(
                    NAME,
                    f"short_{name}_{what}",
                    f"{labels[name]}: {'wall time' if what == 'wall' else 'nats-server CPU'} per read",
                    values,
                    unit=unit,
                    per_repeat_n=SHORT_READS,
                    better="lower",
                    sync_interval=DEFAULT_SYNC,
                )
            )
    return figures


async def _measure(ctx: BenchContext) -> list[Figure]:
    repeats = ctx.pick(7, 3)
    sync = DEFAULT_SYNC
    with isolated_server(sync) as (server, workspace):
        runtime = await ProcessHost.open(Settings(nats_url=server.url, workspace=workspace, sync_interval=sync))
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
            resume_figures = await _measure_resume(ctx, runtime, repeats)
            short_figures = await _short_reads(ctx, runtime, server.pid, repeats)
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
        *resume_figures,
        *short_figures,
    ]


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    figures = asyncio.run(_measure(ctx))
    notes = [
        f"The stream holds the {EVENTS:,}-event run and another run of the same size written interleaved in "
        "1,000-event chunks, so the read is subject-filtered as in a shared stream.",
        "Timed from the call to the last event: every request (read_run's direct gets; the raw row's "
        "consumer creation and teardown).",
        f"The replay rows continue a run of `bench_replay_chain` ({STEPS:,} steps of a tool returning a small int, "
        "then an unanswered `context.wait`) the way a worker does (`resume_run`): `load_journal`, `claim_run`, "
        "`drive_run`; the body takes every step's outcome from the journal and suspends again at the wait, so "
        "nothing runs live. Journal entries are the events of the run's journal (two per step).",
        f"The short-read rows read {SHORT_READS:,} journals of {SHORT_EVENTS} events (of {SHORT_RUNS:,} such runs, "
        "written after the long ones), 32 reads in flight, as a worker reads a waiting run's journal on each resume. "
        "nats-server CPU is read from /proc for the whole server over the reads, so it includes everything the "
        "server did meanwhile (nothing else ran).",
    ]
    return figures, notes
