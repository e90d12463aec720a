"""The event-driven scheduler of a static graph's run.

The run's scheduler is its journal's only writer. It journals ``node.ready``
for every node whose dependencies are done; that event is the dispatch:
workers take ``node.ready`` events from the shared work queue, execute the
node and publish a :class:`~aethergraph.core.wire.node_report.NodeReport`. Each
report that arrives journals the node's outcome and makes its dependents
ready. While the scheduler's own process has a free local slot and knows
the tool, a ready node runs there instead (a *local node*, journaled as
``node.started``), which saves the work queue's round trip through the
server; a process that continues the run and finds a ``node.started``
without an outcome runs the node again. Nothing polls: the scheduler sleeps until a report (or a retry's
backoff timer) wakes it.

The scheduler's state is a fold of the run's journal plus the reports not
yet journaled, so whichever process continues the run (after a crash, a
resume, or a retry of a failed run) rebuilds it and goes on without running
a completed node again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aethergraph.core.errors import (
    BusUnavailableError,
    EventTooLargeError,
    RunFailedError,
    RunSuspended,
    SerializationError,
    StaleWriterError,
    cancel_was_requested,
    error_type_name,
    failure_traceback,
)
from aethergraph.core.journal.replay import journal_chain
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
    RunCancelled,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunWaiting,
    WaitExpired,
    WaitResumed,
)
from aethergraph.core.wire.node_report import LocalNode, NodeReport

__all__ = ["drive_static_run"]

# "dispatched": handed to a worker or to this process's executor; "started": journaled as a local node by a
# scheduler before this one, with no outcome (nobody runs it any more).
Status = Literal["pending", "queued", "dispatched", "started", "waiting", "retrying", "completed", "failed", "skipped"]
_DONE = ("completed", "skipped")


@dataclass(kw_only=True)
class _NodeState:
    status: Status = "pending"
    attempt: int = 0
    seq: int = 0  # journal seq of the node's latest event (the causal parent of what follows)
    skip_reason: str = ""
    waiting: NodeReport | None = None
    error: tuple[str, str] = ("", "")
    traceback: str = ""


class _StaticRun:
    def __init__(self, spec: CallableSpec, graph: TaskGraph, inputs: Mapping[str, Any], scope: RunScope) -> None:
        self.spec = spec
        self.graph = graph
        self.inputs = inputs
        self.scope = scope
        self.journal = scope.journal
        self.root_run_id = scope.root_run_id if scope.root_run_id != scope.run_id else None
        self.states = {node_id: _NodeState() for node_id in graph.order}
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

    # --- rebuilding from the journal ------------------------------------------------

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

    def start(self) -> None:
        """Queue what can run now, re-arm retry timers; dispatched nodes stay with their workers."""
        done = {node_id for node_id, state in self.states.items() if state.status in _DONE}
        self.done = len(done)
        self.remaining = {
            node_id: sum(1 for dep in node.dependencies if dep not in done)
            for node_id, node in self.graph.nodes.items()
        }
        for node_id in self.graph.order:
            state = self.states[node_id]
            if state.status == "dispatched":
                self.inflight += 1
            elif state.status == "started":
                self.orphans.append(node_id)
            elif state.status == "retrying":
                self._enqueue(node_id, state.attempt + 1)  # its backoff is over by now, or near enough
            elif state.status == "failed":
                self.failed.append(node_id)
            elif state.status == "pending" and not self.remaining[node_id]:
                self._release(node_id)
        self.dispatch_ready()

    # --- events in --------------------------------------------------------------------

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

    def _on_failure(self, node_id: str, state: _NodeState, report: NodeReport) -> asyncio.Future[int] | None:
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

    # --- readiness ----------------------------------------------------------------------

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

    def _parent_of(self, node_id: str) -> int:
        deps = self.graph.nodes[node_id].dependencies
        return max((self.states[dep].seq for dep in deps), default=1)

    def _enqueue(self, node_id: str, attempt: int) -> None:
        self.states[node_id].status = "queued"
        self.ready.append((node_id, attempt))

    def redispatch(self, node_id: str) -> None:
        """Hand a waiting node back to the workers: its wait was answered, its node run continues."""
        state = self.states[node_id]
        if state.status == "waiting":
            state.waiting = None
            self._enqueue(node_id, state.attempt)

    def dispatch_ready(self) -> None:
        """Journal ``node.ready`` for queued nodes, up to the run's concurrency cap."""
        limit = self.limit
        while self.ready and not self.failed:
            if limit and self.inflight >= limit:
                return
            node_id, attempt = self.ready.popleft()
            state = self.states[node_id]
            state.status, state.attempt = "dispatched", attempt
            self.inflight += 1
            self._dispatch(node_id)
        if self.failed:
            for node_id, _ in self.ready:
                self.states[node_id].status = "pending"
            self.ready.clear()

    def _dispatch(self, node_id: str) -> None:
        node = self.graph.nodes[node_id]
        state = self.states[node_id]
        try:
            args, _ = normalise_value(
                resolve_refs(dict(node.args), self.inputs, self.outputs), what=f"the arguments of node {node_id}"
            )
            dispatch: dict[str, Any] = {
                "tool": node.tool,
                "args": args,
                "attempt": state.attempt,
                "root_run_id": self.root_run_id or self.scope.run_id,
                "timeout_s": node.timeout_s,
            }
            # A local node starts before its node.started is stored: the scheduler is its only witness,
            # and whoever continues the run after a crash runs a node.started without outcome again.
            local = (
                self.scope.env.nodes.run_node_here(
                    LocalNode(run_id=self.scope.run_id, node_id=node_id, **dispatch), self.on_local_report
                )
                if self.local_nodes
                else None
            )
            try:
                state.seq = self._append(
                    NodeReady if local is None else NodeStarted,
                    parent=self._parent_of(node_id) or None,
                    node_id=node_id,
                    **dispatch,
                )
            except BaseException:
                if local is not None:
                    local.cancel()  # not started yet (the scheduler has not yielded): the tool never runs
                raise
        except (KeyError, EventTooLargeError, SerializationError) as exc:
            # The node cannot even be handed to a worker: it fails without retry.
            self.inflight -= 1
            message = exc.message if isinstance(exc, (EventTooLargeError, SerializationError)) else str(exc)
            report = NodeReport(
                run_id=self.scope.run_id,
                node_id=node_id,
                attempt=state.attempt,
                status="failed",
                error_type=type(exc).__name__,
                message=message,
            )
            state.status = "failed"
            state.error = (report.error_type, report.message)
            state.seq = self._append(
                NodeFailed,
                parent=state.seq or None,
                node_id=node_id,
                error_type=report.error_type,
                message=report.message,
                attempt=state.attempt,
            )
            self.failed.append(node_id)
            self._skip_dependents(node_id, "upstream_failed")

    # --- journal ------------------------------------------------------------------------

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

    # --- the run's end ------------------------------------------------------------------

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


async def drive_static_run(
    spec: CallableSpec, inputs: Mapping[str, Any], scope: RunScope, history: Sequence[Event]
) -> dict[str, Any]:
    """Schedule a static run to its end, or until it only waits; see the module docstring."""
    graph = spec.task_graph()
    run = _StaticRun(spec, graph, inputs, scope)
    run.fold(history)
    env = scope.env
    stop: Callable[[], Awaitable[None]] | None = None
    try:
        await env.nodes.ensure_node_executor()
        stop = await env.nodes.follow_node_reports(
            scope.run_id, run.on_report, from_start=len(history) > 1, local=run.on_local_report
        )
        run.start()
        return await _schedule(run)
    except asyncio.CancelledError as exc:
        if cancel_was_requested(exc):  # else the process is stopping: the run is handed over, not ended
            with contextlib.suppress(Exception):  # cancellation wins over a refused journal write
                await scope.journal.commit(RunCancelled, parent=run.last_seq or None, reason="cancelled")
        raise
    except (RunFailedError, StaleWriterError, BusUnavailableError):
        raise  # journaled already; another writer took the run; the run driver fails it when the bus is back
    except Exception as exc:
        await _fail_unexpectedly(run, exc)
        raise
    finally:
        run.stopped = True
        for handle in run.retry_timers.values():
            handle.cancel()
        if stop is not None:
            await stop()
        while not run.queue.empty():  # local reports this scheduler will not journal: their workers store them
            kind, item = run.queue.get_nowait()
            if kind == "local" and not item[1].done():
                item[1].set_result(False)


async def _schedule(run: _StaticRun) -> dict[str, Any]:
    """React to reports (and retry timers) until the run ends or only waits."""
    scope = run.scope
    while True:
        if run.failed and not run.inflight:
            return await _fail(run)
        if run.finished():
            outputs = run.run_outputs()
            await scope.journal.commit(RunCompleted, parent=run.last_seq, outputs=outputs)
            return outputs
        if run.unchecked_waits and run.caught_up:
            await _recheck_waits(run)
            continue
        waiting = run.stuck_on_waits()
        if waiting and not run.failed:
            await _suspend(run, waiting[0])
        kind, item = await run.queue.get()
        run.handle(kind, item)
        while not run.queue.empty():
            kind, item = run.queue.get_nowait()
            run.handle(kind, item)
        if scope.suspend_after_each_step and run.caught_up:
            await scope.journal.flush()
            raise RunSuspended(scope.run_id, "always-suspend test mode")


async def _fail_unexpectedly(run: _StaticRun, exc: Exception) -> None:
    """The scheduler itself failed (following reports, an unexpected error): journal ``run.failed`` with it.

    If even that is refused, the run is handed to the run driver as given up
    (:class:`BusUnavailableError`): it keeps the ownership record and journals
    the failure under a fenced claim once it can, so the run never stays
    ``running`` with nobody driving it.
    """
    try:
        await run.journal.commit(
            RunFailed,
            parent=run.last_seq or None,
            error_type=error_type_name(exc),
            message=f"the scheduler of static run {run.scope.run_id} failed: {exc}",
            failed_node_id=None,
            traceback=failure_traceback(exc),
        )
    except StaleWriterError:
        raise
    except Exception as journal_error:  # noqa: BLE001 - the run must still end: the driver fails it later
        raise BusUnavailableError(
            f"static run {run.scope.run_id} failed ({error_type_name(exc)}: {exc}) and its failure could not be "
            f"journaled ({journal_error}); it is failed as soon as the bus takes events again"
        ) from exc


def _settle_when_committed(recorded: asyncio.Future[bool], commit: asyncio.Future[int] | None) -> None:
    """``recorded`` becomes True once ``commit`` is acknowledged; False if there is none or it was refused."""
    if commit is None:
        recorded.set_result(False)
        return

    def settle(done: asyncio.Future[int]) -> None:
        if not recorded.done():
            recorded.set_result(not done.cancelled() and done.exception() is None)

    commit.add_done_callback(settle)


async def _recheck_waits(run: _StaticRun) -> None:
    """Re-dispatch waiting nodes whose wait has been answered (in their node run's journal) meanwhile."""
    nodes, run.unchecked_waits = run.unchecked_waits, []
    for node_id in nodes:
        report = run.states[node_id].waiting
        if report is None or report.wait_id is None:
            continue
        events = [record.event async for record in run.scope.env.event_log.read_run(report.wait_run_id or "")]
        answered = any(
            isinstance(event, (WaitResumed, WaitExpired)) and event.wait_id == report.wait_id
            for event in journal_chain(events)
        )
        if answered:
            run.redispatch(node_id)
    run.dispatch_ready()


async def _fail(run: _StaticRun) -> dict[str, Any]:
    node_id = run.failed[0]
    error_type, message = run.states[node_id].error
    await run.journal.commit(
        RunFailed,
        parent=run.states[node_id].seq,
        error_type=error_type,
        message=message,
        failed_node_id=node_id,
        traceback=run.states[node_id].traceback,
    )
    raise RunFailedError(
        f"run {run.scope.run_id} failed at node {node_id}: {error_type}: {message}",
        run_id=run.scope.run_id,
        error_type=error_type,
        node_id=node_id,
    )


async def _suspend(run: _StaticRun, node_id: str) -> None:
    report = run.states[node_id].waiting
    assert report is not None and report.wait_id is not None
    await run.journal.commit(
        RunWaiting,
        parent=run.states[node_id].seq,
        wait_id=report.wait_id,
        wait_run_id=report.wait_run_id or run.scope.run_id,
        kind=report.kind,
        prompt=report.prompt,
    )
    raise RunSuspended(
        run.scope.run_id,
        f"node {node_id} waits for {report.kind} wait {report.wait_id}",
        wait_id=report.wait_id,
        wait_run_id=report.wait_run_id,
        kind=report.kind,
        prompt=report.prompt,
    )
