"""Connecting to NATS (embedded or configured) and declaring the topology."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from aethergraph.core.errors import BusUnavailableError
from aethergraph.core.settings import Settings

from .embedded import EmbeddedServer, ensure_embedded_server
from .topology import Topology

__all__ = ["BusConnection", "ConnectionEvents", "connect_bus", "ensure_topology"]


@dataclass(slots=True)
class ConnectionEvents:
    """Tells the parts of this process that keep state on the server when the connection drops."""

    _on_disconnect: list[Callable[[], None]] = field(default_factory=list)

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously, on the event loop) each time the connection is lost."""
        self._on_disconnect.append(callback)

    async def disconnected(self) -> None:
        for callback in list(self._on_disconnect):
            callback()


@dataclass(frozen=True, kw_only=True)
class BusConnection:
    nc: Client
    js: JetStreamContext
    url: str
    embedded: EmbeddedServer | None
    topology: Topology
    events: ConnectionEvents

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()


async def _connect(url: str, *, name: str, timeout_s: float, events: ConnectionEvents) -> Client:
    async def _quiet(_exc: Exception) -> None:
        return None

    try:
        servers = [part.strip() for part in url.split(",") if part.strip()]
        return await nats.connect(
            servers,
            name=name,
            connect_timeout=timeout_s,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            error_cb=_quiet,
            disconnected_cb=events.disconnected,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        reason = str(exc) or type(exc).__name__
        raise BusUnavailableError(
            f"cannot reach NATS at {url} ({reason}). Start that server, fix "
            "AETHERGRAPH_NATS_URL, or unset it to use the embedded server."
        ) from exc


async def ensure_topology(js: JetStreamContext, topology: Topology) -> None:
    """Create the streams and durable consumers, or bring them to this configuration."""
    for config in topology.streams():
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != 10058:  # stream name already in use with a different configuration
                raise
            await js.update_stream(config)
    for stream, consumer in topology.consumers():
        await js.add_consumer(stream, consumer)


async def connect_bus(settings: Settings, *, client_name: str) -> BusConnection:
    """Connect to ``settings.nats_url``, or to the workspace's embedded server."""
    embedded: EmbeddedServer | None = None
    url = settings.nats_url
    if url is None:
        embedded = ensure_embedded_server(settings.workspace, sync_interval=settings.sync_interval)
        url = embedded.url
    events = ConnectionEvents()
    try:
        nc = await asyncio.wait_for(
            _connect(url, name=client_name, timeout_s=settings.connect_timeout_s, events=events),
            timeout=settings.connect_timeout_s * 2,
        )
    except TimeoutError:
        raise BusUnavailableError(
            f"cannot reach NATS at {url} (no connection within {settings.connect_timeout_s * 2:.1f}s). "
            "Start that server, fix AETHERGRAPH_NATS_URL, or unset it to use the embedded server."
        ) from None
    js = nc.jetstream(timeout=settings.connect_timeout_s * 2)
    try:
        await js.account_info()
    except (ServiceUnavailableError, NotFoundError, nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        await nc.close()
        raise BusUnavailableError(
            f"the NATS server at {url} does not have JetStream enabled; start it with "
            "`nats-server -js` (or `jetstream: enabled` in its config)"
        ) from exc
    topology = Topology(
        duplicate_window_s=settings.duplicate_window_s,
        max_event_bytes=settings.max_event_bytes,
        node_ack_wait_s=settings.node_ack_wait_s,
    )
    await ensure_topology(js, topology)
    return BusConnection(nc=nc, js=js, url=url, embedded=embedded, topology=topology, events=events)
