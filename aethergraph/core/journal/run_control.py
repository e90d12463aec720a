"""Managing runs from code: follow a run to its end, cancel it, spawn runs from inside a node.

``context.runs()`` returns a :class:`RunManager` bound to the calling node:
children it spawns carry their parent (run and node) in ``run.started``, so
lineage crosses runs, and their ids are derived from the parent's, so a
replayed parent finds the children it already spawned instead of spawning
them twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aethergraph.core.errors import (
    GraphNotFoundError,
    RunBusyError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    StaleWriterError,
    error_type_name,
    keep_traceback,
)
from aethergraph.core.ids import child_run_id, node_run_id
from aethergraph.core.journal.journal_state import journal_state
from aethergraph.core.journal.ports import ParentLink, RunEnvironment
from aethergraph.core.journal.replay import ChainBuilder, journal_chain
from aethergraph.core.journal.run_journal import RunJournal
from aethergraph.core.journal.scope import RunScope
from aethergraph.core.model.input_types import check_input_types
from aethergraph.core.model.registry import must_get_graph
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.wire.events import (
    ClaimReason,
    Event,
    NodeReady,
    NodeStarted,
    RunCancelled,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunWaiting,
    ToolCalled,
)

__all__ = [
    "RunManager",
    "bind_run_inputs",
    "follow_run_end",
    "force_cancel",
    "force_end",
    "force_fail",
    "run_failure",
    "spec_of",
]


def spec_of(graph: object) -> CallableSpec:
    """The spec of a graph given as the decorated object or by its registered name."""
    if isinstance(graph, str):
        return must_get_graph(graph)
    spec = getattr(graph, "__aethergraph_spec__", None)
    if not isinstance(spec, CallableSpec):
        raise GraphNotFoundError(
            f"{graph!r} is not a graph; pass a @graph_fn, @graphify graph or @tool (or its registered name)"
        )
    return spec


def bind_run_inputs(spec: CallableSpec, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's inputs checked against its graph, the one place a run's inputs are bound.

    A static graph names missing and unknown inputs; a graph_fn or tool binds
    them to its signature and checks them against its annotations
    (:func:`~aethergraph.core.model.input_types.check_input_types`).
    """
    if spec.kind == "static":
        return spec.task_graph().bind_inputs(dict(inputs or {}))
    return check_input_types(spec, spec.bind((), dict(inputs or {})))


def run_failure(run_id: str, end: RunFailed | RunCancelled) -> RunFailedError:
    if isinstance(end, RunFailed):
        where = f" at node {end.failed_node_id}" if end.failed_node_id else ""
        error = RunFailedError(
            f"run {run_id} failed{where}: {end.error_type}: {end.message}",
            run_id=run_id,
            error_type=end.error_type,
            node_id=end.failed_node_id,
        )
        keep_traceback(error, end.traceback)
        return error
    return RunCancelledError(f"run {run_id} was cancelled: {end.reason or 'no reason given'}", run_id=run_id)


async def follow_run_end(
    env: RunEnvironment, run_id: str, *, on_waiting: Callable[[], Awaitable[None]] | None = None
) -> dict[str, Any]:
    """The run's outputs once it completes (raises :class:`RunFailedError` if it fails or is cancelled).

    An end that a later retry superseded (a failed static run continued from
    its failed nodes) does not count. ``on_waiting`` is awaited each time the
    run starts waiting for an answer.
    """
    async with env.event_log.following(run_id) as (stored, live):
        builder = ChainBuilder()
        chain = [event for record in stored for event in builder.add(record.event)]
        retried_at = max(
            (event.seq for event in chain if isinstance(event, RunClaimed) and event.reason == "retry"), default=0
        )
        # A run that has ended is answered from the stored events; one that waits now gets on_waiting now. A
        # wait already answered (its run.waiting followed by the claim that continued it) calls nothing.
        for seen in chain:
            if seen.seq < retried_at:
                continue
            if isinstance(seen, RunCompleted):
                return dict(seen.outputs)
            _raise_end(run_id, seen)
        if on_waiting is not None and journal_state(run_id, builder.chain).status == "waiting":
            await on_waiting()
        async for record in live:
            for event in builder.add(record.event):
                if isinstance(event, RunCompleted):
                    return dict(event.outputs)
                _raise_end(run_id, event)
                if isinstance(event, RunWaiting) and on_waiting is not None:
                    await on_waiting()
    raise RunNotFoundError(f"stopped reading run {run_id} before it ended", run_id=run_id)


def _raise_end(run_id: str, event: Event) -> None:
    if isinstance(event, (RunFailed, RunCancelled)):
        raise run_failure(run_id, event)


def _children(run_id: str, chain: Sequence[Event]) -> list[str]:
    """Ids of the nested runs a run's journal may have started (node runs, child graph runs)."""

    ids = []
    for event in chain:
        if isinstance(event, NodeReady | NodeStarted) and event.node_id:
            ids.append(node_run_id(run_id, event.node_id, event.attempt))
        elif isinstance(event, ToolCalled) and event.node_id:
            ids.append(child_run_id(run_id, event.node_id))
    return list(dict.fromkeys(ids))


_ENDED_STATUS: dict[type[Event], str] = {RunCompleted: "succeeded", RunFailed: "failed", RunCancelled: "cancelled"}


async def force_cancel(env: RunEnvironment, run_id: str, reason: str, *, attempts: int = 3) -> str:
    """Journal ``run.cancelled`` for a run nobody is driving (waiting, or its driver did not react).

    Claims the run (fenced) first, so a driver still writing is fenced out.
    Open nested runs are cancelled the same way. Returns the run's status.
    """
    status = await force_end(env, run_id, RunCancelled, {"reason": reason}, claim_reason="cancel", attempts=attempts)
    if status != "cancelled":
        return status
    chain = journal_chain([record.event async for record in env.event_log.read_run(run_id)])
    for child in _children(run_id, chain):
        try:
            await force_cancel(env, child, reason or f"parent run {run_id} was cancelled")
        except RunNotFoundError:
            continue
    return "cancelled"


async def force_fail(env: RunEnvironment, run_id: str, error: BaseException) -> str:
    """Journal ``run.failed`` with ``error`` for a run its driver had to give up; returns the run's status."""
    fields = {"error_type": error_type_name(error), "message": str(error), "failed_node_id": None}
    return await force_end(env, run_id, RunFailed, fields, claim_reason="takeover")


async def force_end(
    env: RunEnvironment,
    run_id: str,
    end: type[RunCancelled] | type[RunFailed],
    fields: Mapping[str, Any],
    *,
    claim_reason: ClaimReason,
    attempts: int = 3,
) -> str:
    """Claim an unfinished run (fenced: whoever still writes to it is fenced out) and journal its end.

    Returns the run's status afterwards: that of an end already journaled, or the new one.
    """
    for _ in range(attempts):
        stored = [record async for record in env.event_log.read_run(run_id)]
        chain = journal_chain([record.event for record in stored])
        if not chain:
            raise RunNotFoundError(f"run {run_id} does not exist on this bus", run_id=run_id)
        last = chain[-1]
        for event in reversed(chain):
            if type(event) in _ENDED_STATUS:
                return _ENDED_STATUS[type(event)]
            if isinstance(event, RunClaimed):
                break
        writer = env.event_log.writer(run_id, last_stream_seq=stored[-1].stream_seq)
        journal = RunJournal(run_id, writer, env.worker_id, last_seq=last.seq)
        try:
            claimed = await journal.commit(
                RunClaimed, parent=last.seq, reason=claim_reason, previous_worker=last.worker
            )
            await journal.commit(end, parent=claimed.seq, **fields)
        except StaleWriterError:
            continue
        return _ENDED_STATUS[end]
    raise RunBusyError(f"run {run_id} kept changing while it was being ended; try again", run_id=run_id)


class RunManager:
    """``context.runs()``: start, wait for and cancel runs from inside a node."""

    __slots__ = ("_node_id", "_scope")

    def __init__(self, scope: RunScope, node_id: str) -> None:
        self._scope = scope
        self._node_id = node_id

    async def spawn_run(self, graph: object, inputs: Mapping[str, Any] | None = None) -> str:
        """Start ``graph`` as a child run (driven by this process, taken over if it dies); returns its id.

        The child's id is derived from this node and the call's order, so a
        replay of this node finds the child it spawned before.
        """
        spec = spec_of(graph)
        bound = bind_run_inputs(spec, inputs)
        scope = self._scope
        key = f"{self._node_id}:spawn"
        count = scope.node_counters.get(key, 0) + 1
        scope.node_counters[key] = count
        run_id = child_run_id(scope.run_id, f"{self._node_id}.spawn{count}")
        parent = ParentLink(run_id=scope.run_id, node_id=self._node_id, root_run_id=scope.root_run_id)
        await scope.env.runs.spawn_run(spec, bound, run_id, parent)
        return run_id

    async def wait_run(self, run_id: str) -> dict[str, Any]:
        """The outputs of run ``run_id`` once it completes; :class:`RunFailedError` if it fails or is cancelled."""
        return await follow_run_end(self._scope.env, run_id)

    async def run_and_wait(self, graph: object, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Spawn ``graph`` as a child run and return its outputs."""
        return await self.wait_run(await self.spawn_run(graph, inputs))

    async def cancel_run(self, run_id: str, reason: str = "") -> str:
        """Cancel run ``run_id`` wherever it runs; returns its status afterwards."""
        return await self._scope.env.runs.cancel_run(run_id, reason)
