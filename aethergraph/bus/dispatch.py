"""Taking messages off a subscription without a task hop per message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.aio.msg import Msg

__all__ = ["SyncDispatchQueue", "delivery_position"]


class SyncDispatchQueue(asyncio.Queue[Msg]):
    """Hands each message to ``handler`` as the client parses it.

    Installed as a subscription's pending queue, it replaces nats-py's
    per-message task dispatch: for high-rate inboxes (acknowledgements,
    consumer deliveries) that hop costs more than the work itself.
    """

    def __init__(self, handler: Callable[[Msg], None]) -> None:
        super().__init__()
        self._handler = handler

    def put_nowait(self, item: Msg) -> None:
        self._handler(item)


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
