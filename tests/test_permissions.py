"""deploy/nats-accounts.conf: only the runtime identity writes journals; a client resumes and reads.

The shipped config runs as is, with its client port moved to a random loopback port and its store to a
temporary folder (tests/cluster_helpers.py: loopback_config), and the passwords in the server's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from cluster_helpers import ConfiguredServer, loopback_config, start_configured_server
from helpers import REPO_ROOT, closed_port
from nats.aio.msg import Msg

from aethergraph import graph_fn
from aethergraph.bus.presence import client_name, detect_presence
from aethergraph.bus.topology import COMMANDS_STREAM, EVENTS_STREAM
from aethergraph.core.errors import BusUnavailableError
from aethergraph.core.ids import new_run_id
from aethergraph.core.run.executor import execute_run
from aethergraph.core.settings import Settings
from aethergraph.host.process import ProcessHost

ACCOUNTS_CONFIG = REPO_ROOT / "deploy" / "nats-accounts.conf"
PASSWORDS = {"AG_RUNTIME_PASSWORD": "runtime-pw", "AG_CLIENT_PASSWORD": "client-pw"}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ConfiguredServer]:
    port = closed_port()
    config = loopback_config(ACCOUNTS_CONFIG.read_text(), port=port, store=tmp_path / "jetstream")
    server = start_configured_server(tmp_path / "server", config, port=port, env={**os.environ, **PASSWORDS})
    try:
        yield server
    finally:
        server.stop()


@graph_fn(name="perm_echo", outputs=["echo"])
async def perm_echo(text: str) -> dict[str, str]:
    return {"echo": text}


async def test_only_the_runtime_identity_writes_journals(secured: ConfiguredServer, tmp_path: Path) -> None:
    settings = Settings(
        nats_url=secured.url, workspace=tmp_path / "ws", nats_user="runtime", nats_password="runtime-pw"
    )  # type: ignore[arg-type]
    rt = await ProcessHost.open(settings)
    errors: list[str] = []

    async def remember(exc: Exception) -> None:
        errors.append(str(exc))

    client = await nats.connect(secured.url, user="client", password="client-pw", error_cb=remember)
    try:
        # The client follows events ...
        seen: list[str] = []
        done = asyncio.Event()

        async def on_event(msg: Msg) -> None:
            seen.append(msg.subject)
            if msg.subject.endswith(".run.completed"):
                done.set()

        await client.subscribe("ag.evt.>", cb=on_event)
        await client.flush()
        # ... of a run the runtime identity journals.
        run_id = new_run_id()
        assert await execute_run(perm_echo.spec, {"text": "hi"}, run_id=run_id, env=rt.env) == {"echo": "hi"}
        await asyncio.wait_for(done.wait(), timeout=30)
        assert f"ag.evt.{run_id}.run.started" in seen

        # The client may publish a resume command: JetStream stores and acknowledges it.
        ack = await client.jetstream(timeout=5).publish(f"ag.cmd.resume.{run_id}", b'{"payload": 1}')
        assert ack.stream == COMMANDS_STREAM

        # A forged event from the client is refused by the server and never stored.
        forged = f"ag.evt.{run_id}.run.failed"
        with pytest.raises(nats.errors.Error):
            await client.jetstream(timeout=1).publish(forged, b"{}")
        await client.publish(forged, b"{}")
        with contextlib.suppress(nats.errors.Error):
            await client.flush(timeout=2)
        info = await rt.bus.js.stream_info(EVENTS_STREAM, subjects_filter=forged)
        assert not (info.state.subjects or {}).get(forged)
        assert any("permissions violation" in error.lower() for error in errors), errors
    finally:
        await client.close()
        await rt.close()


async def test_the_client_identity_cannot_run_the_runtime(secured: ConfiguredServer, tmp_path: Path) -> None:
    """The client identity may not declare streams: connecting aethergraph with it fails and says why."""
    settings = Settings(
        nats_url=secured.url, workspace=tmp_path / "ws", nats_user="client", nats_password="client-pw",
        connect_retry_s=1.0,
    )  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(BusUnavailableError) as info:
        await ProcessHost.open(settings)
    assert "runtime identity" in str(info.value)


async def test_the_runtime_identity_is_told_of_its_clients_connections(secured: ConfiguredServer) -> None:
    """The account imports its connect/disconnect events: workers take over on a closed connection."""
    nc = await nats.connect(secured.url, user="runtime", password="runtime-pw", name=client_name("perm-runtime"))
    try:
        presence = await detect_presence(nc)
        assert presence is not None and presence.account == "AETHERGRAPH"
        assert await presence.connected_workers() == {"perm-runtime"}
    finally:
        await nc.close()
