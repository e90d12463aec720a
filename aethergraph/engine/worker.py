"""``Worker``: continues runs of the graphs this process has imported.

A worker does two things, both driven by events:

* it takes resume commands from the shared durable consumer ``ag-resume``,
  checks each against the run's journal, commits the answer and continues
  the run by replay; what it did is published as a
  :class:`~aethergraph.bus.commands.ResumeOutcome`;
* it watches process heartbeats; when one expires it takes over the runs that
  process was driving (and, when it starts, the runs of processes already
  dead), continuing each by replay under a fenced claim.

A resume for a graph this worker does not know is put back for another worker
(it stays queued) and announced once as ``deferred``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from aethergraph.bus.commands import JetStreamCommands, ResumeOutcome, decode_resume_command
from aethergraph.bus.leases import JetStreamLeases, OwnedRun
from aethergraph.bus.topology import run_id_of_command
from aethergraph.core.errors import GraphNotFoundError, ResumeRejectedError, StaleWriterError
from aethergraph.core.events import RunClaimed, RunStarted
from aethergraph.core.executor import claim_run, drive_run, load_journal
from aethergraph.core.registry import must_get_graph
from aethergraph.core.resume import accept_resume, journal_state
from aethergraph.core.spec import CallableSpec

from .runs import RunDriver

__all__ = ["Worker"]

log = logging.getLogger("aethergraph.worker")


class Worker:
    """Serves resume commands and takes over runs of dead processes, until :meth:`stop`."""

    def __init__(
        self,
        driver: RunDriver,
        commands: JetStreamCommands,
        *,
        graphs: Callable[[str], CallableSpec] = must_get_graph,
        batch: int = 64,
        defer_delay_s: float = 2.0,
    ) -> None:
        self._driver = driver
        self._commands = commands
        self._leases: JetStreamLeases = driver.leases
        self._graphs = graphs
        self._batch = batch
        self._defer_delay_s = defer_delay_s
        self._stopping = asyncio.Event()
        self._handling: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()

    @property
    def worker_id(self) -> str:
        return self._leases.worker_id

    def stop(self) -> None:
        self._stopping.set()

    async def serve(self) -> None:
        """Take commands and dead processes' runs until :meth:`stop`; then let running runs finish."""
        await self._leases.start()
        stop_watching = await self._leases.watch_deaths(self._on_death)
        sub = await self._commands.resume_subscription()
        try:
            await self._adopt_orphans()
            self.ready.set()
            log.info("worker %s ready", self.worker_id)
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(sub.fetch(self._batch, timeout=5.0))
                stopping = asyncio.ensure_future(self._stopping.wait())
                done, _ = await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if fetch not in done:
                    fetch.cancel()
                    with contextlib.suppress(BaseException):
                        await fetch
                    break
                stopping.cancel()
                try:
                    messages = fetch.result()
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                for msg in messages:
                    self._spawn(self._handle_command(msg))
        finally:
            await stop_watching()
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            if self._handling:
                await asyncio.gather(*self._handling, return_exceptions=True)
            await self._driver.drain()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    # --- resume commands ------------------------------------------------------------

    async def _outcome(self, msg: Msg, run_id: str, **fields: object) -> None:
        outcome = ResumeOutcome(
            run_id=run_id,
            command_seq=msg.metadata.sequence.stream,
            worker=self.worker_id,
            **fields,  # type: ignore[arg-type]
        )
        with contextlib.suppress(nats.errors.Error):
            await self._commands.publish_outcome(outcome)

    async def _handle_command(self, msg: Msg) -> None:
        run_id = run_id_of_command(msg.subject)
        seq = msg.metadata.sequence.stream
        try:
            command = decode_resume_command(run_id, msg.data)
            accepted = await accept_resume(
                self._driver.env,
                run_id,
                wait_id=command.wait_id,
                payload=command.payload,
                expire=command.expire,
                command_seq=seq,
                graphs=self._graphs,
                before_claim=self._leases.own,
            )
        except ResumeRejectedError as exc:
            log.warning("resume %s of run %s rejected: %s", seq, run_id, exc)
            await self._outcome(
                msg, run_id, status="rejected", reason=exc.reason, wait_id=exc.wait_id, message=str(exc)
            )
            await msg.ack()
            return
        except GraphNotFoundError as exc:
            if msg.metadata.num_delivered <= 1:
                log.warning("resume %s of run %s deferred: %s", seq, run_id, exc)
                await self._outcome(msg, run_id, status="deferred", reason="unknown_graph", message=str(exc))
            await msg.nak(delay=self._defer_delay_s)
            return
        except StaleWriterError:
            await msg.nak(delay=0.05)
            return
        except Exception:
            log.exception("resume %s of run %s could not be handled; it will be redelivered", seq, run_id)
            await msg.nak(delay=self._defer_delay_s)
            return
        if accepted is None:
            await self._outcome(msg, run_id, status="duplicate", message="this command was already applied")
            await msg.ack()
            return
        await msg.ack()
        self._driver.drive(accepted.root_run_id, accepted.continuation)
        self._spawn(self._outcome(msg, run_id, status="accepted", wait_id=accepted.wait_id))  # not awaited

    # --- takeover -----------------------------------------------------------------

    async def _on_death(self, worker_id: str) -> None:
        if worker_id == self.worker_id or self._stopping.is_set():
            return
        log.info("process %s stopped heartbeating; taking over its runs", worker_id)
        self._spawn(self._adopt_runs_of(worker_id))

    async def _adopt_runs_of(self, worker_id: str) -> None:
        await self._adopt(await self._leases.owned_runs(worker_id))

    async def _adopt_orphans(self) -> None:
        live = await self._leases.live_workers()
        # A process restarted under the same worker id (a StatefulSet's ``worker-0``) finds its own
        # records: the runs they name are orphans unless this process drives them.
        orphans = [
            owned
            for owned in await self._leases.owned_runs()
            if owned.worker_id not in live or self._is_own_orphan(owned)
        ]
        if orphans:
            await self._adopt(orphans)

    def _is_own_orphan(self, owned: OwnedRun) -> bool:
        return owned.worker_id == self.worker_id and owned.run_id not in self._driver.tasks

    async def _adopt(self, orphans: list[OwnedRun]) -> None:
        for owned in orphans:
            if owned.worker_id == self.worker_id and not self._is_own_orphan(owned):
                continue
            try:
                await self._take_over(owned)
            except Exception:
                log.exception("taking over run %s from %s failed", owned.run_id, owned.worker_id)

    async def _take_over(self, owned: OwnedRun) -> None:
        try:
            spec = self._graphs(owned.graph_id)
        except GraphNotFoundError:
            log.info(
                "run %s of %s: graph %r not known here; left for another worker",
                owned.run_id,
                owned.worker_id,
                owned.graph_id,
            )
            return
        env = self._driver.env
        chain, last_stream_seq = await load_journal(env, owned.run_id)
        state = journal_state(owned.run_id, chain)
        if state.started is None or state.ended is not None or state.waiting_on is not None:
            await self._leases.release(owned.run_id, worker_id=owned.worker_id)
            return
        started = chain[0]
        assert isinstance(started, RunStarted)
        writer = next(event for event in reversed(chain) if isinstance(event, (RunStarted, RunClaimed)))
        if writer.worker != owned.worker_id:
            return  # someone already continued the run after its owner died
        await self._leases.own(owned.run_id, spec.name)
        try:
            scope = await claim_run(spec, started, chain, last_stream_seq, env, reason="takeover")
        except StaleWriterError:
            await self._leases.release(owned.run_id)
            return  # another worker took it first
        if owned.worker_id != self.worker_id:  # the record now names this process: keep it
            await self._leases.release(owned.run_id, worker_id=owned.worker_id)
        log.info("took over run %s from %s at event %d", owned.run_id, owned.worker_id, state.last_seq)
        self._driver.drive(owned.run_id, lambda: drive_run(spec, started.inputs, scope, started.seq))
