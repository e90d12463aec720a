"""Node reports on ``ag.cmd.report.<run_id>``: workers publish them, the schedulers of static runs follow them.

Following creates no JetStream consumer per run. A consumer per run is a
server resource per scheduler that lingers after the run, and nats-server
refuses the 1,001st on a stream (``maximum consumers limit reached``), so a
burst of static runs used to leave runs that never started scheduling.
Instead ``AG_COMMANDS`` republishes each report it *stores* on
``ag.live.report.<run_id>`` (core NATS), and each process holds **one**
subscription to ``ag.live.report.>`` (started with its first follow) that
hands each report to the sinks of its run by run id; reports of runs not
scheduled here are dropped after one dictionary lookup. What the server
holds per process is that one subscription, whatever the number of runs.

Nothing is missed:

* a run continued from its journal (``from_start``) first has its stored
  reports read by direct gets of ``AG_COMMANDS``; its sink is registered
  (and the subscription is live on the server) before that read, and the
  server republishes a report only after storing it, so every report is in
  the read, delivered live, or both;
* core NATS loses messages only with the connection (a slow consumer is
  disconnected too): after a reconnect the stored reports of every run
  followed here are read again and handed over.

A report can therefore arrive twice, and live ones can overtake stored ones;
the scheduler journals the first outcome of each attempt and ignores the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from aethergraph.core.errors import BusUnavailableError
from aethergraph.core.journal.ports import ReportSink
from aethergraph.core.wire.node_report import NodeReport

from .direct_get import DirectGetter, stored_messages
from .dispatch import dispatch_raw, release_raw
from .event_log import JetStreamEventLog
from .topology import COMMANDS_STREAM, LIVE_REPORTS, live_report_prefix, report_subject

__all__ = ["JetStreamNodeReports"]

log = logging.getLogger("aethergraph.reports")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(NodeReport).decode

# How many runs' stored reports are read at once after a reconnect.
_RESYNC_CONCURRENCY = 64


class JetStreamNodeReports:
    """Publishes node reports (stored on ``AG_COMMANDS``) and fans them out to this process's schedulers."""

    def __init__(self, nc: Client, js: JetStreamContext, event_log: JetStreamEventLog, timeout_s: float = 10.0) -> None:
        self._nc = nc
        self._js = js
        self._event_log = event_log
        self._direct = DirectGetter(nc, timeout_s, stream=COMMANDS_STREAM)
        self._sinks: dict[str, list[ReportSink]] = {}
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self._prefix_len = len(live_report_prefix())
        self._resync_needed = False
        self._resync: asyncio.Task[None] | None = None
        self._direct_started = False

    def publish(self, report: NodeReport) -> asyncio.Future[int]:
        """Store ``report``; the future resolves once JetStream acknowledged it.

        Its message id names the attempt and outcome, so a report republished
        after a reconnect is stored once.
        """
        msg_id = f"{report.run_id}:{report.node_id}:{report.attempt}:{report.status}"
        return self._event_log.publish_acked(report_subject(report.run_id), _encode(report), msg_id=msg_id)

    @property
    def followed_runs(self) -> int:
        """How many runs' reports this process follows now."""
        return len(self._sinks)

    async def _ensure_direct(self) -> None:
        """Subscribe the direct gets' reply inbox (once): reads of stored reports need it, following or not."""
        if self._direct_started:
            return
        async with self._lock:
            if not self._direct_started:
                await self._direct.start()
                self._direct_started = True

    async def _ensure_started(self) -> None:
        if self._sub is not None:
            return
        await self._ensure_direct()
        async with self._lock:
            if self._sub is None:
                sub = await self._nc.subscribe(LIVE_REPORTS)
                dispatch_raw(self._nc, sub, self._on_message)
                self._sub = sub

    async def close(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
            self._resync = None
        sub, self._sub = self._sub, None
        if sub is not None:
            release_raw(self._nc, sub)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self._direct_started:
            self._direct_started = False
            await self._direct.stop()

    def _on_message(self, subject: bytes, _reply: bytes, data: bytes, _headers: bytes | None) -> None:
        sinks = self._sinks.get(subject[self._prefix_len :].decode(errors="replace"))
        if not sinks:
            return
        try:
            report = _decode(data)
        except msgspec.DecodeError as exc:
            log.error("ignoring an undecodable node report on %s: %s", subject.decode(errors="replace"), exc)
            return
        for sink in list(sinks):
            sink(report)

    async def follow(self, run_id: str, sink: ReportSink, *, from_start: bool) -> Callable[[], Awaitable[None]]:
        """Hand ``run_id``'s reports to ``sink``: the stored ones first if ``from_start``, then live ones.

        ``sink(None)`` is called once when the stored reports have all been
        delivered (at once when ``from_start`` is false: a new run has none).
        """
        await self._ensure_started()
        self._sinks.setdefault(run_id, []).append(sink)
        try:
            if from_start:
                for report in await self._stored(run_id):
                    sink(report)
        except BaseException:
            self._remove(run_id, sink)
            raise
        sink(None)

        async def stop() -> None:
            self._remove(run_id, sink)

        return stop

    def _remove(self, run_id: str, sink: ReportSink) -> None:
        sinks = self._sinks.get(run_id)
        if sinks is None:
            return
        with contextlib.suppress(ValueError):
            sinks.remove(sink)
        if not sinks:
            del self._sinks[run_id]

    async def stored(self, run_id: str) -> list[NodeReport]:
        """Every report stored for ``run_id`` so far, in order (whether or not its scheduler journaled it yet)."""
        return await self._stored(run_id)

    async def _stored(self, run_id: str) -> list[NodeReport]:
        """The reports stored for ``run_id`` (a read cut by a lost connection is read again once connected)."""
        await self._ensure_direct()
        deadline = asyncio.get_running_loop().time() + self._event_log.outage_s
        while True:
            await self._event_log.wait_connected(deadline)
            try:
                messages = [
                    message
                    async for batch in stored_messages(self._direct, report_subject(run_id), f"reports of run {run_id}")
                    for message in batch
                ]
            except BusUnavailableError:
                if self._nc.is_connected and not self._nc.is_reconnecting:
                    raise
                continue
            reports = []
            for message in messages:
                try:
                    reports.append(_decode(message.data))
                except msgspec.DecodeError as exc:
                    log.error("ignoring undecodable node report %d of run %s: %s", message.stream_seq, run_id, exc)
            return reports

    def connection_lost(self) -> None:
        """Reports republished while disconnected are gone: read every followed run's stored ones again."""
        self._direct.connection_lost()
        if not self._sinks:
            return
        self._resync_needed = True
        if self._resync is None or self._resync.done():
            self._resync = asyncio.get_running_loop().create_task(self._resync_all(), name="aethergraph-report-resync")

    async def _resync_all(self) -> None:
        failed = False
        while self._resync_needed:
            if failed:
                await asyncio.sleep(1.0)
            self._resync_needed = failed = False
            run_ids = list(self._sinks)
            for start in range(0, len(run_ids), _RESYNC_CONCURRENCY):
                chunk = run_ids[start : start + _RESYNC_CONCURRENCY]
                results = await asyncio.gather(*(self._stored(run_id) for run_id in chunk), return_exceptions=True)
                for run_id, reports in zip(chunk, results, strict=True):
                    if isinstance(reports, BaseException):
                        log.warning("could not read the stored reports of run %s again: %s", run_id, reports)
                        self._resync_needed = failed = True
                        continue
                    for report in reports:
                        for sink in list(self._sinks.get(run_id, ())):
                            sink(report)
