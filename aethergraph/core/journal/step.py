"""The journaled step: the one protocol every journaled thing in a run goes through.

A step is something the code of a run does that must happen once however
often the run is replayed: a tool or service call, a wait, a channel
message, a value from ``context.now()/uuid()/random()``, an artifact save, a
memory record. Each is described by a :class:`StepKey` (its opening event's
type and the fields that identify it) and taken through these functions:

1. :func:`take_recorded` matches the key against the replay cursor: while
   recorded steps remain it returns the recorded step (or raises
   :class:`~aethergraph.errors.NonDeterminismError` naming run, sequence,
   recorded and attempted, and remembers it as the run's divergence); once
   they are used up it returns ``None`` and the step goes live (offline
   replay stops there instead).
2. Live, :func:`append_opening` journals the opening event (with the key's
   fields) as a child of the current causal cursor, and moves the cursor.
3. A call (:func:`run_call`) then executes, and journals its outcome
   (returned or failed) as a child of the opening; a recorded outcome is
   handed back on replay without executing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from types import CoroutineType, MappingProxyType
from typing import Any, NamedTuple, TypeVar

from aethergraph.core.errors import (
    NonDeterminismError,
    RunSuspended,
    failure_fields,
)
from aethergraph.core.journal.replay import Outcome, RecordedStep, rebuild_error
from aethergraph.core.journal.scope import RunScope, cursor
from aethergraph.core.wire.events import Event

__all__ = [
    "StepKey",
    "append_opening",
    "replayed_opening",
    "run_call",
    "suspend_point",
    "take_recorded",
]

E = TypeVar("E", bound=Event)


_NOTHING: Mapping[str, Any] = MappingProxyType({})


class StepKey(NamedTuple):
    """A step as the code takes it now.

    ``names`` are written on every event of the step and compared with the
    recorded opening on replay; ``compared`` are written on the opening and
    compared too (an arguments digest, a content hash); ``description`` is
    how a divergence names the attempted step. (A tuple: one is made per
    step, on the hot path.)
    """

    opening: type[Event]
    node_id: str | None
    description: str | Callable[[], str]  # a callable is asked only when the step diverged
    names: Mapping[str, Any] = _NOTHING
    compared: Mapping[str, Any] = _NOTHING

    def matches(self, recorded: Event) -> bool:
        if not isinstance(recorded, self.opening):
            return False
        return all(getattr(recorded, name) == value for name, value in (*self.names.items(), *self.compared.items()))


def take_recorded(scope: RunScope, key: StepKey) -> RecordedStep | None:
    """The recorded step this one replays, or ``None`` when it goes live; raises on divergence."""
    if scope.replay is None and scope.divergence is None and not scope.offline:
        return None  # a live run: nothing to replay (the hot path)
    if scope.divergence is not None:
        raise scope.divergence
    replay = scope.replaying()
    if replay is None:
        return None
    try:
        return replay.take(key.matches, key.description)
    except NonDeterminismError as exc:
        scope.divergence = exc
        raise


def replayed_opening(scope: RunScope, key: StepKey) -> Event | None:
    """For a one-event step: the recorded event (the cursor moves to it), or ``None`` when it goes live."""
    step = take_recorded(scope, key)
    if step is None:
        return None
    cursor.set(step.opening.seq)
    return step.opening


def append_opening(scope: RunScope, key: StepKey, **fields: Any) -> tuple[Event, Awaitable[int]]:
    """Journal the step's opening event (with the key's fields) under the causal cursor, and move the cursor."""
    event, committed = scope.journal.append(
        key.opening, parent=cursor.get() or None, node_id=key.node_id, **key.names, **key.compared, **fields
    )
    cursor.set(event.seq)
    return event, committed


ReturnedBuilder = Callable[[Any], "tuple[Mapping[str, Any], Any] | Awaitable[tuple[Mapping[str, Any], Any]]"]
"""Builds the returned event's fields from a call's result, and the value the call returns (or a coroutine of both)."""


async def run_call(
    scope: RunScope,
    key: StepKey,
    *,
    opening_fields: Mapping[str, Any],
    execute: Callable[[], Any],
    returned: tuple[type[Event], ReturnedBuilder],
    failed: type[Event],
    on_recorded: Callable[[Outcome], Awaitable[Any]],
    failing_node: str | None = None,
    raise_recorded_failure: bool = True,
    failed_extra: Callable[[BaseException], Mapping[str, Any]] | None = None,
) -> Any:
    """A call step: replay its recorded outcome, or journal the call, execute it and journal the outcome.

    Replaying, a recorded failure is raised again as the error it was, and a
    recorded return is handed to ``on_recorded`` for the caller's value (a
    recorded failure too, without ``raise_recorded_failure``); a
    call recorded without outcome (in flight when its process stopped)
    executes again under its recorded opening. Live, ``execute()`` runs with
    the opening as causal cursor; ``returned`` names the outcome event and
    builds its fields and the call's value from the result (an error there
    is the call's failure, journaled as ``failed``, with the fields
    ``failed_extra`` adds for the exception). ``failing_node`` is named as
    the failed node of the run if the failure ends it.
    """
    step = take_recorded(scope, key)
    called_seq: int | None = None
    if step is not None:
        outcome = step.outcome
        if outcome is not None:
            cursor.set(outcome.seq)
            if raise_recorded_failure and isinstance(outcome, failed):
                error = rebuild_error(outcome)  # type: ignore[arg-type]
                if failing_node is not None:
                    scope.failed_nodes[id(error)] = failing_node
                raise error
            return await on_recorded(outcome)
        called_seq = step.opening.seq
        scope.going_live()  # recorded as called, never finished: it executes again
    journal = scope.journal
    if called_seq is None:
        opening, _ = journal.append(
            key.opening, parent=cursor.get() or None, node_id=key.node_id, **key.names, **key.compared, **opening_fields
        )
        called_seq = opening.seq
    started = time.perf_counter_ns()
    outer = cursor.set(called_seq)
    outcome_cls, build = returned
    try:
        try:
            result = execute()
            if isinstance(result, CoroutineType):  # an async callable (a sync one pays no coroutine)
                result = await result
        finally:
            cursor.reset(outer)
        built = build(result)
        fields, value = await built if isinstance(built, CoroutineType) else built  # type: ignore[misc]
        # Appending refuses an outcome too large for an event at once: that, too, is the call's failure.
        returned_event, committed = _append_outcome(scope, key, outcome_cls, called_seq, started, fields)
    except Exception as exc:
        if failing_node is not None:
            scope.failed_nodes[id(exc)] = failing_node
        fields = failure_fields(exc) if failed_extra is None else {**failure_fields(exc), **failed_extra(exc)}
        failure, committed = _append_outcome(scope, key, failed, called_seq, started, fields)
        await committed
        cursor.set(failure.seq)
        raise
    await committed
    cursor.set(returned_event.seq)
    suspend_point(scope)
    return value


def suspend_point(scope: RunScope) -> None:
    """After a live step: in the always-suspend test mode, suspend here (the run continues by replay)."""
    if scope.suspend_after_each_step:
        raise RunSuspended(scope.run_id, "always-suspend test mode")


def _append_outcome(
    scope: RunScope, key: StepKey, cls: type[Event], called_seq: int, started_ns: int, fields: Mapping[str, Any]
) -> tuple[Event, Awaitable[int]]:
    return scope.journal.append(
        cls,
        parent=called_seq,
        node_id=key.node_id,
        **key.names,
        **fields,
        duration_us=(time.perf_counter_ns() - started_ns) // 1000,
    )
