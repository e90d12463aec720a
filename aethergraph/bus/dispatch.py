"""Taking messages off a subscription without a task hop per message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["SyncDispatchQueue", "delivery_position", "dispatch_synchronously", "publish_now"]


class SyncDispatchQueue(asyncio.Queue[Msg]):
    """Hands each message to ``handler`` as the client parses it.

    Installed as a subscription's pending queue, it replaces nats-py's
    per-message task dispatch: for high-rate inboxes (acknowledgements,
    consumer deliveries) that hop costs more than the work itself. The client
    counts each message's bytes as pending on the subscription before handing
    it over; the message is consumed here, so its bytes are released here too
    (otherwise the subscription would be declared a slow consumer after its
    byte limit had passed through it and drop every later message).
    """

    def __init__(self, handler: Callable[[Msg], None], subscription: Subscription) -> None:
        super().__init__()
        self._handler = handler
        self._subscription = subscription

    def put_nowait(self, item: Msg) -> None:
        self._subscription._pending_size -= len(item.data)
        self._handler(item)


def dispatch_synchronously(subscription: Subscription, handler: Callable[[Msg], None]) -> None:
    """Deliver ``subscription``'s messages straight to ``handler`` (see :class:`SyncDispatchQueue`)."""
    subscription._pending_queue = SyncDispatchQueue(handler, subscription)


def delivery_position(msg: Msg) -> tuple[int, int]:
    """``(stream sequence, pending)`` of a JetStream delivery, from its acknowledgement subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>``,
    or the form with domain and account hash after ``$JS.ACK`` (12 tokens).
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[10])
    metadata = msg.metadata
    return metadata.sequence.stream, metadata.num_pending


def publish_now(nc: Client, subject: str, payload: bytes, reply: str = "") -> None:
    """Write a core publish into the client's outbound buffer synchronously (no task, no await).

    Messages written this way keep their order with everything else the
    client sends; the client's flusher sends them on its next pass.
    """
    if reply:
        cmd = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
    else:
        cmd = b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
    nc._pending.append(cmd)
    nc._pending_data_size += len(cmd)
    queue = nc._flush_queue
    if queue is not None and queue.empty():
        queue.put_nowait(asyncio.get_running_loop().create_future())
