"""Journaled waits: a run asks for an answer and continues when it arrives.

A wait is the event pair ``wait.requested`` / ``wait.resumed`` (or
``wait.expired``). Live, the run commits ``wait.requested`` and then either
reads the answer inline (a cooperative wait: the coroutine stays in memory)
or suspends (a durable wait: the run releases its coroutine and its worker
until a resume command arrives). On replay the recorded answer is returned
without asking again, and a wait that is still open suspends the run again.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aethergraph.core.errors import DecorationError, RunSuspended, WaitExpiredError, cancel_was_requested
from aethergraph.core.journal.scope import RunScope, cursor
from aethergraph.core.journal.step import StepKey, append_opening, replayed_opening
from aethergraph.core.wire.events import WaitExpired, WaitRequested, WaitResumed
from aethergraph.core.wire.payloads import validate_payload

__all__ = [
    "InlineAnswer",
    "PromptListener",
    "Wait",
    "add_prompt_listener",
    "deadline_micros",
    "interrupt_inline_answers",
    "wait_for",
]

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
    key = StepKey(WaitRequested, node_id, f"a {wait.kind!r} wait (node {node_id})", names={"kind": wait.kind})
    recorded = replayed_opening(scope, key)
    if isinstance(recorded, WaitRequested):
        assert scope.replay is not None
        resolution = scope.replay.resolutions.get(recorded.wait_id)
        if resolution is not None:
            return _resolve(scope, recorded, resolution)
        if inline is not None and scope.env.waits.inline_answers:
            return await _answer_inline(scope, recorded, inline)
        raise _suspend(scope, recorded)
    wait_id = f"w{scope.journal.last_seq + 1}"
    deadline_us = deadline_micros(wait.deadline, time.time_ns() // 1000)
    requested, committed = append_opening(
        scope,
        key,
        wait_id=wait_id,
        prompt=wait.prompt,
        payload_schema=dict(wait.schema),
        channel=wait.channel,
        deadline_us=deadline_us,
    )
    await committed
    assert isinstance(requested, WaitRequested)
    if deadline_us is not None:
        await scope.env.waits.schedule_wait_expiry(scope.run_id, wait_id, deadline_us)
    if inline is not None and scope.env.waits.inline_answers:
        return await _answer_inline(scope, requested, inline)
    raise _suspend(scope, requested)


async def _answer_inline(scope: RunScope, requested: WaitRequested, inline: InlineAnswer) -> Any:
    """A cooperative wait: read the answer here and journal it (fenced like any step).

    If no answer comes in (end of input, or the process is interrupted or
    stopping while it asks), the wait stays open and the run suspends like a
    durable wait (``run.waiting``): anyone may answer it later. Only a
    requested cancel (``aethergraph cancel``) cancels the run.
    """
    task = asyncio.current_task()
    if task is not None:
        _answering.add(task)
    for listener in list(_prompt_listeners):
        listener(requested, True)
    try:
        payload = await inline(requested)
    except EOFError:
        raise _unanswered(scope, requested, "end of input") from None
    except asyncio.CancelledError as exc:
        if cancel_was_requested(exc) or task is None:
            raise
        task.uncancel()
        raise _unanswered(scope, requested, "interrupted") from None
    finally:
        if task is not None:
            _answering.discard(task)
        for listener in list(_prompt_listeners):
            listener(requested, False)
    validate_payload(requested, payload)
    resumed = await scope.journal.commit(
        WaitResumed, parent=requested.seq, node_id=requested.node_id, wait_id=requested.wait_id, payload=payload
    )
    cursor.set(resumed.seq)
    return payload


# --- inline answers: who else must know (a live display on the terminal), and interrupting them ----------

PromptListener = Callable[[WaitRequested, bool], None]
"""Called with the wait and ``True`` just before an inline answer is read, ``False`` once reading stopped."""

_prompt_listeners: list[PromptListener] = []
_answering: set[asyncio.Task[Any]] = set()


def add_prompt_listener(listener: PromptListener) -> Callable[[], None]:
    """Be told when this process opens and closes an inline prompt (e.g. to pause a live display).

    Returns the function that removes the listener.
    """
    _prompt_listeners.append(listener)

    def remove() -> None:
        if listener in _prompt_listeners:
            _prompt_listeners.remove(listener)

    return remove


def interrupt_inline_answers() -> int:
    """Stop reading every inline answer this process waits for; their runs wait with the question open.

    For an interrupted script (Ctrl-C) whose runs sit at a console prompt.
    Returns how many were interrupted.
    """
    tasks = [task for task in _answering if not task.done()]
    for task in tasks:
        task.cancel()
    return len(tasks)


def _unanswered(scope: RunScope, requested: WaitRequested, why: str) -> RunSuspended:
    print(
        f"\nno answer read ({why}): wait {requested.wait_id} of run {scope.run_id} stays open and the run waits for it",
        file=sys.stderr,
        flush=True,
    )
    return _suspend(scope, requested)
