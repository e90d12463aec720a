"""Which AetherGraph processes hold a connection, from the server's own account events.

Every process connects with the client name ``aethergraph:<worker_id>``
(:func:`client_name`). nats-server publishes, in its system account,
``$SYS.ACCOUNT.<account>.CONNECT`` and ``.DISCONNECT`` events naming the client,
and answers every account's ``$SYS.REQ.ACCOUNT.PING.CONNZ`` with the account's
connections. When the runtime's account imports those two event subjects from
the system account (the embedded server's configuration does:
:func:`presence_server_config`), a process learns the moment another one's
connection closes: kill -9 closes its socket, and the server notices at once.

A closed connection is a *departure* when, ``DISCONNECT_GRACE_S`` after the
event, no ``CONNECT`` of the same client name has arrived and this process's own
connection stayed up the whole time (a server restart, or a lost connection
here, says nothing about the others: they reconnect too). A client that merely
reconnected (a network blip, a slow consumer cut off) is back within the grace;
the caller confirms a departure against the server's connection list
(:meth:`ClientPresence.connected_workers`) before acting on it.

This works on a standalone server whose account imports the events and the
account's ``INFO`` request (which is how a process tells, once, that it may rely
on them). Elsewhere (a cluster, whose connection lists are per server; a server
without that configuration) :func:`detect_presence` says ``None`` and the
heartbeat lease alone tells who died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from .client_internals import server_info

__all__ = [
    "CLIENT_PREFIX",
    "DISCONNECT_GRACE_S",
    "RUNTIME_ACCOUNT",
    "ClientPresence",
    "client_name",
    "detect_presence",
    "presence_server_config",
]

log = logging.getLogger("aethergraph.presence")

CLIENT_PREFIX = "aethergraph:"
# The embedded server's account for AetherGraph's clients (deploy/nats-accounts.conf uses the same name).
RUNTIME_ACCOUNT = "AETHERGRAPH"
_SYSTEM_ACCOUNT = "SYS"
# How long a closed connection may take to come back before its process counts as gone. nats-py
# reconnects at once to a server it can reach, and again every 0.25 s (the runtime's reconnect wait).
DISCONNECT_GRACE_S = 0.5
_REQUEST_TIMEOUT_S = 2.0
_CONNZ_PAGE = 4096


def client_name(worker_id: str) -> str:
    """The NATS client name of the process with ``worker_id``."""
    return f"{CLIENT_PREFIX}{worker_id}"


def _worker_of(name: str | None) -> str | None:
    return name[len(CLIENT_PREFIX) :] if name and name.startswith(CLIENT_PREFIX) else None


def _event_subject(account: str, kind: str) -> str:
    return f"$SYS.ACCOUNT.{account}.{kind}"


def presence_server_config(account: str = RUNTIME_ACCOUNT) -> str:
    """The server configuration's accounts: ``account`` (JetStream, the clients that connect without
    credentials) imports its connect/disconnect events and its account info from the system account."""
    events = [_event_subject(account, "CONNECT"), _event_subject(account, "DISCONNECT")]
    info = f"$SYS.REQ.ACCOUNT.{account}.INFO"
    imports = [f'{{stream: {{account: {_SYSTEM_ACCOUNT}, subject: "{subject}"}}}}' for subject in events]
    imports.append(f'{{service: {{account: {_SYSTEM_ACCOUNT}, subject: "{info}"}}}}')
    exports = [f'{{stream: "{subject}"}}' for subject in events] + [f'{{service: "{info}"}}']
    return (
        "accounts {\n"
        f"  {account} {{\n"
        "    jetstream: enabled\n"
        "    users: [{user: aethergraph}]\n"
        "    imports: [\n" + "".join(f"      {line}\n" for line in imports) + "    ]\n"
        "  }\n"
        f"  {_SYSTEM_ACCOUNT} {{\n"
        "    exports: [\n" + "".join(f"      {line}\n" for line in exports) + "    ]\n"
        "  }\n"
        "}\n"
        f"system_account: {_SYSTEM_ACCOUNT}\n"
        "no_auth_user: aethergraph\n"
    )


class _Client(msgspec.Struct):
    name: str | None = None


class _ClientEvent(msgspec.Struct):
    client: _Client


class _UserInfo(msgspec.Struct):
    account: str


class _Import(msgspec.Struct):
    subject: str
    type: str


class _AccountInfo(msgspec.Struct):
    imports: list[_Import] = msgspec.field(default_factory=list)


class _Connz(msgspec.Struct):
    connections: list[_Client] = msgspec.field(default_factory=list)
    total: int = 0


class _Error(msgspec.Struct):
    description: str = ""


class _UserReply(msgspec.Struct):
    data: _UserInfo | None = None
    error: _Error | None = None


class _AccountReply(msgspec.Struct):
    data: _AccountInfo | None = None
    error: _Error | None = None


class _ConnzReply(msgspec.Struct):
    data: _Connz | None = None
    error: _Error | None = None


_decode_event = msgspec.json.Decoder(_ClientEvent).decode
R = TypeVar("R")


async def _ask(nc: Client, subject: str, body: bytes, reply: type[R]) -> R | None:
    """The server's answer to a system request, or ``None`` (no responder, no answer, an error)."""
    try:
        msg = await nc.request(subject, body, timeout=_REQUEST_TIMEOUT_S)
        return msgspec.json.decode(msg.data, type=reply)
    except (nats.errors.Error, TimeoutError, msgspec.DecodeError) as exc:
        log.debug("no answer to %s: %s", subject, exc or type(exc).__name__)
        return None


async def detect_presence(nc: Client) -> ClientPresence | None:
    """The account's connection events, if the server delivers them here (else ``None``: the lease applies)."""
    info = server_info(nc)
    if info.get("cluster"):
        log.debug("the NATS server is part of cluster %s: processes' deaths are told by the lease", info["cluster"])
        return None
    user = await _ask(nc, "$SYS.REQ.USER.INFO", b"", _UserReply)
    account = user.data.account if user is not None and user.data is not None else None
    if account is None:
        log.debug("the NATS server does not say which account this client is in: deaths are told by the lease")
        return None
    wanted = {_event_subject(account, "CONNECT"), _event_subject(account, "DISCONNECT")}
    reply = await _ask(nc, f"$SYS.REQ.ACCOUNT.{account}.INFO", b"", _AccountReply)
    imported = {i.subject for i in reply.data.imports if i.type == "stream"} if reply and reply.data else set()
    if not wanted <= imported:
        log.debug(
            "account %s does not import its connect/disconnect events and its INFO request from the system "
            "account: processes' deaths are told by the lease",
            account,
        )
        return None
    return ClientPresence(nc, account)


class ClientPresence:
    """The server's word on this account's AetherGraph clients: who is connected, who just left."""

    def __init__(self, nc: Client, account: str, *, grace_s: float = DISCONNECT_GRACE_S) -> None:
        self._nc = nc
        self.account = account
        self._grace_s = grace_s

    async def connected_workers(self) -> set[str] | None:
        """Worker ids of every AetherGraph client of the account connected now (``None``: no answer)."""
        found: set[str] = set()
        offset = 0
        while True:
            body = msgspec.json.encode({"offset": offset, "limit": _CONNZ_PAGE})
            reply = await _ask(self._nc, "$SYS.REQ.ACCOUNT.PING.CONNZ", body, _ConnzReply)
            if reply is None or reply.data is None:
                return None
            for connection in reply.data.connections:
                worker = _worker_of(connection.name)
                if worker is not None:
                    found.add(worker)
            offset += len(reply.data.connections)
            if not reply.data.connections or offset >= reply.data.total:
                return found

    async def watch_departures(self, on_gone: Callable[[str], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Call ``on_gone(worker_id)`` for each departure (see the module); returns a function that stops watching."""
        loop = asyncio.get_running_loop()
        pending: dict[str, asyncio.TimerHandle] = {}
        tasks: set[asyncio.Future[None]] = set()

        def expire(worker_id: str, reconnects: int) -> None:
            pending.pop(worker_id, None)
            if self._nc.stats["reconnects"] != reconnects or not self._nc.is_connected:
                return  # this process lost the server meanwhile: the disconnect may have been everyone's
            task = asyncio.ensure_future(on_gone(worker_id))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def deliver(msg: Msg) -> None:
            try:
                worker_id = _worker_of(_decode_event(msg.data).client.name)
            except msgspec.DecodeError:
                return
            if worker_id is None:
                return
            timer = pending.pop(worker_id, None)
            if timer is not None:
                timer.cancel()
            if msg.subject.endswith(".DISCONNECT") and self._nc.is_connected:
                reconnects = self._nc.stats["reconnects"]
                pending[worker_id] = loop.call_later(self._grace_s, expire, worker_id, reconnects)

        subs = [
            await self._nc.subscribe(_event_subject(self.account, kind), cb=deliver)
            for kind in ("DISCONNECT", "CONNECT")
        ]

        async def stop() -> None:
            for timer in pending.values():
                timer.cancel()
            pending.clear()
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            for task in list(tasks):
                task.cancel()

        return stop
