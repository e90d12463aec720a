"""Taking messages off a subscription without a task hop per message."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .client_internals import (
    MessageInterceptor,
    intercept_messages,
    release_pending_bytes,
    replace_pending_queue,
    subscription_id,
    write_outbound,
    write_to_socket,
)

__all__ = [
    "RawHandler",
    "RawReplyInbox",
    "SyncDispatchQueue",
    "ack_position",
    "delivery_position",
    "dispatch_raw",
    "dispatch_synchronously",
    "publish_at_once",
    "publish_now",
    "release_raw",
    "retrieve_exception",
    "server_address",
    "status_of",
]

RawHandler = MessageInterceptor
"""Takes a message as the client read it: subject, reply subject (empty if none), payload and header block.

The header block is the raw ``NATS/1.0 ...`` text (None without headers); a
status message (a pull request's expiry, a missing stream) has an empty
payload and its status code in the header block's first line.
"""


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
        release_pending_bytes(self._subscription, len(item.data))
        self._handler(item)


def dispatch_synchronously(subscription: Subscription, handler: Callable[[Msg], None]) -> None:
    """Deliver ``subscription``'s messages straight to ``handler`` (see :class:`SyncDispatchQueue`)."""
    replace_pending_queue(subscription, SyncDispatchQueue(handler, subscription))


def dispatch_raw(nc: Client, subscription: Subscription, handler: RawHandler) -> None:
    """Hand ``subscription``'s messages to ``handler`` as raw bytes, before the client builds a message.

    For consumers that read nothing but the subject, the reply subject and the
    payload at tens of thousands of messages a second: the client's header
    parsing and message objects cost more than the consumer's own work. Flow
    control, heartbeats and slow-consumer accounting are skipped, so use it
    only for subscriptions that configure none of them. Undo with
    :func:`release_raw`.
    """
    intercept_messages(nc)[subscription_id(subscription)] = handler


def release_raw(nc: Client, subscription: Subscription) -> None:
    """Stop handing ``subscription``'s messages to its raw handler."""
    intercept_messages(nc).pop(subscription_id(subscription), None)


class RawReplyInbox:
    """One wildcard reply inbox (``<inbox>.*``) for many requests, its replies handed over raw.

    Each request gets its own token (the last subject token of its reply
    address); the handler finds the request a reply answers with
    :meth:`token_of`.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._prefix_len = len(self._prefix) + 1
        self._counter = itertools.count(1)
        self._sub: Subscription | None = None

    async def start(self, handler: RawHandler) -> None:
        self._sub = await self._nc.subscribe(self._prefix + ".*")
        dispatch_raw(self._nc, self._sub, handler)

    async def stop(self) -> None:
        if self._sub is not None:
            release_raw(self._nc, self._sub)
            await self._sub.unsubscribe()
            self._sub = None

    def new_reply(self) -> tuple[bytes, str]:
        """A fresh token and the reply subject that carries it."""
        token = str(next(self._counter))
        return token.encode(), f"{self._prefix}.{token}"

    def token_of(self, subject: bytes) -> bytes:
        """The token of a reply's subject."""
        return subject[self._prefix_len :]


def status_of(headers: bytes | None) -> tuple[str, dict[str, str]]:
    """The status code and header fields of a raw header block (``("", {})`` without headers)."""
    if not headers:
        return "", {}
    lines = headers.decode(errors="replace").split("\r\n")
    first = lines[0].split(" ", 2)
    code = first[1] if len(first) > 1 else ""
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    if len(first) > 2 and "Description" not in fields:
        fields["Description"] = first[2].strip()
    return code, fields


def server_address(nc: Client) -> str:
    """``host:port`` of the server ``nc`` is connected to (for error messages)."""
    url = nc.connected_url
    return url.netloc if url is not None else "(not connected)"


def ack_position(reply: bytes) -> tuple[int, int]:
    """``(stream sequence, pending)`` from a JetStream acknowledgement subject (see :func:`delivery_position`)."""
    tokens = reply.split(b".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[10])
    raise ValueError(f"not a JetStream acknowledgement subject: {reply!r}")


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
    write_outbound(nc, cmd)


def publish_at_once(nc: Client, subject: str, headers: bytes, payload: bytes) -> bool:
    """Write a publish straight to the connection's socket, bypassing the client's flusher.

    For the last words of a process whose event loop is tearing down its
    tasks, the client's own among them: nothing else would send them. False
    if there is no connection to write to.
    """
    return write_to_socket(
        nc,
        b"HPUB %s %d %d\r\n%s%s\r\n" % (subject.encode(), len(headers), len(headers) + len(payload), headers, payload),
    )


def retrieve_exception(fut: asyncio.Future[Any]) -> None:
    """A done callback that marks a future's exception as retrieved (its awaiter may be gone)."""
    if not fut.cancelled():
        fut.exception()
