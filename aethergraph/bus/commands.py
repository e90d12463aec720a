"""Resume commands, their outcomes and wait deadlines on the ``AG_COMMANDS`` stream.

A resume command is a JSON object published to ``ag.cmd.resume.<run_id>``::

    {"wait_id": "w7", "payload": {"approved": true}}

``wait_id`` may be left out when the run has exactly one open wait. Workers
take commands from the durable consumer ``ag-resume`` and publish what they
did with each to ``ag.cmd.outcome.<run_id>`` (:class:`ResumeOutcome`). A
wait's deadline is a JetStream message schedule that publishes
``{"wait_id": ..., "expire": true}`` to the resume subject when it falls due.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from aethergraph.core.errors import ResumeRejectedError

from .topology import (
    COMMANDS_STREAM,
    RESUME_CONSUMER,
    cancel_subject,
    outcome_subject,
    resume_subject,
    schedule_subject,
)

__all__ = ["JetStreamCommands", "ResumeCommand", "ResumeOutcome", "decode_resume_command"]

OutcomeStatus = Literal["accepted", "rejected", "deferred", "duplicate"]


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


_command_decoder = msgspec.json.Decoder(ResumeCommand)
_outcome_decoder = msgspec.json.Decoder(ResumeOutcome)


def decode_resume_command(run_id: str, data: bytes) -> ResumeCommand:
    """Decode a command body, or raise :class:`ResumeRejectedError` (reason ``malformed``) saying what is wrong."""
    try:
        return _command_decoder.decode(data)
    except msgspec.DecodeError as exc:
        shown = data[:200].decode("utf-8", "replace")
        raise ResumeRejectedError(
            f"resume command for run {run_id} is not valid: {exc}; send a JSON object like "
            '{"wait_id": "w7", "payload": {...}} (got ' + repr(shown) + ")",
            run_id=run_id,
            reason="malformed",
        ) from None


class JetStreamCommands:
    """Publishes and consumes resume commands and their outcomes."""

    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self._nc = nc
        self._js = js

    async def publish_resume(self, run_id: str, *, wait_id: str | None, payload: Any, expire: bool = False) -> int:
        """Publish a resume command; returns its stream sequence once JetStream stored it."""
        body = msgspec.json.encode(ResumeCommand(wait_id=wait_id, payload=payload, expire=expire))
        ack = await self._js.publish(resume_subject(run_id), body, stream=COMMANDS_STREAM)
        return int(ack.seq)

    async def publish_cancel(self, run_id: str, reason: str) -> None:
        """Ask every process to cancel what it runs of ``run_id`` (stored on the stream for audit)."""
        await self._js.publish(cancel_subject(run_id), msgspec.json.encode({"reason": reason}), stream=COMMANDS_STREAM)

    async def publish_outcome(self, outcome: ResumeOutcome) -> None:
        await self._js.publish(outcome_subject(outcome.run_id), msgspec.json.encode(outcome), stream=COMMANDS_STREAM)

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

    async def resume_subscription(self) -> JetStreamContext.PullSubscription:
        """A pull subscription on the shared durable consumer of resume commands."""
        return await self._js.pull_subscribe_bind(RESUME_CONSUMER, stream=COMMANDS_STREAM)
