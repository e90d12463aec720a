"""The embedded nats-server: one per workspace, shared by processes, surviving restarts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_events, run_python, subprocess_env

import aethergraph
from aethergraph import graph_fn, tool
from aethergraph.bus.embedded import (
    ensure_embedded_server,
    find_nats_server_binary,
    running_server,
    stop_embedded_server,
)
from aethergraph.core.errors import WorkspaceError
from aethergraph.core.ids import new_run_id
from aethergraph.core.run.executor import execute_run
from aethergraph.core.settings import Settings
from aethergraph.host.process import ProcessHost

ENSURE_SCRIPT = """
import json, sys
from pathlib import Path
from aethergraph.bus.embedded import ensure_embedded_server
server = ensure_embedded_server(Path(sys.argv[1]))
print(json.dumps({"url": server.url, "pid": server.pid, "started_here": server.started_here}))
"""


def ensure_in_subprocess(workspace: Path) -> subprocess.Popen[str]:
    env = subprocess_env()
    env.pop("AETHERGRAPH_NATS_URL", None)
    return subprocess.Popen(
        [sys.executable, "-c", ENSURE_SCRIPT, str(workspace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def result_of(process: subprocess.Popen[str]) -> dict[str, object]:
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"nats-server" in cmdline.read_bytes()


@tool(name="embedded_step", outputs=["val"])
def embedded_step(x: int) -> dict[str, int]:
    return {"val": x * 10}


@graph_fn(name="embedded_graph", outputs=["val"])
async def embedded_graph(x: int) -> dict[str, int]:
    return await embedded_step(x)


async def open_embedded_runtime(workspace: Path) -> ProcessHost:
    return await ProcessHost.open(Settings(nats_url=None, workspace=workspace))


def test_binary_comes_from_the_wheel() -> None:
    binary = find_nats_server_binary()
    assert binary.name == "nats-server"
    assert os.access(binary, os.X_OK)


def test_ensure_starts_then_reuses_in_this_and_other_processes(tmp_path: Path, stop_servers: list[Path]) -> None:
    workspace = tmp_path / "ws"
    stop_servers.append(workspace)
    assert running_server(workspace) is None

    first = ensure_embedded_server(workspace)
    assert first.started_here is True
    assert first.url.startswith("nats://127.0.0.1:")
    assert first.workspace == workspace.resolve()
    assert pid_alive(first.pid)
    state = json.loads((workspace / "nats" / "server.json").read_text())
    assert (state["pid"], state["url"]) == (first.pid, first.url)
    assert "listen: 127.0.0.1:-1" in (workspace / "nats" / "server.conf").read_text()
    assert (workspace / "nats" / "jetstream").is_dir()

    second = ensure_embedded_server(workspace)
    assert (second.pid, second.url, second.started_here) == (first.pid, first.url, False)

    other = result_of(ensure_in_subprocess(workspace))
    assert other == {"url": first.url, "pid": first.pid, "started_here": False}

    found = running_server(workspace)
    assert found is not None and (found.pid, found.url) == (first.pid, first.url)


def test_concurrent_processes_agree_on_one_server(tmp_path: Path, stop_servers: list[Path]) -> None:
    workspace = tmp_path / "ws"
    stop_servers.append(workspace)
    processes = [ensure_in_subprocess(workspace) for _ in range(3)]
    results = [result_of(process) for process in processes]
    assert len({(r["pid"], r["url"]) for r in results}) == 1
    assert sorted(bool(r["started_here"]) for r in results) == [False, False, True]
    mine = ensure_embedded_server(workspace)
    assert (mine.pid, mine.url, mine.started_here) == (results[0]["pid"], results[0]["url"], False)


def test_workspaces_have_separate_servers(tmp_path: Path, stop_servers: list[Path]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    stop_servers.extend([a, b])
    server_a = ensure_embedded_server(a)
    server_b = ensure_embedded_server(b)
    assert server_a.started_here and server_b.started_here
    assert server_a.pid != server_b.pid
    assert server_a.url != server_b.url


async def test_events_survive_a_server_restart(tmp_path: Path, stop_servers: list[Path]) -> None:
    workspace = tmp_path / "ws"
    stop_servers.append(workspace)

    rt = await open_embedded_runtime(workspace)
    try:
        assert rt.bus.embedded is not None
        first_pid = rt.bus.embedded.pid
        assert rt.bus.url == rt.bus.embedded.url
        run_id = new_run_id()
        outputs = await execute_run(embedded_graph.spec, {"x": 4}, run_id=run_id, env=rt.env)
        assert outputs == {"val": 40}
        before = [r.event for r in await read_events(rt, run_id)]
    finally:
        await rt.close()
    assert [e.__struct_config__.tag for e in before] == ["run.started", "tool.called", "tool.returned", "run.completed"]

    assert await asyncio.to_thread(stop_embedded_server, workspace) is True
    assert not pid_alive(first_pid)
    assert running_server(workspace) is None
    assert not (workspace / "nats" / "server.json").exists()
    assert await asyncio.to_thread(stop_embedded_server, workspace) is False

    restarted = await asyncio.to_thread(ensure_embedded_server, workspace)
    assert restarted.started_here is True
    assert restarted.pid != first_pid

    rt = await open_embedded_runtime(workspace)
    try:
        assert rt.bus.embedded is not None and rt.bus.embedded.pid == restarted.pid
        after = [r.event for r in await read_events(rt, run_id)]
        assert after == before
        # The run id is still taken after the restart.
        with pytest.raises(aethergraph.errors.StaleWriterError):
            await execute_run(embedded_graph.spec, {"x": 1}, run_id=run_id, env=rt.env)
    finally:
        await rt.close()


def test_events_written_by_another_process_are_read_here(tmp_path: Path, stop_servers: list[Path]) -> None:
    """Two processes on one workspace share the embedded server and its journal."""
    workspace = tmp_path / "ws"
    stop_servers.append(workspace)
    script = tmp_path / "writer.py"
    script.write_text(
        "import json, sys\n"
        "import aethergraph\n"
        "from aethergraph import tool\n"
        "@tool(outputs=['val'])\n"
        "def inc(x: int) -> dict:\n"
        "    return {'val': x + 1}\n"
        "print(json.dumps(aethergraph.run(inc, {'x': 1}, run_id=sys.argv[1])))\n"
    )
    run_id = new_run_id()
    env = subprocess_env(AETHERGRAPH_WORKSPACE=str(workspace))
    env.pop("AETHERGRAPH_NATS_URL", None)
    done = subprocess.run(
        [sys.executable, str(script), run_id], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"val": 2}

    server = running_server(workspace)
    assert server is not None, "the embedded server outlives the process that started it"

    async def read_back() -> list[str]:
        rt = await open_embedded_runtime(workspace)
        try:
            assert rt.bus.embedded is not None
            assert rt.bus.embedded.started_here is False
            return [r.event.__struct_config__.tag for r in await read_events(rt, run_id)]
        finally:
            await rt.close()

    assert asyncio.run(read_back()) == ["run.started", "tool.called", "tool.returned", "run.completed"]


def test_sync_interval_is_written_to_the_server_config(tmp_path: Path, stop_servers: list[Path]) -> None:
    workspace = tmp_path / "ws"
    stop_servers.append(workspace)
    server = ensure_embedded_server(workspace, sync_interval="always")
    assert server.sync_interval == "always"
    assert "sync_interval: always" in (workspace / "nats" / "server.conf").read_text()
    reused = running_server(workspace)
    assert reused is not None and reused.sync_interval == "always"


def test_workspace_under_a_file_is_a_workspace_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    workspace = blocker / "ws"
    with pytest.raises(WorkspaceError) as info:
        ensure_embedded_server(workspace)
    message = str(info.value)
    assert str(workspace.resolve() / "nats") in message
    assert "AETHERGRAPH_WORKSPACE" in message
    assert isinstance(info.value, OSError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_read_only_workspace_is_a_workspace_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(WorkspaceError) as info:
            ensure_embedded_server(locked / "ws")
        assert str(locked.resolve()) in str(info.value)
    finally:
        locked.chmod(0o700)


async def test_runtime_on_an_unusable_workspace_fails_with_workspace_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WorkspaceError, match=str(blocker.resolve())):
        await open_embedded_runtime(blocker / "ws")


def test_importing_aethergraph_leaves_the_heavy_optional_modules_unloaded() -> None:
    """DuckDB, jsonschema, aiofiles and mimetypes load when first used (a query, a schema to check, a file),
    so a worker restarting after a crash, or a CLI call, does not pay for them at import."""
    script = (
        "import json, sys\n"
        "import aethergraph\n"
        "print(json.dumps(sorted(m for m in ('duckdb', 'jsonschema', 'aiofiles', 'mimetypes') if m in sys.modules)))"
    )
    assert run_python(script) == []
