"""Journaled waits: a run asks for an answer and continues when it arrives.

A wait is the event pair ``wait.requested`` / ``wait.resumed`` (or
``wait.expired``). Live, the run commits ``wait.requested`` and then either
reads the answer inline (a cooperative wait: the coroutine stays in memory)
or suspends (a durable wait: the run releases its coroutine and its worker
until a resume command arrives). On replay the recorded answer is returned
without asking again, and a wait that is still open suspends the run again.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DecorationError, NonDeterminismError, RunSuspended, WaitExpiredError
from .events import WaitExpired, WaitRequested, WaitResumed
from .payloads import validate_payload
from .scope import RunScope, cursor

__all__ = ["Wait", "InlineAnswer", "deadline_micros", "wait_for"]

InlineAnswer = Callable[[WaitRequested], Awaitable[Any]]
"""Reads a wait's answer in-process (e.g. from a terminal); returns the payload."""


@dataclass(frozen=True, kw_only=True)
class Wait:
    """What a run waits for: shown to whoever answers, checked when they do.

    ``schema`` is the JSON Schema the resume payload must satisfy;
    ``deadline`` (an aware datetime, or a timedelta from now) makes the wait
    expire with :class:`~aethergraph.errors.WaitExpiredError` if nobody
    answers in time; ``channel`` names where the prompt is shown.
    """

    kind: str = "external"
    prompt: str = ""
    schema: Mapping[str, Any] = field(default_factory=dict)
    deadline: _dt.datetime | _dt.timedelta | None = None
    channel: str = "external"

    def __post_init__(self) -> None:
        if not isinstance(self.schema, Mapping):
            raise DecorationError(f"Wait.schema must be a JSON Schema dict, got {type(self.schema).__name__}")
        deadline = self.deadline
        if isinstance(deadline, _dt.datetime) and deadline.tzinfo is None:
            raise DecorationError(
                "Wait.deadline must be timezone-aware (e.g. datetime.now(timezone.utc) + timedelta(hours=1)) "
                "or a timedelta from now"
            )


def deadline_micros(deadline: _dt.datetime | _dt.timedelta | None, now_us: int) -> int | None:
    if deadline is None:
        return None
    if isinstance(deadline, _dt.timedelta):
        return now_us + int(deadline.total_seconds() * 1_000_000)
    return int(deadline.timestamp() * 1_000_000)


def _resolve(scope: RunScope, requested: WaitRequested, resolution: WaitResumed | WaitExpired) -> Any:
    cursor.set(resolution.seq)
    if isinstance(resolution, WaitExpired):
        raise WaitExpiredError(
            f"wait {requested.wait_id} of run {scope.run_id} ({requested.kind}: {requested.prompt!r}) "
            "passed its deadline without an answer",
            run_id=scope.run_id,
            wait_id=requested.wait_id,
            node_id=requested.node_id,
        )
    return resolution.payload


def _suspend(scope: RunScope, requested: WaitRequested) -> RunSuspended:
    return RunSuspended(
        scope.run_id,
        f"waiting for {requested.kind} wait {requested.wait_id}",
        wait_id=requested.wait_id,
        kind=requested.kind,
        prompt=requested.prompt,
    )


async def wait_for(scope: RunScope, node_id: str, wait: Wait, *, inline: InlineAnswer | None = None) -> Any:
    """Wait for an answer to ``wait`` and return its payload.

    Replaying, the recorded answer is returned (an expired wait raises
    :class:`WaitExpiredError` again). Live, ``wait.requested`` is committed;
    then ``inline`` reads the answer if given and the environment allows it,
    else the run suspends until a resume command answers the wait.
    """
    if scope.divergence is not None:
        raise scope.divergence
    replay = scope.replaying()
    if replay is not None:
        try:
            recorded = replay.take_wait(wait.kind, node_id)
        except NonDeterminismError as exc:
            scope.divergence = exc
            raise
        if recorded is not None:
            cursor.set(recorded.seq)
            resolution = replay.resolutions.get(recorded.wait_id)
            if resolution is not None:
                return _resolve(scope, recorded, resolution)
            if inline is not None and scope.env.waits.inline_answers:
                return await _answer_inline(scope, recorded, inline)
            raise _suspend(scope, recorded)
    journal = scope.journal
    wait_id = f"w{journal.last_seq + 1}"
    deadline_us = deadline_micros(wait.deadline, time.time_ns() // 1000)
    requested_seq = await journal.commit(
        WaitRequested,
        parent=cursor.get() or None,
        node_id=node_id,
        wait_id=wait_id,
        kind=wait.kind,
        prompt=wait.prompt,
        payload_schema=dict(wait.schema),
        channel=wait.channel,
        deadline_us=deadline_us,
    )
    cursor.set(requested_seq)
    requested = WaitRequested(
        run_id=scope.run_id,
        seq=requested_seq,
        ts=0,
        worker=journal.worker,
        node_id=node_id,
        wait_id=wait_id,
        kind=wait.kind,
        prompt=wait.prompt,
        payload_schema=dict(wait.schema),
        channel=wait.channel,
        deadline_us=deadline_us,
    )
    if deadline_us is not None:
        await scope.env.waits.schedule_wait_expiry(scope.run_id, wait_id, deadline_us)
    if inline is not None and scope.env.waits.inline_answers:
        return await _answer_inline(scope, requested, inline)
    raise _suspend(scope, requested)


async def _answer_inline(scope: RunScope, requested: WaitRequested, inline: InlineAnswer) -> Any:
    """A cooperative wait: read the answer here and journal it (fenced like any step)."""
    payload = await inline(requested)
    validate_payload(requested, payload)
    seq = await scope.journal.commit(
        WaitResumed, parent=requested.seq, node_id=requested.node_id, wait_id=requested.wait_id, payload=payload
    )
    cursor.set(seq)
    return payload
