"""A static run's scheduler state: node states folded from the journal, readiness, journal appends, the end.

The state is a fold of the run's journal plus the reports not yet
journaled; :mod:`~aethergraph.core.run.static_dispatch` dispatches ready
nodes and :mod:`~aethergraph.core.run.static_outcomes` journals their
outcomes on top of it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aethergraph.core.journal.scope import RunScope
from aethergraph.core.model.graph_refs import GraphRef, resolve_refs
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.model.task_graph import TaskGraph, TaskNode
from aethergraph.core.wire.codec import normalise_value
from aethergraph.core.wire.events import (
    Event,
    NodeCompleted,
    NodeFailed,
    NodeReady,
    NodeSkipped,
    NodeStarted,
    RunClaimed,
)
from aethergraph.core.wire.node_report import NodeReport

__all__ = ["DONE", "NodeState", "StaticRunState", "Status"]

# "dispatched": handed to a worker or to this process's executor; "started": journaled as a local node by a
# scheduler before this one, with no outcome (nobody runs it any more).
Status = Literal["pending", "queued", "dispatched", "started", "waiting", "retrying", "completed", "failed", "skipped"]
DONE = ("completed", "skipped")


@dataclass(kw_only=True)
class NodeState:
    status: Status = "pending"
    attempt: int = 0
    seq: int = 0  # journal seq of the node's latest event (the causal parent of what follows)
    skip_reason: str = ""
    waiting: NodeReport | None = None
    error: tuple[str, str] = ("", "")
    traceback: str = ""


class StaticRunState:
    """What a static run's scheduler knows: see the module docstring."""

    def __init__(self, spec: CallableSpec, graph: TaskGraph, inputs: Mapping[str, Any], scope: RunScope) -> None:
        self.spec = spec
        self.graph = graph
        self.inputs = inputs
        self.scope = scope
        self.journal = scope.journal
        self.root_run_id = scope.root_run_id if scope.root_run_id != scope.run_id else None
        self.states = {node_id: NodeState() for node_id in graph.order}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.ready: collections.deque[tuple[str, int]] = collections.deque()
        self.unchecked_waits: list[str] = []
        self.orphans: list[str] = []  # local nodes of a previous scheduler, run again once reports caught up
        # The always-suspend test mode stops the scheduler between steps: nodes run only on workers there.
        self.local_nodes = not scope.suspend_after_each_step
        self.inflight = 0
        self.retry_timers: dict[str, asyncio.TimerHandle] = {}
        self.failed: list[str] = []
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.caught_up = False
        self.stopped = False  # the scheduler has returned: local reports are no longer journaled here
        self.limit = scope.max_concurrency or graph.max_concurrency or 0
        self.last_seq = 0
        self.last_commit: asyncio.Future[int] | None = None  # the commit of the latest journal append
        # Dependencies of each node not yet completed or skipped, and how many nodes are (set by start()).
        self.remaining: dict[str, int] = {}
        self.done = 0

    def fold(self, history: Sequence[Event]) -> None:
        """Node states from the journal (a retry claim makes failed and their skipped nodes pending again)."""
        states = self.states
        for event in history:
            node_id = event.node_id
            state = states.get(node_id) if node_id is not None else None
            if isinstance(event, NodeReady) and state is not None:
                state.status, state.attempt, state.seq = "dispatched", event.attempt, event.seq
            elif isinstance(event, NodeStarted) and state is not None:
                state.status, state.attempt, state.seq = "started", event.attempt, event.seq
            elif isinstance(event, NodeCompleted) and state is not None:
                state.status, state.seq = "completed", event.seq
                self.outputs[event.node_id or ""] = dict(event.outputs)
            elif isinstance(event, NodeFailed) and state is not None:
                state.seq, state.error = event.seq, (event.error_type, event.message)
                state.traceback = event.traceback
                state.status = "retrying" if event.retry_at_us is not None else "failed"
            elif isinstance(event, NodeSkipped) and state is not None:
                state.status, state.seq, state.skip_reason = "skipped", event.seq, event.reason
            elif isinstance(event, RunClaimed) and event.reason == "retry":
                self._reset_failed()
            self.last_seq = event.seq
        if self.scope.claim_reason == "retry":
            self._reset_failed()

    def _reset_failed(self) -> None:
        """A retry of the run: failed nodes, and what they kept from running, become pending again."""
        for state in self.states.values():
            if state.status in ("failed", "dispatched", "started", "retrying", "waiting") or (
                state.status == "skipped" and state.skip_reason != "condition"
            ):
                state.status, state.skip_reason = "pending", ""

    def _parent_of(self, node_id: str) -> int:
        deps = self.graph.nodes[node_id].dependencies
        return max((self.states[dep].seq for dep in deps), default=1)

    def _mark_done(self, node_id: str) -> None:
        """``node_id`` completed or was skipped: release the dependents it was the last dependency of."""
        self.done += 1
        remaining = self.remaining
        for dependent in self.graph.dependents(node_id):
            remaining[dependent] -= 1
            if not remaining[dependent] and self.states[dependent].status == "pending":
                self._release(dependent)

    def _release(self, node_id: str) -> None:
        """All dependencies are done: skip the node (a skipped upstream, a false condition) or queue it."""
        node = self.graph.nodes[node_id]
        skipped = next((dep for dep in node.dependencies if self.states[dep].status == "skipped"), None)
        if skipped is not None:
            self._skip(node_id, "upstream_skipped", skipped)
            return
        if not self._condition_holds(node):
            self._skip(node_id, "condition", None)
            return
        self._enqueue(node_id, self.states[node_id].attempt + 1)

    def _condition_holds(self, node: TaskNode) -> bool:
        condition = node.condition
        if condition is None:
            return True
        if isinstance(condition, GraphRef):
            return bool(resolve_refs(condition, self.inputs, self.outputs))
        return bool(condition)

    def _skip(
        self,
        node_id: str,
        reason: Literal["condition", "upstream_skipped", "upstream_failed"],
        upstream: str | None,
    ) -> None:
        state = self.states[node_id]
        parent = self.states[upstream].seq if upstream is not None else self._parent_of(node_id)
        state.status, state.skip_reason = "skipped", reason
        state.seq = self._append(NodeSkipped, parent=parent or None, node_id=node_id, reason=reason, upstream=upstream)
        if reason == "upstream_failed":
            self._skip_dependents(node_id, "upstream_failed")
        self._mark_done(node_id)

    def _skip_dependents(self, node_id: str, reason: Literal["upstream_failed"]) -> None:
        for dependent in self.graph.dependents(node_id):
            if self.states[dependent].status == "pending":
                self._skip(dependent, reason, node_id)

    def _append(self, cls: type[Event], /, *, parent: int | None, node_id: str | None = None, **fields: Any) -> int:
        event, appended = self.journal.append(cls, parent=parent, node_id=node_id, **fields)
        seq = event.seq
        committed = asyncio.ensure_future(appended)  # the bus's writers already return futures: no new task
        committed.add_done_callback(self._check_commit)
        self.last_commit = committed
        self.last_seq = seq
        return seq

    def _check_commit(self, future: asyncio.Future[int]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.queue.put_nowait(("error", future.exception()))

    def finished(self) -> bool:
        return self.done == len(self.states)

    def stuck_on_waits(self) -> list[str]:
        """Waiting nodes, if nothing else can make progress (else an empty list)."""
        if self.inflight or self.retry_timers or self.ready or not self.caught_up or self.unchecked_waits:
            return []
        return [node_id for node_id, state in self.states.items() if state.status == "waiting"]

    def run_outputs(self) -> dict[str, Any]:
        values = resolve_refs(dict(self.graph.outputs), self.inputs, self.outputs)
        normalised, _ = normalise_value(values, what=self.spec.label)
        return dict(normalised)

    def _enqueue(self, node_id: str, attempt: int) -> None:
        self.states[node_id].status = "queued"
        self.ready.append((node_id, attempt))

    def on_report(self, report: NodeReport | None) -> None:
        self.queue.put_nowait(("report", report))

    def on_local_report(self, report: NodeReport) -> asyncio.Future[bool]:
        """A report from a node executed in this process (see ``LocalReportSink`` in the journal ports)."""
        recorded: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self.stopped:
            recorded.set_result(False)  # the executor stores it for whichever process continues the run
        else:
            self.queue.put_nowait(("local", (report, recorded)))
        return recorded
