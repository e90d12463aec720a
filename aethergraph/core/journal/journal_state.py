"""What a run's journal says about it now: its status, its open and closed waits, how it ended.

:func:`journal_state` folds one run's journal (the chain of its events, see
the journal rule); :func:`select_wait` picks the open wait of that one run a
resume answers, or says why there is none. The tree of runs under a run is
searched in :mod:`aethergraph.core.journal.wait_tree`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from aethergraph.core.errors import ResumeRejectedError
from aethergraph.core.wire.events import (
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

__all__ = ["JournalState", "RunStatus", "journal_state", "select_wait"]

RunStatus = Literal["unknown", "queued", "running", "waiting", "succeeded", "failed", "cancelled"]


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
    # A submitted run is queued until a worker claims it.
    state.status = "queued" if chain[0].queued else "running"
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
        elif isinstance(event, RunClaimed):
            # A queued run taken by a worker, or a failed static run retried from its failed nodes.
            state.ended, state.status = None, "running"
    if state.ended is None:
        last = next((event for event in reversed(chain) if not isinstance(event, LogRecorded)), None)
        if isinstance(last, RunWaiting):
            state.waiting_on = last
            state.status = "waiting"
        elif isinstance(last, WaitRequested) and last.wait_id in state.open_waits:
            state.status = "waiting"
    return state


def select_wait(state: JournalState, wait_id: str | None) -> WaitRequested:
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
