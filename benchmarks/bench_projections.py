"""9. Projections: folding the journal into DuckDB, rebuilding, lineage queries, queries under ingest."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import inspect
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from aethergraph import Settings
from aethergraph.bus.connection import BusConnection
from aethergraph.bus.dispatch import ack_position, dispatch_raw, release_raw
from aethergraph.bus.event_log import JetStreamEventLog, JetStreamRunWriter
from aethergraph.bus.topology import ALL_EVENTS, EVENTS_STREAM, event_subject
from aethergraph.core.ids import ROOT_NODE, child_run_id, new_run_id
from aethergraph.core.wire.codec import digest, encode_event
from aethergraph.core.wire.events import (
    ArtifactSaved,
    Event,
    RunClaimed,
    RunCompleted,
    RunStarted,
    RunWaiting,
    ToolCalled,
    ToolReturned,
    WaitRequested,
    WaitResumed,
)
from aethergraph.host.process import ProcessHost
from aethergraph.projections.client import serve_projections, store_path
from aethergraph.projections.projector import Projector, decode_batch
from aethergraph.projections.service import QueryRequest, remote_request, store_id_for
from aethergraph.projections.store import ProjectionStore

from .harness import (
    DEFAULT_SYNC,
    BenchContext,
    CpuMeter,
    Figure,
    isolated_server,
    latency_figure,
    median,
    percentile,
    temp_workspace,
    value_figure,
)
from .workload import WORKER

NAME = "projections"
TITLE = "9. Projections"
TARGET_INGEST_PER_S = 50_000
TARGET_LINEAGE_MS = 100.0
_PROJECTOR = inspect.signature(Projector).parameters
BATCH: int = _PROJECTOR["batch_max"].default  # store-only batches are the projector's own size
WINDOW: int = _PROJECTOR["window"].default  # max_ack_pending of the projector's consumer
FILL_AWAIT_EVERY = 16_384  # appends in flight before the filler awaits their acknowledgements
OFFERED_RATE = 5_000  # events/s published while queries run
TOOLS = ("load", "clean", "embed", "score", "rank", "summarize")
SYNC = DEFAULT_SYNC


# --- the workload: trees of runs as graph_fns journal them ---------------------------


@dataclass(kw_only=True)
class Tree:
    """One top-level run and its nested runs, in the order their events are journaled."""

    root: str
    depth: int
    events: list[Event]
    # In the deepest nested run (depth > 0): the saved artifact and the node that saved it.
    deep_artifact: str = ""
    deep_node: str = ""


class _RunJournal:
    """The events of one run with their ``seq``, ``parent`` and ``epoch`` bookkeeping."""

    def __init__(self, run_id: str, clock: Iterator[int], out: list[Event]) -> None:
        self.run_id = run_id
        self.seq = 0
        self.epoch = 1
        self.last = 0
        self._clock = clock
        self._out = out

    def add(self, cls: type[Event], *, parent: int | bool | None = True, **fields: Any) -> int:
        self.seq += 1
        cause = (self.last or None) if parent is True else parent
        self._out.append(
            cls(
                run_id=self.run_id,
                seq=self.seq,
                ts=next(self._clock),
                worker=WORKER,
                parent=cause,
                epoch=self.epoch,
                **fields,
            )
        )
        self.last = self.seq
        return self.seq


def build_tree(index: int, clock: Iterator[int]) -> Tree:
    """A top-level run whose tool steps form a chain: each step's output is the next step's argument.

    ``index`` varies the shape: 3-6 tool steps in the top-level run; a third of
    the trees are flat, a third call one nested graph_fn, a third nest two deep
    (the child calls a grandchild), each nested run with one step fewer than its
    parent (at least two). A nested graph_fn is a step of its parent
    (``tool.called`` ... ``tool.returned`` around the child's
    ``run.started`` (parent run, parent node, root run) ... ``run.completed``),
    the child's input being the parent's current value, so data-flow edges
    cross runs. Every nested run saves an artifact from its last step. Every
    fourth tree waits for an answer after its first step (``wait.requested``,
    ``run.waiting``, then ``run.claimed`` and ``wait.resumed`` when answered).
    """
    root = new_run_id()
    events: list[Event] = []
    depth = index % 3
    tree = Tree(root=root, depth=depth, events=events)
    tools = 3 + index % 4
    with_wait = index % 4 == 0

    def run(run_id: str, level: int, value: str, parent: tuple[str, str] | None) -> str:
        journal = _RunJournal(run_id, clock, events)
        journal.add(
            RunStarted,
            parent=None,
            graph_id=f"pipeline_l{level}",
            inputs={"data": value, "limit": 10},
            parent_run_id=parent[0] if parent else None,
            parent_node_id=parent[1] if parent else None,
            root_run_id=root if parent else None,
        )
        steps = tools if level == 0 else max(2, tools - level)
        last_node = last_tool = ""
        for step in range(steps):
            tool = TOOLS[step % len(TOOLS)]
            node_id = f"{tool}_{step // len(TOOLS) + 1}"
            args = {"data": value, "n": step}
            called = journal.add(
                ToolCalled, node_id=node_id, tool=tool, args=args, args_digest=digest(msgspec.json.encode(args))
            )
            value = f"{run_id}/{node_id}:out"
            journal.add(
                ToolReturned,
                parent=called,
                node_id=node_id,
                tool=tool,
                outputs={"data": value, "rows": 128 + step},
                duration_us=250 + step,
            )
            last_node, last_tool = node_id, tool
            if level == 0 and step == 0 and with_wait:
                wait_id = f"w{journal.seq + 1}"
                requested = journal.add(
                    WaitRequested, node_id=ROOT_NODE, wait_id=wait_id, kind="approval", prompt="ok?"
                )
                journal.add(RunWaiting, wait_id=wait_id, wait_run_id=run_id, kind="approval", prompt="ok?")
                journal.epoch = journal.seq + 1  # a claim opens its own epoch (the journal rule)
                journal.add(RunClaimed, reason="resume", previous_worker=WORKER)
                journal.add(
                    WaitResumed,
                    parent=requested,
                    node_id=ROOT_NODE,
                    wait_id=wait_id,
                    payload={"approved": True, "comment": f"approved {run_id}"},
                    command_seq=index + 1,
                )
        if level < depth:
            node_id = "subflow_1"
            args = {"data": value}
            called = journal.add(
                ToolCalled, node_id=node_id, tool="subflow", args=args, args_digest=digest(msgspec.json.encode(args))
            )
            value = run(child_run_id(run_id, node_id), level + 1, value, (run_id, node_id))
            journal.add(
                ToolReturned, parent=called, node_id=node_id, tool="subflow", outputs={"data": value}, duration_us=900
            )
        if level > 0:
            artifact_id = hashlib.sha256(value.encode()).hexdigest()
            journal.add(
                ArtifactSaved,
                node_id=last_node,
                tool=last_tool,
                artifact_id=artifact_id,
                uri=f"file:///artifacts/{artifact_id[:2]}/{artifact_id}",
                kind="table",
                name="report.parquet",
                mime="application/vnd.apache.parquet",
                size=4096 + level,
            )
            if level == depth:
                tree.deep_artifact = f"artifact:{artifact_id}"
                tree.deep_node = f"node:{run_id}/{last_node}"
        journal.add(RunCompleted, outputs={"data": value})
        return value

    run(root, 0, f"s3://datasets/{root}/input.parquet", None)
    return tree


def _microsecond_clock() -> Iterator[int]:
    now = time.time_ns() // 1000
    while True:
        now += 1
        yield now


def interleaved(trees: list[Tree]) -> list[Event]:
    """The trees' events round-robin, as concurrent top-level runs reach the stream."""
    out: list[Event] = []
    pending = [iter(tree.events) for tree in trees]
    while pending:
        alive = []
        for events in pending:
            event = next(events, None)
            if event is not None:
                out.append(event)
                alive.append(events)
        pending = alive
    return out


def tree_groups(total: int | None, *, concurrent: int = 64) -> Iterator[tuple[list[Tree], list[Event]]]:
    """Groups of ``concurrent`` trees, their events interleaved, until at least ``total`` events (None: endless)."""
    clock = _microsecond_clock()
    made = index = 0
    while total is None or made < total:
        trees = [build_tree(index + offset, clock) for offset in range(concurrent)]
        index += concurrent
        events = interleaved(trees)
        made += len(events)
        yield trees, events


def stored_messages(total: int) -> list[tuple[int, str, bytes]]:
    """``(stream sequence, subject, data)`` of a stream that held only these events."""
    out: list[tuple[int, str, bytes]] = []
    for _, events in tree_groups(total):
        for event in events:
            subject = event_subject(event.run_id, event.__struct_config__.tag)  # type: ignore[arg-type]
            out.append((len(out) + 1, subject, encode_event(event)))
    return out


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


# --- 1. store only: decode, apply ----------------------------------------------


def _measure_store_only(ctx: BenchContext, scratch: Path) -> tuple[list[Figure], int, str]:
    repeats = ctx.pick(3, 2)
    total = ctx.pick(200_000, 30_000)
    ctx.say(f"encoding {total:,} events of realistic runs (store-only input)")
    messages = stored_messages(total)
    total = len(messages)
    tags = collections.Counter(subject.split(".", 3)[3] for _, subject, _ in messages)
    mix = ", ".join(f"{tag} {count / total:.0%}" for tag, count in tags.most_common())
    batches = chunked(messages, BATCH)
    decode_s: list[float] = []
    apply_s: list[float] = []
    rows: list[int] = []
    for index in range(repeats):
        ctx.say(f"repeat {index + 1}/{repeats}: decode {total:,} events, apply them in {BATCH:,}-event batches")
        started = time.perf_counter()
        decoded = [decode_batch(batch) for batch in batches]
        decode_s.append(time.perf_counter() - started)
        if sum(len(seqs) for seqs, _, _, _ in decoded) != total:
            raise RuntimeError("some generated events did not decode")
        path = scratch / f"store-only-{index}.duckdb"
        store = ProjectionStore.open(path)
        try:
            started = time.perf_counter()
            for seqs, raws, keys, _ in decoded:
                store.apply_encoded(seqs, raws, keys)
            apply_s.append(time.perf_counter() - started)
            if store.last_seq != total:
                raise RuntimeError(f"store-only apply stopped at {store.last_seq}, not {total}")
            if (folded := store.query("SELECT count(*) FROM events").rows[0][0]) != total:
                raise RuntimeError(f"{total - folded:,} generated events are not in their journals")
            rows.append(_stored_rows(store))
        finally:
            store.close()
            for leftover in scratch.glob(f"{path.name}*"):
                leftover.unlink()
    apply_rates = [total / elapsed for elapsed in apply_s]
    figures = [
        value_figure(
            NAME,
            "store_apply",
            f"store only: `ProjectionStore.apply_encoded` of pre-decoded {BATCH:,}-event batches, fresh on-disk store",
            apply_rates,
            unit="events/s",
            per_repeat_n=total,
            better="higher",
            sync_interval=None,
            note=f"target ≥{TARGET_INGEST_PER_S:,}/s: {_met(median(apply_rates), TARGET_INGEST_PER_S)}; "
            f"{rows[0] / total:.1f} table rows per event",
            extra={"apply_s": apply_s, "rows": rows},
        ),
        value_figure(
            NAME,
            "decode",
            "`decode_batch` (strict decode + subject check), the projector's step before `apply_encoded`",
            [total / elapsed for elapsed in decode_s],
            unit="events/s",
            per_repeat_n=total,
            better="higher",
            sync_interval=None,
        ),
        value_figure(
            NAME,
            "decode_apply",
            "decode + apply: the projector's worker-thread work per batch, without the bus",
            [total / (d + a) for d, a in zip(decode_s, apply_s, strict=True)],
            unit="events/s",
            per_repeat_n=total,
            better="higher",
            sync_interval=None,
            note="the ceiling for ingest on one thread",
        ),
    ]
    return figures, total, mix


def _stored_rows(store: ProjectionStore) -> int:
    """Rows in every projection table (DuckDB's own count per table)."""
    result = store.query("SELECT coalesce(sum(estimated_size), 0) FROM duckdb_tables() WHERE NOT temporary")
    return int(result.rows[0][0])


def _met(value: float, target: float, *, higher: bool = True) -> str:
    ok = value >= target if higher else value <= target
    return "met" if ok else "missed"


# --- 2. the stream: fill, raw delivery, rebuild ---------------------------------------


@dataclass(kw_only=True)
class Filled:
    events: int
    seconds: float
    roots: list[str] = field(default_factory=list)
    # (root run, artifact entity, node entity) of trees nested two deep.
    deep: list[tuple[str, str, str]] = field(default_factory=list)


async def append_all(log: JetStreamEventLog, groups: Iterator[tuple[list[Tree], list[Event]]], filled: Filled) -> None:
    """Pipelined appends: every group's events without waiting, acknowledgements awaited in chunks."""
    futures: list[asyncio.Future[int]] = []
    for trees, events in groups:
        for tree in trees:
            filled.roots.append(tree.root)
            if tree.depth == 2:
                filled.deep.append((tree.root, tree.deep_artifact, tree.deep_node))
        writers: dict[str, JetStreamRunWriter] = {}
        for event in events:
            writer = writers.get(event.run_id)
            if writer is None:
                writer = writers[event.run_id] = log.writer(event.run_id)
            futures.append(writer.append(event))
        filled.events += len(events)
        if len(futures) >= FILL_AWAIT_EVERY:
            await asyncio.gather(*futures)
            futures.clear()
        else:
            await asyncio.sleep(0)  # let the client flush while the next group is encoded
    await asyncio.gather(*futures)


async def _fill(ctx: BenchContext, runtime: ProcessHost, total: int) -> Filled:
    ctx.say(f"filling the stream with {total:,} events of realistic runs (pipelined appends)")
    filled = Filled(events=0, seconds=0.0)
    started = time.perf_counter()
    await append_all(runtime.event_log, tree_groups(total), filled)
    filled.seconds = time.perf_counter() - started
    info = await runtime.bus.js.stream_info(EVENTS_STREAM)
    if info.state.messages != filled.events:
        raise RuntimeError(f"the stream holds {info.state.messages:,} messages, not {filled.events:,}")
    return filled


async def raw_delivery(bus: BusConnection, target: int) -> float:
    """The projector's consumer (push, AckAll per batch, same window) drained with no decoding or store; seconds."""
    nc, js = bus.nc, bus.js
    buffer: collections.deque[bytes] = collections.deque()
    wake = asyncio.Event()

    def on_message(_subject: bytes, reply: bytes, _data: bytes, _headers: bytes | None) -> None:
        if reply:
            buffer.append(reply)
            wake.set()

    consumer = "bench-raw-delivery"
    started = time.perf_counter()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    dispatch_raw(nc, sub, on_message)
    await js.add_consumer(
        EVENTS_STREAM,
        ConsumerConfig(
            durable_name=consumer,
            deliver_subject=inbox,
            filter_subject=ALL_EVENTS,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.ALL,
            ack_wait=60.0,
            max_ack_pending=WINDOW,
            inactive_threshold=3600.0,
        ),
    )

    async def drain() -> None:
        last = 0
        while last < target:
            if not buffer:
                wake.clear()
                await wake.wait()
                continue
            batch = [buffer.popleft() for _ in range(min(len(buffer), BATCH))]
            last = ack_position(batch[-1])[0]
            await nc.publish(batch[-1].decode(), b"+ACK")

    try:
        await asyncio.wait_for(drain(), timeout=600)
    finally:
        release_raw(nc, sub)
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        with contextlib.suppress(NotFoundError, nats.errors.Error):
            await js.delete_consumer(EVENTS_STREAM, consumer)
    return time.perf_counter() - started


@dataclass(kw_only=True)
class Rebuild:
    seconds: float
    early_rate: float  # events/s from 10% to 30% of the stream (store small)
    late_rate: float  # events/s from 70% to the end (store large)
    batches: int


def _rate_between(progress: list[tuple[float, int]], low: float, high: float) -> float:
    """Events/s between the first batches ending at or past ``low`` and at or past ``high``."""
    start = next((point for point in progress if point[1] >= low), None)
    end = next((point for point in progress if point[1] >= high), None)
    if start is None or end is None or end[0] <= start[0]:
        return float("nan")
    return (end[1] - start[1]) / (end[0] - start[0])


async def rebuild(runtime: ProcessHost, path: Path, target: int, meter: CpuMeter) -> Rebuild:
    """``Projector.catch_up`` from an empty store at ``path`` to the end of the stream."""
    store = await asyncio.to_thread(ProjectionStore.open, path)
    try:
        projector = Projector(runtime.bus, store, store_id=f"bench{path.stem.replace('-', '')}")
        progress: list[tuple[float, int]] = []

        def on_progress(seq: int, _target: int) -> None:
            progress.append((time.perf_counter(), seq))

        with meter.measure(target):
            started = time.perf_counter()
            read = await projector.catch_up(on_progress=on_progress)
            elapsed = time.perf_counter() - started
        if read != target or store.last_seq != target or projector.stats.dead_letters:
            raise RuntimeError(
                f"catch-up read {read:,} of {target:,} events, reached {store.last_seq:,}, "
                f"{projector.stats.dead_letters} dead letters"
            )
        stored = store.query("SELECT count(*) FROM events").rows[0][0]
        if stored != target:
            raise RuntimeError(f"the events table holds {stored:,} rows, not {target:,}")
    finally:
        await asyncio.to_thread(store.close)
    return Rebuild(
        seconds=elapsed,
        early_rate=_rate_between(progress, target * 0.1, target * 0.3),
        late_rate=_rate_between(progress, target * 0.7, target),
        batches=projector.stats.batches,
    )


def _move_store(source: Path, target: Path) -> None:
    """Move a DuckDB file (and its WAL, if any) over ``target``."""
    for leftover in target.parent.glob(f"{target.name}*"):
        leftover.unlink()
    for produced in source.parent.glob(f"{source.name}*"):
        produced.rename(target.parent / produced.name.replace(source.name, target.name))


def _copy_store(source: Path, target: Path) -> None:
    for produced in source.parent.glob(f"{source.name}*"):
        shutil.copyfile(produced, target.parent / produced.name.replace(source.name, target.name))


async def _measure_stream(
    ctx: BenchContext, server_url: str, server_pid: int, workspace: Path, scratch: Path
) -> tuple[list[Figure], Filled, Path]:
    repeats = ctx.pick(2, 2)
    total = ctx.pick(1_000_000, 100_000)
    runtime = await ProcessHost.open(Settings(nats_url=server_url, workspace=workspace, sync_interval=SYNC))
    try:
        filled = await _fill(ctx, runtime, total)
        target = filled.events
        ctx.say(f"stream filled: {target:,} events at {target / filled.seconds:,.0f} events/s")
        raw_s: list[float] = []
        results: list[Rebuild] = []
        meter = CpuMeter(server_pid)
        kept = scratch / "rebuilt.duckdb"
        for index in range(repeats):
            ctx.say(f"repeat {index + 1}/{repeats}: raw delivery of {target:,} events")
            raw_s.append(await raw_delivery(runtime.bus, target))
            ctx.say(f"repeat {index + 1}/{repeats}: rebuild an empty store from {target:,} events (catch_up)")
            path = scratch / f"rebuild-{index}.duckdb"
            results.append(await rebuild(runtime, path, target, meter))
            ctx.say(f"  {results[-1].seconds:.1f} s, {target / results[-1].seconds:,.0f} events/s")
            _move_store(path, kept)
    finally:
        await runtime.close()
    client_us, server_us = meter.per_op_us()
    rates = [target / r.seconds for r in results]
    figures = [
        value_figure(
            NAME,
            "fill",
            "filling the stream: pipelined `writer.append` of the workload (one writer per run)",
            [target / filled.seconds],
            unit="events/s",
            per_repeat_n=target,
            better="higher",
            sync_interval=SYNC,
            note=f"{FILL_AWAIT_EVERY:,} appends in flight before awaiting",
        ),
        value_figure(
            NAME,
            "ingest",
            "ingest: `Projector.catch_up` into a fresh on-disk store (delivery + decode + fold + commit)",
            rates,
            unit="events/s",
            per_repeat_n=target,
            better="higher",
            sync_interval=SYNC,
            note=f"target ≥{TARGET_INGEST_PER_S:,}/s: {_met(median(rates), TARGET_INGEST_PER_S)}; "
            f"CPU/event: client {client_us:.0f} µs, nats-server {server_us:.0f} µs",
            extra={"batches": [r.batches for r in results]},
        ),
        value_figure(
            NAME,
            "ingest_early",
            "part: ingest rate from 10% to 30% of the stream (store small)",
            [r.early_rate for r in results],
            unit="events/s",
            per_repeat_n=target // 5,
            better="higher",
            sync_interval=SYNC,
        ),
        value_figure(
            NAME,
            "ingest_late",
            "part: ingest rate from 70% to 100% of the stream (store large)",
            [r.late_rate for r in results],
            unit="events/s",
            per_repeat_n=target * 3 // 10,
            better="higher",
            sync_interval=SYNC,
        ),
        value_figure(
            NAME,
            "raw_delivery",
            "transport share: the same push consumer drained with AckAll per batch, no decode, no store",
            [target / elapsed for elapsed in raw_s],
            unit="events/s",
            per_repeat_n=target,
            better="higher",
            sync_interval=SYNC,
        ),
        value_figure(
            NAME,
            "rebuild",
            f"rebuild: empty store to caught up on {target:,} events",
            [r.seconds for r in results],
            unit="s",
            per_repeat_n=target,
            better="lower",
            sync_interval=SYNC,
            note=f"{kept.stat().st_size / 2**20:,.0f} MiB DuckDB file",
        ),
    ]
    return figures, filled, kept


# --- 3. lineage queries on the rebuilt store -------------------------------------------


def _measure_lineage(ctx: BenchContext, path: Path, filled: Filled, events: int) -> list[Figure]:
    repeats = 2  # 100 samples per kind: enough for a p99
    per_repeat = 50
    rng = random.Random(9)
    ctx.say(f"lineage queries on the {events:,}-event store: {repeats} x {per_repeat} of each kind")
    store = ProjectionStore.open(path)
    kinds = ("ancestors_artifact", "ancestors_node", "descendants_root")
    samples: dict[str, list[list[int]]] = {kind: [] for kind in kinds}
    rows: dict[str, list[int]] = {kind: [] for kind in kinds}
    clock = time.perf_counter_ns
    try:
        for root, artifact, _node in rng.sample(filled.deep, 5):  # warm-up
            store.query("SELECT * FROM ancestors(?)", [artifact])
            store.query("SELECT * FROM descendants(?)", [f"run:{root}"])
        for _ in range(repeats):
            block: dict[str, list[int]] = {kind: [] for kind in kinds}
            for root, artifact, node in rng.sample(filled.deep, per_repeat):
                for kind in kinds:
                    if kind == "ancestors_artifact":
                        sql, param, expect = "SELECT * FROM ancestors(?)", artifact, f"run:{root}"
                    elif kind == "ancestors_node":
                        sql, param, expect = "SELECT * FROM ancestors(?)", node, f"run:{root}"
                    else:
                        sql, param, expect = "SELECT * FROM descendants(?)", f"run:{root}", artifact
                    started = clock()
                    result = store.query(sql, [param])
                    block[kind].append(clock() - started)
                    if expect not in {row[0] for row in result.rows}:
                        raise RuntimeError(f"{sql} with {param} misses {expect}: {result.rows}")
                    rows[kind].append(len(result.rows))
            for kind in kinds:
                samples[kind].append(block[kind])
        edges = store.query("SELECT count(*) FROM edges").rows[0][0]
    finally:
        store.close()
    labels = {
        "ancestors_artifact": "`ancestors('artifact:…')`: artifact saved two runs below the top-level run",
        "ancestors_node": "`ancestors('node:…')`: the node that saved it",
        "descendants_root": "`descendants('run:<top-level run>')` of the same trees",
    }
    return [
        latency_figure(
            NAME,
            f"lineage_{kind}",
            labels[kind],
            samples[kind],
            unit="ms",
            scale=1e-6,
            sync_interval=None,
            note=f"{median(rows[kind]):.0f} rows each; target ≤{TARGET_LINEAGE_MS:.0f} ms at p99: "
            + _met(
                percentile([v / 1e6 for block in samples[kind] for v in block], 0.99), TARGET_LINEAGE_MS, higher=False
            ),
            extra={"edges": edges},
        )
        for kind in kinds
    ]


# --- 4. queries through the projector while it ingests ----------------------------------


async def steady_writer(log: JetStreamEventLog, events: list[Event], rate: float) -> float:
    """Append ``events`` at ``rate`` per second (pipelined, paced every 5 ms); seconds taken."""
    writers: dict[str, JetStreamRunWriter] = {}
    futures: list[asyncio.Future[int]] = []
    sent = 0
    started = time.perf_counter()
    while sent < len(events):
        due = min(len(events), int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            event = events[sent]
            writer = writers.get(event.run_id)
            if writer is None:
                writer = writers[event.run_id] = log.writer(event.run_id)
            futures.append(writer.append(event))
            sent += 1
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    await asyncio.gather(*futures)
    return elapsed


async def _until(event: asyncio.Event, serving: asyncio.Future[Any], what: str, timeout_s: float = 120) -> None:
    """Wait for ``event``; raise if ``serving`` (the projector) ends first or ``timeout_s`` passes."""
    waiting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiting, serving}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if event.is_set():
        return
    if serving.done():
        serving.result()  # raises what stopped the projector
        raise RuntimeError(f"serve_projections returned while waiting for {what}")
    raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")


async def _caught_up(store: ProjectionStore, target: int, serving: asyncio.Future[Any], timeout_s: float = 120) -> None:
    """Poll (every 5 ms) until the store reaches ``target``; raise if the projector stops or time runs out.

    Polled because ``serve_projections`` reports progress only while catching up, not while following.
    """
    deadline = time.perf_counter() + timeout_s
    while True:
        if store.last_seq >= target:
            return
        if serving.done():
            serving.result()
            raise RuntimeError(f"serve_projections returned at {store.last_seq:,} before reaching {target:,}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the projector is at {store.last_seq:,} after {timeout_s:.0f} s, not at {target:,}")
        await asyncio.sleep(0.005)


async def _measure_live(
    ctx: BenchContext, server_url: str, workspace: Path, base_store: Path, filled: Filled
) -> tuple[list[Figure], list[str]]:
    repeats = ctx.pick(3, 2)
    idle_n = ctx.pick(150, 60)
    loaded_s = float(ctx.pick(20, 6))
    rng = random.Random(11)
    runtime = await ProcessHost.open(Settings(nats_url=server_url, workspace=workspace, sync_interval=SYNC))
    path = store_path(runtime.settings)
    _copy_store(base_store, path)
    stop = asyncio.Event()
    ready = asyncio.Event()
    projectors: list[Projector] = []

    def on_ready(projector: Projector) -> None:
        projectors.append(projector)
        ready.set()

    serving = asyncio.ensure_future(serve_projections(runtime.bus, runtime.settings, stop, on_ready=on_ready))
    kinds = ("count_by_status", "point_lookup")
    idle: dict[str, list[list[int]]] = {kind: [] for kind in kinds}
    loaded: dict[str, list[list[int]]] = {kind: [] for kind in kinds}
    achieved: list[float] = []
    offered: list[float] = []
    lag_events: list[int] = []
    drain_s: list[float] = []
    try:
        await _until(ready, serving, "the projector to catch up")
        store = projectors[0].store
        store_id = store_id_for(path)

        def request(kind: str) -> QueryRequest:
            if kind == "count_by_status":
                return QueryRequest(sql="SELECT status, count(*) FROM runs GROUP BY 1 ORDER BY 1")
            return QueryRequest(sql="SELECT * FROM runs WHERE run_id = ?", params=[rng.choice(filled.roots)])

        async def queries(count: int | None, until: asyncio.Future[Any] | None) -> dict[str, list[int]]:
            out: dict[str, list[int]] = {kind: [] for kind in kinds}
            index = 0
            while (count is None or index < count) and (until is None or not until.done()):
                kind = kinds[index % len(kinds)]
                req = request(kind)
                started = time.perf_counter_ns()
                result = await remote_request(runtime.bus, store_id, req, timeout_s=30)
                out[kind].append(time.perf_counter_ns() - started)
                if result is None or not result.rows:
                    raise RuntimeError(f"no answer or no rows for {req.sql} {req.params}")
                index += 1
                await asyncio.sleep(0.01)
            return out

        await queries(30, None)  # warm-up
        groups = tree_groups(None)
        for index in range(repeats):
            ctx.say(f"repeat {index + 1}/{repeats}: {idle_n} queries through the projector, idle")
            for kind, values in (await queries(idle_n, None)).items():
                idle[kind].append(values)
            batch: list[Event] = []
            while len(batch) < OFFERED_RATE * loaded_s:
                batch += next(groups)[1]
            ctx.say(
                f"repeat {index + 1}/{repeats}: queries while publishing {len(batch):,} events at {OFFERED_RATE:,}/s"
            )
            before = store.last_seq
            started = time.perf_counter()
            writing = asyncio.ensure_future(steady_writer(runtime.event_log, batch, OFFERED_RATE))
            during = await queries(None, writing)
            written_s = await writing
            reached = store.last_seq
            stream_last = await projectors[0].stream_last_seq()
            achieved.append((reached - before) / (time.perf_counter() - started))
            offered.append(len(batch) / written_s)
            lag_events.append(stream_last - reached)
            drained = time.perf_counter()
            await _caught_up(store, stream_last, serving)
            drain_s.append(time.perf_counter() - drained)
            for kind, values in during.items():
                loaded[kind].append(values)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, timeout=60)
        await runtime.close()
    labels = {
        "count_by_status": "`SELECT status, count(*) FROM runs GROUP BY 1`",
        "point_lookup": "`SELECT * FROM runs WHERE run_id = ?`",
    }
    figures: list[Figure] = []
    for kind in kinds:
        figures.append(
            latency_figure(
                NAME,
                f"live_{kind}",
                f"`remote_request` {labels[kind]} while publishing at {OFFERED_RATE:,}/s",
                loaded[kind],
                unit="ms",
                scale=1e-6,
                sync_interval=SYNC,
            )
        )
        figures.append(
            latency_figure(
                NAME,
                f"idle_{kind}",
                "same, nothing published (projector idle)",
                idle[kind],
                unit="ms",
                scale=1e-6,
                sync_interval=SYNC,
            )
        )
    figures += [
        value_figure(
            NAME,
            "live_ingest",
            "ingest achieved meanwhile (`follow`: store sequence reached / time publishing)",
            achieved,
            unit="events/s",
            per_repeat_n=int(OFFERED_RATE * loaded_s),
            better="higher",
            sync_interval=SYNC,
            note=f"offered {median(offered):,.0f}/s; behind by {median(lag_events):,.0f} events when publishing "
            f"stopped, caught up {median(drain_s) * 1e3:,.0f} ms later",
            extra={"offered": offered, "lag_events": lag_events, "drain_s": drain_s},
        ),
    ]
    notes = [
        f"Queries under load: `serve_projections` (catch-up, then `Projector.follow` and the `QueryService`) "
        f"runs in the benchmark process on a copy of the rebuilt store while a writer task publishes new trees "
        f"at {OFFERED_RATE:,} events/s for {loaded_s:.0f} s per repeat; one client in the same process sends "
        "`remote_request` queries one at a time, 10 ms apart, taking turns between the two kinds; the idle "
        "rows are the same queries with nothing published, in the same repeats."
    ]
    return figures, notes


# --- the benchmark ----------------------------------------------------------------------


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    with temp_workspace("ag-bench-projections-") as scratch:
        store_figures, store_events, mix = _measure_store_only(ctx, scratch)
        with isolated_server(SYNC) as (server, workspace):
            stream_figures, filled, rebuilt = asyncio.run(
                _measure_stream(ctx, server.url, server.pid, workspace, scratch)
            )
            lineage_figures = _measure_lineage(ctx, rebuilt, filled, filled.events)
            live_figures, live_notes = asyncio.run(_measure_live(ctx, server.url, workspace, rebuilt, filled))
    notes = [
        "Workload: trees of runs as graph_fns journal them, 64 trees at a time interleaved in the stream. A "
        "top-level run has 3-6 tool steps, each step's output (a string) being the next step's argument, so "
        "data-flow edges form; a third of the trees are flat, a third call a nested graph_fn, a third nest two "
        "deep (`run.started` with parent run, parent node and root run); every nested run saves an artifact; "
        "every fourth tree waits for an answer and is resumed (`wait.requested`, `run.waiting`, `run.claimed`, "
        f"`wait.resumed`). Event mix: {mix}.",
        f"Store-only rows: {store_events:,} encoded events decoded with the projector's `decode_batch`, then "
        f"applied with `ProjectionStore.apply_encoded` in {BATCH:,}-event batches (the projector's `batch_max`) "
        "into a "
        "fresh DuckDB file; no bus involved.",
        f"Ingest / rebuild: `Projector.catch_up` (a durable push consumer, window {WINDOW:,}, AckAll per batch, "
        "decode + fold + commit in a worker thread) from an empty store file to the stream's last sequence, "
        "timed from the call (store already created) to its return; each repeat builds a new store. The "
        "lineage queries then run on the last one, in process (`ProjectionStore.query`).",
        *live_notes,
    ]
    return [*store_figures, *stream_figures, *lineage_figures, *live_figures], notes
