"""Executing graph functions as journaled runs, and tools as journaled steps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aethergraph.core.context.node_context import NodeContext
from aethergraph.core.errors import (
    GraphMismatchError,
    NonDeterminismError,
    NotInRunError,
    RunCancelledError,
    RunExistsError,
    RunFailedError,
    RunNotFoundError,
    RunSuspended,
    StaleWriterError,
    cancel_was_requested,
    error_type_name,
    failure_fields,
)
from aethergraph.core.ids import QUEUE_OWNER, ROOT_NODE, check_run_id, child_run_id, new_run_id
from aethergraph.core.journal.ports import ParentLink, RunEnvironment
from aethergraph.core.journal.replay import Outcome, ReplayCursor
from aethergraph.core.journal.run_journal import RunJournal, load_journal
from aethergraph.core.journal.scope import RunScope, current_scope, cursor, run_scope_var
from aethergraph.core.journal.step import StepKey, run_call
from aethergraph.core.model.input_types import check_input_types
from aethergraph.core.model.spec import CallableSpec, normalise_outputs
from aethergraph.core.run.environment import launch_top_level
from aethergraph.core.run.static_run import drive_static_run
from aethergraph.core.wire.codec import digest, normalise_value
from aethergraph.core.wire.events import (
    AnyEvent,
    ClaimReason,
    RunCancelled,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunWaiting,
    ToolCalled,
    ToolFailed,
    ToolReturned,
)

__all__ = [
    "call_graph",
    "call_tool_detached",
    "call_tool_detached_async",
    "call_tool_in_run",
    "claim_run",
    "drive_run",
    "error_type_name",
    "execute_run",
    "queue_run",
    "resume_run",
]


async def execute_run(
    spec: CallableSpec,
    inputs: Mapping[str, Any],
    *,
    run_id: str | None = None,
    env: RunEnvironment,
    parent_node_id: str | None = None,
    parent: ParentLink | None = None,
    max_concurrency: int | None = None,
    on_started: Callable[[], None] | None = None,
    before_body: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Run ``spec`` (a graph_fn, a static graph, or a tool as a one-step run) and return its outputs.

    Inside another run this is a child run linked to the calling run and node
    (``parent`` links it explicitly instead). The run's events: ``run.started``,
    the steps, then ``run.completed``, ``run.failed`` or ``run.cancelled``. An
    exception from the body is journaled and re-raised unchanged.
    ``before_body`` is awaited once ``run.started`` is committed and before
    the body runs (a driver confirms there the ownership record it wrote
    alongside ``run.started``); if it raises, the run is failed with that
    error (journaled before any step) and the error is raised.
    ``on_started`` is called after that.
    """
    parent_scope = current_scope()
    if parent is None and parent_scope is not None and parent_node_id is not None:
        parent = ParentLink(run_id=parent_scope.run_id, node_id=parent_node_id, root_run_id=parent_scope.root_run_id)
    run_id = check_run_id(run_id) if run_id is not None else new_run_id()
    journal = RunJournal(run_id, env.event_log.writer(run_id), env.worker_id)
    normalised_inputs, _ = normalise_value(dict(inputs), what=f"the inputs of {spec.label}")
    plan_digest = spec.task_graph().digest if spec.kind == "static" else ""
    start_seq = await commit_run_started(
        journal,
        graph_id=spec.name,
        inputs=normalised_inputs,
        parent_run_id=parent.run_id if parent else None,
        parent_node_id=parent.node_id if parent else None,
        root_run_id=parent.root_run_id if parent else None,
        plan_digest=plan_digest,
        max_concurrency=max_concurrency,
    )
    if before_body is not None:
        try:
            await before_body()
        except Exception as exc:
            fields = {"error_type": error_type_name(exc), "message": str(exc), "failed_node_id": None}
            await _journal_end(journal, RunFailed, parent=start_seq, **fields)
            raise
    if on_started is not None:
        on_started()
        await asyncio.sleep(0)  # the starter goes on first, not after the body's first step
    scope = RunScope(
        make_context=NodeContext,
        run_id=run_id,
        graph_id=spec.name,
        root_run_id=parent.root_run_id if parent else run_id,
        journal=journal,
        env=env,
        suspend_after_each_step=env.always_suspend,
        max_concurrency=max_concurrency,
    )
    return await drive_run(spec, inputs, scope, start_seq)


async def queue_run(
    spec: CallableSpec,
    inputs: Mapping[str, Any],
    *,
    run_id: str,
    env: RunEnvironment,
    max_concurrency: int | None = None,
) -> None:
    """Journal a top-level run's ``run.started`` (``queued``, written as the run queue) without driving it.

    A worker serving the graph claims the run (``run.claimed``, reason
    ``takeover``) and runs its body from the start. Raises
    :class:`RunExistsError` if ``run_id`` is taken.
    """
    journal = RunJournal(check_run_id(run_id), env.event_log.writer(run_id), QUEUE_OWNER)
    normalised_inputs, _ = normalise_value(dict(inputs), what=f"the inputs of {spec.label}")
    fields: dict[str, Any] = {
        "graph_id": spec.name,
        "inputs": normalised_inputs,
        "plan_digest": spec.task_graph().digest if spec.kind == "static" else "",
        "max_concurrency": max_concurrency,
        "queued": True,
    }
    await commit_run_started(journal, **fields)


async def commit_run_started(journal: RunJournal, **fields: Any) -> int:
    """Commit a new run's ``run.started``; raises :class:`RunExistsError` if a run with its id exists.

    The event is fenced (nothing may be stored for the run before it), so two
    starts under one id never both succeed.
    """
    try:
        return (await journal.commit(RunStarted, parent=None, **fields)).seq
    except StaleWriterError as exc:
        run_id = journal.run_id
        raise RunExistsError(
            f"run {run_id} already exists; pick another id or omit --run-id (run_id=) to get a new one",
            run_id=run_id,
            seq=exc.seq,
        ) from None


async def resume_run(
    spec: CallableSpec,
    run_id: str,
    *,
    env: RunEnvironment,
    reason: ClaimReason = "resume",
) -> dict[str, Any]:
    """Continue a run from its journal: replay the recorded steps, then go live.

    A run that already completed returns its recorded outputs without running
    anything; one that failed or was cancelled raises :class:`RunFailedError`.
    """
    chain, last_stream_seq = await load_journal(env, check_run_id(run_id))
    if not chain or not isinstance(chain[0], RunStarted):
        raise RunNotFoundError(f"run {run_id} has no journal on this bus", run_id=run_id)
    started, last = chain[0], chain[-1]
    if started.graph_id != spec.name:
        raise GraphMismatchError(
            f"run {run_id} is a run of {started.graph_id!r}, not of {spec.label}; resume it with that graph",
            run_id=run_id,
            recorded_graph=started.graph_id,
            graph=spec.name,
        )
    if isinstance(last, RunCompleted):
        return dict(last.outputs)
    if isinstance(last, RunCancelled):
        raise RunCancelledError(f"run {run_id} already ended: cancelled", run_id=run_id)
    if isinstance(last, RunFailed):
        raise RunFailedError(
            f"run {run_id} already ended: {last.error_type}: {last.message}",
            run_id=run_id,
            error_type=last.error_type,
            node_id=last.failed_node_id,
        )
    scope = await claim_run(spec, started, chain, last_stream_seq, env, reason=reason)
    return await drive_run(spec, started.inputs, scope, started.seq)


async def claim_run(
    spec: CallableSpec,
    started: RunStarted,
    chain: list[AnyEvent],
    last_stream_seq: int,
    env: RunEnvironment,
    *,
    reason: ClaimReason,
) -> RunScope:
    """Take an unfinished run over for replay: commit a fenced ``run.claimed`` opening this writer's epoch.

    Raises :class:`StaleWriterError` if anyone appended to the run after ``chain`` was read.
    """
    run_id = started.run_id
    if spec.kind == "static" and started.plan_digest and started.plan_digest != spec.task_graph().digest:
        raise NonDeterminismError(
            f"run {run_id} was started from another version of graph {spec.name!r} (structure digest "
            f"{started.plan_digest}, this process builds {spec.task_graph().digest}); continue it with the "
            "code it started with, or start a new run",
            run_id=run_id,
            seq=started.seq,
            recorded=f"graph digest {started.plan_digest}",
            attempted=f"graph digest {spec.task_graph().digest}",
        )
    writer = env.event_log.writer(run_id, last_stream_seq=last_stream_seq)
    journal = RunJournal(run_id, writer, env.worker_id, last_seq=chain[-1].seq)
    await journal.commit(RunClaimed, parent=chain[-1].seq, reason=reason, previous_worker=chain[-1].worker)
    replay = ReplayCursor(run_id, chain)
    return RunScope(
        make_context=NodeContext,
        run_id=run_id,
        graph_id=spec.name,
        root_run_id=started.root_run_id or run_id,
        journal=journal,
        env=env,
        replay=replay,
        checkpoints={key: event.state for key, event in replay.checkpoints.items()},
        suspend_after_each_step=env.always_suspend,
        history=chain,
        max_concurrency=started.max_concurrency,
        claim_reason=reason,
    )


async def drive_run(spec: CallableSpec, inputs: Mapping[str, Any], scope: RunScope, start_seq: int) -> dict[str, Any]:
    """Run the body; in always-suspend mode, reload from the stream and replay after every step.

    Raises :class:`RunSuspended` (with its ``wait_id``) when the run waits for an answer.
    """
    while True:
        try:
            if spec.kind == "static":
                return await drive_static_run(spec, inputs, scope, scope.history)
            return await _run_body(spec, inputs, scope, start_seq)
        except RunSuspended as suspended:
            if not scope.suspend_after_each_step or suspended.wait_id is not None:
                raise
            chain, last_stream_seq = await load_journal(scope.env, scope.run_id)
            started = chain[0]
            assert isinstance(started, RunStarted)
            scope = await claim_run(spec, started, chain, last_stream_seq, scope.env, reason="replay")
            inputs = started.inputs


async def _run_body(spec: CallableSpec, inputs: Mapping[str, Any], scope: RunScope, start_seq: int) -> dict[str, Any]:
    journal = scope.journal
    scope_token = run_scope_var.set(scope)
    cursor_token = cursor.set(start_seq)
    try:
        if spec.kind == "tool":
            outputs = await call_tool_in_run(scope, spec, (), inputs)
        else:
            kwargs = dict(inputs)
            if spec.context_param is not None:
                kwargs[spec.context_param] = NodeContext(scope, ROOT_NODE)
            outputs = normalise_outputs(spec, await spec.fn(**kwargs))
        replay = scope.replay
        if scope.divergence is None and replay is not None and replay.active:
            scope.divergence = replay.unfinished()
        if scope.divergence is not None:
            raise scope.divergence
        normalised, _ = normalise_value(outputs, what=spec.label)
        await journal.commit(RunCompleted, parent=cursor.get(), outputs=normalised)
        return dict(normalised)
    except RunSuspended as suspended:
        if suspended.wait_id is not None:
            # The run (or a nested run) waits for an answer: record that it released its worker.
            await journal.commit(
                RunWaiting,
                parent=cursor.get(),
                wait_id=suspended.wait_id,
                wait_run_id=suspended.wait_run_id,
                kind=suspended.kind,
                prompt=suspended.prompt,
            )
        raise
    except asyncio.CancelledError as exc:
        if cancel_was_requested(exc):  # else the process is stopping: the run is handed over, not ended
            await _journal_end(journal, RunCancelled, parent=cursor.get(), reason="cancelled")
        raise
    except Exception as exc:  # noqa: BLE001 - journaled, then re-raised
        reported = scope.divergence or exc
        await _journal_end(
            journal,
            RunFailed,
            parent=cursor.get(),
            failed_node_id=scope.failed_nodes.get(id(reported)),
            **failure_fields(reported),
        )
        raise reported from (None if reported is exc else exc)
    finally:
        cursor.reset(cursor_token)
        run_scope_var.reset(scope_token)


async def _journal_end(journal: RunJournal, cls: type[RunFailed] | type[RunCancelled], **fields: Any) -> None:
    """Journal how a run ended; if the bus refuses, the original error still wins."""
    try:
        await journal.commit(cls, **fields)
    except Exception:  # noqa: BLE001 - the body's exception is the one to report
        return


def _call_kwargs(spec: CallableSpec, arguments: dict[str, Any], context: NodeContext | None) -> dict[str, Any]:
    if spec.context_param is not None:
        arguments = {**arguments, spec.context_param: context}
    return arguments


async def call_tool_in_run(
    scope: RunScope, spec: CallableSpec, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """One journaled step: ``tool.called``, the tool, then ``tool.returned`` (committed) or ``tool.failed``.

    On replay a recorded outcome is returned (or its failure raised) without
    executing; a step recorded as called but without outcome (in flight when
    its worker stopped) executes again under the same ``tool.called``.
    """
    if scope.divergence is not None:
        raise scope.divergence
    node_id = scope.next_node_id(spec.name)
    arguments = spec.bind(args, kwargs)
    normalised_args, raw_args = normalise_value(arguments, what=spec.arguments_label)
    args_digest = digest(raw_args)
    key = StepKey(
        ToolCalled,
        node_id,
        lambda: f"tool {spec.name!r} (node {node_id}, arguments digest {args_digest})",
        {"tool": spec.name},
        {"args_digest": args_digest},
    )

    def execute() -> Any:
        if spec.kind in ("graph_fn", "static"):
            return _run_child(scope, spec, arguments, node_id)
        context = NodeContext(scope, node_id) if spec.context_param is not None else None
        return spec.fn(**_call_kwargs(spec, arguments, context))  # an async tool's coroutine is awaited by the step

    def outputs_of(result: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        outputs, _ = normalise_value(normalise_outputs(spec, result), what=spec.label)
        return {"outputs": outputs}, dict(outputs)

    outputs: dict[str, Any] = await run_call(
        scope,
        key,
        opening_fields={"args": normalised_args},
        execute=execute,
        returned=(ToolReturned, outputs_of),
        failed=ToolFailed,
        on_recorded=_recorded_outputs,
        failing_node=node_id,
    )
    return outputs


async def _recorded_outputs(outcome: Outcome) -> dict[str, Any]:
    assert isinstance(outcome, ToolReturned)
    return dict(outcome.outputs)


async def _run_child(scope: RunScope, spec: CallableSpec, arguments: dict[str, Any], node_id: str) -> dict[str, Any]:
    """A graph_fn called inside a run: a child run with a deterministic id, as one step of the parent.

    If the step runs again (its parent was interrupted while the child ran),
    the existing child run is continued instead of started twice.
    """
    run_id = child_run_id(scope.run_id, node_id)
    try:
        return await execute_run(spec, arguments, run_id=run_id, env=scope.env, parent_node_id=node_id)
    except StaleWriterError as exc:
        if exc.seq != 1:
            raise
        return await resume_run(spec, run_id, env=scope.env)


async def call_graph(spec: CallableSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``await g(...)`` of a graph: a nested step inside a run, else a new top-level run."""
    scope = current_scope()
    if scope is not None:
        return await call_tool_in_run(scope, spec, args, kwargs)
    return await launch_top_level(spec, check_input_types(spec, spec.bind(args, kwargs)))


def _detached_context(spec: CallableSpec, kwargs: Mapping[str, Any]) -> NodeContext | None:
    if spec.context_param is None:
        return None
    given = kwargs.get(spec.context_param)
    if isinstance(given, NodeContext):
        return given
    raise NotInRunError(
        f"{spec.label} takes a NodeContext ({spec.context_param!r}) but was called outside any run; "
        f"call it inside a graph_fn, run it with aethergraph.run({spec.name}, inputs), "
        f"or pass {spec.context_param}=<a NodeContext>"
    )


def call_tool_detached(spec: CallableSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A sync tool called outside any run: execute it now, not journaled."""
    context = _detached_context(spec, kwargs)
    arguments = spec.bind(args, kwargs)
    return normalise_outputs(spec, spec.fn(**_call_kwargs(spec, arguments, context)))


async def call_tool_detached_async(
    spec: CallableSpec, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    context = _detached_context(spec, kwargs)
    arguments = spec.bind(args, kwargs)
    return normalise_outputs(spec, await spec.fn(**_call_kwargs(spec, arguments, context)))
