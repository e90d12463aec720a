"""``NodeExecutor``: executes the nodes of static graphs that this process takes from the work queue.

Each ``node.ready`` taken from ``ag-work`` runs the node's tool and reports
the outcome (a :class:`~aethergraph.core.wire.node_report.NodeReport`). A
scheduler in this process may also hand it a *local node*
(:meth:`NodeExecutor.run_node_here`, journaled as ``node.started``): it runs
the same way in one of ``local_capacity`` slots, with no work item at all. When the
run's scheduler is in this process the report goes straight to it, and the
work item is acknowledged once the scheduler's journal holds the outcome;
otherwise the report is stored on the bus and the item acknowledged once it
is. Either way a worker that dies mid-node leaves the item to be delivered
to another worker, and a redelivered item whose outcome the run's journal
already holds is acknowledged without running the node again.

A tool that takes no ``context`` runs bare (it is the step; its outputs are
recorded by the run's scheduler). A tool that takes a ``context``, a
``DualStageTool`` and a nested graph run as a *node run* (see
:func:`~aethergraph.core.run.static_run.node_run_id`): a child run with its own
journal, so logs, journaled values, service calls and waits work as in a
graph_fn, and a node re-executed after a crash continues its node run by
replay instead of starting over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aethergraph.bus.connection import BusConnection
from aethergraph.bus.node_reports import JetStreamNodeReports
from aethergraph.bus.work_queue import JetStreamWorkQueue, WorkItem, shared_ack_wait_s
from aethergraph.core.errors import (
    CANCEL_REQUESTED,
    EventTooLargeError,
    GraphNotFoundError,
    RunFailedError,
    RunSuspended,
    StaleWriterError,
    error_type_name,
    failure_traceback,
)
from aethergraph.core.ids import node_run_id
from aethergraph.core.journal.ports import LocalReportSink, ParentLink, RunEnvironment
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.model.registry import must_get_graph
from aethergraph.core.model.spec import CallableSpec, normalise_outputs
from aethergraph.core.run.executor import execute_run, resume_run
from aethergraph.core.wire.codec import normalise_value
from aethergraph.core.wire.events import (
    NodeCompleted,
    NodeFailed,
    NodeReady,
    RunCancelled,
    RunClaimed,
    RunCompleted,
    RunFailed,
)
from aethergraph.core.wire.node_report import LocalNode, NodeReport

__all__ = ["NodeExecutor"]

_PLAN_CACHE = 10_000  # runs whose plan a process remembers
_DECIDED_FRESH_S = 0.05  # a read of a run's outcomes serves work items that arrive this soon after it began
_OUTCOMES = frozenset({"completed", "failed", "cancelled"})  # report statuses that end a node attempt

log = logging.getLogger("aethergraph.nodes")

NodeWork = NodeReady | LocalNode
"""A node attempt to execute: a work item's ``node.ready``, or a local node of a scheduler in this process."""


class NodeExecutor:
    """Runs up to ``capacity`` nodes at once for this process; see the module docstring."""

    def __init__(
        self,
        env: RunEnvironment,
        reports: JetStreamNodeReports,
        *,
        capacity: int,
        ack_wait_s: float,
        local_capacity: int = 0,
        graphs: Callable[[str], CallableSpec] = must_get_graph,
        defer_delay_s: float = 0.1,
        local_sinks: Mapping[str, LocalReportSink] | None = None,
    ) -> None:
        self._env = env
        self._reports = reports
        self._capacity = capacity
        self._heartbeat_s = max(0.2, ack_wait_s / 3)
        self._graphs = graphs
        self._defer_delay_s = defer_delay_s
        self._local_capacity = local_capacity
        self._local_busy = 0
        self._stopping = False
        self._queue: JetStreamWorkQueue | None = None
        self._running: dict[asyncio.Task[None], NodeWork] = {}
        self._items: dict[asyncio.Task[None], WorkItem] = {}  # the running work items (not local nodes)
        self._cancelled: set[asyncio.Task[None]] = set()
        self._reporting: set[asyncio.Task[None]] = set()  # finished executing; a cancel no longer applies
        self._decided: dict[str, tuple[asyncio.Task[frozenset[tuple[str, int]]], float]] = {}  # (read, began)
        self._heartbeat: asyncio.TimerHandle | None = None
        self._deferred: set[str] = set()
        self._local_sinks = local_sinks if local_sinks is not None else {}
        self._plans: dict[str, dict[str, str]] = {}  # run id -> node id -> tool, of the runs seen here

    async def start(self, bus: BusConnection) -> None:
        # The consumer is shared: heartbeat at a third of ITS ack wait.
        ack_wait_s = await shared_ack_wait_s(bus.js)
        if ack_wait_s:
            self._heartbeat_s = max(0.2, ack_wait_s / 3)
        self._queue = JetStreamWorkQueue(bus.nc, capacity=self._capacity, handler=self._on_item)
        await self._queue.start()

    def connection_lost(self) -> None:
        """The connection dropped: ask for work again as soon as it is back."""
        if self._queue is not None and not self._stopping:
            self._queue.connection_lost()

    async def stop(self) -> None:
        """Stop taking nodes and let the running ones finish (their reports are published)."""
        self._stopping = True
        if self._queue is not None:
            await self._queue.stop()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    def cancel_run(self, run_id: str) -> int:
        """Cancel the running nodes of ``run_id`` (or of a run tree whose top is ``run_id``)."""
        count = 0
        for task, event in list(self._running.items()):
            if task in self._reporting:
                continue
            if event.run_id == run_id or event.root_run_id == run_id:
                self._cancelled.add(task)
                task.cancel(CANCEL_REQUESTED)
                count += 1
        return count

    # --- taking work --------------------------------------------------------------------

    def _on_item(self, item: WorkItem) -> None:
        task = asyncio.get_running_loop().create_task(self._execute(item))
        self._running[task] = item.event
        self._items[task] = item
        task.add_done_callback(self._forget)
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().call_later(self._heartbeat_s, self._beat)

    def run_node_here(self, node: LocalNode, sink: LocalReportSink) -> asyncio.Task[None] | None:
        """Start ``node`` of a scheduler in this process if a local slot is free and the tool is known here.

        Returns the node's task (not running before the caller yields), or None if nothing was started.
        """
        if self._stopping or self._queue is None or self._local_busy >= self._local_capacity:
            return None
        try:
            spec = self._graphs(node.tool)
        except GraphNotFoundError:
            return None
        self._local_busy += 1
        task = asyncio.get_running_loop().create_task(self._execute_local(spec, node, sink))
        self._running[task] = node
        task.add_done_callback(self._forget_local)
        return task

    def _forget_local(self, task: asyncio.Task[None]) -> None:
        self._local_busy -= 1
        self._forget(task)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._items.pop(task, None)
        self._cancelled.discard(task)
        self._reporting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("node task failed unexpectedly: %r", task.exception())

    def _beat(self) -> None:
        """Tell the work queue every running node is still in progress."""
        self._heartbeat = None
        queue = self._queue
        if queue is None or not self._items:
            return  # local nodes have no work item to keep
        for item in self._items.values():
            queue.in_progress(item)
        self._heartbeat = asyncio.get_running_loop().call_later(self._heartbeat_s, self._beat)

    async def _execute(self, item: WorkItem) -> None:
        queue = self._queue
        assert queue is not None
        event = item.event
        try:
            spec = self._graphs(event.tool)
        except GraphNotFoundError as exc:
            if event.tool not in self._deferred:
                self._deferred.add(event.tool)
                log.warning("node %s of run %s left for another worker: %s", event.node_id, event.run_id, exc)
            queue.nak(item, self._defer_delay_s)
            return
        if not await self._dispatched_by_its_run(event):
            queue.ack(item)  # not a dispatch of any run's scheduler: nothing to execute
            return
        if self._maybe_delivered_before(item):
            decided = await self._already_decided(event)
            if decided is None:
                queue.nak(item, self._defer_delay_s)  # cannot tell now (the bus is away): ask again later
                return
            if decided:
                queue.ack(item)  # its outcome was journaled before the acknowledgement was lost: do not run it again
                return
        report = await self._attempt(spec, event)
        if report is None:
            queue.nak(item, 0.2)  # another worker continues this node run right now
            return
        if await self._deliver(report):
            queue.ack(item)
        else:
            queue.nak(item, self._defer_delay_s)

    async def _dispatched_by_its_run(self, event: NodeReady) -> bool:
        """Whether a work item can be its run's own dispatch: the run exists and its graph has that node.

        A ``node.ready`` that anyone published on a run's subject reaches the
        work queue; this keeps a stray one (an unknown run, a node the graph
        does not have) from executing. Each run's start is read once.
        """
        plan = self._plans.get(event.run_id)
        if plan is None:
            started = await self._env.event_log.first_start(event.run_id)
            if started is None:
                log.warning("dropped node.ready %s of run %s: no such run", event.node_id, event.run_id)
                return False
            try:
                nodes = self._graphs(started.graph_id).task_graph().nodes
                plan = {node_id: node.tool for node_id, node in nodes.items()}
            except (GraphNotFoundError, TypeError, ValueError):
                plan = {}  # the graph is not loaded here: its nodes cannot be checked
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.clear()
            self._plans[event.run_id] = plan
        if plan and plan.get(event.node_id or "") != event.tool:
            log.warning(
                "dropped node.ready %s (tool %s) of run %s: its graph has no such node",
                event.node_id,
                event.tool,
                event.run_id,
            )
            return False
        return True

    async def _execute_local(self, spec: CallableSpec, node: LocalNode, sink: LocalReportSink) -> None:
        report = await self._attempt(spec, node)
        while report is None:  # another process continues this node run right now: try again shortly
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                if asyncio.current_task() not in self._cancelled:
                    raise
                report = self._cancelled_report(node)
                break
            report = await self._attempt(spec, node)
        self._mark_reporting()
        if await sink(report):
            return  # the scheduler journaled the outcome
        # Not journaled (a wait, or the scheduler stopped): store it for whichever process continues the run.
        await self._deliver(report, via_scheduler=False)

    def _mark_reporting(self) -> None:
        """The current node finished executing: a cancel of its run no longer applies to it."""
        task = asyncio.current_task()
        if task is not None:
            self._reporting.add(task)

    async def _deliver(self, report: NodeReport, *, via_scheduler: bool = True) -> bool:
        """Hand ``report`` to the run's scheduler: directly when it is in this process, else stored."""
        self._mark_reporting()
        sink = self._local_sinks.get(report.run_id) if via_scheduler else None
        if sink is not None and await sink(report):
            return True  # the run's scheduler is in this process and journaled the outcome
        try:
            await self._reports.publish(report)
        except Exception:
            log.exception("could not store the report of node %s of run %s", report.node_id, report.run_id)
            return False
        return True

    async def _attempt(self, spec: CallableSpec, event: NodeWork) -> NodeReport | None:
        """Execute one node attempt; its report, or None if another process continues its node run."""
        started_us = time.time_ns() // 1000
        started = time.perf_counter_ns()
        common: dict[str, Any] = {
            "run_id": event.run_id,
            "node_id": event.node_id or "",
            "attempt": event.attempt,
            "executor": self._env.worker_id,
            "started_us": started_us,
        }
        try:
            outputs = await self._run_node(spec, event)
            return NodeReport(status="completed", outputs=outputs, **common, duration_us=_since(started))
        except RunSuspended as suspended:
            return NodeReport(
                status="waiting",
                wait_id=suspended.wait_id,
                wait_run_id=suspended.wait_run_id,
                kind=suspended.kind,
                prompt=suspended.prompt,
                **common,
                duration_us=_since(started),
            )
        except asyncio.CancelledError:
            if asyncio.current_task() not in self._cancelled:
                raise  # the process is stopping: the item is redelivered to another worker
            return self._cancelled_report(event, started_us)
        except TimeoutError:
            return NodeReport(
                status="failed",
                error_type="TimeoutError",
                message=f"node {event.node_id} ran longer than its timeout of {event.timeout_s:g}s",
                **common,
                duration_us=_since(started),
            )
        except StaleWriterError:
            return None
        except Exception as exc:  # noqa: BLE001 - reported to the scheduler, which journals it
            error_type = exc.error_type if isinstance(exc, RunFailedError) else error_type_name(exc)
            message = exc.message if isinstance(exc, (EventTooLargeError, RunFailedError)) else str(exc)
            return NodeReport(
                status="failed",
                error_type=error_type,
                message=message,
                traceback=failure_traceback(exc),
                **common,
                duration_us=_since(started),
            )

    def _cancelled_report(self, event: NodeWork, started_us: int = 0) -> NodeReport:
        return NodeReport(
            run_id=event.run_id,
            node_id=event.node_id or "",
            attempt=event.attempt,
            status="cancelled",
            error_type="Cancelled",
            message="the run was cancelled",
            executor=self._env.worker_id,
            started_us=started_us,
        )

    def _maybe_delivered_before(self, item: WorkItem) -> bool:
        """Whether this work item may have been executed before: a redelivery, or dispatched longer ago than
        the consumer's ack wait (a server restart can forget a delivery count)."""
        age_s = time.time() - item.event.ts / 1e6
        return item.deliveries > 1 or age_s > 3 * self._heartbeat_s

    async def _already_decided(self, event: NodeReady) -> bool | None:
        """Whether this attempt's outcome is stored (journaled, or its report), or the run has ended; None when
        the journal cannot be read now (running the node then could run a committed step twice)."""
        loop = asyncio.get_running_loop()
        cached = self._decided.get(event.run_id)
        # Redeliveries come in bursts (a worker died): a read serves the items that arrived before it began.
        if cached is None or cached[1] < loop.time() - _DECIDED_FRESH_S:
            cached = (loop.create_task(self._decided_nodes(event.run_id)), loop.time())
            self._decided[event.run_id] = cached
            cached[0].add_done_callback(lambda _: loop.call_later(1.0, self._forget_decided, event.run_id, cached))
        decided = cached[0]
        try:
            nodes = await asyncio.shield(decided)
        except Exception as exc:  # noqa: BLE001 - cannot tell: the item is delivered again later
            log.warning(
                "could not read the journal of run %s (node %s left for later): %s", event.run_id, event.node_id, exc
            )
            self._forget_decided(event.run_id, cached)
            return None
        return ("", 0) in nodes or (event.node_id or "", event.attempt) in nodes

    def _forget_decided(self, run_id: str, entry: tuple[asyncio.Task[frozenset[tuple[str, int]]], float]) -> None:
        if self._decided.get(run_id) is entry:
            del self._decided[run_id]

    async def _decided_nodes(self, run_id: str) -> frozenset[tuple[str, int]]:
        """(node id, attempt) of every node outcome of ``run_id``; ``("", 0)`` if the run ended.

        An outcome counts once its report is stored, journaled or not: a worker that died after storing a
        node's report leaves the work item to be delivered again, and the scheduler journals that report.
        """
        decided: set[tuple[str, int]] = {
            (report.node_id, report.attempt)
            for report in await self._reports.stored(run_id)
            if report.status in _OUTCOMES
        }
        events = journal_chain([record.event async for record in self._env.event_log.read_run(run_id)])
        ended = False
        for event in events:
            if isinstance(event, (NodeCompleted, NodeFailed)):
                decided.add((event.node_id or "", event.attempt))
            elif isinstance(event, (RunCompleted, RunFailed, RunCancelled)):
                ended = True
            elif isinstance(event, RunClaimed) and event.reason == "retry":
                ended = False  # a failed run continued: its nodes are dispatched again as new attempts
        if ended:
            decided.add(("", 0))
        return frozenset(decided)

    async def _run_node(self, spec: CallableSpec, event: NodeWork) -> dict[str, Any]:
        async with asyncio.timeout(event.timeout_s):
            if spec.kind == "tool" and spec.context_param is None:
                if spec.is_async:
                    result = await spec.fn(**event.args)
                elif event.timeout_s is not None:
                    result = await asyncio.to_thread(spec.fn, **event.args)
                else:
                    result = spec.fn(**event.args)
                outputs, _ = normalise_value(normalise_outputs(spec, result), what=spec.label)
                return dict(outputs)
            return await self._run_node_run(spec, event)

    async def _run_node_run(self, spec: CallableSpec, event: NodeWork) -> dict[str, Any]:
        node_id = event.node_id or ""
        run_id = node_run_id(event.run_id, node_id, event.attempt)
        parent = ParentLink(run_id=event.run_id, node_id=node_id, root_run_id=event.root_run_id or event.run_id)
        try:
            return await execute_run(spec, event.args, run_id=run_id, env=self._env, parent=parent)
        except StaleWriterError as exc:
            if exc.seq != 1:
                raise
        # The node run exists: this node ran before (a crash, or its wait was answered). Continue it.
        return await resume_run(spec, run_id, env=self._env)


def _since(started_ns: int) -> int:
    return (time.perf_counter_ns() - started_ns) // 1000
