"""Node reports on ``ag.cmd.report.<run_id>``: workers publish them, a static run's scheduler follows them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from aethergraph.core.node_report import NodeReport
from aethergraph.core.ports import ReportSink

from .dispatch import delivery_position, dispatch_synchronously
from .event_log import JetStreamEventLog
from .topology import report_subject

__all__ = ["JetStreamNodeReports"]

log = logging.getLogger("aethergraph.reports")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(NodeReport).decode


class JetStreamNodeReports:
    """Publishes and follows node reports (stored on ``AG_COMMANDS``)."""

    def __init__(self, nc: Client, js: JetStreamContext, event_log: JetStreamEventLog) -> None:
        self._nc = nc
        self._js = js
        self._event_log = event_log

    def publish(self, report: NodeReport) -> asyncio.Future[int]:
        """Store ``report``; the future resolves once JetStream acknowledged it.

        Its message id names the attempt and outcome, so a report republished
        after a reconnect is stored once.
        """
        msg_id = f"{report.run_id}:{report.node_id}:{report.attempt}:{report.status}"
        return self._event_log.publish_acked(report_subject(report.run_id), _encode(report), msg_id=msg_id)

    async def follow(self, run_id: str, sink: ReportSink, *, from_start: bool) -> Callable[[], Awaitable[None]]:
        """Hand ``run_id``'s reports to ``sink`` in order: the stored ones first if ``from_start``, then live ones.

        ``sink(None)`` is called once when the stored reports have all been
        delivered (at once when ``from_start`` is false).
        """
        caught_up = False

        def mark_caught_up() -> None:
            nonlocal caught_up
            if not caught_up:
                caught_up = True
                sink(None)

        async def deliver(msg: Msg) -> None:
            try:
                report = _decode(msg.data)
            except msgspec.DecodeError as exc:
                log.error("ignoring an undecodable node report on %s: %s", msg.subject, exc)
                report = None
            if report is not None:
                sink(report)
            if not caught_up and delivery_position(msg)[1] == 0:
                mark_caught_up()

        def deliver_now(msg: Msg) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                sink(_decode(msg.data))

        # Reports reach the scheduler twice: at once over core NATS (as the server receives them) and
        # in order from the stream (nothing is missed across reconnects); the scheduler keeps the first.
        live = await self._nc.subscribe(report_subject(run_id))
        dispatch_synchronously(live, deliver_now)
        sub = await self._js.subscribe(
            report_subject(run_id),
            cb=deliver,
            ordered_consumer=True,
            inactive_threshold=5.0,
            deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
        )
        if not from_start:
            mark_caught_up()
        else:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                mark_caught_up()

        async def stop() -> None:
            with contextlib.suppress(nats.errors.Error):
                await live.unsubscribe()
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

        return stop
