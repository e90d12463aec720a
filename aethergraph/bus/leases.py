"""Process liveness and run ownership on the ``AG_LEASES`` stream, for crash takeover.

Every process that drives runs publishes a heartbeat to
``ag.lease.worker.<worker_id>`` several times per lease period; each
heartbeat carries a per-message TTL of one lease period and replaces the
previous one. When a process dies its last heartbeat expires and the server
stores a delete marker on that subject: workers watching the subject learn of
the death from the marker (an event, not a poll) and take over the dead
process's runs, which are listed by its ownership records
``ag.lease.run.<worker_id>.<run_id>``. A process releases a record (a TTL'd
tombstone replaces it) when its run ends or suspends.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

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

_MARKER = "Nats-Marker-Reason"
_RELEASED = "AG-Released"
_TOMBSTONE_TTL = "60s"


class _OwnerRecord(msgspec.Struct, kw_only=True):
    graph_id: str


_encode = msgspec.json.encode
_decode_owner = msgspec.json.Decoder(_OwnerRecord).decode


@dataclass(frozen=True, slots=True)
class OwnedRun:
    """A run some process recorded as driving."""

    worker_id: str
    run_id: str
    graph_id: str


class JetStreamLeases:
    """This process's heartbeat and run ownership records, and the view of everyone else's."""

    def __init__(self, nc: Client, js: JetStreamContext, worker_id: str, *, lease_s: float) -> None:
        self._nc = nc
        self._js = js
        self.worker_id = worker_id
        # Per-message TTLs are whole seconds.
        self._ttl = f"{max(1, math.ceil(lease_s))}s"
        self._interval = max(0.05, lease_s / 4)
        self._heartbeat: asyncio.Task[None] | None = None
        self._first_beat: asyncio.Future[None] | None = None

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
            await self._js.publish(subject, b"", headers=headers)
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
                await self._nc.publish(subject, b"", headers=headers)

    @property
    def heartbeating(self) -> bool:
        """Whether this process's heartbeat task runs."""
        return self._heartbeat is not None and not self._heartbeat.done()

    async def close(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeat
        first, self._first_beat = self._first_beat, None
        if first is not None and not first.done():
            first.cancel()

    async def own(self, run_id: str, graph_id: str) -> None:
        """Record (durably) that this process drives ``run_id``; the first call starts the heartbeat."""
        await self.start()
        await self._js.publish(run_owner_subject(self.worker_id, run_id), _encode(_OwnerRecord(graph_id=graph_id)))

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
        """Processes whose heartbeat has not expired."""
        return {
            worker_of_lease(msg.subject)
            for msg in await self._last_per_subject(WORKER_LEASES)
            if not (msg.headers and _MARKER in msg.headers)
        }

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
        """Call ``on_death(worker_id)`` whenever a heartbeat expires; returns a function that stops watching."""

        async def deliver(msg: Msg) -> None:
            if msg.headers and msg.headers.get(_MARKER):
                await on_death(worker_of_lease(msg.subject))

        sub = await self._js.subscribe(
            WORKER_LEASES, cb=deliver, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )

        async def stop() -> None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

        return stop
