"""9. Projections: folding the journal into DuckDB, rebuilding, lineage queries, queries under ingest."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from aethergraph import Settings
from aethergraph.bus.dispatch import SyncDispatchQueue, delivery_position
from aethergraph.bus.event_log import JetStreamEventLog
from aethergraph.bus.topology import ALL_EVENTS, EVENTS_STREAM
from aethergraph.core.codec import decode_event, digest, encode_event
from aethergraph.core.events import (
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
from aethergraph.core.ids import ROOT_NODE, child_run_id, new_run_id
from aethergraph.engine.queries import serve_projections, store_path
from aethergraph.projections.fold import Decoded, FoldBatch
from aethergraph.projections.projector import Projector, decode_message
from aethergraph.projections.service import QueryRequest, remote_request, store_id_for
from aethergraph.projections.store import ProjectionStore
from aethergraph.runtime import Runtime

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
BATCH = 4096  # the projector's batch_max: store-only batches are the same size
TOOLS = ("load", "clean", "embed", "score", "rank", "summarize")


# --- the workload: trees of runs as graph_fns journal them ---------------------------


@dataclass(kw_only=True)
class Tree:
    """One top-level run and its nested runs, in the order their events are journaled."""

    root: str
    events: list[Event]
    runs: list[str]
    # Lineage query targets inside the deepest nested run (artifact and node entities).
    deep: list[str] = field(default_factory=list)


class _RunBuilder:
    """Events of one run with its ``seq``, ``parent`` and ``epoch`` bookkeeping."""

    def __init__(self, run_id: str, clock: Iterator[int], out: list[Event]) -> None:
        self.run_id = run_id
        self.seq = 0
        self.epoch = 1
        self.last = 0
        self._clock = clock
        self._out = out

    def add(self, cls: type[Event], *, parent: int | None | bool = True, **fields: Any) -> int:
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
    """A realistic top-level run: a chain of tool steps where each output is the next step's argument.

    ``index`` varies the shape: 3-6 tools per run; a third of the trees are
    flat, a third call one nested graph_fn, a third nest two deep (the child
    calls a grandchild); every nested run saves an artifact from its last
    step; every fourth tree asks for a wait in the top-level run, which is
    answered (``wait.requested``, ``run.waiting``, then ``run.claimed`` and
    ``wait.resumed`` when the answer arrives).
    """
    root = new_run_id()
    events: list[Event] = []
    tree = Tree(root=root, events=events, runs=[])
    depth = index % 3
    tools = 3 + index % 4
    with_wait = index % 4 == 0

    def run(run_id: str, level: int, value: str, parent: tuple[str, str] | None) -> str:
        tree.runs.append(run_id)
        builder = _RunBuilder(run_id, clock, events)
        builder.add(
            RunStarted,
            parent=None,
            graph_id=f"pipeline_l{level}",
            inputs={"data": value, "limit": 10},
            parent_run_id=parent[0] if parent else None,
            parent_node_id=parent[1] if parent else None,
            root_run_id=root if parent else None,
        )
        steps = tools if level == 0 else max(2, tools - level)
        last_node = ""
        for step in range(steps):
            tool = TOOLS[step % len(TOOLS)]
            node_id = f"{tool}_{step // len(TOOLS) + 1}"
            args = {"data": value, "n": step}
            called = builder.add(
                ToolCalled,
                node_id=node_id,
                tool=tool,
                args=args,
                args_digest=digest(msgspec.json.encode(args)),
            )
            value = f"{run_id}/{node_id}:out"
            builder.add(
                ToolReturned,
                parent=called,
                node_id=node_id,
                tool=tool,
                outputs={"data": value, "rows": 128 + step},
                duration_us=250 + step,
            )
            last_node = node_id
            if level == 0 and step == 0 and with_wait:
                requested = builder.add(
                    WaitRequested, node_id=ROOT_NODE, wait_id=f"w{builder.seq + 1}", kind="approval", prompt="ok?"
                )
                wait_id = f"w{requested}"
                builder.add(RunWaiting, wait_id=wait_id, wait_run_id=run_id, kind="approval", prompt="ok?")
                claimed = builder.add(RunClaimed, reason="resume", previous_worker=WORKER)
                builder.epoch = claimed
                builder.add(
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
            called = builder.add(
                ToolCalled, node_id=node_id, tool="subflow", args=args, args_digest=digest(msgspec.json.encode(args))
            )
            value = run(child_run_id(run_id, node_id), level + 1, value, (run_id, node_id))
            builder.add(
                ToolReturned, parent=called, node_id=node_id, tool="subflow", outputs={"data": value}, duration_us=900
            )
        if level > 0:
            artifact_id = hashlib.sha256(value.encode()).hexdigest()
            builder.add(
                ArtifactSaved,
                node_id=last_node,
                tool=TOOLS[(steps - 1) % len(TOOLS)],
                artifact_id=artifact_id,
                uri=f"file:///artifacts/{artifact_id[:2]}/{artifact_id}",
                kind="table",
                name="report.parquet",
                mime="application/vnd.apache.parquet",
                size=4096 + level,
            )
            if level == depth:
                tree.deep = [f"artifact:{artifact_id}", f"node:{run_id}/{last_node}"]
        builder.add(RunCompleted, outputs={"data": value})
        return value

    run(root, 0, f"s3://datasets/{root}/input.parquet", None)
    return tree


def microsecond_clock() -> Iterator[int]:
    now = time.time_ns() // 1000
    while True:
        now += 1
        yield now


def interleaved(trees: list[Tree]) -> list[Event]:
    """The trees' events round-robin, as concurrent top-level runs reach the stream."""
    out: list[Event] = []
    iters = [iter(tree.events) for tree in trees]
    while iters:
        alive = []
        for events in iters:
            event = next(events, None)
            if event is not None:
                out.append(event)
                alive.append(events)
        iters = alive
    return out


def tree_batches(total: int, *, concurrent: int = 64, start: int = 0) -> Iterator[tuple[list[Tree], list[Event]]]:
    """Groups of ``concurrent`` trees interleaved, until ``total`` events (the last group may overshoot)."""
    clock = microsecond_clock()
    made = 0
    index = start
    while made < total:
        trees = [build_tree(index + offset, clock) for offset in range(concurrent)]
        index += concurrent
        events = interleaved(trees)
        made += len(events)
        yield trees, events
