"""``Worker``: continues runs of the graphs this process has imported.

A worker does two things, both driven by events:

* it takes resume commands from the shared durable consumer ``ag-resume``,
  checks each against the run's journal, commits the answer and continues
  the run by replay; every command gets exactly one final
  :class:`~aethergraph.bus.commands.ResumeOutcome` (see
  :mod:`aethergraph.host.resume_commands`);
* it watches process heartbeats (and, where the server tells, connections); when one
  expires (or a process's connection closes for good) it takes over the runs that
  process was driving (and, when it starts, the runs of processes already
  dead), continuing each by replay under a fenced claim;
* it takes submitted runs of the graphs it serves off the run queue (the
  owner ``queue``, which is never live), by the same fenced claim: the
  claim replays nothing and the body runs from the start.

A resume for a graph this worker does not know is put back for another worker
(it stays queued, delivered again with a growing delay) and announced once as
``deferred``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aethergraph.bus.commands import JetStreamCommands
from aethergraph.bus.leases import JetStreamLeases, OwnedRun
from aethergraph.core.errors import GraphNotFoundError, StaleWriterError
from aethergraph.core.ids import QUEUE_OWNER
from aethergraph.core.journal.run_journal import load_journal
from aethergraph.core.model.registry import must_get_graph, registered_graphs
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.executor import claim_run, drive_run
from aethergraph.core.run.resume import journal_state
from aethergraph.core.wire.events import RunClaimed, RunStarted

from .resume_commands import CommandHandler, RetryPolicy
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
        retry: RetryPolicy | None = None,
        takeover: bool = True,
        ready: asyncio.Event | None = None,
    ) -> None:
        self._driver = driver
        self._commands = commands
        self._leases: JetStreamLeases = driver.leases
        self._graphs = graphs
        self._batch = batch
        self._handler = CommandHandler(
            driver,
            worker_id=self._leases.worker_id,
            graphs=graphs,
            before_claim=self._leases.own,
            serving=self._leases.serving,
            max_event_bytes=commands.max_event_bytes,
            policy=retry or RetryPolicy(defer_delay_s=defer_delay_s),
        )
        self._takeover = takeover
        self._stopping = asyncio.Event()
        self._handling: set[asyncio.Task[None]] = set()
        self._in_flight: set[asyncio.Task[None]] = set()  # command deliveries being handled
        self._adopting: set[str] = set()  # runs this process is taking over right now
        self.ready = ready if ready is not None else asyncio.Event()

    @property
    def worker_id(self) -> str:
        return self._leases.worker_id

    def stop(self) -> None:
        self._stopping.set()

    async def serve(self) -> None:
        """Take commands and dead processes' runs until :meth:`stop`; then let running runs finish."""
        self._leases.serve_graphs(list(registered_graphs()))
        await self._leases.start()
        stop_watching = await self._leases.watch_deaths(self._on_death) if self._takeover else None
        # Watched before the startup adoption reads the records: no queued run falls between the two.
        stop_queue = await self._leases.watch_queue(self._on_queued) if self._takeover else None
        feed = await self._commands.resume_feed()
        try:
            if self._takeover:
                await self._adopt_orphans()
            self.ready.set()
            log.info("%s %s ready", "worker" if self._takeover else "resume intake of", self.worker_id)
            while not self._stopping.is_set():
                # At most ``batch`` commands in hand: a flood of commands waits on the stream, not in memory.
                room = self._batch - len(self._in_flight)
                waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._stopping.wait())}
                fetch = asyncio.ensure_future(feed.fetch(room, timeout=5.0)) if room > 0 else None
                waits |= {fetch} if fetch is not None else set(self._in_flight)
                done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for future in pending - self._in_flight:
                    future.cancel()
                    with contextlib.suppress(BaseException):
                        await future
                if fetch is not None and fetch in done:
                    for delivery in fetch.result():
                        task = self._spawn(self._handler.handle(delivery))
                        self._in_flight.add(task)
                        task.add_done_callback(self._in_flight.discard)
        finally:
            if stop_watching is not None:
                await stop_watching()
            if stop_queue is not None:
                await stop_queue()
            await feed.close()
            if self._handling:
                await asyncio.gather(*self._handling, return_exceptions=True)
            if self._takeover:  # a worker process lets its runs end; a resume intake leaves them running
                await self._driver.drain()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)
        return task

    # --- takeover -----------------------------------------------------------------

    async def _on_death(self, worker_id: str) -> None:
        if worker_id == self.worker_id or self._stopping.is_set():
            return
        log.info("process %s is gone; taking over its runs", worker_id)
        self._spawn(self._adopt_runs_of(worker_id))

    async def _on_queued(self, queued: OwnedRun) -> None:
        if not self._stopping.is_set():
            self._spawn(self._adopt([queued]))

    async def _adopt_runs_of(self, worker_id: str) -> None:
        await self._adopt(await self._leases.owned_runs(worker_id))

    async def _adopt_orphans(self) -> None:
        # Ownership records first, then the live set. A process stores its first heartbeat before
        # its first ownership record (``JetStreamLeases.own`` awaits ``start``), so every record read
        # here names a process whose heartbeat was stored before the live set is read: it is in that
        # set unless its heartbeat expired since, i.e. it died (or was presumed dead, and is then fenced
        # out on its next event). The other order is unsound: a process that starts heartbeating and
        # records a run between the two reads would look dead, and two live processes would both drive
        # the run (two takeover claims, a step run in both). Where the server lists connections, the live
        # set also leaves out processes whose connection is gone (read last: a process connects before its
        # first heartbeat), so the runs of a process killed moments ago are taken at once, not at its lease.
        records = await self._leases.owned_runs()
        live = await self._leases.live_workers()
        # A process restarted under the same worker id (a StatefulSet's ``worker-0``) finds its own
        # records: the runs they name are orphans unless this process drives them.
        orphans = [owned for owned in records if owned.worker_id not in live or self._is_own_orphan(owned)]
        if orphans:
            await self._adopt(orphans)

    def _is_own_orphan(self, owned: OwnedRun) -> bool:
        return owned.worker_id == self.worker_id and owned.run_id not in self._driver.tasks

    async def _adopt(self, orphans: list[OwnedRun]) -> None:
        for owned in orphans:
            if owned.worker_id == self.worker_id and not self._is_own_orphan(owned):
                continue
            # One adoption per run at a time here (the queue watch and the startup scan may both name it).
            if owned.run_id in self._adopting or owned.run_id in self._driver.tasks:
                continue
            self._adopting.add(owned.run_id)
            try:
                await self._take_over(owned)
            except Exception:
                log.exception("taking over run %s from %s failed", owned.run_id, owned.worker_id)
            finally:
                self._adopting.discard(owned.run_id)

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
        if owned.worker_id == QUEUE_OWNER:
            log.info("took run %s of %s off the run queue", owned.run_id, owned.graph_id)
        else:
            log.info("took over run %s from %s at event %d", owned.run_id, owned.worker_id, state.last_seq)
        self._driver.drive(owned.run_id, lambda: drive_run(spec, started.inputs, scope, started.seq))
