"""Connecting to NATS (embedded or configured) and declaring the topology."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError

from aethergraph.core.errors import BusUnavailableError
from aethergraph.core.settings import Settings

from .client_internals import probe, server_info
from .dispatch import retrieve_exception
from .embedded import EmbeddedServer, ensure_embedded_server
from .migration import TopologyPlan, consumer_changed, mismatch_error, plan_topology, stream_differences
from .topology import Topology

__all__ = [
    "BusConnection",
    "ConnectionEvents",
    "connect_bus",
    "ensure_topology",
    "migrate_topology",
    "open_nats",
    "topology_for",
]

T = TypeVar("T")


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

    async def watch(self, subject: str, on_data: Callable[[bytes], None]) -> Callable[[], Awaitable[None]]:
        """Hand the payload of every message on ``subject`` from now on to ``on_data``; returns the stop function."""

        async def deliver(msg: Msg) -> None:
            on_data(msg.data)

        sub = await self.nc.subscribe(subject, cb=deliver)

        async def stop() -> None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

        return stop

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The client's TLS context when any TLS path is set (server verified against ``nats_tls_ca``)."""
    if not settings.nats_tls:
        return None
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
        )
        if settings.nats_tls_cert is not None and settings.nats_tls_key is not None:
            context.load_cert_chain(str(settings.nats_tls_cert), str(settings.nats_tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise BusUnavailableError(
            f"cannot load the TLS files for NATS ({exc}): check AETHERGRAPH_NATS_TLS_CA, "
            "AETHERGRAPH_NATS_TLS_CERT and AETHERGRAPH_NATS_TLS_KEY (PEM files readable by this process)"
        ) from exc
    return context


def _auth_options(settings: Settings) -> dict[str, Any]:
    """nats-py connect options for TLS, a .creds file, or a user and password."""
    options: dict[str, Any] = {}
    tls = _tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    if settings.nats_creds is not None:
        if not settings.nats_creds.is_file():
            raise BusUnavailableError(
                f"the NATS credentials file {settings.nats_creds} does not exist: fix AETHERGRAPH_NATS_CREDS"
            )
        options["user_credentials"] = str(settings.nats_creds)
    if settings.nats_user is not None:
        options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
    return options


_FIX_URL = (
    "Start that server, fix AETHERGRAPH_NATS_URL (and AETHERGRAPH_NATS_TLS_*, AETHERGRAPH_NATS_CREDS or "
    "AETHERGRAPH_NATS_USER/PASSWORD if the server needs them), or unset it to use the embedded server."
)


# Errors that mean the server will not have us whatever we retry: wrong password, certificate, TLS mismatch.
_REFUSALS = (
    nats.errors.AuthorizationError,
    nats.errors.InvalidUserCredentialsError,
    nats.errors.SecureConnRequiredError,
    nats.errors.SecureConnWantedError,
    nats.errors.SecureConnFailedError,
    ssl.SSLError,
)


def _is_refusal(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, _REFUSALS) or "authorization violation" in text or "authentication" in text


@dataclass
class _ConnectErrors:
    """What the client reported while connecting: the last error, and the first refusal (which ends the attempt)."""

    last: str | None = None
    refusal: str | None = None
    refused: asyncio.Event = field(default_factory=asyncio.Event)


async def _connect(url: str, *, name: str, timeout_s: float, options: dict[str, Any], errors: _ConnectErrors) -> Client:
    """Connect; errors the client reports while it retries are kept in ``errors``."""

    async def _remember(exc: Exception) -> None:
        errors.last = str(exc) or type(exc).__name__
        if _is_refusal(exc) and errors.refusal is None:
            errors.refusal = errors.last
            errors.refused.set()

    try:
        servers = [part.strip() for part in url.split(",") if part.strip()]
        return await nats.connect(
            servers,
            name=name,
            connect_timeout=timeout_s,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            error_cb=_remember,
            **options,
        )
    except (TimeoutError, OSError, nats.errors.Error, ssl.SSLError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BusUnavailableError(f"cannot reach NATS at {url} ({reason}). {_FIX_URL}") from exc


async def ensure_topology(js: JetStreamContext, topology: Topology) -> None:
    """Create missing streams, subjects and consumers; refuse to change existing streams' limits.

    Raises :class:`~aethergraph.core.errors.TopologyMismatchError` (nothing changed) when an existing
    stream has other replicas or limits than ``topology``; ``aethergraph nats --migrate`` applies them.
    """
    # Usually one round trip: every stream and durable consumer is looked up at once (a lookup costs the
    # server far less than declaring an existing consumer again). Only what is missing or differs is declared.
    pairs = topology.consumers()
    planning = asyncio.ensure_future(plan_topology(js, topology))
    planning.add_done_callback(retrieve_exception)  # if the lookups below fail first, nobody awaits it
    try:
        found = await asyncio.gather(
            *(js.consumer_info(stream, str(consumer.durable_name)) for stream, consumer in pairs),
            return_exceptions=True,
        )
    except BaseException:
        planning.cancel()
        raise
    planned = await planning
    if planned.differences:
        raise mismatch_error(planned.differences)
    declare = [
        (stream, consumer)
        for (stream, consumer), info in zip(pairs, found, strict=True)
        if isinstance(info, BaseException) or consumer_changed(info.config, consumer)
    ]
    await _apply(js, planned, declare)


async def migrate_topology(js: JetStreamContext, topology: Topology, *, apply: bool = True) -> TopologyPlan:
    """Bring every stream to ``topology`` (if ``apply``), including changed replicas and limits."""
    plan = await plan_topology(js, topology)
    if apply:
        for config in plan.migrate:
            await js.update_stream(config)
        await _apply(js, plan, topology.consumers())
    return plan


async def migrate_streams(settings: Settings, *, apply: bool) -> TopologyPlan:
    """Connect, compare the server's streams with ``settings`` and (if ``apply``) update them, then disconnect.

    Raises :class:`~aethergraph.errors.BusUnavailableError` naming the server's reason if it refuses an update.
    """
    nc, js, _url, _embedded, _ = await open_nats(settings, client_name="aethergraph:migrate")
    try:
        return await migrate_topology(js, topology_for(settings), apply=apply)
    except APIError as exc:
        raise BusUnavailableError(
            f"the server refused the update ({exc.description}, code {exc.err_code}). A stream's storage type "
            "or retention cannot be changed in place: create a new stream and copy the messages (or change the "
            "settings back)"
        ) from exc
    finally:
        await nc.close()


async def _apply(js: JetStreamContext, plan: TopologyPlan, consumers: Sequence[tuple[str, ConsumerConfig]]) -> None:
    for config in plan.create:
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != 10058:  # created meanwhile by another process (with another configuration)
                raise
            existing = (await js.stream_info(str(config.name))).config
            if differences := stream_differences(existing, config):
                raise mismatch_error(differences) from exc
    for config in plan.extend:
        await js.update_stream(config)
    for stream, consumer in consumers:
        await js.add_consumer(stream, consumer)


def topology_for(settings: Settings) -> Topology:
    """The streams and consumers ``settings`` ask for."""
    return Topology(
        duplicate_window_s=settings.duplicate_window_s,
        max_event_bytes=settings.max_event_bytes,
        node_ack_wait_s=settings.node_ack_wait_s,
        replicas=settings.stream_replicas,
    )


# Answers of a server that has JetStream but cannot serve it yet (a fresh cluster electing its meta
# leader, a stream leader being elected, peers not yet known for placing replicas).
_NOT_YET = (ServiceUnavailableError, NotFoundError, nats.errors.NoRespondersError, nats.errors.TimeoutError)
_NO_PEERS = 10005  # "no suitable peers for placement"
_ACCOUNT_WITHOUT_JETSTREAM = 10039


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, APIError) and exc.err_code == _ACCOUNT_WITHOUT_JETSTREAM:
        return False
    return isinstance(exc, _NOT_YET) or (isinstance(exc, APIError) and exc.err_code == _NO_PEERS)


async def _retrying(attempt: Callable[[], Awaitable[T]], *, retry_s: float) -> T:
    """``attempt()``, repeated with backoff while the server answers that it is not ready, for ``retry_s``."""
    deadline = time.monotonic() + retry_s
    pause = 0.1
    while True:
        try:
            return await attempt()
        except (APIError, *_NOT_YET) as exc:
            if not _retryable(exc) or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


async def _connect_or_refused(url: str, settings: Settings, *, client_name: str, options: dict[str, Any]) -> Client:
    """The connected client; fails at the first refusal (credentials, TLS) or after twice the connect timeout."""
    errors = _ConnectErrors()
    connecting = asyncio.ensure_future(
        _connect(url, name=client_name, timeout_s=settings.connect_timeout_s, options=options, errors=errors)
    )
    refusal = asyncio.ensure_future(errors.refused.wait())
    try:
        await asyncio.wait({connecting, refusal}, timeout=settings.connect_timeout_s * 2, return_when="FIRST_COMPLETED")
    finally:
        refusal.cancel()
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await connecting
    if errors.refusal is not None:
        raise BusUnavailableError(f"NATS at {url} refused this client ({errors.refusal}). {_FIX_URL}")
    last = f"; last error: {errors.last}" if errors.last else ""
    raise BusUnavailableError(
        f"cannot reach NATS at {url} (no connection within {settings.connect_timeout_s * 2:.1f}s{last}). " + _FIX_URL
    )


async def open_nats(
    settings: Settings,
    *,
    client_name: str,
    events: ConnectionEvents | None = None,
    alongside: Callable[[JetStreamContext], Awaitable[None]] | None = None,
) -> tuple[Client, JetStreamContext, str, EmbeddedServer | None, asyncio.Future[None] | None]:
    """Connect to ``settings.nats_url`` (or the workspace's embedded server) and wait for its JetStream.

    ``events`` (if given) hears of every lost connection. ``alongside`` (if
    given) starts together with the JetStream check, so that its requests
    share that round trip; its future is returned last (cancelled if the
    check fails), for the caller to await.
    """
    embedded: EmbeddedServer | None = None
    url = settings.nats_url
    if url is None:
        embedded = ensure_embedded_server(settings.workspace, sync_interval=settings.sync_interval)
        url = embedded.url
    options = _auth_options(settings)
    if events is not None:
        options["disconnected_cb"] = events.disconnected
    nc = await _connect_or_refused(url, settings, client_name=client_name, options=options)
    js = nc.jetstream(timeout=settings.connect_timeout_s * 2)
    started = asyncio.ensure_future(alongside(js)) if alongside is not None else None
    if started is not None:
        started.add_done_callback(retrieve_exception)
    # The server's INFO says whether it runs JetStream at all: only then is waiting for it worthwhile.
    announced = bool(server_info(nc).get("jetstream"))
    try:
        await _retrying(js.account_info, retry_s=settings.connect_retry_s if announced else 0.0)
    except BaseException as exc:
        if started is not None:
            started.cancel()
        await nc.close()
        if isinstance(exc, (APIError, *_NOT_YET)):
            raise BusUnavailableError(_no_jetstream_message(url, exc, announced, settings.connect_retry_s)) from exc
        raise
    return nc, js, url, embedded, started


def _no_jetstream_message(url: str, exc: BaseException, announced: bool, retry_s: float) -> str:
    reason = str(exc) or type(exc).__name__
    if not announced:
        return (
            f"the NATS server at {url} does not have JetStream enabled ({reason}); start it with "
            "`nats-server -js` (or `jetstream: enabled` in its config)"
        )
    return (
        f"the NATS server at {url} announces JetStream but did not serve it within {retry_s:g}s ({reason}): "
        "either JetStream is not enabled for this account (enable it in the server's accounts config, or "
        "`nats-server -js`), or a cluster has not elected its JetStream meta leader yet (check that a majority "
        "of its nodes is up and routed; raise AETHERGRAPH_CONNECT_RETRY_S to wait longer)"
    )


async def _probe_client(nc: Client) -> None:
    """Check the nats-py members the hot path relies on, on this live client (no round trip)."""
    subscription = await nc.subscribe(nc.new_inbox())
    try:
        probe(nc, subscription)
    finally:
        await subscription.unsubscribe()


async def connect_bus(settings: Settings, *, client_name: str) -> BusConnection:
    """Connect to ``settings.nats_url``, or to the workspace's embedded server, and declare the topology."""
    events = ConnectionEvents()
    topology = topology_for(settings)
    # The streams are checked in the JetStream check's round trip; if JetStream was not ready for them
    # then, they are checked again (with retries) once it is.
    nc, js, url, embedded, checked = await open_nats(
        settings, client_name=client_name, events=events, alongside=lambda js: ensure_topology(js, topology)
    )
    try:
        await _probe_client(nc)
        try:
            assert checked is not None
            await checked
        except (APIError, *_NOT_YET):
            await _retrying(lambda: ensure_topology(js, topology), retry_s=settings.connect_retry_s)
    except APIError as exc:
        await nc.close()
        if exc.err_code == _NO_PEERS:
            raise BusUnavailableError(
                f"the NATS cluster at {url} cannot place {settings.stream_replicas} replicas of the AetherGraph "
                f"streams ({exc.description}): start at least {settings.stream_replicas} JetStream servers in "
                "the cluster, or lower AETHERGRAPH_STREAM_REPLICAS"
            ) from exc
        raise
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        await nc.close()
        raise BusUnavailableError(
            f"the NATS server at {url} did not answer the JetStream requests that declare AetherGraph's streams "
            f"within {settings.connect_retry_s:g}s ({str(exc) or type(exc).__name__}): either this identity may "
            "not use the JetStream API for them (AetherGraph processes connect as the runtime identity, see "
            "deploy/nats-accounts.conf; the server log names the permissions violation), or the cluster is "
            "still electing stream leaders (raise AETHERGRAPH_CONNECT_RETRY_S)"
        ) from exc
    except BaseException:
        await nc.close()
        raise
    return BusConnection(nc=nc, js=js, url=url, embedded=embedded, topology=topology, events=events)
