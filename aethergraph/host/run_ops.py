"""Starting, submitting, cancelling and retrying runs: what a host does to runs on request.

:class:`RunOps` implements :class:`~aethergraph.core.journal.ports.RunPort` (runs
started and cancelled from inside runs, ``context.runs()``) and the
operations behind the public facade.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Mapping
from typing import Any

from aethergraph.bus.commands import JetStreamCommands
from aethergraph.bus.event_log import JetStreamEventLog
from aethergraph.bus.leases import JetStreamLeases
from aethergraph.core.errors import NotRetryableError, RunNotFoundError
from aethergraph.core.ids import QUEUE_OWNER, check_run_id, new_run_id
from aethergraph.core.journal.ports import ParentLink
from aethergraph.core.journal.run_control import force_cancel
from aethergraph.core.journal.run_journal import load_journal
from aethergraph.core.model.registry import must_get_graph
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.executor import claim_run, drive_run, queue_run
from aethergraph.core.run.resume import journal_state

from .intake import ResumeIntake
from .runs import RunDriver, RunHandle

__all__ = ["RunOps"]


class RunOps:
    """The run operations of one host; :meth:`bind` gives it the host's driver and intake once composed."""

    def __init__(self, event_log: JetStreamEventLog, commands: JetStreamCommands, leases: JetStreamLeases) -> None:
        self._event_log = event_log
        self._commands = commands
        self._leases = leases
        self._driver: RunDriver | None = None
        self._intake: ResumeIntake | None = None

    def bind(self, driver: RunDriver, intake: ResumeIntake) -> None:
        self._driver = driver
        self._intake = intake

    @property
    def driver(self) -> RunDriver:
        if self._driver is None:
            raise RuntimeError("the run operations are used before their host bound its driver")
        return self._driver

    def handle(self, run_id: str, task: asyncio.Task[Any] | None = None) -> RunHandle:
        """A handle to ``run_id`` whose ``result()`` serves resume commands here while the run waits."""
        intake = self._intake.serving if self._intake is not None else None
        return RunHandle(run_id, self.driver.env, task, intake=intake)

    async def start(
        self, spec: CallableSpec, inputs: Mapping[str, Any], run_id: str, *, max_concurrency: int | None = None
    ) -> RunHandle:
        """Start a run driven here, once ``run.started`` is committed."""
        task = await self.driver.start_durably(spec, inputs, run_id, max_concurrency=max_concurrency)
        return self.handle(run_id, task)

    async def run_top_level(self, spec: CallableSpec, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """``await my_graph(...)`` outside any run: a new top-level run driven here, to its outputs."""
        run_id = new_run_id()
        return await self.handle(run_id, self.driver.start(spec, inputs, run_id)).result()

    async def spawn_run(self, spec: CallableSpec, inputs: Mapping[str, Any], run_id: str, parent: ParentLink) -> bool:
        if await self._event_log.started_runs([run_id]):
            return False
        self.driver.start(spec, inputs, run_id, parent=parent)
        return True

    async def submit(
        self, spec: CallableSpec, inputs: Mapping[str, Any], run_id: str, max_concurrency: int | None = None
    ) -> RunHandle:
        """Journal a queued ``run.started``, then put the run on the run queue (in that order: a worker
        that reads the queue record finds the run). Nothing drives it here."""
        await queue_run(spec, inputs, run_id=run_id, env=self.driver.env, max_concurrency=max_concurrency)
        await self._leases.enqueue(run_id, spec.name)
        return self.handle(run_id)

    async def cancel_run(self, run_id: str, reason: str = "", *, grace_s: float = 5.0) -> str:
        """Cancel a run wherever it runs; returns its status afterwards.

        Every process hears the request on ``ag.cmd.cancel.<run_id>`` and
        cancels what it runs of the run (the driving task journals
        ``run.cancelled``). A waiting run, or one whose driver does not end
        it within ``grace_s``, is cancelled by journaling ``run.cancelled``
        here under a fenced claim.
        """
        env = self.driver.env
        state = journal_state(run_id, (await load_journal(env, check_run_id(run_id)))[0])
        if state.started is None:
            raise RunNotFoundError(f"run {run_id} does not exist on this bus", run_id=run_id)
        if state.ended is not None:
            return state.status
        if state.status == "queued":  # nobody drives it: cancel it here, and take it off the queue
            status = await force_cancel(env, run_id, reason)
            await self._leases.release(run_id, worker_id=QUEUE_OWNER)
            return status
        await self._commands.publish_cancel(run_id, reason)
        if state.status != "waiting":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    return await RunHandle(run_id, env).wait_for_status("cancelled", "failed", "succeeded")
        return await force_cancel(env, run_id, reason)

    async def retry(self, run_id: str) -> RunHandle:
        """Continue a failed (or cancelled) static run from its failed nodes; completed nodes keep their outputs."""
        env = self.driver.env
        chain, last_stream_seq = await load_journal(env, check_run_id(run_id))
        state = journal_state(run_id, chain)
        if state.started is None:
            raise RunNotFoundError(f"run {run_id} does not exist on this bus", run_id=run_id)
        if state.status not in ("failed", "cancelled"):
            raise NotRetryableError(
                f"run {run_id} is {state.status}; only a failed or cancelled run can be retried",
                run_id=run_id,
                status=state.status,
            )
        spec = must_get_graph(state.started.graph_id, run_id=run_id)
        if spec.kind != "static":
            raise NotRetryableError(
                f"run {run_id} is a run of {spec.label}; only static graphs (@graphify) continue from their "
                "failed nodes. Start a new run of it instead",
                run_id=run_id,
                status=state.status,
            )
        started = state.started
        await self._leases.own(run_id, spec.name)
        scope = await claim_run(spec, started, chain, last_stream_seq, env, reason="retry")
        task = self.driver.drive(run_id, functools.partial(drive_run, spec, started.inputs, scope, started.seq))
        return self.handle(run_id, task)
