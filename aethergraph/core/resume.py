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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ResumeRejectedError, StaleWriterError
from .events import (
    Event,
    LogRecorded,
    RunCancelled,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunWaiting,
    WaitExpired,
    WaitRequested,
    WaitResumed,
)
from .executor import claim_run, drive_run, load_journal, resume_run
from .payloads import validate_payload
from .ports import RunEnvironment
from .spec import CallableSpec

__all__ = [
    "AcceptedResume",
    "AlreadyAnswered",
    "JournalState",
    "RunStatus",
    "accept_resume",
    "check_resume",
    "journal_state",
]

RunStatus = Literal["unknown", "running", "waiting", "succeeded", "failed", "cancelled"]


@dataclass(kw_only=True)
class JournalState:
    """What a run's journal says about it now."""

    run_id: str
    status: RunStatus
    started: RunStarted | None = None
    ended: RunCompleted | RunFailed | RunCancelled | None = None
    open_waits: dict[str, WaitRequested] = field(default_factory=dict)
    closed_waits: dict[str, WaitResumed | WaitExpired] = field(default_factory=dict)
    waiting_on: RunWaiting | None = None
    last_seq: int = 0


def journal_state(run_id: str, chain: Sequence[Event]) -> JournalState:
    """Fold a run's journal into its status, its open and closed waits and how it ended."""
    state = JournalState(run_id=run_id, status="unknown")
    if not chain or not isinstance(chain[0], RunStarted):
        return state
    state.started = chain[0]
    state.status = "running"
    state.last_seq = chain[-1].seq
    for event in chain:
        if isinstance(event, WaitRequested):
            state.open_waits[event.wait_id] = event
        elif isinstance(event, (WaitResumed, WaitExpired)):
            state.open_waits.pop(event.wait_id, None)
            state.closed_waits[event.wait_id] = event
        elif isinstance(event, RunCompleted):
            state.ended, state.status = event, "succeeded"
        elif isinstance(event, RunFailed):
            state.ended, state.status = event, "failed"
        elif isinstance(event, RunCancelled):
            state.ended, state.status = event, "cancelled"
        elif isinstance(event, RunClaimed) and state.ended is not None:
            state.ended, state.status = None, "running"  # a failed static run retried from its failed nodes
    if state.ended is None:
        last = next((event for event in reversed(chain) if not isinstance(event, LogRecorded)), None)
        if isinstance(last, RunWaiting):
            state.waiting_on = last
            state.status = "waiting"
        elif isinstance(last, WaitRequested) and last.wait_id in state.open_waits:
            state.status = "waiting"
    return state


def _select_wait(state: JournalState, wait_id: str | None) -> WaitRequested:
    run_id = state.run_id
    if state.started is None:
        raise ResumeRejectedError(
            f"run {run_id} does not exist on this bus (no run.started event)", run_id=run_id, reason="unknown_run"
        )
    if state.ended is not None:
        raise ResumeRejectedError(
            f"run {run_id} already ended ({state.status}); there is nothing to resume",
            run_id=run_id,
            reason="run_ended",
            wait_id=wait_id,
        )
    if wait_id is None:
        if len(state.open_waits) == 1:
            return next(iter(state.open_waits.values()))
        if not state.open_waits:
            raise ResumeRejectedError(
                f"run {run_id} has no open wait", run_id=run_id, reason="no_open_wait", wait_id=None
            )
        raise ResumeRejectedError(
            f"run {run_id} has {len(state.open_waits)} open waits ({', '.join(sorted(state.open_waits))}); "
            "name one with wait_id",
            run_id=run_id,
            reason="ambiguous_wait",
        )
    requested = state.open_waits.get(wait_id)
    if requested is not None:
        return requested
    closed = state.closed_waits.get(wait_id)
    if closed is not None:
        how = "resumed" if isinstance(closed, WaitResumed) else "expired"
        raise ResumeRejectedError(
            f"wait {wait_id} of run {run_id} is closed: it was already {how} (event {closed.seq}); "
            "a wait is answered once",
            run_id=run_id,
            reason="wait_closed",
            wait_id=wait_id,
        )
    raise ResumeRejectedError(
        f"run {run_id} has no wait {wait_id!r}; open waits: {sorted(state.open_waits) or 'none'}",
        run_id=run_id,
        reason="unknown_wait",
        wait_id=wait_id,
    )


def check_resume(state: JournalState, wait_id: str | None, payload: Any, *, expire: bool = False) -> WaitRequested:
    """The open wait a resume answers, or :class:`ResumeRejectedError` saying why it cannot."""
    requested = _select_wait(state, wait_id)
    if not expire:
        validate_payload(requested, payload)
    return requested


@dataclass(frozen=True, kw_only=True)
class AcceptedResume:
    """A committed answer, and the continuation of the run that owns the wait."""

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
    the wait was answered or its run ended.
    """

    run_id: str
    wait_id: str
    seq: int
    by_this_command: bool


def _answered_before(
    state: JournalState, wait_id: str | None, command_seq: int | None, expire: bool
) -> AlreadyAnswered | None:
    if command_seq is not None:
        for closed in state.closed_waits.values():
            if closed.command_seq == command_seq:
                return AlreadyAnswered(
                    run_id=state.run_id, wait_id=closed.wait_id, seq=closed.seq, by_this_command=True
                )
    if expire and wait_id is not None and wait_id not in state.open_waits:
        answer = state.closed_waits.get(wait_id)
        seq = answer.seq if answer is not None else 0
        return AlreadyAnswered(run_id=state.run_id, wait_id=wait_id, seq=seq, by_this_command=False)
    return None


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
) -> AcceptedResume | AlreadyAnswered:
    """Check and commit an answer to a wait; return how to continue the run.

    Returns :class:`AlreadyAnswered` if this very command (``command_seq``)
    was already committed (a redelivered command, whatever wait it named or
    whether the run has ended since), or if it is an expiry of a wait that is
    no longer open. Raises :class:`ResumeRejectedError` if the resume is
    refused, and :class:`~aethergraph.errors.GraphNotFoundError` (before
    anything is written) if ``graphs`` does not know the run's graph.
    ``before_claim(root_run_id, root_graph_id)`` runs alongside the claim
    (the driver records its ownership of the run there) and has finished
    before the answer is written. The answer is stored when this returns: a
    continuation started earlier could run a step with side effects before
    learning that a concurrent resume of the same wait fenced it out.
    """
    for attempt in range(attempts):
        chain, last_stream_seq = await load_journal(env, run_id)
        state = journal_state(run_id, chain)
        answered = _answered_before(state, wait_id, command_seq, expire)
        if answered is not None:
            return answered
        requested = check_resume(state, wait_id, payload, expire=expire)
        started = state.started
        assert started is not None
        spec = graphs(started.graph_id)
        root_run_id = started.root_run_id or run_id
        root_spec = spec if root_run_id == run_id else None
        if root_spec is None:
            root_chain, _ = await load_journal(env, root_run_id)
            root_started = root_chain[0] if root_chain else None
            if not isinstance(root_started, RunStarted):
                raise ResumeRejectedError(
                    f"run {run_id} belongs to run {root_run_id}, which has no journal",
                    run_id=run_id,
                    reason="unknown_run",
                )
            root_spec = graphs(root_started.graph_id)
        owning = asyncio.ensure_future(before_claim(root_run_id, root_spec.name)) if before_claim else None
        try:
            scope = await claim_run(spec, started, chain, last_stream_seq, env, reason="resume")
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
        common: dict[str, Any] = {"wait_id": requested.wait_id, "command_seq": command_seq}
        if expire:
            answer: WaitResumed | WaitExpired
            seq = await scope.journal.commit(WaitExpired, parent=requested.seq, node_id=requested.node_id, **common)
        else:
            seq = await scope.journal.commit(
                WaitResumed, parent=requested.seq, node_id=requested.node_id, payload=payload, **common
            )
        answer_cls = WaitExpired if expire else WaitResumed
        answer = answer_cls(
            run_id=run_id,
            seq=seq,
            ts=0,
            worker=env.worker_id,
            parent=requested.seq,
            node_id=requested.node_id,
            **({} if expire else {"payload": payload}),
            **common,
        )
        continuation: Callable[[], Awaitable[dict[str, Any]]]
        if root_run_id == run_id:
            assert scope.replay is not None
            scope.replay.resolutions[requested.wait_id] = answer
            continuation = functools.partial(drive_run, spec, started.inputs, scope, started.seq)
        else:
            continuation = functools.partial(resume_run, root_spec, root_run_id, env=env, reason="resume")
        return AcceptedResume(
            run_id=run_id,
            root_run_id=root_run_id,
            wait_id=requested.wait_id,
            seq=seq,
            continuation=continuation,
        )
    raise AssertionError("unreachable")
