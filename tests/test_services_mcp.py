"""``context.mcp(name)`` against real MCP servers: a stdio server process, a streamable-HTTP server, and
an in-process one.

The server (tests/procs/mcp_server.py) appends a line to a side file for
every tool call and resource read it really executes, so the tests count
what reached the server, replays included.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers import closed_port, eventually, read_events, run_python, subprocess_env
from procs.mcp_server import build_server

import aethergraph
from aethergraph import graph_fn, register_mcp_server
from aethergraph.core.context.llm_tools import ChatTool
from aethergraph.core.ids import new_run_id
from aethergraph.core.run.executor import execute_run, resume_run
from aethergraph.core.settings import load_settings
from aethergraph.core.wire import events as ev
from aethergraph.errors import McpConfigError, McpServerError, McpToolError
from aethergraph.host.process import ProcessHost
from aethergraph.services.mcp import unregister_mcp_server

ROOT = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = ROOT / "tests" / "procs" / "mcp_server.py"


class Server:
    """A stdio MCP server registered under a fresh name, and the side file it writes."""

    def __init__(self, name: str, calls: Path) -> None:
        self.name = name
        self.calls = calls

    def lines(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def work(self) -> list[str]:
        """What the server executed (tool calls and reads), without its start lines."""
        return [line for line in self.lines() if not line.startswith("started ")]

    def pids(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith("started ")]


@pytest.fixture
async def stdio_server(tmp_path: Path, runtime: ProcessHost, suspending_runtime: ProcessHost) -> AsyncIterator[Server]:
    name = f"calc_{os.urandom(3).hex()}"
    calls = tmp_path / "calls.txt"
    register_mcp_server(name, command=sys.executable, args=[str(SERVER_SCRIPT), str(calls)], timeout_s=30)
    yield Server(name, calls)
    for host in (runtime, suspending_runtime):  # stop the server now rather than when the session's hosts close
        await host.mcp.session(name).close()
    unregister_mcp_server(name)


def mcp_events(events: list[ev.Event], name: str) -> list[tuple[str, str]]:
    return [
        (type(e).__name__, e.method)
        for e in events
        if isinstance(e, ev.ServiceCalled | ev.ServiceReturned | ev.ServiceFailed) and e.service == f"mcp.{name}"
    ]


@graph_fn(name="mcp_tour", outputs=["tools", "sum", "resources", "readme"])
async def mcp_tour(server: str, *, context: Any) -> dict[str, Any]:
    mcp = context.mcp(server)
    tools = [tool["name"] for tool in await mcp.list_tools()]
    added = await mcp.call("add", {"a": 2, "b": 3})
    resources = [resource["uri"] for resource in await mcp.list_resources()]
    [readme] = await mcp.read_resource("notes://readme")
    return {"tools": tools, "sum": added["structuredContent"], "resources": resources, "readme": readme["text"]}


TOUR = {
    "tools": ["add", "echo", "big", "refuse", "slow", "crash"],
    "sum": {"result": 5},
    "resources": ["notes://readme"],
    "readme": "hello from the readme",
}


async def test_tools_and_resources_are_journaled_steps(runtime: ProcessHost, stdio_server: Server) -> None:
    run_id = new_run_id()
    assert await execute_run(mcp_tour.spec, {"server": stdio_server.name}, run_id=run_id, env=runtime.env) == TOUR
    events = [r.event for r in await read_events(runtime, run_id)]
    assert mcp_events(events, stdio_server.name) == [
        (kind, method)
        for method in ("list_tools", "call", "list_resources", "read_resource")
        for kind in ("ServiceCalled", "ServiceReturned")
    ]
    [called] = [e for e in events if isinstance(e, ev.ServiceCalled) and e.method == "call"]
    [returned] = [e for e in events if isinstance(e, ev.ServiceReturned) and e.method == "call"]
    assert (called.args, returned.parent) == (["add", {"a": 2, "b": 3}], called.seq)
    assert returned.result == {"content": [{"type": "text", "text": "5"}], "structuredContent": {"result": 5}}
    assert stdio_server.work() == ["add 2 3", "read notes://readme"]  # each call reached the server once


async def test_an_offline_replay_needs_no_server(runtime: ProcessHost, stdio_server: Server) -> None:
    """aethergraph.testing.replay has no MCP connections at all: the recorded results are all it needs."""
    from aethergraph.testing import replay_async

    run_id = new_run_id()
    await execute_run(mcp_tour.spec, {"server": stdio_server.name}, run_id=run_id, env=runtime.env)
    journal = [r.event for r in await read_events(runtime, run_id)]
    result = await replay_async(journal, mcp_tour)
    assert (result.outcome, result.outputs) == ("completed", TOUR)
    assert stdio_server.work() == ["add 2 3", "read notes://readme"]


async def test_replay_under_always_suspend_never_calls_the_server_again(
    suspending_runtime: ProcessHost, stdio_server: Server
) -> None:
    """The run suspends after every step and continues by replay: the recorded results are reused."""
    run_id = new_run_id()
    env = suspending_runtime.env
    assert await execute_run(mcp_tour.spec, {"server": stdio_server.name}, run_id=run_id, env=env) == TOUR
    assert stdio_server.work() == ["add 2 3", "read notes://readme"]
    assert len(stdio_server.pids()) == 1  # one server for every step of the run
    events = [r.event for r in await read_events(suspending_runtime, run_id)]
    assert [m for k, m in mcp_events(events, stdio_server.name) if k == "ServiceCalled"] == [
        "list_tools",
        "call",
        "list_resources",
        "read_resource",
    ]


class Crash(BaseException):
    """Stands for the death of the worker: nothing after it is journaled."""


async def test_a_resumed_run_returns_the_recorded_results_without_calling_the_server(
    runtime: ProcessHost, stdio_server: Server
) -> None:
    async def body(server: str, context: Any) -> dict[str, Any]:
        mcp = context.mcp(server)
        first = (await mcp.call("add", {"a": 1, "b": 1}))["structuredContent"]["result"]
        second = (await mcp.call("echo", {"text": "two"}))["structuredContent"]["result"]
        return {"v": [first, second]}

    @graph_fn(name="mcp_resumed", outputs=["v"])
    async def crashes(server: str, *, context: Any) -> dict[str, Any]:
        await body(server, context)
        raise Crash

    @graph_fn(name="mcp_resumed", outputs=["v"])
    async def finishes(server: str, *, context: Any) -> dict[str, Any]:
        outputs = await body(server, context)
        third = (await context.mcp(server).call("add", {"a": 1, "b": 2}))["structuredContent"]["result"]
        return {"v": [*outputs["v"], third]}

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(crashes.spec, {"server": stdio_server.name}, run_id=run_id, env=runtime.env)
    assert await resume_run(finishes.spec, run_id, env=runtime.env) == {"v": [2, "two", 3]}
    assert stdio_server.work() == ["add 1 1", "echo two", "add 1 2"]  # the first two were not made again


async def test_a_server_dying_mid_call_fails_the_step_and_the_next_call_starts_it_again(
    runtime: ProcessHost, stdio_server: Server
) -> None:
    @graph_fn(name="mcp_crash", outputs=["v"])
    async def crashes(server: str, *, context: Any) -> dict[str, Any]:
        return {"v": await context.mcp(server).call("crash")}

    run_id = new_run_id()
    with pytest.raises(McpServerError) as caught:
        await execute_run(crashes.spec, {"server": stdio_server.name}, run_id=run_id, env=runtime.env)
    message = str(caught.value)
    assert stdio_server.name in message and str(SERVER_SCRIPT) in message and "died" in message
    assert caught.value.server == stdio_server.name
    events = [r.event for r in await read_events(runtime, run_id)]
    [failed] = [e for e in events if isinstance(e, ev.ServiceFailed)]
    assert (failed.service, failed.method, failed.error_type) == (
        f"mcp.{stdio_server.name}",
        "call",
        "aethergraph.errors.McpServerError",
    )
    assert not [e for e in events if isinstance(e, ev.ServiceReturned)]  # nothing half-recorded

    @graph_fn(name="mcp_after_crash", outputs=["v"])
    async def after(server: str, *, context: Any) -> dict[str, Any]:
        return {"v": (await context.mcp(server).call("echo", {"text": "again"}))["structuredContent"]}

    assert await execute_run(after.spec, {"server": stdio_server.name}, env=runtime.env) == {"v": {"result": "again"}}
    assert len(stdio_server.pids()) == 2 and stdio_server.work() == ["crash", "echo again"]


async def test_a_call_past_the_timeout_fails_and_the_server_keeps_serving(runtime: ProcessHost, tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    register_mcp_server("slowpoke", command=sys.executable, args=[str(SERVER_SCRIPT), str(calls)], timeout_s=1)
    try:

        @graph_fn(name="mcp_timeout", outputs=["v"])
        async def times_out(*, context: Any) -> dict[str, Any]:
            try:
                await context.mcp("slowpoke").call("slow", {"seconds": 30})
            except McpServerError as exc:
                caught = str(exc)
            after = await context.mcp("slowpoke").call("add", {"a": 1, "b": 1})
            return {"v": [caught, after["structuredContent"]["result"]]}

        [message, after] = (await execute_run(times_out.spec, {}, env=runtime.env))["v"]
    finally:
        unregister_mcp_server("slowpoke")
    assert "'slowpoke'" in message and "did not answer call tool 'slow' within 1 s" in message
    assert "AETHERGRAPH_MCP__SERVERS__SLOWPOKE__TIMEOUT_S" in message
    assert after == 2 and len([line for line in calls.read_text().splitlines() if line.startswith("started")]) == 1


async def test_a_tool_error_is_journaled_and_raised_again_on_replay(
    suspending_runtime: ProcessHost, stdio_server: Server
) -> None:
    @graph_fn(name="mcp_refused", outputs=["v"])
    async def refused(server: str, *, context: Any) -> dict[str, Any]:
        try:
            await context.mcp(server).call("refuse", {"reason": "not today"})
        except McpToolError as exc:
            caught = [type(exc).__name__, str(exc)]
        await context.mcp(server).call("echo", {"text": "after"})  # a step after the failure: replays it
        return {"v": caught}

    run_id = new_run_id()
    outputs = await execute_run(refused.spec, {"server": stdio_server.name}, run_id=run_id, env=suspending_runtime.env)
    assert outputs["v"][0] == "McpToolError"
    assert "'refuse'" in outputs["v"][1] and "not today" in outputs["v"][1] and stdio_server.name in outputs["v"][1]
    assert stdio_server.work() == ["refuse not today", "echo after"]  # the replays did not call again
    events = [r.event for r in await read_events(suspending_runtime, run_id)]
    [failed] = [e for e in events if isinstance(e, ev.ServiceFailed)]
    assert failed.error_type == "aethergraph.errors.McpToolError"


async def test_an_unknown_server_name_says_how_to_configure_one(runtime: ProcessHost, stdio_server: Server) -> None:
    @graph_fn(name="mcp_unknown", outputs=["v"])
    async def unknown(*, context: Any) -> dict[str, Any]:
        return {"v": await context.mcp("no_such_server").list_tools()}

    run_id = new_run_id()
    with pytest.raises(McpConfigError) as caught:
        await execute_run(unknown.spec, {}, run_id=run_id, env=runtime.env)
    message = str(caught.value)
    assert "'no_such_server'" in message and stdio_server.name in message  # the configured names
    assert "AETHERGRAPH_MCP__SERVERS__NO_SUCH_SERVER__COMMAND" in message and "register_mcp_server(" in message
    events = [r.event for r in await read_events(runtime, run_id)]
    [failed] = [e for e in events if isinstance(e, ev.ServiceFailed)]
    assert (failed.service, failed.error_type) == ("mcp.no_such_server", "aethergraph.errors.McpConfigError")


async def test_a_command_that_does_not_exist_names_the_server_and_the_fix(runtime: ProcessHost) -> None:
    register_mcp_server("missing_cmd", command="/nonexistent/mcp-server", args=["--x"])
    try:

        @graph_fn(name="mcp_missing", outputs=["v"])
        async def missing(*, context: Any) -> dict[str, Any]:
            return {"v": await context.mcp("missing_cmd").list_tools()}

        with pytest.raises(McpServerError) as caught:
            await execute_run(missing.spec, {}, env=runtime.env)
    finally:
        unregister_mcp_server("missing_cmd")
    message = str(caught.value)
    assert "'missing_cmd'" in message and "/nonexistent/mcp-server --x" in message and "PATH" in message


def test_register_mcp_server_refuses_incomplete_configurations() -> None:
    with pytest.raises(McpConfigError, match="exactly one of command="):
        register_mcp_server("both", command="x", url="http://127.0.0.1:1/mcp")
    with pytest.raises(McpConfigError, match="exactly one of command="):
        register_mcp_server("neither")
    with pytest.raises(McpConfigError, match="letters, digits"):
        register_mcp_server("has space", command="x")


async def test_mcp_tools_are_chat_tools_whose_calls_are_journaled(runtime: ProcessHost, stdio_server: Server) -> None:
    @graph_fn(name="mcp_chat_tools", outputs=["v"])
    async def chat_tools(server: str, *, context: Any) -> dict[str, Any]:
        mcp = context.mcp(server)
        every = await mcp.tools()
        add = await mcp.tool("add")  # from the same listing: no second list_tools step
        assert all(isinstance(tool, ChatTool) for tool in [*every, add])
        result = await add.invoke({"a": 20, "b": 22})
        return {"v": [add.name, add.description, add.parameters, result["structuredContent"], len(every)]}

    run_id = new_run_id()
    [name, description, parameters, result, count] = (
        await execute_run(chat_tools.spec, {"server": stdio_server.name}, run_id=run_id, env=runtime.env)
    )["v"]
    assert (name, description, result, count) == ("add", "Add two integers.", {"result": 42}, 6)
    assert parameters["type"] == "object" and parameters["required"] == ["a", "b"]
    assert parameters["properties"]["a"]["type"] == "integer"
    events = [r.event for r in await read_events(runtime, run_id)]
    assert [m for k, m in mcp_events(events, stdio_server.name) if k == "ServiceCalled"] == ["list_tools", "call"]
    assert stdio_server.work() == ["add 20 22"]


async def test_asking_for_a_tool_the_server_lacks_lists_its_tools(runtime: ProcessHost, stdio_server: Server) -> None:
    @graph_fn(name="mcp_no_tool", outputs=["v"])
    async def no_tool(server: str, *, context: Any) -> dict[str, Any]:
        return {"v": (await context.mcp(server).tool("subtract")).name}

    with pytest.raises(McpToolError) as caught:
        await execute_run(no_tool.spec, {"server": stdio_server.name}, env=runtime.env)
    assert "'subtract'" in str(caught.value) and "add, echo, big, refuse, slow, crash" in str(caught.value)


async def test_a_large_result_rides_as_an_artifact_reference(runtime: ProcessHost, stdio_server: Server) -> None:
    size = runtime.env.service_backends.inline_limit + 1000

    @graph_fn(name="mcp_big", outputs=["v"])
    async def big(server: str, n: int, *, context: Any) -> dict[str, Any]:
        return {"v": len((await context.mcp(server).call("big", {"n": n}))["structuredContent"]["result"])}

    run_id = new_run_id()
    assert await execute_run(big.spec, {"server": stdio_server.name, "n": size}, run_id=run_id, env=runtime.env) == {
        "v": size
    }
    events = [r.event for r in await read_events(runtime, run_id)]
    [returned] = [e for e in events if isinstance(e, ev.ServiceReturned)]
    assert returned.result is None and returned.result_ref is not None


async def test_closing_the_host_stops_the_servers_it_started(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    servers = {"files": {"command": sys.executable, "args": [str(SERVER_SCRIPT), str(calls)]}}
    host = await ProcessHost.open(load_settings(mcp={"servers": servers}))
    try:
        assert "files" in host.mcp.configured()

        @graph_fn(name="mcp_configured", outputs=["v"])
        async def configured(*, context: Any) -> dict[str, Any]:
            return {"v": (await context.mcp("files").call("echo", {"text": "hi"}))["structuredContent"]}

        assert await execute_run(configured.spec, {}, env=host.env) == {"v": {"result": "hi"}}
    finally:
        await host.close()
    [pid] = [int(line.split()[1]) for line in calls.read_text().splitlines() if line.startswith("started ")]

    async def gone() -> bool | None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return None

    await eventually(gone, f"the MCP server process {pid} to exit after ProcessHost.close()")


def _serve_http(calls: Path, seen_headers: list[dict[bytes, bytes]]) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = build_server(str(calls)).streamable_http_app()

    async def logged(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen_headers.append(dict(scope["headers"]))
        await app(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(logged, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{port}/mcp", server, thread


async def test_a_streamable_http_server(runtime: ProcessHost, tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    seen_headers: list[dict[bytes, bytes]] = []
    url, server, thread = _serve_http(calls, seen_headers)
    name = f"http_{os.urandom(3).hex()}"
    register_mcp_server(name, url=url, headers={"X-Test-Token": "t0k"}, timeout_s=30)
    try:
        await eventually(lambda: _true_if(server.started), "the HTTP MCP server to start")
        run_id = new_run_id()
        assert await execute_run(mcp_tour.spec, {"server": name}, run_id=run_id, env=runtime.env) == TOUR
        assert calls.read_text().splitlines() == ["add 2 3", "read notes://readme"]
        assert seen_headers and all(h.get(b"x-test-token") == b"t0k" for h in seen_headers)
    finally:
        unregister_mcp_server(name)
        server.should_exit = True
        thread.join(timeout=30)


async def test_an_unreachable_url_names_the_server_and_its_url(runtime: ProcessHost) -> None:
    url = f"http://127.0.0.1:{closed_port()}/mcp"
    register_mcp_server("nobody_home", url=url, headers={"Authorization": "Bearer secret-token"})
    try:

        @graph_fn(name="mcp_unreachable", outputs=["v"])
        async def unreachable(*, context: Any) -> dict[str, Any]:
            return {"v": await context.mcp("nobody_home").list_resources()}

        run_id = new_run_id()
        with pytest.raises(McpServerError) as caught:
            await execute_run(unreachable.spec, {}, run_id=run_id, env=runtime.env)
    finally:
        unregister_mcp_server("nobody_home")
    assert "'nobody_home'" in str(caught.value) and url in str(caught.value)
    stored = [r.event for r in await read_events(runtime, run_id)]
    assert not [e for e in stored if "secret-token" in repr(e)]  # headers (credentials) never enter the journal


async def _true_if(value: bool) -> bool | None:
    return True if value else None


async def test_an_in_process_fake_server(runtime: ProcessHost, tmp_path: Path) -> None:
    """The pattern of docs/testing.md: an MCPServer object registered under the name the agent uses."""
    calls = tmp_path / "calls.txt"
    register_mcp_server("fake_files", server=build_server(str(calls)))
    try:
        assert await execute_run(mcp_tour.spec, {"server": "fake_files"}, env=runtime.env) == TOUR
    finally:
        unregister_mcp_server("fake_files")
    assert calls.read_text().splitlines() == ["add 2 3", "read notes://readme"]


def test_import_aethergraph_does_not_import_the_mcp_sdk() -> None:
    code = "import sys, aethergraph; print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_the_registration_is_public() -> None:
    assert aethergraph.register_mcp_server is register_mcp_server


async def test_a_server_killed_between_calls_is_started_again_by_the_next_call(
    runtime: ProcessHost, stdio_server: Server
) -> None:
    @graph_fn(name="mcp_echo", outputs=["v"])
    async def echo(server: str, text: str, *, context: Any) -> dict[str, Any]:
        return {"v": (await context.mcp(server).call("echo", {"text": text}))["structuredContent"]["result"]}

    inputs = {"server": stdio_server.name}
    assert await execute_run(echo.spec, {**inputs, "text": "one"}, env=runtime.env) == {"v": "one"}
    [pid] = stdio_server.pids()
    session = runtime.mcp.session(stdio_server.name)
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _true_if(not session.connected), "the session to notice its server died")
    assert await execute_run(echo.spec, {**inputs, "text": "two"}, env=runtime.env) == {"v": "two"}
    assert len(stdio_server.pids()) == 2 and stdio_server.work() == ["echo one", "echo two"]


async def test_concurrent_calls_share_one_server(runtime: ProcessHost, stdio_server: Server) -> None:
    """Requests from many tasks go over the one connection (its owner task holds it open)."""
    session = runtime.mcp.session(stdio_server.name)
    results = await asyncio.gather(*(session.call_tool("add", {"a": i, "b": 1}) for i in range(8)))
    assert [r["structuredContent"]["result"] for r in results] == [i + 1 for i in range(8)]
    assert len(stdio_server.pids()) == 1 and session.connections == 1
    assert sorted(stdio_server.work()) == sorted(f"add {i} 1" for i in range(8))


TRIAGE_GRAPH = """
from aethergraph import graph_fn


@graph_fn(name="triage", outputs=["issue"])
async def triage(report, *, context):
    result = await context.mcp("tracker").call("open_issue", {"title": report})
    return {"issue": result["structuredContent"]["result"]}
"""


def test_the_fake_server_example_of_the_testing_doc_runs(tmp_path: Path) -> None:
    """docs/testing.md's example, as written, in a process of its own (it calls the synchronous aethergraph.run)."""
    section = (ROOT / "docs" / "testing.md").read_text().split("## Fake MCP servers", 1)[1]
    [example] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    package = tmp_path / "myproject"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "graphs.py").write_text(TRIAGE_GRAPH)
    script = example + "\nimport json\ntest_triage_opens_one_issue()\nprint(json.dumps(opened))\n"
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    assert run_python(script, env=env) == ["the build is red"]


async def test_the_example_of_the_agents_doc_runs(runtime: ProcessHost, tmp_path: Path) -> None:
    section = (ROOT / "docs" / "agents.md").read_text().split("## MCP", 1)[1]
    example = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    namespace: dict[str, Any] = {}
    exec(compile(example, "docs/agents.md", "exec"), namespace)
    register_mcp_server("files", server=build_server(str(tmp_path / "calls.txt")))
    try:
        outputs = await execute_run(namespace["summarise_readme"].spec, {}, env=runtime.env)
    finally:
        unregister_mcp_server("files")
    assert outputs == {"total": 5, "readme": "hello from the readme"}
