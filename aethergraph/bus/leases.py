"""Process liveness and run ownership on the ``AG_LEASES`` stream, for crash takeover.

Every process that drives runs publishes a heartbeat to
``ag.lease.worker.<worker_id>`` several times per lease period; each
heartbeat carries a per-message TTL of one lease period and replaces the
previous one. When a process dies its last heartbeat expires and the server
stores a delete marker on that subject: workers watching the subject learn of
the death from the marker (an event, not a poll) and take over the dead
process's runs, which are listed by its ownership records
``ag.lease.run.<worker_id>.<run_id>``. A process releases a record (a TTL'd
tombstone replaces it) when its run ends or suspends. A process that stops
while it still drives runs (its event loop shuts down) hands them over at
once: its last heartbeat says so (``AG-Stopped``), and workers take its runs
over without waiting for the lease to expire.

Where the server tells the account about its clients' connections (the
embedded server does, see :mod:`aethergraph.bus.presence`), a process killed
outright is known dead before its lease expires: its connection closed and
did not come back within a short grace, its heartbeat is still the last word
on its subject, and the server lists no connection under its name. The death
watch then reports it at once, as it reports an expired or stopped heartbeat;
a worker starting up takes records of a process with a heartbeat but no
connection for orphans (:meth:`JetStreamLeases.live_workers`). Elsewhere the
lease alone tells.

The run queue is an owner that never heartbeats (``ag.lease.run.queue.<run_id>``,
see :data:`~aethergraph.core.ids.QUEUE_OWNER`): a submitted run is recorded
there, so it is an orphan to every worker; workers also watch those records
as they are written and take each run whose graph they serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from aethergraph.core.errors import BusUnavailableError, EventRejectedError
from aethergraph.core.ids import QUEUE_OWNER

from .ack_router import AckRouter, PublishedAck
from .dispatch import publish_at_once, retrieve_exception
from .failover import retry_while_leaderless
from .presence import ClientPresence, detect_presence
from .topology import (
    LEASES_STREAM,
    WORKER_LEASES,
    parse_run_owner,
    run_owner_subject,
    run_owners_filter,
    worker_lease_subject,
    worker_of_lease,
)

__all__ = ["JetStreamLeases", "OwnedRun"]

log = logging.getLogger("aethergraph.leases")

_MARKER = "Nats-Marker-Reason"
_RELEASED = "AG-Released"
_STOPPED = "AG-Stopped"
_TTL = "Nats-TTL"
_TOMBSTONE_TTL = "60s"
_NO_HEADERS = b"NATS/1.0\r\n\r\n"
# How long a pipelined ownership record waits for its acknowledgement before it is written again.
_RECORD_ACK_S = 5.0
_LEADERLESS = 10008  # err_code of "JetStream system temporarily unavailable": no stream leader yet


class _OwnerRecord(msgspec.Struct, kw_only=True):
    graph_id: str


class _Heartbeat(msgspec.Struct, kw_only=True):
    """A heartbeat's body: the graphs whose resume commands the process takes (empty: none)."""

    graphs: list[str] = msgspec.field(default_factory=list)


_encode = msgspec.json.encode
_decode_owner = msgspec.json.Decoder(_OwnerRecord).decode
_decode_heartbeat = msgspec.json.Decoder(_Heartbeat).decode


def _beating(headers: dict[str, str] | None) -> bool:
    """Whether the last message on a heartbeat subject, with ``headers``, is a live heartbeat (not a marker,
    a stop or a stray)."""
    headers = headers or {}
    return _TTL in headers and _MARKER not in headers and _STOPPED not in headers


@dataclass(frozen=True, slots=True)
class OwnedRun:
    """A run some process recorded as driving."""

    worker_id: str
    run_id: str
    graph_id: str


class JetStreamLeases:
    """This process's heartbeat and run ownership records, and the view of everyone else's."""

    def __init__(
        self, nc: Client, js: JetStreamContext, worker_id: str, *, lease_s: float, retry_s: float = 30.0
    ) -> None:
        self._nc = nc
        self._js = js
        # How long writes of records (the same record again is harmless) ride out a leaderless AG_LEASES.
        self._retry_s = retry_s
        self.worker_id = worker_id
        # Per-message TTLs are whole seconds.
        self._lease_s = max(1, math.ceil(lease_s))
        self._ttl = f"{self._lease_s}s"
        self._interval = max(0.05, lease_s / 4)
        self._heartbeat: asyncio.Task[None] | None = None
        self._handed_over = False
        self._body = b""
        self._first_beat: asyncio.Future[None] | None = None
        self._presence: asyncio.Future[ClientPresence | None] | None = None
        self._router: AckRouter | None = None

    async def presence(self) -> ClientPresence | None:
        """The server's connection events for this account, if it delivers them (asked once per process)."""
        if self._presence is None:
            self._presence = asyncio.ensure_future(detect_presence(self._nc))
        return await asyncio.shield(self._presence)

    def serve_graphs(self, graphs: list[str]) -> None:
        """Say in every heartbeat from now on that this process takes resume commands for ``graphs``."""
        self._body = _encode(_Heartbeat(graphs=sorted(graphs))) if graphs else b""

    async def start(self) -> None:
        """Publish the first heartbeat (stored before this returns) and keep publishing.

        Processes that only read or publish commands never heartbeat: the
        heartbeat starts with the first run this process drives. However many
        runs start at once, the process has one heartbeat task: the first
        caller creates it before anything is awaited, and every caller waits
        for the first heartbeat to be stored.
        """
        if self._heartbeat is None:
            self._first_beat = asyncio.get_running_loop().create_future()
            self._heartbeat = asyncio.create_task(self._beat(), name=f"aethergraph-heartbeat-{self.worker_id}")
        assert self._first_beat is not None
        await asyncio.shield(self._first_beat)

    async def _beat(self) -> None:
        subject = worker_lease_subject(self.worker_id)
        headers = {"Nats-TTL": self._ttl}
        first = self._first_beat
        try:
            await retry_while_leaderless(
                lambda: self._js.publish(subject, self._body, headers=headers), retry_s=self._retry_s
            )
        except BaseException as exc:
            if first is not None and not first.done():
                if isinstance(exc, asyncio.CancelledError):
                    first.cancel()
                else:
                    first.set_exception(exc)
            if self._heartbeat is asyncio.current_task():
                self._heartbeat = None  # the next run to start tries again
            raise
        if first is not None and not first.done():
            first.set_result(None)
        while True:
            await asyncio.sleep(self._interval)
            with contextlib.suppress(nats.errors.Error):
                await self._nc.publish(subject, self._body, headers=headers)

    @property
    def heartbeating(self) -> bool:
        """Whether this process's heartbeat task runs."""
        return self._heartbeat is not None and not self._heartbeat.done()

    async def close(self) -> None:
        router, self._router = self._router, None
        if router is not None:
            await router.stop()
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeat
        first, self._first_beat = self._first_beat, None
        if first is not None and not first.done():
            first.cancel()

    def hand_over(self) -> None:
        """This process stops driving its runs (it is shutting down): workers take them over at once.

        Synchronous, and written straight to the socket: it is called while
        the event loop cancels every task, the client's own included.
        """
        if self._handed_over:
            return
        self._handed_over = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        headers = b"NATS/1.0\r\n%s: 1\r\nNats-TTL: %s\r\n\r\n" % (_STOPPED.encode(), self._ttl.encode())
        publish_at_once(self._nc, worker_lease_subject(self.worker_id), headers, b"")

    async def own(self, run_id: str, graph_id: str) -> None:
        """Record (durably) that this process drives ``run_id``; the first call starts the heartbeat."""
        await (await self.record_owner(run_id, graph_id))

    async def record_owner(self, run_id: str, graph_id: str) -> asyncio.Future[None]:
        """Write the record that this process drives ``run_id``; returns a future resolved once it is stored.

        The record is in the client's outbound buffer when this returns, so
        whatever this process publishes afterwards (a new run's
        ``run.started``) reaches the server after it: the two can be
        acknowledged together, and a ``run.started`` the server got was
        preceded by its record. The first call starts the heartbeat, stored
        before the first record (see ``Worker._adopt_orphans``). A record
        left unanswered (no stream leader, a timeout) is written again while
        ``AG_LEASES`` is leaderless (the same record again is harmless); a
        refusal fails the future with the server's reason.
        """
        await self.start()
        if self._router is None:
            router = AckRouter(self._nc, _RECORD_ACK_S, stream=LEASES_STREAM)
            await router.start()
            if self._router is None:
                self._router = router
            else:  # another run started it meanwhile
                await router.stop()
        subject = run_owner_subject(self.worker_id, run_id)
        body = _encode(_OwnerRecord(graph_id=graph_id))
        acked: asyncio.Future[PublishedAck] = asyncio.get_running_loop().create_future()
        acked.add_done_callback(retrieve_exception)

        def on_ack(ack: PublishedAck | BaseException) -> None:
            if acked.done():
                return
            if isinstance(ack, BaseException):
                acked.set_exception(ack)
            else:
                acked.set_result(ack)

        self._router.publish(subject, _NO_HEADERS, body, on_ack)
        stored = asyncio.ensure_future(self._stored(acked, subject, body, run_id))
        stored.add_done_callback(retrieve_exception)
        return stored

    async def _stored(self, acked: asyncio.Future[PublishedAck], subject: str, body: bytes, run_id: str) -> None:
        try:
            ack = await acked
        except BusUnavailableError:
            await self._record(subject, body)  # no answer: write it again while the stream is leaderless
            return
        if ack.error is None:
            return
        if ack.error.err_code == _LEADERLESS:
            await self._record(subject, body)
            return
        raise EventRejectedError(
            f"JetStream refused the ownership record of run {run_id} on {LEASES_STREAM}: "
            f"{ack.error.description} (err_code {ack.error.err_code}); check the stream with "
            f"`nats stream info {LEASES_STREAM}`",
            run_id=run_id,
        )

    async def enqueue(self, run_id: str, graph_id: str) -> None:
        """Record (durably) ``run_id`` on the run queue: workers serving ``graph_id`` take it. No heartbeat starts."""
        await self._record(run_owner_subject(QUEUE_OWNER, run_id), _encode(_OwnerRecord(graph_id=graph_id)))

    async def watch_queue(self, on_queued: Callable[[OwnedRun], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Call ``on_queued`` for every run put on the run queue from now on; returns a function that stops watching.

        Runs queued before the call are found with :meth:`owned_runs` (the
        queue is never live, so its records are orphans).
        """

        async def deliver(msg: Msg) -> None:
            if msg.headers and (_RELEASED in msg.headers or _MARKER in msg.headers):
                return
            try:
                record = _decode_owner(msg.data)
            except msgspec.DecodeError:
                return
            owner, run_id = parse_run_owner(msg.subject)
            await on_queued(OwnedRun(worker_id=owner, run_id=run_id, graph_id=record.graph_id))

        sub = await self._js.subscribe(
            run_owners_filter(QUEUE_OWNER), cb=deliver, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )

        async def stop() -> None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

        return stop

    async def _record(self, subject: str, body: bytes) -> None:
        await retry_while_leaderless(lambda: self._js.publish(subject, body), retry_s=self._retry_s)

    async def release(self, run_id: str, *, worker_id: str | None = None) -> None:
        """Drop the ownership record of ``run_id`` (this process's, or a dead ``worker_id``'s)."""
        subject = run_owner_subject(worker_id or self.worker_id, run_id)
        with contextlib.suppress(nats.errors.Error):
            await self._js.publish(subject, b"", headers={_RELEASED: "1", "Nats-TTL": _TOMBSTONE_TTL})

    async def _last_per_subject(self, subject_filter: str) -> list[Msg]:
        sub = await self._js.pull_subscribe(
            subject_filter,
            stream=LEASES_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=2.0,
                mem_storage=True,
            ),
        )
        try:
            # Heartbeats and tombstones carry TTLs: a message counted as pending may expire (or be
            # replaced by a newer one on its subject) before it is delivered, so the count is only a
            # hint. Each delivery says how many are left; a fetch that times out asks the server again.
            latest: dict[str, Msg] = {}
            pending = (await sub.consumer_info()).num_pending or 0
            while pending > 0:
                try:
                    batch = await sub.fetch(min(pending, 512), timeout=1.0)
                except nats.errors.TimeoutError:
                    pending = (await sub.consumer_info()).num_pending or 0
                    continue
                for msg in batch:
                    latest[msg.subject] = msg
                pending = batch[-1].metadata.num_pending if batch else 0
            return list(latest.values())
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def live_workers(self) -> set[str]:
        """Processes whose heartbeat has not expired and, where the server lists connections, that are connected.

        The last message on a process's heartbeat subject must be a heartbeat
        (it carries a TTL): a stray message that replaced it never expires, and
        would otherwise keep a dead process alive for good. A process connects
        before it stores its first heartbeat, so one with a heartbeat and no
        connection has died (kill -9) and its lease has not run out yet.
        """
        beating = {
            worker_of_lease(msg.subject) for msg in await self._last_per_subject(WORKER_LEASES) if _beating(msg.headers)
        }
        presence = await self.presence()
        connected = await presence.connected_workers() if presence is not None and beating else None
        if connected is None:
            return beating
        if gone := beating - connected:
            log.info("processes %s have a heartbeat but no connection: taken for dead", ", ".join(sorted(gone)))
        return beating & connected

    async def _beats(self, worker_id: str) -> bool:
        """Whether the last message on ``worker_id``'s heartbeat subject is a live heartbeat (one direct get)."""
        try:
            last = await self._js.get_last_msg(LEASES_STREAM, worker_lease_subject(worker_id), direct=True)
        except nats.errors.Error:
            return False
        return _beating(last.headers)

    async def _departed(self, worker_id: str, presence: ClientPresence) -> bool:
        """Whether a process whose connection closed (and stayed closed) drives runs and has no connection now."""
        if worker_id == self.worker_id or not await self._beats(worker_id):
            return False  # this process, or one that never drove runs (a CLI call) or was already reported
        connected = await presence.connected_workers()
        if connected is None or worker_id in connected:
            return False
        log.info("the connection of process %s closed and did not come back: taken for dead", worker_id)
        return True

    async def serving(self, graph_id: str) -> list[str]:
        """Live processes that take resume commands for runs of ``graph_id`` (workers, and processes awaiting runs)."""
        found = []
        for msg in await self._last_per_subject(WORKER_LEASES):
            if (msg.headers and (_MARKER in msg.headers or _STOPPED in msg.headers)) or not msg.data:
                continue
            try:
                graphs = _decode_heartbeat(msg.data).graphs
            except msgspec.DecodeError:
                continue
            if graph_id in graphs:
                found.append(worker_of_lease(msg.subject))
        return found

    async def owned_runs(self, worker_id: str | None = None) -> list[OwnedRun]:
        """Runs recorded as driven (by ``worker_id``, or by anyone) and not released."""
        owned: list[OwnedRun] = []
        for msg in await self._last_per_subject(run_owners_filter(worker_id)):
            if msg.headers and (_RELEASED in msg.headers or _MARKER in msg.headers):
                continue
            try:
                record = _decode_owner(msg.data)
            except msgspec.DecodeError:
                continue
            owner, run_id = parse_run_owner(msg.subject)
            owned.append(OwnedRun(worker_id=owner, run_id=run_id, graph_id=record.graph_id))
        return owned

    async def watch_deaths(self, on_death: Callable[[str], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Call ``on_death(worker_id)`` whenever a heartbeat expires or stops, or (where the server tells,
        see :mod:`aethergraph.bus.presence`) a process's connection closes for good; returns a function that
        stops watching.

        A message on a heartbeat subject that is no heartbeat (no TTL: a stray
        publish) replaces the process's last heartbeat and never expires, so
        no marker would announce that process's death: unless a heartbeat
        follows within two lease periods, the process is taken for dead.
        """
        loop = asyncio.get_running_loop()
        suspects: dict[str, asyncio.TimerHandle] = {}
        dying: set[asyncio.Future[None]] = set()

        def presumed_dead(worker_id: str) -> None:
            suspects.pop(worker_id, None)
            task: asyncio.Future[None] = asyncio.ensure_future(on_death(worker_id))
            dying.add(task)
            task.add_done_callback(dying.discard)

        async def deliver(msg: Msg) -> None:
            worker_id = worker_of_lease(msg.subject)
            headers = msg.headers or {}
            if headers.get(_MARKER) or headers.get(_STOPPED):
                await on_death(worker_id)
            elif "Nats-TTL" in headers:
                timer = suspects.pop(worker_id, None)
                if timer is not None:
                    timer.cancel()
            elif worker_id not in suspects:
                suspects[worker_id] = loop.call_later(2 * self._lease_s, presumed_dead, worker_id)

        sub = await self._js.subscribe(
            WORKER_LEASES, cb=deliver, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        presence = await self.presence()
        stop_departures = None
        if presence is not None:

            async def departed(worker_id: str) -> None:
                if await self._departed(worker_id, presence):
                    await on_death(worker_id)

            stop_departures = await presence.watch_departures(departed)

        async def stop() -> None:
            for timer in suspects.values():
                timer.cancel()
            suspects.clear()
            if stop_departures is not None:
                await stop_departures()
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

        return stop
