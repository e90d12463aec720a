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
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aethergraph.core.errors import (
    BusUnavailableError,
    RunFailedError,
    RunSuspended,
    StaleWriterError,
    cancel_was_requested,
    error_type_name,
    failure_fields,
)
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.journal.scope import RunScope
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.static_outcomes import StaticOutcomes
from aethergraph.core.wire.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunWaiting,
    WaitExpired,
    WaitResumed,
)

__all__ = ["drive_static_run"]


class _StaticRun(StaticOutcomes):
    """A static run's scheduler: state (static_state), dispatch (static_dispatch), outcomes (static_outcomes)."""


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
            failed_node_id=None,
            **(failure_fields(exc) | {"message": f"the scheduler of static run {run.scope.run_id} failed: {exc}"}),
        )
    except StaleWriterError:
        raise
    except Exception as journal_error:  # noqa: BLE001 - the run must still end: the driver fails it later
        raise BusUnavailableError(
            f"static run {run.scope.run_id} failed ({error_type_name(exc)}: {exc}) and its failure could not be "
            f"journaled ({journal_error}); it is failed as soon as the bus takes events again"
        ) from exc


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
