"""What a worker does with one delivery of a resume command: exactly one final outcome per command.

Every command on ``ag.cmd.resume.>`` ends in one final outcome, stored on
``ag.cmd.outcome.<run_id>`` before the command is acknowledged:

* ``accepted``: the answer is journaled (``wait.resumed`` / ``wait.expired``)
  and the run continues here. A command delivered again after its answer was
  journaled (its worker died before the outcome, or the acknowledgement was
  lost) is answered ``accepted`` again; JetStream keeps only the first
  (``Nats-Msg-Id: outcome:<command_seq>``).
* ``duplicate``: a wait's expiry that fell due after the wait was answered
  (or its run ended); it changed nothing.
* ``rejected`` with a ``reason``: the command could not apply and changed
  nothing (``invalid_run_id``, ``malformed``, ``payload_too_large``,
  ``unknown_run``, ``run_ended``, ``no_open_wait``, ``ambiguous_wait``,
  ``unknown_wait``, ``wait_closed``, ``invalid_payload``); or handling it failed
  on every one of ``max_attempts`` deliveries (``internal_error``,
  ``contended``).

A command for a graph this process does not know is put back with a growing
delay for a worker that knows it, announced once as ``deferred``
(not final) and logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aethergraph.bus.commands import (
    CommandDelivery,
    ResumeCommand,
    ResumeOutcome,
    check_command_run_id,
    decode_resume_command,
)
from aethergraph.core.errors import EventTooLargeError, GraphNotFoundError, ResumeRejectedError, StaleWriterError
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.resume import AlreadyAnswered, accept_resume

from .runs import RunDriver

__all__ = ["CommandHandler", "RetryPolicy"]

log = logging.getLogger("aethergraph.worker")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how soon a command is delivered again."""

    max_attempts: int = 5
    """Deliveries of a command whose handling fails unexpectedly before it is rejected (``internal_error``)."""
    retry_delay_s: float = 0.25
    """Delay before the second delivery of a failed command; doubled for every later one."""
    defer_delay_s: float = 2.0
    """Delay before a command for an unknown graph is delivered again; doubled up to ``max_defer_delay_s``."""
    max_defer_delay_s: float = 60.0
    pass_on_delay_s: float = 0.01
    """Delay before a command for a graph another live process serves is delivered again."""

    def retry_delay(self, num_delivered: int) -> float:
        return min(self.retry_delay_s * 2.0 ** max(0, num_delivered - 1), self.max_defer_delay_s)

    def defer_delay(self, num_delivered: int) -> float:
        return min(self.defer_delay_s * 2.0 ** max(0, num_delivered - 1), self.max_defer_delay_s)


class CommandHandler:
    """Turns each delivery of a resume command into its outcome (see the module docstring)."""

    def __init__(
        self,
        driver: RunDriver,
        *,
        worker_id: str,
        graphs: Callable[[str], CallableSpec],
        before_claim: Callable[[str, str], Awaitable[None]],
        serving: Callable[[str], Awaitable[list[str]]],
        max_event_bytes: int | None,
        policy: RetryPolicy,
    ) -> None:
        self._driver = driver
        self._worker_id = worker_id
        self._graphs = graphs
        self._before_claim = before_claim
        self._max_event_bytes = max_event_bytes
        self._policy = policy
        self._serving_lookup = serving
        self._serving_seen: dict[str, tuple[float, bool]] = {}  # graph -> (until, served): a short cache

    async def _serving(self, graph_id: str) -> bool:
        """Whether a live process takes commands for ``graph_id`` (asked of the heartbeats, at most every 0.5 s)."""
        now = time.monotonic()
        until, served = self._serving_seen.get(graph_id, (0.0, False))
        if now < until:
            return served
        served = bool(await self._serving_lookup(graph_id))
        self._serving_seen[graph_id] = (now + 0.5, served)
        return served

    def _outcome(self, delivery: CommandDelivery, run_id: str, **fields: object) -> ResumeOutcome:
        return ResumeOutcome(
            run_id=run_id,
            command_seq=delivery.command_seq,
            worker=self._worker_id,
            **fields,  # type: ignore[arg-type]
        )

    async def handle(self, delivery: CommandDelivery) -> None:
        """Handle one delivery; never raises (what went wrong is the command's outcome)."""
        seq, run_id = delivery.command_seq, delivery.target
        command: ResumeCommand | None = None
        try:
            run_id = check_command_run_id(delivery.target)
            command = decode_resume_command(run_id, delivery.data, max_event_bytes=self._max_event_bytes)
            result = await accept_resume(
                self._driver.env,
                run_id,
                wait_id=command.wait_id,
                payload=command.payload,
                expire=command.expire,
                command_seq=seq,
                graphs=self._graphs,
                before_claim=self._before_claim,
                first_delivery=delivery.num_delivered <= 1,
            )
        except ResumeRejectedError as exc:
            # A deadline falling due after its wait was answered is routine, not worth a warning.
            level = logging.DEBUG if command is not None and command.expire else logging.WARNING
            log.log(level, "resume %s of run %s rejected: %s", seq, run_id, exc)
            await self._settle(
                delivery,
                self._outcome(
                    delivery, run_id, status="rejected", reason=exc.reason, wait_id=exc.wait_id, message=str(exc)
                ),
            )
            return
        except EventTooLargeError as exc:
            log.warning("resume %s of run %s rejected: %s", seq, run_id, exc)
            outcome = self._outcome(delivery, run_id, status="rejected", reason="payload_too_large", message=str(exc))
            await self._settle(delivery, outcome)
            return
        except GraphNotFoundError as exc:
            await self._defer(delivery, run_id, exc)
            return
        except StaleWriterError as exc:
            await self._failed(delivery, run_id, exc, reason="contended")
            return
        except Exception as exc:  # noqa: BLE001 - every command gets an outcome; see _failed
            await self._failed(delivery, run_id, exc, reason="internal_error")
            return
        if isinstance(result, AlreadyAnswered):
            await self._settle(delivery, self._answered_before(delivery, result))
            return
        # The answer is stored: the run continues now, and the outcome is stored while it does.
        self._driver.drive(result.root_run_id, result.continuation)
        await self._settle(delivery, self._outcome(delivery, run_id, status="accepted", wait_id=result.wait_id))

    def _answered_before(self, delivery: CommandDelivery, answered: AlreadyAnswered) -> ResumeOutcome:
        if answered.by_this_command:  # accepted before: the outcome that delivery stored (if it did) is kept
            message = f"applied as event {answered.seq} by an earlier delivery of this command"
            return self._outcome(
                delivery, answered.run_id, status="accepted", wait_id=answered.wait_id, message=message
            )
        message = f"wait {answered.wait_id} was no longer open when its deadline fell due; the expiry changed nothing"
        return self._outcome(delivery, answered.run_id, status="duplicate", wait_id=answered.wait_id, message=message)

    async def _settle(self, delivery: CommandDelivery, outcome: ResumeOutcome) -> None:
        if not await delivery.settle(outcome, retry_delay_s=self._policy.retry_delay(delivery.num_delivered)):
            log.warning(
                "outcome of resume %s of run %s could not be stored; it will be handled again",
                delivery.command_seq,
                outcome.run_id,
            )

    async def _defer(self, delivery: CommandDelivery, run_id: str, exc: GraphNotFoundError) -> None:
        """Put the command back for a process that knows the graph; announce and log that once per command.

        When a live process says it takes commands for the graph, the command
        goes back at once and quietly: it reaches that process on a later
        delivery. Otherwise it waits, with a growing delay, for one to start.
        """
        if exc.graph_id is not None and await self._serving(exc.graph_id):
            await delivery.retry(self._policy.pass_on_delay_s)
            return
        if delivery.num_delivered <= 1:
            log.warning("resume %s of run %s deferred: %s", delivery.command_seq, run_id, exc)
            await delivery.announce(
                self._outcome(delivery, run_id, status="deferred", reason="unknown_graph", message=str(exc))
            )
        await delivery.retry(self._policy.defer_delay(delivery.num_delivered))

    async def _failed(self, delivery: CommandDelivery, run_id: str, exc: Exception, *, reason: str) -> None:
        """Try again later, up to ``max_attempts`` deliveries; then reject, logging the traceback once."""
        seq, attempt = delivery.command_seq, delivery.num_delivered
        if attempt < self._policy.max_attempts:
            log.debug("resume %s of run %s failed on delivery %d (%r); trying again", seq, run_id, attempt, exc)
            await delivery.retry(self._policy.retry_delay(attempt))
            return
        log.error(
            "resume %s of run %s failed on %d deliveries; rejected (%s)", seq, run_id, attempt, reason, exc_info=exc
        )
        message = f"handling this command failed on {attempt} deliveries: {type(exc).__name__}: {exc}; " + (
            "another process kept writing to the run; publish the command again"
            if reason == "contended"
            else "see the worker's log for the traceback; the run is unchanged unless its journal says otherwise"
        )
        await self._settle(delivery, self._outcome(delivery, run_id, status="rejected", reason=reason, message=message))
