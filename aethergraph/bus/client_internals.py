"""The one door to nats-py's private members: every use of them is here, checked when a connection opens.

nats-py's public API makes a publish a coroutine and hands each received
message to a task of its own. The event log's hot path needs neither: it
writes publishes into the client's outbound buffer synchronously, in append
order, and takes acknowledgements and consumer deliveries as the client
parses them. Those need members nats-py does not promise to keep, so:

* nothing outside this module touches a private member of the client, a
  subscription or a message (an import-linter contract keeps ``nats`` out of
  every layer but ``bus``);
* :func:`probe` checks every member used here on a live connection when it
  opens (``connect_bus``), and raises :class:`~aethergraph.errors.BusUnavailableError`
  naming the missing ones and the pinned version to install;
* ``tests/test_client_internals.py`` runs the probe and fails on a nats-py
  upgrade that moves any of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from aethergraph.core.errors import BusUnavailableError

__all__ = [
    "CLIENT_MEMBERS",
    "SUBSCRIPTION_MEMBERS",
    "TESTED_NATS_PY",
    "MessageInterceptor",
    "intercept_messages",
    "probe",
    "release_pending_bytes",
    "replace_pending_queue",
    "server_info",
    "subscription_id",
    "write_outbound",
    "write_to_socket",
]

TESTED_NATS_PY = "2.16.0"
"""The nats-py version these members were checked against (pinned in constraints.txt)."""

# member -> what it must be, for the probe; keep in step with the functions below.
CLIENT_MEMBERS: dict[str, str] = {
    "_pending": "list",  # the outbound buffer the flusher writes out
    "_pending_data_size": "int",  # its size in bytes
    "_flush_queue": "asyncio.Queue",  # kicks the flusher
    "_transport": "transport",  # the socket, for last words at shutdown
    "_process_msg": "coroutine method",  # called for every message the client parses
    "_server_info": "dict",  # the server's INFO
}
SUBSCRIPTION_MEMBERS: dict[str, str] = {
    "_id": "int",  # the subscription id the client dispatches on
    "_pending_queue": "asyncio.Queue",  # where the client puts each message for the subscription
    "_pending_size": "int",  # bytes counted as pending against the slow-consumer limit
}

MessageInterceptor = Callable[[bytes, bytes, bytes, bytes | None], None]
"""Takes a message as the client parsed it: subject, reply (empty if none), payload, header block (or None)."""


def _mismatch(missing: list[str]) -> BusUnavailableError:
    import nats

    return BusUnavailableError(
        f"nats-py {getattr(nats, '__version__', '?')} lacks {', '.join(missing)}, which the event log's hot path "
        f"uses (checked against nats-py {TESTED_NATS_PY}); install the pinned version: "
        "pip install -c constraints.txt -e ."
    )


def probe(nc: Client, subscription: Subscription) -> None:
    """Check every private member used here on ``nc`` (connected) and one of its subscriptions."""
    checks: dict[str, bool] = {
        "Client._pending": isinstance(getattr(nc, "_pending", None), list),
        "Client._pending_data_size": isinstance(getattr(nc, "_pending_data_size", None), int),
        "Client._flush_queue": isinstance(getattr(nc, "_flush_queue", None), asyncio.Queue),
        "Client._transport": hasattr(nc, "_transport"),
        "Client._process_msg": asyncio.iscoroutinefunction(getattr(nc, "_process_msg", None)),
        "Client._server_info": isinstance(getattr(nc, "_server_info", None), dict),
        "Subscription._id": isinstance(getattr(subscription, "_id", None), int),
        "Subscription._pending_queue": isinstance(getattr(subscription, "_pending_queue", None), asyncio.Queue),
        "Subscription._pending_size": isinstance(getattr(subscription, "_pending_size", None), int),
    }
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        raise _mismatch(missing)


def write_outbound(nc: Client, command: bytes) -> None:
    """Append a protocol command to the client's outbound buffer now (no task, no await), and kick the flusher.

    Commands written this way keep their order with everything else the client sends.
    """
    nc._pending.append(command)
    nc._pending_data_size += len(command)
    queue = nc._flush_queue
    if queue is not None and queue.empty():
        queue.put_nowait(asyncio.get_running_loop().create_future())


def write_to_socket(nc: Client, data: bytes) -> bool:
    """Write straight to the connection's socket, past the flusher; False if there is no connection."""
    transport = nc._transport
    if transport is None or not nc.is_connected:
        return False
    transport.write(data)
    return True


def server_info(nc: Client) -> dict[str, Any]:
    """The INFO the server sent when the client connected (empty before)."""
    info = getattr(nc, "_server_info", None)
    return info if isinstance(info, dict) else {}


def subscription_id(subscription: Subscription) -> int:
    return int(subscription._id)


def replace_pending_queue(subscription: Subscription, queue: asyncio.Queue[Msg]) -> None:
    """Have the client put ``subscription``'s messages into ``queue`` (its ``put_nowait`` is called per message)."""
    subscription._pending_queue = queue


def release_pending_bytes(subscription: Subscription, size: int) -> None:
    """Uncount ``size`` bytes the client counted as pending on ``subscription`` (the message was consumed)."""
    subscription._pending_size -= size


_INTERCEPTORS = "_ag_interceptors"


def intercept_messages(nc: Client) -> dict[int, MessageInterceptor]:
    """The table of subscription id -> interceptor that sees those subscriptions' messages before the client does.

    Installed once per client: messages of the subscriptions in the table are
    handed over raw (counted in the client's stats); every other message goes
    the client's own way.
    """
    table: dict[int, MessageInterceptor] | None = getattr(nc, _INTERCEPTORS, None)
    if table is not None:
        return table
    interceptors: dict[int, MessageInterceptor] = {}
    original: Callable[..., Awaitable[None]] = nc._process_msg
    stats: dict[str, Any] = nc.stats

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        raw = interceptors.get(sid)
        if raw is None:
            await original(sid, subject, reply, data, headers)
            return
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        raw(subject, reply, data, headers)

    setattr(nc, "_process_msg", process_msg)  # noqa: B010 - replaces a method on this client only
    setattr(nc, _INTERCEPTORS, interceptors)
    return interceptors
