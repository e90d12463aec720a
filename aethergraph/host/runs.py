"""Driving top-level runs in this process, and handles to any run on the bus.

A :class:`RunDriver` starts and continues top-level runs as tasks. While it
drives a run it keeps an ownership record on the bus, so that if this process
dies a worker takes the run over; it releases the record when the run ends or
suspends on a wait, or when another process took the run over. It never lets
go of a run silently: a run whose events the bus would not take for the whole
outage tolerance is failed with that reason (``run.failed``, journaled as
soon as the bus takes events again), and its record is kept until then.

A :class:`RunHandle` names a run anywhere: its status and result come from
the run's journal on the bus, so any process can ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aethergraph.bus.leases import JetStreamLeases
from aethergraph.core.errors import (
    CANCEL_REQUESTED,
    BusUnavailableError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    RunSuspended,
    StaleWriterError,
)
from aethergraph.core.journal.ports import ParentLink, RunEnvironment
from aethergraph.core.journal.replay import ChainBuilder
from aethergraph.core.journal.run_control import follow_run_end, force_fail
from aethergraph.core.journal.run_journal import load_journal
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.executor import execute_run
from aethergraph.core.run.resume import JournalState, RunStatus, journal_state

__all__ = ["RunDriver", "RunHandle", "Suspended"]

log = logging.getLogger("aethergraph.runs")


@dataclass(frozen=True, slots=True)
class Suspended:
    """A run released this process: it waits for ``wait_id`` (in run ``wait_run_id``)."""

    run_id: str
    wait_id: str
    wait_run_id: str
    kind: str
    prompt: str


RunEnd = dict[str, Any] | Suspended


class RunDriver:
    """Runs top-level runs of this process as tasks, each under an ownership record."""

    # How often a run that had to be given up tries again to journal its failure.
    FAIL_RETRY_S = 2.0

    def __init__(self, env: RunEnvironment, leases: JetStreamLeases) -> None:
        self.env = env
        self.leases = leases
        self.tasks: dict[str, asyncio.Task[RunEnd]] = {}
        self.given_up: dict[str, asyncio.Task[None]] = {}
        self.on_suspend: Callable[[Suspended], None] | None = None
        self.cancel_requested: set[str] = set()

    def start(
        self,
        spec: CallableSpec,
        inputs: Mapping[str, Any],
        run_id: str,
        *,
        parent: ParentLink | None = None,
        max_concurrency: int | None = None,
        started: asyncio.Future[None] | None = None,
    ) -> asyncio.Task[RunEnd]:
        """Start a new run under an ownership record, written just before its first event.

        ``started`` (if given) is resolved once ``run.started`` and the record
        are both stored: from then on the run exists on the bus and completes
        somewhere. The two writes go out together (one round trip); the record
        goes first on the connection, so the server never has the run without
        having had its record. A record that is not stored fails the run
        before its first step (no run is left running that nobody would take
        over); a refused ``run.started`` (the id is another run's) releases
        the record once it is stored. If this process already drives
        ``run_id``, the task fails with :class:`StaleWriterError` at once,
        before anything is written (the record of the run that goes on stays).
        """
        current = self.tasks.get(run_id)
        if current is not None and not current.done():

            async def refused() -> RunEnd:
                raise StaleWriterError(
                    f"run {run_id} is already running in this process; start the new run with another run id",
                    run_id=run_id,
                    seq=1,
                )

            task = asyncio.create_task(refused(), name=f"aethergraph-refused-{run_id}")
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            return task

        def on_started() -> None:
            if started is not None and not started.done():
                started.set_result(None)

        async def run() -> dict[str, Any]:
            recorded = await self.leases.record_owner(run_id, spec.name)

            async def confirm_record() -> None:
                try:
                    await recorded
                except Exception as exc:
                    raise BusUnavailableError(
                        f"run {run_id} could not be recorded as driven by this process ({exc}), so no worker "
                        "would take it over if this process died: it was failed before its first step. Start "
                        "it again (with a new run id) once the bus stores ownership records (stream AG_LEASES)",
                        run_id=run_id,
                    ) from exc

            try:
                return await execute_run(
                    spec,
                    inputs,
                    run_id=run_id,
                    env=self.env,
                    parent=parent,
                    max_concurrency=max_concurrency,
                    on_started=on_started,
                    before_body=confirm_record,
                )
            except StaleWriterError as exc:
                if exc.seq is None or exc.seq <= 1:  # run.started refused: released (below) once stored
                    await asyncio.gather(recorded, return_exceptions=True)
                raise

        return self.drive(run_id, run)

    async def start_durably(
        self,
        spec: CallableSpec,
        inputs: Mapping[str, Any],
        run_id: str,
        *,
        parent: ParentLink | None = None,
        max_concurrency: int | None = None,
    ) -> asyncio.Task[RunEnd]:
        """:meth:`start`, returning once ``run.started`` is committed (or raising why the run could not start)."""
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = self.start(spec, inputs, run_id, parent=parent, max_concurrency=max_concurrency, started=started)

        def ended_first(done: asyncio.Task[RunEnd]) -> None:  # why the run could not start, if it did not
            if started.done():
                return
            error = None if done.cancelled() else done.exception()
            if error is not None:
                started.set_exception(error)
            else:
                started.set_result(None)  # cancelled before it started: the caller gets the cancelled task

        task.add_done_callback(ended_first)
        await started  # woken straight by the future (asyncio.wait would add a hop)
        return task

    def drive(self, run_id: str, body: Callable[[], Awaitable[dict[str, Any]]]) -> asyncio.Task[RunEnd]:
        """Run ``body`` (which drives ``run_id``, already owned) and release ownership when it stops."""

        async def guarded() -> RunEnd:
            keep_record = False
            try:
                return await body()
            except BusUnavailableError as exc:
                keep_record = True  # until run.failed is journaled (see _fail_given_up)
                self._give_up(run_id, exc)
                raise
            except asyncio.CancelledError:
                if run_id not in self.cancel_requested:
                    # The process is stopping (its event loop cancels every task): hand the run over.
                    keep_record = True
                    self.leases.hand_over()
                    raise
                self.cancel_requested.discard(run_id)
                raise RunCancelledError(f"run {run_id} was cancelled", run_id=run_id) from None
            except RunSuspended as suspended:
                if suspended.wait_id is None:
                    raise RuntimeError(f"run {run_id} suspended without a wait outside always-suspend mode") from None
                end = Suspended(
                    run_id=run_id,
                    wait_id=suspended.wait_id,
                    wait_run_id=suspended.wait_run_id,
                    kind=suspended.kind,
                    prompt=suspended.prompt,
                )
                if self.on_suspend is not None:
                    self.on_suspend(end)
                return end
            finally:
                current = self.tasks.get(run_id)
                if not keep_record and (current is None or current is asyncio.current_task()):
                    await self.leases.release(run_id)  # not while a newer drive of the run goes on here

        task = asyncio.create_task(guarded(), name=f"aethergraph-run-{run_id}")
        self.tasks[run_id] = task
        task.add_done_callback(lambda done: self._forget(run_id, done))
        return task

    def _give_up(self, run_id: str, error: BusUnavailableError) -> None:
        if run_id not in self.given_up:
            task = asyncio.create_task(self._fail_given_up(run_id, error), name=f"aethergraph-fail-{run_id}")
            self.given_up[run_id] = task
            task.add_done_callback(lambda _: self.given_up.pop(run_id, None))

    async def _fail_given_up(self, run_id: str, error: BusUnavailableError) -> None:
        """Journal ``run.failed`` for a run given up on an outage, as soon as the bus takes it; then release it.

        Until then the ownership record stays: if this process ends first, a
        worker takes the run over when the record's lease expires.
        """
        while True:
            try:
                status = await force_fail(self.env, run_id, error)
            except (BusUnavailableError, RunFailedError) as exc:
                log.debug("run %s: its failure could not be journaled yet (%s)", run_id, exc)
                await asyncio.sleep(self.FAIL_RETRY_S)
                continue
            log.warning("run %s was given up after a bus outage; it is %s now", run_id, status)
            await self.leases.release(run_id)
            return

    def _forget(self, run_id: str, task: asyncio.Task[RunEnd]) -> None:
        if self.tasks.get(run_id) is task:
            del self.tasks[run_id]
        # The failure is journaled (run.failed) and raised to whoever awaits a handle;
        # retrieve it here so that an unawaited task is not reported at garbage collection.
        if not task.cancelled() and task.exception() is not None:
            log.debug("run %s stopped in this process: %r", run_id, task.exception())

    def cancel(self, run_id: str) -> bool:
        """Cancel the task driving ``run_id`` here, if any (it journals ``run.cancelled``)."""
        task = self.tasks.get(run_id)
        if task is None or task.done():
            return False
        self.cancel_requested.add(run_id)
        task.cancel(CANCEL_REQUESTED)
        return True

    async def drain(self) -> None:
        """Wait until every run this process drives has ended or suspended.

        Runs given up on an outage whose failure is not journaled yet keep
        their ownership records: workers take them over once this process is gone.
        """
        while self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for task in list(self.given_up.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class RunHandle:
    """A run anywhere on the bus: ``await handle.result()``, ``await handle.status()``."""

    def __init__(
        self,
        run_id: str,
        env: RunEnvironment,
        task: asyncio.Task[RunEnd] | None = None,
        *,
        intake: Callable[[], contextlib.AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self.run_id = run_id
        self._env = env
        self._task = task
        # Entered while result() awaits a run that waits: this process takes resume commands meanwhile.
        self._intake = intake

    async def state(self) -> JournalState:
        chain, _ = await load_journal(self._env, self.run_id)
        state = journal_state(self.run_id, chain)
        if state.started is None:
            raise RunNotFoundError(f"run {self.run_id} does not exist on this bus", run_id=self.run_id)
        return state

    async def status(self) -> RunStatus:
        """One of ``running``, ``waiting``, ``succeeded``, ``failed``, ``cancelled``."""
        return (await self.state()).status

    async def result(self, timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109 - public API
        """The run's outputs once it succeeds, whichever process finishes it.

        Raises the body's own exception if this process ran the run and it
        failed here, else :class:`~aethergraph.errors.RunFailedError`;
        ``TimeoutError`` if ``timeout`` seconds pass first (the run goes on).
        """
        async with asyncio.timeout(timeout):
            task = self._task
            if task is not None:
                try:
                    end = await asyncio.shield(task)
                except StaleWriterError as exc:
                    if exc.seq is None or exc.seq <= 1:
                        raise  # run.started refused: the run id was already taken
                    end = None  # another process claimed the run (it answered a wait); it finishes it
                if end is not None and not isinstance(end, Suspended):
                    return end
            async with contextlib.AsyncExitStack() as serving:
                intake = self._intake

                async def on_waiting() -> None:
                    nonlocal intake
                    if intake is not None:  # the first time only
                        await serving.enter_async_context(intake())
                        intake = None

                return await follow_run_end(self._env, self.run_id, on_waiting=on_waiting)

    async def cancel(self, reason: str = "") -> RunStatus:
        """Cancel the run wherever it runs (its running nodes too); returns its status afterwards."""
        return await self._env.runs.cancel_run(self.run_id, reason)  # type: ignore[return-value]

    async def wait_for_status(self, *statuses: RunStatus) -> RunStatus:
        """Wait until the run reaches one of ``statuses`` (e.g. ``"waiting"``) and return it.

        Bound the wait with ``asyncio.timeout`` around the call.
        """
        builder = ChainBuilder()
        async for record in self._env.event_log.read_run(self.run_id, follow=True):
            if not builder.add(record.event):
                continue  # not (yet) part of the journal
            status = journal_state(self.run_id, builder.chain).status
            if status in statuses:
                return status
        raise RunNotFoundError(f"stopped reading run {self.run_id}", run_id=self.run_id)

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"
