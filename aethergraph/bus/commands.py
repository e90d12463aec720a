"""Resume commands, their outcomes and wait deadlines on the ``AG_COMMANDS`` stream.

A resume command is a JSON object published to ``ag.cmd.resume.<run_id>``::

    {"wait_id": "w7", "payload": {"approved": true}}

The wait may be held by a run nested under ``<run_id>`` (named
``<nested_run_id>/<wait_id>``, see docs/events.md); ``wait_id`` may be left
out when the run's tree has exactly one open wait. Workers
take commands from the durable consumer ``ag-resume`` (:class:`CommandDelivery`)
and publish what they did with each to ``ag.cmd.outcome.<run_id>``
(:class:`ResumeOutcome`). A command's final outcome carries the
``Nats-Msg-Id`` ``outcome:<command_seq>`` and is stored before the command is
acknowledged, so a command handled twice (its worker died between the two, or
the acknowledgement was lost) still has exactly one final outcome on the
stream within the duplicate window. A wait's deadline is a JetStream message schedule that publishes
``{"wait_id": ..., "expire": true}`` to the resume subject when it falls due.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from aethergraph.core.errors import ResumeRejectedError
from aethergraph.core.ids import check_run_id

from .topology import (
    ALL_CANCELS,
    COMMANDS_STREAM,
    RESUME_CONSUMER,
    cancel_subject,
    command_target,
    outcome_subject,
    outcome_subject_of_command,
    resume_subject,
    run_id_of_command,
    schedule_subject,
)

__all__ = [
    "CommandDelivery",
    "CommandFeed",
    "JetStreamCommands",
    "ResumeCommand",
    "ResumeOutcome",
    "check_command_run_id",
    "check_payload_size",
    "decode_resume_command",
]

OutcomeStatus = Literal["accepted", "rejected", "deferred", "duplicate", "queued"]
"""``queued`` is never published: :func:`aethergraph.resume` says so when nothing has taken a command yet."""


class ResumeCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of a resume command."""

    wait_id: str | None = None
    payload: Any = None
    expire: bool = False


class ResumeOutcome(msgspec.Struct, kw_only=True, frozen=True):
    """What a worker did with one resume command (``command_seq`` is its stream sequence)."""

    run_id: str
    command_seq: int
    status: OutcomeStatus
    wait_id: str | None = None
    reason: str = ""
    message: str = ""
    worker: str = ""


log = logging.getLogger("aethergraph.bus")

_command_decoder = msgspec.json.Decoder(ResumeCommand)
_outcome_decoder = msgspec.json.Decoder(ResumeOutcome)


_ENVELOPE_BYTES = 2048
"""Room left in an event for everything of ``wait.resumed`` but the payload (ids, sequences, tag)."""
_FEED_RETRY_S = 0.5
_FETCH_ON_CLOSE = 256


def check_command_run_id(target: str) -> str:
    """The run id a command's subject names, or :class:`ResumeRejectedError` (reason ``invalid_run_id``)."""
    try:
        return check_run_id(target)
    except ValueError as exc:
        raise ResumeRejectedError(
            f"resume command on ag.cmd.resume.{target} names no valid run id: {exc}; "
            "publish to ag.cmd.resume.<run_id> with the id of the run to resume",
            run_id=target,
            reason="invalid_run_id",
        ) from None


def decode_resume_command(run_id: str, data: bytes, *, max_event_bytes: int | None = None) -> ResumeCommand:
    """Decode a command body, or raise :class:`ResumeRejectedError` saying what is wrong.

    Reason ``malformed`` for a body that is not a resume command; with
    ``max_event_bytes``, reason ``payload_too_large`` for a payload that could
    not be journaled in a ``wait.resumed`` event of that size.
    """
    try:
        command = _command_decoder.decode(data)
    except msgspec.DecodeError as exc:
        shown = data[:200].decode("utf-8", "replace")
        raise ResumeRejectedError(
            f"resume command for run {run_id} is not valid: {exc}; send a JSON object like "
            '{"wait_id": "w7", "payload": {...}} (got ' + repr(shown) + ")",
            run_id=run_id,
            reason="malformed",
        ) from None
    if max_event_bytes is not None and len(data) + _ENVELOPE_BYTES > max_event_bytes:
        check_payload_size(run_id, command.wait_id, len(msgspec.json.encode(command.payload)), max_event_bytes)
    return command


def check_payload_size(run_id: str, wait_id: str | None, size: int, max_event_bytes: int) -> None:
    """Raise :class:`ResumeRejectedError` (reason ``payload_too_large``) for a payload of ``size`` encoded
    bytes that a ``wait.resumed`` event under ``max_event_bytes`` could not hold."""
    if size + _ENVELOPE_BYTES > max_event_bytes:
        raise ResumeRejectedError(
            f"resume payload for run {run_id} is {size:,} bytes; a wait.resumed event holds at most "
            f"{max_event_bytes - _ENVELOPE_BYTES:,} (AETHERGRAPH_MAX_EVENT_BYTES). Save large values as "
            "artifacts and send their reference as the payload",
            run_id=run_id,
            reason="payload_too_large",
            wait_id=wait_id,
        )


class CommandDelivery:
    """One delivery of a resume command from the durable consumer ``ag-resume``.

    A handler ends every delivery with :meth:`settle` (the command's final
    outcome, then the acknowledgement) or :meth:`retry` (delivered again
    later). ``target`` is the subject's run id token(s) as published, valid
    or not.
    """

    __slots__ = ("_commands", "_msg", "command_seq", "data", "num_delivered", "subject", "target")

    def __init__(self, msg: Msg, commands: JetStreamCommands) -> None:
        self._msg = msg
        self._commands = commands
        metadata = msg.metadata
        self.subject: str = msg.subject
        self.data: bytes = msg.data
        self.command_seq: int = metadata.sequence.stream
        self.num_delivered: int = metadata.num_delivered
        self.target = command_target(msg.subject)

    async def settle(self, outcome: ResumeOutcome, *, retry_delay_s: float = 1.0) -> bool:
        """Store the command's final outcome, then acknowledge the command.

        The outcome's ``Nats-Msg-Id`` is ``outcome:<command_seq>``, so a second
        final outcome for the command (after a redelivery) is dropped by
        JetStream. Returns False if the outcome could not be stored: the
        command is put back and handled again after ``retry_delay_s``.
        """
        try:
            await self._commands.publish_outcome(
                outcome, subject=outcome_subject_of_command(self.subject), msg_id=f"outcome:{self.command_seq}"
            )
        except nats.errors.Error:
            await self.retry(retry_delay_s)
            return False
        with contextlib.suppress(nats.errors.Error):
            await self._msg.ack()
        return True

    async def announce(self, outcome: ResumeOutcome) -> None:
        """Publish an outcome that is not final (``deferred``): once per command and status, best effort."""
        with contextlib.suppress(nats.errors.Error):
            await self._commands.publish_outcome(
                outcome,
                subject=outcome_subject_of_command(self.subject),
                msg_id=f"outcome:{self.command_seq}:{outcome.status}",
            )

    async def retry(self, delay_s: float) -> None:
        """Put the command back: it is delivered again (to any worker) after ``delay_s``."""
        with contextlib.suppress(nats.errors.Error):
            await self._msg.nak(delay=delay_s)


class CommandFeed:
    """A worker's pull subscription on ``ag-resume``."""

    def __init__(self, sub: JetStreamContext.PullSubscription, commands: JetStreamCommands) -> None:
        self._sub = sub
        self._commands = commands

    async def fetch(self, batch: int, *, timeout: float) -> list[CommandDelivery]:  # noqa: ASYNC109 - a server-side wait
        """Up to ``batch`` commands; none if none arrived within ``timeout`` seconds."""
        try:
            messages = await self._sub.fetch(batch, timeout=timeout)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except nats.errors.Error as exc:
            # The server restarting or a cluster electing a leader: the durable consumer is still there.
            log.info("taking resume commands paused (%s); trying again", exc)
            await asyncio.sleep(_FEED_RETRY_S)
            return []
        return [CommandDelivery(msg, self._commands) for msg in messages]

    async def close(self) -> None:
        """Stop taking commands; any delivered to a fetch that was given up go back at once, for another process."""
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            for msg in await self._sub.fetch(_FETCH_ON_CLOSE, timeout=0.02):
                await msg.nak()
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()


class JetStreamCommands:
    """Publishes and consumes resume commands and their outcomes."""

    def __init__(self, nc: Client, js: JetStreamContext, *, max_event_bytes: int = 256 * 1024) -> None:
        self._nc = nc
        self._js = js
        self.max_event_bytes = max_event_bytes

    async def publish_resume(self, run_id: str, *, wait_id: str | None, payload: Any, expire: bool = False) -> int:
        """Publish a resume command; returns its stream sequence once JetStream stored it.

        A payload too large to be journaled is refused before anything is
        published (:class:`ResumeRejectedError`, reason ``payload_too_large``).
        """
        body = msgspec.json.encode(ResumeCommand(wait_id=wait_id, payload=payload, expire=expire))
        if len(body) + _ENVELOPE_BYTES > self.max_event_bytes:
            check_payload_size(run_id, wait_id, len(msgspec.json.encode(payload)), self.max_event_bytes)
        ack = await self._js.publish(resume_subject(run_id), body, stream=COMMANDS_STREAM)
        return int(ack.seq)

    async def publish_cancel(self, run_id: str, reason: str) -> None:
        """Ask every process to cancel what it runs of ``run_id`` (stored on the stream for audit)."""
        await self._js.publish(cancel_subject(run_id), msgspec.json.encode({"reason": reason}), stream=COMMANDS_STREAM)

    async def publish_outcome(
        self, outcome: ResumeOutcome, *, subject: str | None = None, msg_id: str | None = None
    ) -> None:
        """Store ``outcome`` on ``ag.cmd.outcome.<run_id>`` (or ``subject``), deduplicated on ``msg_id`` if given."""
        await self._js.publish(
            subject or outcome_subject(outcome.run_id),
            msgspec.json.encode(outcome),
            stream=COMMANDS_STREAM,
            headers={"Nats-Msg-Id": msg_id} if msg_id else None,
        )

    async def schedule_expiry(self, run_id: str, wait_id: str, deadline_us: int) -> None:
        """Have JetStream publish the wait's expiry to the resume subject at ``deadline_us``."""
        at = _dt.datetime.fromtimestamp(deadline_us / 1_000_000, tz=_dt.UTC)
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = msgspec.json.encode(ResumeCommand(wait_id=wait_id, expire=True))
        await self._js.publish(
            schedule_subject(run_id, wait_id),
            body,
            stream=COMMANDS_STREAM,
            headers={"Nats-Schedule": f"@at {stamp}", "Nats-Schedule-Target": resume_subject(run_id)},
        )

    @contextlib.asynccontextmanager
    async def outcomes(self, run_id: str) -> AsyncIterator[asyncio.Queue[ResumeOutcome]]:
        """Outcomes published for ``run_id`` from now on (subscribe before publishing the command)."""
        queue: asyncio.Queue[ResumeOutcome] = asyncio.Queue()

        async def deliver(msg: Msg) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                queue.put_nowait(_outcome_decoder.decode(msg.data))

        sub = await self._nc.subscribe(outcome_subject(run_id), cb=deliver)
        try:
            yield queue
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def watch_cancels(self, on_cancel: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        """Call ``on_cancel(run_id)`` for every cancel request published from now on; returns the stop function."""

        async def deliver(msg: Msg) -> None:
            on_cancel(run_id_of_command(msg.subject))

        sub = await self._nc.subscribe(ALL_CANCELS, cb=deliver)

        async def stop() -> None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

        return stop

    async def resume_feed(self) -> CommandFeed:
        """A pull subscription on the shared durable consumer of resume commands."""
        return CommandFeed(await self._js.pull_subscribe_bind(RESUME_CONSUMER, stream=COMMANDS_STREAM), self)
