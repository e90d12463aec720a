"""``JetStreamWorkQueue``: workers take ``node.ready`` events from the shared consumer ``ag-work``.

The queue keeps pull requests outstanding for as many nodes as the worker
has free slots, so the server pushes a node the moment it is journaled (no
polling, no sleep): each pull asks for a batch and expires after a while;
the server's expiry status says how many of the batch it still owed, and the
free slots are asked for again. A node is acknowledged once its report is
stored; while it runs, the worker tells the server it is still in progress
every third of the consumer's ``ack_wait``, so only a dead (or stalled)
worker's node is handed to another worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext

from aethergraph.core.wire.events import NodeReady

from .dispatch import dispatch_raw, publish_now, release_raw, status_of
from .topology import EVENTS_STREAM, WORK_CONSUMER

__all__ = ["JetStreamWorkQueue", "WorkItem"]

log = logging.getLogger("aethergraph.work")

_decode_ready = msgspec.json.Decoder(NodeReady).decode
_PULL_EXPIRES_S = 30.0


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One delivery of a ``node.ready`` event."""

    event: NodeReady
    reply: str
    deliveries: int


class JetStreamWorkQueue:
    """Delivers work items to ``handler`` while it has free slots; see the module docstring."""

    def __init__(self, nc: Client, *, capacity: int, handler: Callable[[WorkItem], None]) -> None:
        self._nc = nc
        self._capacity = capacity
        self._handler = handler
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._requested = 0  # messages asked for and not yet delivered
        self._busy = 0  # items handed to the handler and not yet settled
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.{WORK_CONSUMER}"

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox)
        # Raw: the client's header parsing and message objects cost more than taking a node.
        dispatch_raw(self._nc, self._sub, self._on_message)
        self._pull()

    async def stop(self) -> None:
        """Stop taking work (items already delivered stay with the handler until settled)."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._sub is not None:
            release_raw(self._nc, self._sub)
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    @property
    def busy(self) -> int:
        return self._busy

    # --- pulling ------------------------------------------------------------------------

    def _pull(self) -> None:
        """Ask for as many items as there are free slots (in batches of at least a quarter of them)."""
        if self._closed or self._nc.is_closed:
            return
        free = self._capacity - self._busy - self._requested
        if free <= 0 or (self._requested and free < max(1, self._capacity // 4)):
            return
        request = msgspec.json.encode({"batch": free, "expires": int(_PULL_EXPIRES_S * 1e9)})
        self._requested += free
        self._send(self._pull_subject, request, reply=self._inbox)
        self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        # If the server forgets our requests (a reconnect), no expiry status arrives: ask again.
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = self._loop.call_later(_PULL_EXPIRES_S + 5.0, self._reset)

    def connection_lost(self) -> None:
        """The server may have forgotten our pull requests: ask again (sent as soon as the client reconnects)."""
        self._reset()

    def _reset(self) -> None:
        self._watchdog = None
        self._requested = 0
        self._pull()

    def _send(self, subject: str, payload: bytes, *, reply: str = "") -> None:
        if not self._nc.is_closed:
            publish_now(self._nc, subject, payload, reply)

    def _on_message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if not data and headers:
            self._on_status(*status_of(headers))
            return
        self._requested = max(0, self._requested - 1)
        self._arm_watchdog()
        reply_to = reply.decode()
        try:
            event = _decode_ready(data)
        except msgspec.DecodeError as exc:
            log.error("dropping an undecodable node.ready on %s: %s", subject.decode(errors="replace"), exc)
            self._send(reply_to, b"+TERM")
            self._pull()
            return
        tokens = reply_to.split(".")
        deliveries = int(tokens[4]) if len(tokens) == 9 else int(tokens[6]) if len(tokens) >= 11 else 1
        self._busy += 1
        self._handler(WorkItem(event=event, reply=reply_to, deliveries=deliveries))

    def _on_status(self, status: str, headers: dict[str, str]) -> None:
        if status == "100":
            return  # idle heartbeat
        owed = headers.get("Nats-Pending-Messages")
        if owed is not None:
            self._requested = max(0, self._requested - int(owed))
        elif status in ("404", "408", "409"):
            self._requested = 0
        if status == "409" and "Consumer Deleted" in headers.get("Description", ""):
            log.error("the work consumer %s was deleted; reconnect to recreate it", WORK_CONSUMER)
            return
        self._pull()

    # --- settling items -----------------------------------------------------------------

    def _settle(self, item: WorkItem, payload: bytes) -> None:
        self._busy -= 1
        self._send(item.reply, payload)
        self._pull()

    def ack(self, item: WorkItem) -> None:
        """The node's report is stored: the item is done."""
        self._settle(item, b"+ACK")

    def nak(self, item: WorkItem, delay_s: float = 0.0) -> None:
        """Put the item back for another worker (after ``delay_s``)."""
        payload = b"-NAK" if delay_s <= 0 else b"-NAK " + msgspec.json.encode({"delay": int(delay_s * 1e9)})
        self._settle(item, payload)

    def in_progress(self, item: WorkItem) -> None:
        """Still working on it: restart the consumer's ack timer."""
        self._send(item.reply, b"+WPI")


async def shared_ack_wait_s(js: JetStreamContext) -> float | None:
    """The ack wait of the shared work consumer (the last process to connect set it), if it has one."""
    info = await js.consumer_info(EVENTS_STREAM, WORK_CONSUMER)
    return float(info.config.ack_wait) if info.config.ack_wait else None
