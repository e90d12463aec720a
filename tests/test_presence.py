"""Takeover on a closed connection: the embedded server tells workers when a process's connection drops.

The server here is the embedded one (``ensure_embedded_server`` on a temporary
workspace, with AetherGraph's own configuration); every process reaches it by
``AETHERGRAPH_NATS_URL``. Leases are 30 s and every hang guard is 20 s, so a run
that a worker finishes after its driver was killed with SIGKILL can only have
been taken over on the disconnect signal, never on the lease. The graphs and
the count file are those of ``test_durable_processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from helpers import eventually, run_python, start_nats_server
from process_hosts import Hosts, wait_ready
from test_durable_processes import (
    GRAPHS,
    START_AND_EXIT,
    assert_consistent_chain,
    executions,
    journal_of,
    new_run_id,
    wait_for_hold,
)

from aethergraph.bus.embedded import EmbeddedServer, ensure_embedded_server
from aethergraph.bus.presence import RUNTIME_ACCOUNT, client_name, detect_presence
from aethergraph.core.settings import Settings
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost
from aethergraph.host.runs import RunHandle

pytestmark = pytest.mark.slow

LEASE_S = "30"
GUARD_S = 20.0  # below the lease: a hang guard, not a measurement


@pytest.fixture
def embedded(tmp_path: Path, stop_servers: list[Path]) -> EmbeddedServer:
    workspace = tmp_path / "server-workspace"
    stop_servers.append(workspace)
    return ensure_embedded_server(workspace)


@pytest.fixture
async def observer(embedded: EmbeddedServer, tmp_path: Path) -> AsyncIterator[ProcessHost]:
    """A runtime of the test on the embedded server (reads journals; never drives or takes over runs)."""
    rt = await ProcessHost.open(Settings(nats_url=embedded.url, workspace=tmp_path / "observer"), inline_answers=False)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
def hosts(tmp_path: Path, embedded: EmbeddedServer) -> Iterator[Hosts]:
    env = {"AETHERGRAPH_NATS_URL": embedded.url, "AETHERGRAPH_LEASE_S": LEASE_S}
    h = Hosts(tmp_path, GRAPHS, prefix="pr", safety_s=60, env=env)
    try:
        yield h
    finally:
        h.kill_all()


async def test_the_embedded_server_tells_the_runtime_who_is_connected(embedded: EmbeddedServer) -> None:
    nc = await nats.connect(embedded.url, name=client_name("pr-observer"))
    other = await nats.connect(embedded.url, name=client_name("pr-other"))
    try:
        presence = await detect_presence(nc)
        assert presence is not None and presence.account == RUNTIME_ACCOUNT
        assert {"pr-observer", "pr-other"} <= (await presence.connected_workers() or set())
        gone: asyncio.Queue[str] = asyncio.Queue()
        stop = await presence.watch_departures(gone.put)
        try:
            await other.close()
            assert await asyncio.wait_for(gone.get(), GUARD_S) == "pr-other"
        finally:
            await stop()
        assert "pr-other" not in (await presence.connected_workers() or set())
    finally:
        await other.close()
        await nc.close()


async def test_a_server_without_the_configuration_leaves_it_to_the_lease(nats_url: str) -> None:
    """The session's plain ``nats-server -js`` (an external server as users run it): no presence."""
    nc = await nats.connect(nats_url, name=client_name("pr-plain"))
    try:
        assert await detect_presence(nc) is None
    finally:
        await nc.close()


async def test_streams_of_a_workspace_from_before_the_runtime_account_are_kept(
    tmp_path: Path, stop_servers: list[Path]
) -> None:
    """A workspace whose server kept its streams in the global account: the new server still has them."""
    workspace = tmp_path / "old-workspace"
    old = start_nats_server(workspace / "nats", sync_interval="1s")  # stores under <workspace>/nats/jetstream
    try:
        nc = await nats.connect(old.url)
        await nc.jetstream().add_stream(name="OLD", subjects=["old.>"])
        await nc.jetstream().publish("old.1", b"kept")
        await nc.close()
    finally:
        old.stop()
    stop_servers.append(workspace)
    server = ensure_embedded_server(workspace)
    nc = await nats.connect(server.url)
    try:
        assert (await nc.jetstream().get_last_msg("OLD", "old.1")).data == b"kept"
        user = json.loads((await nc.request("$SYS.REQ.USER.INFO", b"")).data)
        assert user["data"]["account"] == RUNTIME_ACCOUNT
    finally:
        await nc.close()


async def _outcome(observer: ProcessHost, run_id: str) -> dict[str, object]:
    return await RunHandle(run_id, observer.env).result(timeout=GUARD_S)


@pytest.mark.parametrize("worker_starts", ["before-the-kill", "after-the-kill"])
async def test_a_killed_driver_s_run_is_taken_over_on_its_closed_connection_not_its_lease(
    hosts: Hosts, observer: ProcessHost, tmp_path: Path, worker_starts: str
) -> None:
    """A resident worker hears the disconnect; a fresh worker (a new worker id) finds the driver's heartbeat
    alive but no connection under its name, and adopts the run at startup."""
    log = tmp_path / "count.log"
    run_id = new_run_id("pres")
    worker = hosts.worker("b") if worker_starts == "before-the-kill" else None
    if worker is not None:
        wait_ready(worker)
    driver = hosts.driver("a", "dp_chain", {"n": 3, "log": str(log), "hold": "after-s1"}, run_id)
    assert wait_for_hold(log, "after-s1") == driver.pid
    driver.kill9()
    if worker is None:
        worker = hosts.worker("b")

    assert await _outcome(observer, run_id) == {"v": 3}
    runs = executions(log)
    assert {label: [pid for _, pid in runs[label]] for label in runs} == {
        "s1": [driver.pid],
        "s2": [worker.pid],
        "s3": [worker.pid],
    }
    _, chain = await journal_of(observer, run_id)
    assert_consistent_chain(chain, {"v": 3})
    claims = [(c.reason, c.worker, c.previous_worker) for c in chain if isinstance(c, ev.RunClaimed)]
    assert claims == [("takeover", worker.worker_id, driver.worker_id)]
    assert f"took over run {run_id} from {driver.worker_id}" in worker.output()
    assert worker.stop() == 0, worker.output()


# --- a live process whose connection drops and comes straight back ---------------------------


@dataclass
class Proxy:
    """A TCP relay to the server; :meth:`cut` drops every connection through it (new ones are accepted)."""

    target: tuple[str, int]
    server: asyncio.Server | None = None
    links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        self.links.append((client_w, server_w))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))

    def cut(self) -> int:
        links, self.links = self.links, []
        for client_w, server_w in links:
            client_w.transport.abort()
            server_w.transport.abort()
        return len(links)

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_a_live_driver_whose_connection_drops_and_returns_keeps_its_run(
    hosts: Hosts, observer: ProcessHost, embedded: EmbeddedServer, tmp_path: Path
) -> None:
    """The driver reaches the server through a relay the test cuts mid-run: the server reports its
    disconnect to the resident worker, the driver reconnects at once, and nobody takes the run from it."""
    log = tmp_path / "count.log"
    run_id = new_run_id("blip")
    host, _, port = embedded.url.removeprefix("nats://").rpartition(":")
    proxy = Proxy((host, int(port)))
    await proxy.start()
    events: list[tuple[str, str]] = []
    nc = await nats.connect(embedded.url)

    async def note(msg: nats.aio.msg.Msg) -> None:
        events.append((msg.subject.rpartition(".")[2], json.loads(msg.data)["client"].get("name", "")))

    await nc.subscribe(f"$SYS.ACCOUNT.{RUNTIME_ACCOUNT}.*", cb=note)
    try:
        worker = hosts.worker("b")
        wait_ready(worker)
        driver = hosts.driver("a", "dp_chain", {"n": 6, "log": str(log)}, run_id, AETHERGRAPH_NATS_URL=proxy.url)

        async def committed_s2() -> bool | None:
            return True if any(line.startswith("committed s2 ") for line in _lines(log)) else None

        await eventually(committed_s2, "the driver to commit step s2", timeout_s=GUARD_S)
        assert proxy.cut() == 1

        assert await _outcome(observer, run_id) == {"v": 6}
        driver_name = client_name(driver.worker_id)
        assert ("DISCONNECT", driver_name) in events
        assert events.index(("CONNECT", driver_name), events.index(("DISCONNECT", driver_name))) > 0
        runs = executions(log)
        assert {label: [pid for _, pid in runs[label]] for label in runs} == {
            f"s{i}": [driver.pid] for i in range(1, 7)
        }
        _, chain = await journal_of(observer, run_id)
        assert_consistent_chain(chain, {"v": 6})
        assert not any(isinstance(e, ev.RunClaimed) for e in chain)
        # The relay runs on this loop: wait for the driver's exit without blocking it.
        assert await asyncio.to_thread(driver.exit_code) == 0, driver.output()
        assert worker.stop() == 0, worker.output()
    finally:
        await nc.close()
        await proxy.close()


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def test_a_restart_of_the_server_takes_no_run_from_a_live_driver(
    hosts: Hosts, observer: ProcessHost, embedded: EmbeddedServer, tmp_path: Path
) -> None:
    """nats-server stops gracefully (it closes every client's connection) and comes back on its port: every
    process reconnects, the resident worker's own connection dropped too, so nobody is taken for dead."""
    log = tmp_path / "count.log"
    run_id = new_run_id("restart")
    worker = hosts.worker("b")
    wait_ready(worker)
    driver = hosts.driver("a", "dp_chain", {"n": 6, "log": str(log)}, run_id)

    async def committed_s2() -> bool | None:
        return True if any(line.startswith("committed s2 ") for line in _lines(log)) else None

    await eventually(committed_s2, "the driver to commit step s2", timeout_s=GUARD_S)
    os.kill(embedded.pid, signal.SIGTERM)
    os.waitpid(embedded.pid, 0)  # noqa: ASYNC222 - started from this process: reap it
    restarted = ensure_embedded_server(embedded.workspace)
    assert restarted.url == embedded.url

    assert await asyncio.to_thread(driver.exit_code) == 0, driver.output()
    assert json.loads(driver.out.read_text().strip().splitlines()[-1]) == {"v": 6}
    runs = executions(log)
    assert {label: [pid for _, pid in runs[label]] for label in runs} == {f"s{i}": [driver.pid] for i in range(1, 7)}
    _, chain = await journal_of(observer, run_id)
    assert_consistent_chain(chain, {"v": 6})
    assert not any(isinstance(e, ev.RunClaimed) for e in chain)
    assert worker.stop() == 0, worker.output()


async def test_a_graceful_exit_still_hands_its_run_over_once(
    hosts: Hosts, observer: ProcessHost, tmp_path: Path
) -> None:
    """A script that starts a run and exits: its last heartbeat says it stopped (``AG-Stopped``) and its
    connection closes; the worker takes the run over once, on whichever it hears first."""
    log = tmp_path / "count.log"
    run_id = new_run_id("exit")
    worker = hosts.worker("b")
    wait_ready(worker)
    env, _ = hosts.env("a")
    status = run_python(START_AND_EXIT, f"{GRAPHS}:dp_chain", json.dumps({"n": 3, "log": str(log)}), run_id, env=env)
    assert status == "running"

    assert await _outcome(observer, run_id) == {"v": 3}
    runs = executions(log)
    assert all(pid == worker.pid for _, pid in runs["s2"] + runs["s3"])
    _, chain = await journal_of(observer, run_id)
    assert_consistent_chain(chain, {"v": 3})
    assert [(c.reason, c.worker) for c in chain if isinstance(c, ev.RunClaimed)] == [("takeover", worker.worker_id)]
    assert worker.output().count(f"took over run {run_id}") == 1
    assert worker.stop() == 0, worker.output()
