"""A static run's node outcomes: reports in, outcomes journaled, retries armed, dependents released."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aethergraph.core.run.static_dispatch import StaticDispatch
from aethergraph.core.run.static_state import NodeState
from aethergraph.core.wire.events import (
    NodeCompleted,
    NodeFailed,
)
from aethergraph.core.wire.node_report import NodeReport

__all__ = ["StaticOutcomes"]


def _settle_when_committed(recorded: asyncio.Future[bool], commit: asyncio.Future[int] | None) -> None:
    """``recorded`` becomes True once ``commit`` is acknowledged; False if there is none or it was refused."""
    if commit is None:
        recorded.set_result(False)
        return

    def settle(done: asyncio.Future[int]) -> None:
        if not recorded.done():
            recorded.set_result(not done.cancelled() and done.exception() is None)

    commit.add_done_callback(settle)


class StaticOutcomes(StaticDispatch):
    """Journals each node's outcome from its report, retries failed attempts per the node's policy."""

    def handle(self, kind: str, item: Any) -> None:
        if kind == "report":
            if item is None:
                self.caught_up = True
                self._rerun_orphans()
            else:
                self._on_report(item)
        elif kind == "local":
            report, recorded = item
            _settle_when_committed(recorded, self._on_report(report))
        elif kind == "retry":
            node_id, attempt = item
            self.retry_timers.pop(node_id, None)
            if not self.failed:
                self._enqueue(node_id, attempt)
        elif kind == "error":
            raise item
        self.dispatch_ready()

    def _on_report(self, report: NodeReport) -> asyncio.Future[int] | None:
        """Journal the node's outcome; returns the commit of that outcome (None if nothing was journaled)."""
        state = self.states.get(report.node_id)
        if state is None or report.attempt != state.attempt or state.status not in ("dispatched", "started", "waiting"):
            return None  # a duplicate, a late report of an attempt already decided, or another graph's node
        if state.status == "dispatched":
            self.inflight -= 1
        if report.status == "completed":
            self.outputs[report.node_id] = dict(report.outputs)
            state.status = "completed"
            state.seq = self._append(
                NodeCompleted,
                parent=state.seq,
                node_id=report.node_id,
                outputs=report.outputs,
                attempt=report.attempt,
                executor=report.executor,
                started_us=report.started_us,
                duration_us=report.duration_us,
            )
            self._mark_done(report.node_id)
            return self.last_commit
        if report.status == "waiting":
            state.status, state.waiting = "waiting", report
            self.unchecked_waits.append(report.node_id)
            return None  # the stored report is what a process continuing the run finds
        return self._on_failure(report.node_id, state, report)

    def _on_failure(self, node_id: str, state: NodeState, report: NodeReport) -> asyncio.Future[int] | None:
        error_type = report.error_type or ("Cancelled" if report.status == "cancelled" else "Error")
        policy = self.graph.nodes[node_id].retry
        retry = policy is not None and report.status != "cancelled" and policy.retries(state.attempt, error_type)
        delay = policy.delay_s(state.attempt) if policy is not None and retry else 0.0
        state.error, state.traceback = (error_type, report.message), report.traceback
        state.seq = self._append(
            NodeFailed,
            parent=state.seq,
            node_id=node_id,
            error_type=error_type,
            message=report.message,
            attempt=state.attempt,
            executor=report.executor,
            started_us=report.started_us,
            duration_us=report.duration_us,
            retry_at_us=time.time_ns() // 1000 + int(delay * 1_000_000) if retry else None,
            traceback=report.traceback,
        )
        outcome = self.last_commit
        if retry:
            state.status = "retrying"
            self._arm_retry(node_id, state.attempt + 1, delay)
            return outcome
        state.status = "failed"
        self.failed.append(node_id)
        self._skip_dependents(node_id, "upstream_failed")
        return outcome

    def _rerun_orphans(self) -> None:
        """Local nodes a previous scheduler started and nobody reported on run again (same attempt)."""
        orphans, self.orphans = self.orphans, []
        for node_id in orphans:
            state = self.states[node_id]
            if state.status == "started" and not self.failed:
                self._enqueue(node_id, state.attempt)

    def _arm_retry(self, node_id: str, attempt: int, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self.retry_timers[node_id] = loop.call_later(delay, self.queue.put_nowait, ("retry", (node_id, attempt)))
