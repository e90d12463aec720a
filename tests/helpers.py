"""Helpers shared by the tests: a nats-server launcher, polling, reading runs back, subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aethergraph.bus.embedded import launch_server
from aethergraph.bus.event_log import StoredRecord
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.wire.events import Event
from aethergraph.host.process import ProcessHost

if TYPE_CHECKING:
    from aethergraph.testing import FakeOpenAI

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_until(check: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.005) -> T:
    """Poll ``check`` until it returns something other than ``None`` (for external processes only)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, *, timeout_s: float = 60.0) -> T:
    """Poll an async ``check`` until it returns something other than ``None`` (``timeout_s`` is a safety bound)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = await check()
                if value is not None:
                    return value
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}") from None


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    url: str
    directory: Path

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def start_nats_server(
    directory: Path, *, jetstream: bool = True, port: int = -1, sync_interval: str | None = None
) -> NatsServer:
    """Start a nats-server on 127.0.0.1 (a random port unless ``port`` is given) and wait until it accepts clients.

    Pass a stopped server's port and directory to restart it on the same
    address and store. ``sync_interval`` (``"1s"``, ``"always"``) sets
    JetStream's fsync policy through a config file, as the embedded server
    does; by default the server's own (``2m``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"listen: 127.0.0.1:{port}", f"ports_file_dir: {json.dumps(str(directory))}"]
    if jetstream:
        lines += ["jetstream {", f"  store_dir: {json.dumps(str(directory / 'jetstream'))}"]
        lines += [f"  sync_interval: {sync_interval}"] if sync_interval is not None else []
        lines += ["}"]
    config = directory / "server.conf"
    config.write_text("\n".join(lines) + "\n")
    process, url = launch_server(config, directory, directory / "server.log", timeout_s=15)
    return NatsServer(process=process, url=url, directory=directory)


async def read_events(rt: ProcessHost, run_id: str, *, timeout_s: float = 10.0) -> list[StoredRecord]:
    """Every stored event of ``run_id`` in stream order."""
    async with asyncio.timeout(timeout_s):
        return [record async for record in rt.event_log.read_run(run_id)]


async def chain_of(rt: ProcessHost, run_id: str) -> list[Event]:
    """A run's journal as read back from the bus (the journal rule applied)."""
    return journal_chain([record.event for record in await read_events(rt, run_id)])


async def outcome_of(run_id: str, *, timeout_s: float = 90.0) -> Any:
    """The outputs of ``run_id`` once it ends (raises its failure); ``timeout_s`` is a hang guard."""
    import aethergraph

    return await asyncio.wait_for((await aethergraph.get_run(run_id)).result(), timeout_s)


async def run_message_count(rt: ProcessHost, run_id: str) -> int:
    """How many messages AG_EVENTS holds for one run (from the server's per-subject state)."""
    info = await rt.bus.js.stream_info("AG_EVENTS", subjects_filter=f"ag.evt.{run_id}.>")
    return sum((info.state.subjects or {}).values())


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_python(script: str | Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> Any:
    """Run a Python script (path or source) in a new process; return its stdout's last line as JSON."""
    command = (
        [sys.executable, str(script), *args] if isinstance(script, Path) else [sys.executable, "-c", script, *args]
    )
    done = subprocess.run(
        command, capture_output=True, text=True, env=env or subprocess_env(), timeout=timeout_s, check=False
    )
    assert done.returncode == 0, f"subprocess failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# A script for process A of a wait scenario (run with run_python): start the run, return once it waits, and exit.
START_AND_LEAVE = """
import asyncio, json, sys
import aethergraph

async def main():
    try:
        handle = await aethergraph.start_run(sys.argv[1], json.loads(sys.argv[2]), run_id=sys.argv[3])
        async with asyncio.timeout(60):
            return await handle.wait_for_status("waiting", "succeeded", "failed")
    finally:
        await aethergraph.close_runtime()

print(json.dumps(asyncio.run(main())))
"""


@contextlib.contextmanager
def worker_process(
    graphs: str | Path, env: dict[str, str], log: Path, *, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``aethergraph worker GRAPHS`` in its own process, once it says it is ready; stopped afterwards."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aethergraph", "worker", str(graphs)],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool | None:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{log.read_text()}")
        return True if " ready" in log.read_text() else None

    try:
        wait_until(ready, timeout_s=60, what="the worker to be ready")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


@contextlib.contextmanager
def fake_default_model() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server registered as this process's ``default`` model profile."""
    from aethergraph import register_llm_client
    from aethergraph.services.llm import unregister_llm_client
    from aethergraph.testing import FakeOpenAI

    with FakeOpenAI() as server:
        key, url = server.api_key, server.base_url
        register_llm_client("default", base_url=url, api_key=key, model="fake-model", embed_model="fake-embedding")
        try:
            yield server
        finally:
            unregister_llm_client("default")
