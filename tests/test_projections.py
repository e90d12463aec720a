"""The projections at the store and fold level: no bus, events built directly.

* A hypothesis property: folding a journal incrementally, in random batches with
  redelivered and overlapping batches, gives the same tables as folding it at once.
* Redelivery idempotence, version-bump rebuilds, dead letters, lineage walks.

Stream sequences are 1..N in order, as the projector sees them. The bus-level
tests (real graphs, the projector, the query service, the CLI) are in
``test_projections_bus.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aethergraph.core.wire import events as ev
from aethergraph.core.wire.codec import encode_event
from aethergraph.projections import store as store_module
from aethergraph.projections.fold import Decoded
from aethergraph.projections.projector import Projector, decode_message
from aethergraph.projections.schema import PROJECTIONS
from aethergraph.projections.store import DeadLetter, ProjectionStore

BASE_TS = 1_700_000_000_000_000  # Unix microseconds

# Every table a store holds, compared row for row.
TABLES = (
    "runs",
    "nodes",
    "tool_calls",
    "service_calls",
    "waits",
    "artifacts",
    "edges",
    "lineage_values",
    "lineage_roots",
    "events",
    "memories",
    "viz",
    "llm_calls",
    "journal_heads",
    "journal_pending",
    "rejected_events",
    "dead_letters",
    "projection_state",
)

Item = Decoded | DeadLetter


# --- helpers ------------------------------------------------------------------------------------


def dump(store: ProjectionStore, tables: Iterable[str] = TABLES) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted (rows hold None, str, int, datetime: sort by repr)."""
    return {table: sorted((tuple(r) for r in store.query(f"SELECT * FROM {table}").rows), key=repr) for table in tables}


def decoded(events: Sequence[ev.Event]) -> list[Decoded]:
    """Events as the projector decodes them, at stream sequences 1..N."""
    return [Decoded(i, event, encode_event(event).decode()) for i, event in enumerate(events, start=1)]  # type: ignore[arg-type]


def apply_range(store: ProjectionStore, items: Sequence[Item], start: int, end: int) -> None:
    """Apply stream sequences ``start..end`` of ``items`` (numbered 1..N) as one delivered batch."""
    batch = items[start - 1 : end]
    store.apply(
        [i for i in batch if isinstance(i, Decoded)],
        [i for i in batch if isinstance(i, DeadLetter)],
        through=end,
    )


def one(store: ProjectionStore, sql: str, params: Any = None) -> Any:
    [row] = store.query(sql, params).rows
    return row[0] if len(row) == 1 else row


class RunJournal:
    """Builds one run's events the way the executor numbers them (seq, parent, epoch, worker)."""

    def __init__(self, out: list[ev.Event], run_id: str, worker: str = "w-1") -> None:
        self.out = out
        self.run_id = run_id
        self.worker = worker
        self.seq = 0
        self.epoch = 1

    def add(self, cls: type[ev.Event], node_id: str | None = None, *, parent: int | None = None, **fields: Any) -> int:
        self.seq += 1
        self.out.append(
            cls(
                run_id=self.run_id,
                seq=self.seq,
                ts=BASE_TS + len(self.out) * 1000,
                worker=self.worker,
                parent=parent if parent is not None else (self.seq - 1 or None),
                node_id=node_id,
                epoch=self.epoch,
                **fields,
            )
        )
        return self.seq

    def claim(self, worker: str, reason: str = "takeover") -> int:
        previous, self.worker = self.worker, worker
        self.epoch = self.seq + 1  # a claim opens its own epoch
        return self.add(ev.RunClaimed, reason=reason, previous_worker=previous)

    def tool(self, node_id: str, tool: str, args: dict[str, Any], outputs: dict[str, Any] | None) -> int:
        called = self.add(ev.ToolCalled, node_id, tool=tool, args=args, args_digest=f"d-{node_id}")
        if outputs is not None:
            self.add(ev.ToolReturned, node_id, parent=called, tool=tool, outputs=outputs, duration_us=250)
        return called


# --- a generated journal ------------------------------------------------------------------------

WORKERS = ("w-a", "w-b", "w-c")
TOOLS = ("load", "clean", "train")


class _Gen:
    """Draws one tree of runs (a root and nested child runs) into per-tree event lists."""

    def __init__(self, draw: st.DrawFn, pool: list[Any], fresh: Iterable[int]) -> None:
        self.draw = draw
        self.pool = pool  # values produced so far (by any tree): later args reuse some, so data edges form
        self.fresh = iter(fresh)
        self.wait_ids = itertools.count(1)
        self.artifacts: list[str] = []

    def new_value(self) -> str:
        value = f"value-{next(self.fresh):05d}-payload"
        self.pool.append(value)
        return value

    def arg(self) -> Any:
        choice = self.draw(st.sampled_from(["reuse", "reuse", "reuse", "fresh", "small", "none", "dict"]))
        if choice == "reuse" and self.pool:
            return self.draw(st.sampled_from(self.pool))
        if choice == "small":
            return self.draw(st.integers(-5, 5))  # too small to imply data flow
        if choice == "none":
            return None
        if choice == "dict" and self.pool:
            return {"nested": self.draw(st.sampled_from(self.pool))}
        return f"input-{next(self.fresh):05d}-text"

    def ready(self, emit: Any, node_id: str, root: str) -> bool:
        """Dispatches of a static node: failed attempts that retry, a re-dispatch after a wait, an outcome.

        Returns whether the node's outcome was journaled (False: it is still in flight).
        """
        draw = self.draw
        attempt = 1
        args = {f"a{i}": self.arg() for i in range(draw(st.integers(0, 2)))}
        executed = {"started_us": BASE_TS + draw(st.integers(0, 10**6)), "duration_us": draw(st.integers(0, 10**6))}
        while True:
            emit(ev.NodeReady, node_id, tool="step", args=args, attempt=attempt, root_run_id=root)
            if draw(st.integers(0, 4)) == 0:
                emit(ev.NodeReady, node_id, tool="step", args=args, attempt=attempt, root_run_id=root)
            outcome = draw(st.sampled_from(["completed", "completed", "retry", "failed", "unsent", "open"]))
            ran = {"attempt": attempt, "executor": draw(st.sampled_from(WORKERS)), **executed}  # on a worker
            if outcome == "retry" and attempt < 3:
                emit(ev.NodeFailed, node_id, error_type="OSError", message="flaky", retry_at_us=BASE_TS, **ran)
                attempt += 1
                continue
            if outcome == "open":
                return False
            if outcome == "completed":
                emit(ev.NodeCompleted, node_id, outputs={"out": self.new_value()}, **ran)
            elif outcome == "unsent":  # failed before an executor took it: no executor, no timings
                emit(ev.NodeFailed, node_id, error_type="EventTooLargeError", message="big", attempt=attempt)
            else:
                emit(ev.NodeFailed, node_id, error_type="ValueError", message="bad", **ran)
            return True

    def run(
        self, out: list[tuple[type, dict[str, Any]]], run_id: str, root: str, parent: tuple[str, str] | None, depth: int
    ) -> str:
        """One run's events (and its children's, inline); returns how the run ended."""
        draw = self.draw
        state: dict[str, Any] = {"seq": 0, "epoch": 1, "worker": draw(st.sampled_from(WORKERS))}
        counts: Counter[str] = Counter()

        def emit(cls: type, node_id: str | None = None, parent_seq: int | None = None, **fields: Any) -> int:
            state["seq"] += 1
            seq: int = state["seq"]
            fields.update(
                run_id=run_id,
                seq=seq,
                worker=state["worker"],
                parent=parent_seq if parent_seq is not None else (seq - 1 or None),
                node_id=node_id,
                epoch=state["epoch"],
            )
            out.append((cls, fields))
            return seq

        def claim(reason: str) -> None:
            previous = state["worker"]
            state["worker"] = draw(st.sampled_from(WORKERS))
            seq = state["seq"] + 1
            state["epoch"] = seq
            emit(ev.RunClaimed, reason=reason, previous_worker=previous)

        def node(name: str) -> str:
            counts[name] += 1
            return f"{name}_{counts[name]}"

        def wait(node_id: str, *, may_stay_open: bool) -> bool:
            """A wait in ``node_id``; True if it stays open (the run then stops here, waiting)."""
            wait_id = f"wt{next(self.wait_ids)}"
            emit(
                ev.WaitRequested,
                node_id,
                wait_id=wait_id,
                kind=draw(st.sampled_from(["approval", "text", "payment"])),
                prompt=f"question {wait_id}?",
                payload_schema=draw(st.sampled_from([{}, {"type": "object", "required": ["answer"]}])),
                channel=draw(st.sampled_from(["console", "slack:#ops"])),
                deadline_us=draw(st.sampled_from([None, BASE_TS + 10**9])),
            )
            suspends = draw(st.booleans())
            if suspends:
                emit(ev.RunWaiting, wait_id=wait_id, wait_run_id=run_id, kind="approval", prompt="?")
            outcome = draw(st.sampled_from(["resumed", "resumed", "expired", "open"]))
            if outcome == "open" and may_stay_open:
                if not suspends:
                    emit(ev.RunWaiting, wait_id=wait_id, wait_run_id=run_id)
                return True
            if suspends:
                claim("resume")
            if outcome == "expired":
                emit(ev.WaitExpired, node_id, wait_id=wait_id, command_seq=draw(st.integers(1, 50)))
            else:
                payload = draw(st.sampled_from(["dict", "value", "small"]))
                value: Any = (
                    {"answer": self.new_value()} if payload == "dict" else self.new_value() if payload == "value" else 1
                )
                emit(
                    ev.WaitResumed,
                    node_id,
                    wait_id=wait_id,
                    payload=value,
                    command_seq=draw(st.sampled_from([None, 7])),
                )
            return False

        def artifact(node_id: str | None, tool: str) -> None:
            again: bool = draw(st.booleans())
            if self.artifacts and again:
                artifact_id = draw(st.sampled_from(self.artifacts))  # the same content saved again
            else:
                artifact_id = f"{next(self.fresh):064x}"
                self.artifacts.append(artifact_id)
            emit(
                ev.ArtifactSaved,
                node_id,
                artifact_id=artifact_id,
                uri=f"file:///artifacts/{artifact_id}",
                kind="report",
                name=draw(st.sampled_from(["", "report.txt"])),
                mime="text/plain",
                size=draw(st.integers(0, 10_000)),
                labels=draw(st.sampled_from([{}, {"stage": "final"}])),
                tool=tool,
            )

        def service(node_id: str) -> None:
            called = emit(
                ev.ServiceCalled,
                node_id,
                service="llm",
                method="complete",
                args=[self.arg()],
                kwargs={"prompt": self.arg()},
                args_digest="sd",
            )
            outcome = draw(st.sampled_from(["returned", "failed", "open"]))
            if outcome == "returned":
                emit(
                    ev.ServiceReturned,
                    node_id,
                    parent_seq=called,
                    service="llm",
                    method="complete",
                    result=self.new_value(),
                    duration_us=draw(st.integers(0, 999)),
                )
            elif outcome == "failed":
                emit(
                    ev.ServiceFailed,
                    node_id,
                    parent_seq=called,
                    service="llm",
                    method="complete",
                    error_type="TimeoutError",
                    message="slow",
                    duration_us=5,
                )

        def llm(node_id: str) -> None:
            """A model call: returned (with usage), failed after retries, or in flight."""
            call = {
                "profile": draw(st.sampled_from(["default", "fast"])),
                "operation": draw(st.sampled_from(["chat", "embed"])),
            }
            called = emit(
                ev.LlmCalled,
                node_id,
                model="m-1",
                request={"messages": [self.arg()]},
                request_digest="rd",
                streamed=draw(st.booleans()),
                **call,
            )
            outcome = draw(st.sampled_from(["returned", "failed", "open"]))
            if outcome == "returned":
                tokens = {f"{n}_tokens": draw(st.integers(0, 999)) for n in ("input", "output", "cached", "reasoning")}
                emit(
                    ev.LlmReturned,
                    node_id,
                    parent_seq=called,
                    model="m-1-2024",
                    response={"content": self.new_value()},
                    finish_reason=draw(st.sampled_from(["stop", "length", "tool_calls"])),
                    attempts=draw(st.integers(1, 3)),
                    duration_us=draw(st.integers(0, 10**6)),
                    **call,
                    **tokens,
                )
            elif outcome == "failed":
                emit(
                    ev.LlmFailed,
                    node_id,
                    parent_seq=called,
                    model="m-1",
                    error_type="LLMEndpointError",
                    message="503 from the endpoint",
                    attempts=3,
                    duration_us=5,
                    **call,
                )

        def viz(node_id: str) -> None:
            kind = draw(st.sampled_from(["scalar", "vector", "image"]))
            number = draw(st.integers(-40, 40)) / 4
            emit(
                ev.VizRecorded,
                node_id,
                track=draw(st.sampled_from(["loss", "accuracy"])),
                kind=kind,
                step=draw(st.one_of(st.none(), st.integers(0, 9))),
                value=None if kind == "image" else number if kind == "scalar" else [number, 1.0],
                artifact_uri="file:///artifacts/png" if kind == "image" else None,
                mime="image/png" if kind == "image" else "",
                meta=draw(st.sampled_from([{}, {"layer": "fc1"}])),
            )

        emit(
            ev.RunStarted,
            graph_id=f"g{depth}",
            inputs={"x": self.arg()},
            parent_run_id=parent[0] if parent else None,
            parent_node_id=parent[1] if parent else None,
            root_run_id=root if parent else draw(st.sampled_from([None, run_id])),
        )
        last_node: str | None = None
        actions = draw(
            st.lists(
                st.sampled_from(
                    [
                        *["tool", "tool", "tool", "child", "wait", "claim", "artifact", "log", "value", "channel"],
                        *["static", "ready", "ready", "skip", "llm", "viz"],
                    ]
                ),
                min_size=1,
                max_size=8,
            )
        )
        for action in actions:
            if action == "tool":
                tool = draw(st.sampled_from(TOOLS))
                node_id = last_node = node(tool)
                args = {f"a{i}": self.arg() for i in range(draw(st.integers(0, 2)))}
                called = emit(ev.ToolCalled, node_id, tool=tool, args=args, args_digest=f"d{len(args)}")
                for inner in draw(
                    st.lists(
                        st.sampled_from(["service", "wait", "artifact", "log", "checkpoint", "llm", "viz"]), max_size=2
                    )
                ):
                    if inner == "service":
                        service(node_id)
                    elif inner == "llm":
                        llm(node_id)
                    elif inner == "viz":
                        viz(node_id)
                    elif inner == "wait":
                        wait(node_id, may_stay_open=False)
                    elif inner == "artifact":
                        artifact(node_id, tool)
                    elif inner == "log":
                        emit(ev.LogRecorded, node_id, level="info", message="inside", fields={"k": 1})
                    else:
                        emit(ev.CheckpointSaved, node_id, key="ckpt", state={"i": 1})
                outcome = draw(st.sampled_from(["returned", "returned", "returned", "failed", "open"]))
                if outcome == "returned":
                    outputs = {"out": self.new_value(), "n": draw(st.integers(0, 3))}
                    emit(
                        ev.ToolReturned,
                        node_id,
                        parent_seq=called,
                        tool=tool,
                        outputs=outputs,
                        duration_us=draw(st.integers(0, 10**6)),
                    )
                elif outcome == "failed":
                    emit(
                        ev.ToolFailed,
                        node_id,
                        parent_seq=called,
                        tool=tool,
                        error_type="ValueError",
                        message="bad input",
                        duration_us=draw(st.integers(0, 10**6)),
                    )
                else:
                    break  # a step in flight: nothing after it in this run
            elif action == "child" and depth < 2:
                node_id = last_node = node("sub")
                called = emit(ev.ToolCalled, node_id, tool="sub", args={"data": self.arg()}, args_digest="ds")
                child_id = f"{run_id}-{node_id}"
                ended = self.run(out, child_id, root, (run_id, node_id), depth + 1)
                if ended.startswith("completed:"):
                    emit(
                        ev.ToolReturned,
                        node_id,
                        parent_seq=called,
                        tool="sub",
                        outputs={"result": ended.removeprefix("completed:")},
                        duration_us=9,
                    )
                elif ended == "failed":
                    emit(
                        ev.ToolFailed,
                        node_id,
                        parent_seq=called,
                        tool="sub",
                        error_type="RunFailedError",
                        message="child failed",
                        duration_us=9,
                    )
                else:
                    if ended == "waiting":
                        emit(ev.RunWaiting, wait_id="child-wait", wait_run_id=child_id, kind="text", prompt="?")
                    return ended  # the parent is blocked on its child
            elif action == "wait":
                if wait("root", may_stay_open=True):
                    return "waiting"
            elif action == "claim":
                claim("takeover")
            elif action == "artifact":
                artifact(draw(st.sampled_from([None, "root", last_node])), "graph")
            elif action == "log":
                emit(ev.LogRecorded, "root", level="warning", message="body", fields={})
            elif action == "llm":
                llm("root")
            elif action == "viz":
                viz("root")
            elif action == "value":
                emit(ev.ValueRecorded, "root", kind="uuid", value=self.new_value())
            elif action == "channel":
                emit(ev.ChannelSent, "root", channel="console", text="hello")
            elif action == "static":
                node_id = last_node = node("step")
                emit(ev.NodeStarted, node_id, tool="step", attempt=1)
                if draw(st.booleans()):
                    emit(ev.NodeFailed, node_id, error_type="OSError", message="flaky", attempt=1)
                    emit(ev.NodeStarted, node_id, tool="step", attempt=2)
                emit(ev.NodeCompleted, node_id, outputs={"out": self.new_value()}, attempt=draw(st.integers(1, 2)))
            elif action == "ready":  # a static graph's node as its scheduler journals it
                node_id = last_node = node("step")
                if not self.ready(emit, node_id, root):
                    break  # the node is in flight
            elif action == "skip":
                node_id = node("step")
                reason = draw(st.sampled_from(["condition", "upstream_skipped", "upstream_failed", "cancelled"]))
                emit(ev.NodeSkipped, node_id, reason=reason, upstream=None if reason == "condition" else last_node)
                # A retried run may dispatch a node it had skipped.
                if draw(st.booleans()) and not self.ready(emit, node_id, root):
                    break
        end = draw(st.sampled_from(["completed", "completed", "failed", "cancelled", "running", "retried"]))
        if end == "retried":  # failed, then a retry made it succeed: the run's error is cleared
            emit(ev.RunFailed, error_type="OSError", message="flaky", failed_node_id=last_node, traceback="tb")
            claim("retry")
            end = "completed"
        if end == "completed":
            result = self.new_value() if not self.pool or draw(st.booleans()) else draw(st.sampled_from(self.pool))
            emit(ev.RunCompleted, outputs={"result": result, "ok": True})
            return f"completed:{result}"
        if end == "failed":
            emit(ev.RunFailed, error_type="ValueError", message="it broke", failed_node_id=last_node, traceback="tb")
            return "failed"
        if end == "cancelled":
            emit(ev.RunCancelled, reason=draw(st.sampled_from(["", "user asked"])))
            return "cancelled"
        return "running"


Entry = tuple[type, dict[str, Any]]


def misplace(draw: st.DrawFn, rnd: Any, ordered: list[Entry | None]) -> None:
    """Events stored out of ``seq`` order (a republished event after a later one) and messages on the runs'
    subjects that are not part of any journal: a forged far-ahead ``run.failed``, an event of a fenced-out
    writer (another epoch), a second event at a position already taken."""
    for _ in range(draw(st.integers(0, 3))):  # seq N stored after seq N+1 (or later) of the same run
        i = rnd.randrange(len(ordered))
        run_id = ordered[i][1]["run_id"]  # type: ignore[index]
        later = [j for j in range(i + 1, min(len(ordered), i + 12)) if ordered[j][1]["run_id"] == run_id]  # type: ignore[index]
        if later:
            ordered.insert(rnd.choice(later), ordered.pop(i))
    for _ in range(draw(st.integers(0, 4))):
        i = rnd.randrange(len(ordered))
        cls, fields = ordered[i]  # type: ignore[misc]
        envelope = {k: fields[k] for k in ("run_id", "seq", "worker", "parent", "epoch")}
        kind = draw(st.sampled_from(["forged", "stale", "taken"]))
        if kind == "forged":
            forged = {**envelope, "seq": 9999, "error_type": "Forged", "message": "not in the journal"}
            ordered.insert(rnd.randrange(len(ordered) + 1), (ev.RunFailed, forged))
        elif kind == "stale":  # another epoch never fits, wherever it is stored
            ordered.insert(rnd.randrange(len(ordered) + 1), (cls, {**fields, "epoch": fields["epoch"] + 1}))
        else:  # after the event that took the position
            late = {**envelope, "error_type": "Late", "message": "position taken"}
            ordered.insert(rnd.randrange(i + 1, len(ordered) + 1), (ev.RunFailed, late))


def journal_of(items: Sequence[Item]) -> list[Decoded]:
    """The reference rule: the events of every run's journal, in the order the projector takes them.

    Unlike the store's incremental sorter, this looks at the whole stream: at each position of a run's
    chain, the first stored event with that ``seq`` that fits is taken. An event is taken once the events
    before it in its chain are, so when a gap fills, the events waiting behind it follow at once.
    """
    candidates: dict[str, list[Decoded]] = {}
    for item in items:
        if isinstance(item, Decoded):
            candidates.setdefault(item.event.run_id, []).append(item)
    taken: list[tuple[int, int, Decoded]] = []
    for stored in candidates.values():
        seq, writer, at = 1, 1, 0
        while True:
            fit = [
                c
                for c in stored
                if c.event.seq == seq
                and (
                    c.event.epoch == seq
                    if isinstance(c.event, ev.RunStarted | ev.RunClaimed)
                    else c.event.epoch == writer
                )
            ]
            if not fit:
                break
            chosen = fit[0]
            writer = chosen.event.epoch
            at = max(at, chosen.stream_seq)
            taken.append((at, seq, chosen))
            seq += 1
    return [item for _, _, item in sorted(taken, key=lambda t: (t[0], t[1]))]


@st.composite
def journals(draw: st.DrawFn) -> list[Item]:
    """Several trees of runs, interleaved on the stream as concurrent runs are, with a few dead letters."""
    pool: list[Any] = []
    fresh = itertools.count(1)
    trees: list[deque[tuple[type, dict[str, Any]]]] = []
    for r in range(draw(st.integers(1, 3))):
        gen = _Gen(draw, pool, fresh)
        out: list[tuple[type, dict[str, Any]]] = []
        gen.run(out, f"run{r}", f"run{r}", None, 0)
        trees.append(deque(out))
    rnd = draw(st.randoms(use_true_random=False))
    ordered: list[tuple[type, dict[str, Any]] | None] = []
    while any(trees):
        ordered.append(rnd.choice([t for t in trees if t]).popleft())
    misplace(draw, rnd, ordered)
    for _ in range(draw(st.integers(0, 3))):  # garbage the projector could not decode
        ordered.insert(rnd.randrange(len(ordered) + 1), None)
    items: list[Item] = []
    for stream_seq, entry in enumerate(ordered, start=1):
        if entry is None:
            raw = rnd.randbytes(rnd.randrange(1, 24))
            items.append(DeadLetter(stream_seq, "ag.evt.garbage.tool.called", raw, "undecodable event: test"))
            continue
        cls, fields = entry
        event = cls(ts=BASE_TS + rnd.randrange(10**9), **fields)
        items.append(Decoded(stream_seq, event, encode_event(event).decode()))
    return items


@st.composite
def deliveries(draw: st.DrawFn, n: int) -> list[tuple[int, int]]:
    """Batches (first, last stream sequence) as a consumer may deliver them: in order, with redeliveries
    of older batches, batches overlapping what was already folded, and the same batch twice."""
    out: list[tuple[int, int]] = []
    cursor = 0
    while cursor < n:
        kind = draw(st.sampled_from(["next", "next", "next", "overlap", "old", "again"]))
        if kind == "old" and cursor > 0:
            first = draw(st.integers(1, cursor))
            out.append((first, draw(st.integers(first, cursor))))
            continue
        if kind == "again" and out:
            out.append(out[-1])
            continue
        last = draw(st.integers(cursor + 1, min(n, cursor + 25)))
        first = draw(st.integers(max(1, cursor - 8), cursor + 1)) if kind == "overlap" else cursor + 1
        out.append((first, last))
        cursor = last
    return out


# --- 1. incremental projection equals a rebuild -----------------------------------------------------


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_incremental_projection_equals_a_rebuild_from_scratch(data: st.DataObject) -> None:
    items = data.draw(journals(), label="journal")
    n = len(items)
    batches = data.draw(deliveries(n), label="batches")

    rebuilt = ProjectionStore.open(":memory:")
    incremental = ProjectionStore.open(":memory:")
    try:
        apply_range(rebuilt, items, 1, n)
        for first, last in batches:
            apply_range(incremental, items, first, last)
        assert incremental.cursors == dict.fromkeys(incremental.cursors, n)
        expected = dump(rebuilt)
        got = dump(incremental)
        for table in TABLES:
            assert got[table] == expected[table], f"table {table} differs after batches {batches}"

        # The rebuild itself is right, not just self-consistent: it holds the journals' events only.
        journal = journal_of(items)
        events = [i.event for i in journal]
        dead = [i for i in items if isinstance(i, DeadLetter)]
        assert sorted(r[0] for r in rebuilt.query("SELECT stream_seq FROM events").rows) == sorted(
            i.stream_seq for i in journal
        )
        left_out = rebuilt.query(
            "SELECT stream_seq FROM rejected_events UNION ALL SELECT stream_seq FROM journal_pending"
        )
        assert sorted(r[0] for r in left_out.rows) == sorted(
            {i.stream_seq for i in items if isinstance(i, Decoded)} - {i.stream_seq for i in journal}
        )
        assert sorted(r[0] for r in rebuilt.query("SELECT stream_seq FROM dead_letters").rows) == [
            d.stream_seq for d in dead
        ]
        per_run = Counter(e.run_id for e in events)
        claims = Counter(e.run_id for e in events if isinstance(e, ev.RunClaimed))
        rows = {r[0]: r[1:] for r in rebuilt.query("SELECT run_id, event_count, claims, last_seq FROM runs").rows}
        assert rows == {
            run_id: (count, claims[run_id], max(e.seq for e in events if e.run_id == run_id))
            for run_id, count in per_run.items()
        }
        called = {(e.run_id, e.seq) for e in events if isinstance(e, ev.ToolCalled)}
        assert {tuple(r) for r in rebuilt.query("SELECT run_id, call_seq FROM tool_calls").rows} == called
        assert one(rebuilt, "SELECT count(*) FROM artifacts") == sum(isinstance(e, ev.ArtifactSaved) for e in events)
        models = {(e.run_id, e.seq) for e in events if isinstance(e, ev.LlmCalled)}
        assert {tuple(r) for r in rebuilt.query("SELECT run_id, call_seq FROM llm_calls").rows} == models
        assert one(rebuilt, "SELECT count(*) FROM viz") == sum(isinstance(e, ev.VizRecorded) for e in events)
        assert static_nodes(rebuilt) == expected_static_nodes(events)
    finally:
        rebuilt.close()
        incremental.close()


def static_nodes(store: ProjectionStore) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The rows of static graph nodes (dispatched or skipped): status, attempts, tool, executor, skip."""
    return {
        (r[0], r[1]): tuple(r[2:])
        for r in store.query(
            "SELECT run_id, node_id, status, attempts, tool, executor, skip_reason, skip_upstream FROM nodes "
            "WHERE skip_reason IS NOT NULL"
        ).rows
    }


def expected_static_nodes(events: Sequence[ev.Event]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """What :func:`static_nodes` holds, folded in Python from the events in stream order."""
    rows: dict[tuple[str, str], list[Any]] = {}
    for e in events:
        if isinstance(e, ev.RunCancelled):  # the nodes it leaves running are skipped, reason cancelled
            for (run_id, _), row in rows.items():
                if run_id == e.run_id and row[0] in ("running", "retrying"):
                    row[0], row[4], row[5] = "skipped", "cancelled", ""
            continue
        if not isinstance(e, ev.NodeReady | ev.NodeStarted | ev.NodeCompleted | ev.NodeFailed | ev.NodeSkipped):
            continue
        if not e.node_id:
            continue
        if isinstance(e, ev.NodeReady | ev.NodeStarted | ev.NodeSkipped):
            row = rows.setdefault((e.run_id, e.node_id), ["", 0, None, None, "", ""])
        elif (e.run_id, e.node_id) in rows:
            row = rows[(e.run_id, e.node_id)]
        else:
            continue
        if isinstance(e, ev.NodeReady | ev.NodeStarted):  # dispatched to the work queue, or run in place
            row[0], row[1], row[2] = "running", max(row[1], e.attempt), row[2] or e.tool
            row[4] = row[5] = ""
        elif isinstance(e, ev.NodeSkipped):
            row[0], row[4], row[5] = "skipped", e.reason, e.upstream or ""
        else:
            row[1] = max(row[1], e.attempt)
            row[3] = e.executor or row[3]
            if isinstance(e, ev.NodeCompleted):
                row[0] = "succeeded"
            else:
                row[0] = "failed" if e.retry_at_us is None else "retrying"
    return {key: tuple(row) for key, row in rows.items()}


# --- 2. redelivery is idempotent -------------------------------------------------------------------------


def claimed_run(run_id: str = "rd1") -> list[ev.Event]:
    """A run taken over twice, with a tool, a service call and a resumed wait."""
    out: list[ev.Event] = []
    j = RunJournal(out, run_id)
    j.add(ev.RunStarted, graph_id="g", inputs={"doc": "the input document"})
    j.tool("load_1", "load", {"doc": "the input document"}, {"text": "loaded text of the doc"})
    j.claim("w-2")
    called = j.add(ev.ToolCalled, "ask_1", tool="ask", args={"text": "loaded text of the doc"}, args_digest="d")
    svc = j.add(
        ev.ServiceCalled,
        "ask_1",
        service="llm",
        method="complete",
        args=["loaded text of the doc"],
        kwargs={},
        args_digest="s",
    )
    j.add(ev.ServiceReturned, "ask_1", parent=svc, service="llm", method="complete", result="an llm answer")
    j.add(ev.WaitRequested, "ask_1", wait_id="w1", kind="approval", prompt="ok?", payload_schema={"type": "object"})
    j.add(ev.RunWaiting, wait_id="w1", wait_run_id=run_id, kind="approval", prompt="ok?")
    j.claim("w-3", reason="resume")
    j.add(ev.WaitResumed, "ask_1", wait_id="w1", payload={"approved": True}, command_seq=3)
    j.add(ev.ToolReturned, "ask_1", parent=called, tool="ask", outputs={"answer": "an llm answer"})
    j.add(ev.RunCompleted, outputs={"answer": "an llm answer"})
    return out


def test_the_same_batch_twice_and_an_older_batch_after_a_newer_one_change_nothing() -> None:
    events = claimed_run()
    items = decoded(events)
    store = ProjectionStore.open(":memory:")
    try:
        store.apply(items[:5])
        store.apply(items[5:])
        before = dump(store)
        assert one(store, "SELECT event_count, claims, status FROM runs WHERE run_id = 'rd1'") == (
            len(events),
            2,
            "succeeded",
        )

        store.apply(items[5:])  # the same batch again
        store.apply(items[:5])  # an older batch after a newer one
        store.apply(items[2:9])  # an older, overlapping one
        store.apply(items, [DeadLetter(3, "ag.evt.x.y", b"old", "late")])  # an old dead letter too
        assert dump(store) == before
        assert one(store, "SELECT event_count, claims FROM runs WHERE run_id = 'rd1'") == (len(events), 2)
        assert one(store, "SELECT attempts, status FROM nodes WHERE node_id = 'ask_1'") == (1, "succeeded")
        assert store.cursors == dict.fromkeys(store.cursors, len(items))
    finally:
        store.close()

    # A batch redelivered with more behind it: only the new part is folded.
    overlapping = ProjectionStore.open(":memory:")
    try:
        overlapping.apply(items[:7])
        overlapping.apply(items[3:])
        assert dump(overlapping) == before
    finally:
        overlapping.close()


def test_a_batch_holding_a_redelivered_copy_of_a_message_never_counts_it_twice() -> None:
    """JetStream redelivers a message not acknowledged within ack_wait while the projector may still hold the
    first copy in its buffer, so one delivered batch can carry a stream sequence twice, out of order."""
    events = claimed_run()
    items = decoded(events)
    reference = ProjectionStore.open(":memory:")
    store = ProjectionStore.open(":memory:")
    try:
        reference.apply(items)
        expected = dump(reference)
        store.apply(items[:4])
        try:
            store.apply(items[4:] + items[5:8], through=items[7].stream_seq)
        except duckdb.Error:
            pass  # refusing the batch is acceptable: the projector then folds it one message at a time
        else:
            got = one(store, "SELECT event_count, claims FROM runs WHERE run_id = 'rd1'")
            assert got == (len(events), 2), (
                f"ProjectionStore.apply folded a redelivered copy inside one batch a second time: "
                f"(event_count, claims) = {got}, expected {(len(events), 2)} (apply filters by the floor only, "
                "not by duplicates within the batch)"
            )
            assert dump(store) == expected

        # What the projector does with such a buffer: every message folded once, nothing dead-lettered.
        fresh = ProjectionStore.open(":memory:")
        try:
            projector = Projector(None, fresh, store_id="unit")  # type: ignore[arg-type]  # _apply needs no bus
            subject = "ag.evt.rd1.{}"
            # Deliveries as the client reads them: acknowledgement subject (it carries the stream sequence),
            # subject, payload.
            raw = [
                (
                    f"$JS.ACK.AG_EVENTS.unit.1.{i.stream_seq}.{i.stream_seq}.0.0".encode(),
                    subject.format(i.event.__struct_config__.tag).encode(),
                    i.raw.encode(),
                )
                for i in items
            ]
            projector._apply(raw[:4])
            projector._apply(raw[4:] + raw[5:8])
            assert projector.stats.dead_letters == 0
            got = one(fresh, "SELECT event_count, claims FROM runs WHERE run_id = 'rd1'")
            assert got == (len(events), 2), f"Projector._apply double-counted a redelivered copy: {got}"
            assert dump(fresh) == expected
            assert fresh.cursors == dict.fromkeys(fresh.cursors, len(items))
        finally:
            fresh.close()
    finally:
        store.close()
        reference.close()


# --- 3. a version bump rebuilds that projection only ----------------------------------------------------


def nested_journal() -> list[ev.Event]:
    """Two interleaved runs: a parent whose node ``sub_1`` spawns a child, and an unrelated run."""
    out: list[ev.Event] = []
    p = RunJournal(out, "par")
    c = RunJournal(out, "par-sub_1", worker="w-1")
    o = RunJournal(out, "other", worker="w-9")
    p.add(ev.RunStarted, graph_id="parent", inputs={"topic": "projections"})
    o.add(ev.RunStarted, graph_id="other", inputs={})
    p.tool("load_1", "load", {"topic": "projections"}, {"text": "text about projections"})
    sub = p.add(ev.ToolCalled, "sub_1", tool="child", args={"text": "text about projections"}, args_digest="d")
    c.add(
        ev.RunStarted,
        graph_id="child",
        inputs={"text": "text about projections"},
        parent_run_id="par",
        parent_node_id="sub_1",
        root_run_id="par",
    )
    o.tool("noop_1", "noop", {}, {"n": 1})
    c.tool("upper_1", "upper", {"text": "text about projections"}, {"text": "TEXT ABOUT PROJECTIONS"})
    c.add(
        ev.ArtifactSaved,
        "upper_1",
        artifact_id="ab" * 32,
        uri="file:///a/upper.txt",
        kind="text",
        name="upper.txt",
        mime="text/plain",
        size=22,
        tool="upper",
    )
    o.claim("w-8")
    c.add(ev.RunCompleted, outputs={"text": "TEXT ABOUT PROJECTIONS"})
    p.add(ev.ToolReturned, "sub_1", parent=sub, tool="child", outputs={"text": "TEXT ABOUT PROJECTIONS"})
    p.tool("count_1", "count", {"text": "TEXT ABOUT PROJECTIONS"}, {"n": 22})
    p.add(ev.WaitRequested, "root", wait_id="w1", kind="approval", prompt="publish?", payload_schema={})
    p.add(ev.RunWaiting, wait_id="w1", wait_run_id="par")
    o.add(ev.RunFailed, error_type="ValueError", message="nope", failed_node_id="noop_1")
    return out


@pytest.mark.parametrize("how", ["state-row", "schema"])
@pytest.mark.parametrize("bumped", [p.name for p in PROJECTIONS])
def test_a_version_bump_rebuilds_that_projection_from_zero_and_catch_up_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bumped: str, how: str
) -> None:
    items = decoded(nested_journal())
    n = len(items)
    dead = [DeadLetter(n + 1, "ag.evt.par.tool.called", b"\x00garbage", "undecodable event: test")]
    path = tmp_path / "projections.duckdb"
    store = ProjectionStore.open(path)
    assert store.rebuilt == []
    store.apply(items[:6])
    store.apply(items[6:], dead)
    original = dump(store)
    store.close()

    if how == "state-row":  # the file was built by an older version of this projection
        con = duckdb.connect(str(path))
        con.execute("UPDATE projection_state SET version = version - 1 WHERE projection = ?", [bumped])
        con.close()
    else:  # this code has a newer version of it
        bumped_schemas = tuple(
            dataclasses.replace(p, version=p.version + 1) if p.name == bumped else p for p in PROJECTIONS
        )
        monkeypatch.setattr(store_module, "PROJECTIONS", bumped_schemas)

    store = ProjectionStore.open(path)
    try:
        assert store.rebuilt == [bumped]
        # The journal rule's state is rebuilt with any projection, so it decides again for the events re-read.
        reset = {bumped, "journal"}
        assert store.cursors[bumped] == store.cursors["journal"] == 0
        assert {k: v for k, v in store.cursors.items() if k not in reset} == {
            p.name: n + 1 for p in PROJECTIONS if p.name not in reset
        }
        assert store.last_seq == 0
        owned = {table for p in PROJECTIONS if p.name in reset for table in p.tables}
        after_open = dump(store)
        for table in TABLES:
            if table in owned:
                assert after_open[table] == [], f"{table} of the bumped projection {bumped} was not emptied"
            elif table != "projection_state":
                assert after_open[table] == original[table], f"{table} changed though {bumped} was bumped"
        assert one(store, "SELECT last_seq FROM projection_state WHERE projection = ?", [bumped]) == 0

        # Catch up from 0, in two batches, with the dead letter redelivered.
        store.apply(items[:9])
        store.apply(items[9:], dead)
        caught_up = dump(store)
        for table in TABLES:
            if table == "projection_state" and how == "schema":
                continue  # the bumped version is recorded
            assert caught_up[table] == original[table], f"{table} differs after rebuilding {bumped}"
        assert one(store, "SELECT event_count, claims FROM runs WHERE run_id = 'other'") == (5, 1)
        assert store.cursors == dict.fromkeys(store.cursors, n + 1)
    finally:
        store.close()

    again = ProjectionStore.open(path)  # nothing more to rebuild
    try:
        assert again.rebuilt == [] and again.cursors == dict.fromkeys(again.cursors, n + 1)
    finally:
        again.close()


# --- 5. dead letters (decoding) --------------------------------------------------------------------------


def test_decode_message_turns_bad_messages_into_dead_letters_with_the_raw_bytes() -> None:
    good = ev.ToolCalled(run_id="r1", seq=2, ts=BASE_TS, worker="w", node_id="t_1", tool="t", args={}, args_digest="d")
    raw = encode_event(good)
    ok = decode_message(5, "ag.evt.r1.tool.called", raw)
    assert isinstance(ok, Decoded) and ok.event == good and ok.raw == raw.decode() and ok.stream_seq == 5

    cases = {
        b"\x00\xff not json": "undecodable event",
        b'{"type": "tool.called", "run_id": "r1"}': "undecodable event",  # JSON, but not a valid event
        b'{"hello": "world"}': "undecodable event",
    }
    for data, reason in cases.items():
        letter = decode_message(6, "ag.evt.r1.tool.called", data)
        assert isinstance(letter, DeadLetter)
        assert (letter.stream_seq, letter.subject, letter.raw) == (6, "ag.evt.r1.tool.called", data)
        assert letter.reason.startswith(reason), letter.reason

    for subject in ("ag.evt.r1.tool.returned", "ag.evt.r2.tool.called"):
        letter = decode_message(7, subject, raw)
        assert isinstance(letter, DeadLetter) and letter.raw == raw
        assert letter.reason == f"subject {subject} does not match the event (expected ag.evt.r1.tool.called)"


# --- 6. lineage across a nested run ------------------------------------------------------------------------


def test_lineage_of_an_artifact_made_in_a_child_run_reaches_the_parent_run() -> None:
    store = ProjectionStore.open(":memory:")
    try:
        items = decoded(nested_journal())
        store.apply(items[:7])  # the child's artifact lands in a later batch than its parent's steps
        store.apply(items[7:])
        artifact = "artifact:" + "ab" * 32
        ancestors = {r[0]: (r[1], r[2]) for r in store.query("SELECT * FROM ancestors(?)", [artifact]).rows}
        assert ancestors["node:par-sub_1/upper_1"] == ("produced", 1)
        assert ancestors["run:par-sub_1"] == ("in_run", 2)
        assert ancestors["node:par/load_1"] == ("data", 2)  # its text is the child step's input
        assert ancestors["node:par/sub_1"] == ("spawned", 3)
        assert ancestors["run:par"][1] >= 3
        assert not any("other" in entity for entity in ancestors)  # another run's tree is never walked

        descendants = {r[0]: r[1] for r in store.query("SELECT * FROM descendants('run:par')").rows}
        assert artifact in descendants
        assert {"run:par-sub_1", "node:par-sub_1/upper_1", "node:par/count_1", "node:par/sub_1"} <= set(descendants)
        count_inputs = {r[0]: r[1] for r in store.query("SELECT * FROM ancestors('node:par/count_1')").rows}
        assert count_inputs["node:par-sub_1/upper_1"] == "data"  # the child's output fed the parent's next step
        assert count_inputs["node:par/sub_1"] == "data"
        assert count_inputs["run:par-sub_1"] == "data"

        edges = {tuple(r) for r in store.query("SELECT src, dst, kind, root_run_id, run_id FROM edges").rows}
        assert ("node:par/sub_1", "run:par-sub_1", "spawned", "par", "par-sub_1") in edges
        assert ("node:par-sub_1/upper_1", artifact, "produced", "par", "par-sub_1") in edges
        assert ("node:par/load_1", "node:par-sub_1/upper_1", "data", "par", "par-sub_1") in edges
        assert one(store, "SELECT child_run_id FROM nodes WHERE run_id = 'par' AND node_id = 'sub_1'") == "par-sub_1"
        assert one(store, "SELECT root_run_id, parent_run_id, parent_node_id FROM runs WHERE run_id = 'par-sub_1'") == (
            "par",
            "par",
            "sub_1",
        )
        assert one(store, "SELECT run_id, node_id, tool, uri FROM artifacts") == (
            "par-sub_1",
            "upper_1",
            "upper",
            "file:///a/upper.txt",
        )
    finally:
        store.close()


def test_small_values_do_not_make_data_edges() -> None:
    out: list[ev.Event] = []
    j = RunJournal(out, "small")
    j.add(ev.RunStarted, graph_id="g", inputs={})
    j.tool("a_1", "a", {}, {"n": 1, "s": "shared long value"})
    j.tool("b_1", "b", {"n": 1}, {"m": 2})  # 1 is too common to mean b used a's output
    j.tool("c_1", "c", {"s": "shared long value"}, {})
    store = ProjectionStore.open(":memory:")
    try:
        store.apply(decoded(out))
        data = sorted(tuple(r) for r in store.query("SELECT src, dst FROM edges WHERE kind = 'data'").rows)
        assert data == [("node:small/a_1", "node:small/c_1")]
    finally:
        store.close()


def ended_runs_journal() -> list[ev.Event]:
    """A run cancelled and one failed while waiting; a static run failed at a node, then retried to success."""
    out: list[ev.Event] = []
    cancelled = RunJournal(out, "end-a")
    cancelled.add(ev.RunStarted, graph_id="g")
    cancelled.add(ev.WaitRequested, "root", wait_id="w2", kind="text", prompt="name?")
    cancelled.add(ev.RunCancelled, reason="not needed")
    failed = RunJournal(out, "end-b")
    failed.add(ev.RunStarted, graph_id="g")
    failed.add(ev.WaitRequested, "root", wait_id="w2", kind="review", prompt="ok?")
    failed.add(ev.RunFailed, error_type="ValueError", message="bad", traceback="Traceback ...\nValueError: bad\n")
    retried = RunJournal(out, "end-c")
    retried.add(ev.RunStarted, graph_id="s")
    retried.add(ev.NodeReady, "n1", tool="t")
    retried.add(ev.NodeFailed, "n1", error_type="E", message="m", executor="w-1", traceback="tb of n1")
    retried.add(ev.RunFailed, error_type="E", message="m", failed_node_id="n1", traceback="tb of n1")
    retried.claim("w-2", reason="retry")
    retried.add(ev.NodeReady, "n1", tool="t", attempt=2)
    retried.add(ev.NodeCompleted, "n1", attempt=2, executor="w-2")
    retried.add(ev.RunCompleted, outputs={"v": 1})
    return out


@pytest.mark.parametrize("per_event", [False, True], ids=["one batch", "a batch per event"])
def test_waits_close_with_their_run_and_a_successful_retry_clears_the_runs_error(per_event: bool) -> None:
    items = decoded(ended_runs_journal())
    store = ProjectionStore.open(":memory:")
    try:
        for start, end in [(i, i) for i in range(1, len(items) + 1)] if per_event else [(1, len(items))]:
            apply_range(store, items, start, end)
        waits = store.query("SELECT run_id, status, closed_at IS NOT NULL FROM waits ORDER BY run_id").rows
        assert [tuple(w) for w in waits] == [("end-a", "cancelled", True), ("end-b", "failed", True)]
        runs = store.query(
            "SELECT run_id, status, error_type, error_message, failed_node_id, traceback FROM runs ORDER BY run_id"
        ).rows
        assert [tuple(r) for r in runs] == [
            ("end-a", "cancelled", None, "not needed", None, None),
            ("end-b", "failed", "ValueError", "bad", None, "Traceback ...\nValueError: bad\n"),
            ("end-c", "succeeded", None, None, None, None),
        ]
        # The node keeps its failed attempt's error beside the success (see docs/lineage.md, nodes).
        assert one(store, "SELECT status || ' ' || traceback FROM nodes WHERE run_id = 'end-c'") == "succeeded tb of n1"
    finally:
        store.close()
