"""Answering a run's wait and continuing the run: what a worker does with a resume command.

A resume names a run, optionally a wait (needed only when the run has more
than one open wait) and carries a payload. It is checked against the run's
journal (the run exists and has not ended, the wait is open, the payload
satisfies the wait's JSON Schema); a refused resume raises
:class:`ResumeRejectedError` and changes nothing. An accepted one is committed
as ``wait.resumed`` (or ``wait.expired``) by a writer that first claims the
run, so two resumes of one wait cannot both succeed, and the run continues by
replay from its top-level run.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aethergraph.core.errors import ResumeRejectedError, StaleWriterError
from aethergraph.core.journal.journal_state import JournalState, RunStatus, journal_state, select_wait
from aethergraph.core.journal.ports import RunEnvironment
from aethergraph.core.journal.run_journal import RunJournal
from aethergraph.core.journal.wait_tree import (
    LocatedWait,
    TreeRun,
    locate_wait,
    nested_runs,
    read_tree_run,
    step_children,
    wait_ref,
)
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.executor import claim_run, drive_run, resume_run
from aethergraph.core.wire.events import RunStarted, WaitExpired, WaitRequested, WaitResumed
from aethergraph.core.wire.payloads import validate_payload

__all__ = [
    "AcceptedResume",
    "AlreadyAnswered",
    "JournalState",
    "RunStatus",
    "accept_resume",
    "check_resume",
    "journal_state",
    "resolve_resume",
]


def check_resume(state: JournalState, wait_id: str | None, payload: Any, *, expire: bool = False) -> WaitRequested:
    """The open wait of this one run a resume answers, or :class:`ResumeRejectedError` saying why it cannot."""
    requested = select_wait(state, wait_id)
    if not expire:
        validate_payload(requested, payload)
    return requested


async def resolve_resume(
    env: RunEnvironment,
    run_id: str,
    wait_id: str | None,
    payload: Any,
    *,
    expire: bool = False,
    top: TreeRun | None = None,
) -> LocatedWait:
    """The open wait anywhere in ``run_id``'s tree that a resume answers, its payload checked.

    The one resolution behind the command handler, ``aethergraph.resume()``
    and ``aethergraph resume`` (see :func:`~aethergraph.core.journal.wait_tree.locate_wait`);
    raises :class:`ResumeRejectedError` saying why nothing can be answered.
    """
    located = await locate_wait(env, run_id, wait_id, top=top)
    if not expire:
        try:
            validate_payload(located.requested, payload)
        except ResumeRejectedError as exc:
            raise ResumeRejectedError(str(exc), run_id=run_id, reason=exc.reason, wait_id=located.ref) from None
    return located


@dataclass(frozen=True, kw_only=True)
class AcceptedResume:
    """A committed answer, and the continuation of the run that owns the wait.

    ``run_id`` holds the wait (the addressed run or one nested under it),
    ``wait_id`` names it as seen from the addressed run (``w4`` or
    ``<nested_run_id>/w4``), ``root_run_id`` is the run the continuation drives.
    """

    run_id: str
    root_run_id: str
    wait_id: str
    seq: int
    continuation: Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, kw_only=True)
class AlreadyAnswered:
    """The wait was answered before (event ``seq``, 0 if none is journaled): this command changes nothing.

    ``by_this_command`` when the answer is this very command's (it was
    delivered before); otherwise the command is an expiry that fell due after
    the wait was answered or its run ended. ``run_id`` is the addressed run.
    """

    run_id: str
    wait_id: str
    seq: int
    by_this_command: bool


async def _answered_before(
    env: RunEnvironment,
    top: TreeRun,
    wait_id: str | None,
    command_seq: int | None,
    expire: bool,
    *,
    whole_tree: bool,
) -> AlreadyAnswered | None:
    run_id, state = top.run_id, top.state
    if command_seq is not None:
        runs = [top]
        if whole_tree and state.started is not None:
            runs.extend(await nested_runs(env, top, everything=True))
        for run in runs:
            for closed in run.state.closed_waits.values():
                if closed.command_seq == command_seq:
                    ref = wait_ref(run_id, run.run_id, closed.wait_id)
                    return AlreadyAnswered(run_id=run_id, wait_id=ref, seq=closed.seq, by_this_command=True)
    if expire and wait_id is not None and wait_id not in state.open_waits:
        answer = state.closed_waits.get(wait_id)
        seq = answer.seq if answer is not None else 0
        return AlreadyAnswered(run_id=run_id, wait_id=wait_id, seq=seq, by_this_command=False)
    return None


async def _driving_root(env: RunEnvironment, run: TreeRun, known: dict[str, TreeRun]) -> TreeRun:
    """The run whose driver continues ``run``: its tree's top-level run, or the spawned run it is a step of."""
    current = run
    while True:
        started = current.state.started
        assert started is not None
        if started.parent_run_id is None or current.spawned:
            return current
        parent = known.get(started.parent_run_id) or await read_tree_run(env, started.parent_run_id)
        if parent.state.started is None:
            raise ResumeRejectedError(
                f"run {run.run_id} belongs to run {started.parent_run_id}, which has no journal",
                run_id=run.run_id,
                reason="unknown_run",
            )
        if current.run_id not in step_children(parent, open_only=False):
            return current  # spawned with context.runs(): driven on its own, under its own ownership record
        current = parent


async def accept_resume(
    env: RunEnvironment,
    run_id: str,
    *,
    wait_id: str | None,
    payload: Any,
    expire: bool = False,
    command_seq: int | None = None,
    graphs: Callable[[str], CallableSpec],
    before_claim: Callable[[str, str], Awaitable[None]] | None = None,
    attempts: int = 3,
    first_delivery: bool = False,
) -> AcceptedResume | AlreadyAnswered:
    """Check and commit an answer to a wait anywhere in ``run_id``'s tree; return how to continue the run.

    Returns :class:`AlreadyAnswered` if this very command (``command_seq``)
    was already committed (a redelivered command, whatever wait it named or
    whether the run has ended since; with ``first_delivery`` only the
    addressed run's journal is searched for it, since no earlier delivery
    exists), or if it is an expiry of a wait that is no longer open. Raises
    :class:`ResumeRejectedError` if the resume is refused, and
    :class:`~aethergraph.errors.GraphNotFoundError` (before anything is
    written) if ``graphs`` does not know the graph of the run to continue.
    ``before_claim(root_run_id, root_graph_id)`` runs alongside the claim
    (the driver records its ownership of the run there) and has finished
    before the answer is written. The answer is stored when this returns: a
    continuation started earlier could run a step with side effects before
    learning that a concurrent resume of the same wait fenced it out.
    """
    for attempt in range(attempts):
        top = await read_tree_run(env, run_id)
        answered = await _answered_before(env, top, wait_id, command_seq, expire, whole_tree=not first_delivery)
        if answered is not None:
            return answered
        located = await resolve_resume(env, run_id, wait_id, payload, expire=expire, top=top)
        holder, requested = located.run, located.requested
        started = holder.state.started
        assert started is not None
        spec = graphs(started.graph_id)
        root = await _driving_root(env, holder, {top.run_id: top})
        root_started = root.state.started
        assert isinstance(root_started, RunStarted)
        root_spec = spec if root is holder else graphs(root_started.graph_id)
        owning = asyncio.ensure_future(before_claim(root.run_id, root_spec.name)) if before_claim else None
        try:
            scope = await claim_run(spec, started, holder.chain, holder.last_stream_seq, env, reason="resume")
        except StaleWriterError:
            if owning is not None:
                await owning
            if attempt + 1 == attempts:
                raise
            continue  # someone appended meanwhile (often: the same wait answered); check again
        except BaseException:
            if owning is not None:
                await asyncio.gather(owning, return_exceptions=True)
            raise
        if owning is not None:
            await owning  # recorded before the answer: if this process dies now, the run is found and taken over
        answer = await _commit_answer(scope.journal, requested, payload, expire, command_seq)
        continuation: Callable[[], Awaitable[dict[str, Any]]]
        if root is holder:
            assert scope.replay is not None
            scope.replay.resolutions[requested.wait_id] = answer
            continuation = functools.partial(drive_run, spec, started.inputs, scope, started.seq)
        else:
            continuation = functools.partial(resume_run, root_spec, root.run_id, env=env, reason="resume")
        return AcceptedResume(
            run_id=holder.run_id,
            root_run_id=root.run_id,
            wait_id=located.ref,
            seq=answer.seq,
            continuation=continuation,
        )
    raise AssertionError("unreachable")


async def _commit_answer(
    journal: RunJournal,
    requested: WaitRequested,
    payload: Any,
    expire: bool,
    command_seq: int | None,
) -> WaitResumed | WaitExpired:
    """Journal ``wait.resumed`` (or ``wait.expired``) answering ``requested``; return the event as committed."""
    common: dict[str, Any] = {"wait_id": requested.wait_id, "command_seq": command_seq, "node_id": requested.node_id}
    fields: dict[str, Any] = {} if expire else {"payload": payload}
    cls: type[WaitResumed] | type[WaitExpired] = WaitExpired if expire else WaitResumed
    return await journal.commit(cls, parent=requested.seq, **fields, **common)
