"""The HTTP server's live stream (SSE with Last-Event-ID across a restart, token deltas), its security
(token refusal beyond 127.0.0.1, bearer check, no secret in any response), ``aethergraph dev`` and
``start_server(http=True)``. Every server binds to loopback only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO_ROOT, stop_process, subprocess_env, wait_until
from web_client import (
    GRAPHS,
    SseMessage,
    call,
    get,
    launch,
    launch_worker,
    read_until,
    sse,
    sse_at,
    wait_status,
    workspace_env,
)

from aethergraph.adapters.web.serving import HttpServer
from aethergraph.host.process import ProcessHost

pytestmark = pytest.mark.slow


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def worker(workspace: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = launch_worker(workspace_env(workspace))
    yield process
    stop_process(process)


def _submit(url: str, graph: str, inputs: dict[str, object]) -> str:
    status, body, _ = call(url, "POST", "/api/runs", {"graph": graph, "inputs": inputs})
    assert status == 202, body
    return str(body["run_id"])


def test_sse_resumes_with_last_event_id_across_a_server_restart_without_gap_or_duplicate(
    workspace: Path, worker: subprocess.Popen[bytes]
) -> None:
    env = workspace_env(workspace)
    first = launch("serve", GRAPHS, "--port", "0", env=env)
    try:
        run_id = _submit(first.url, "web_asking", {"topic": "restart"})
        with sse(first.url, run_id) as messages:
            before = read_until(messages, "run.waiting")
        wait_id = before[-1].data["wait_id"]
    finally:
        first.stop()
    last_seen = before[-1].id
    assert last_seen is not None

    second = launch("serve", GRAPHS, "--port", "0", env=env)  # another process: nothing of the first is left
    try:
        assert second.url != first.url or first.process.poll() is not None
        status, body, _ = call(
            second.url, "POST", f"/api/runs/{run_id}/resume", {"wait_id": wait_id, "payload": {"ok": True}}
        )
        assert status == 200, body
        with sse(second.url, run_id, last_event_id=last_seen) as messages:
            after = read_until(messages, "run.completed")
        history = get(second.url, f"/api/runs/{run_id}/events")["events"]
    finally:
        second.stop()

    streamed = before + after
    ids = [m.id for m in streamed]
    assert ids == [e["stream_seq"] for e in history]  # every stored event once, in order: no gap, no duplicate
    assert len(set(ids)) == len(ids)
    assert [m.data for m in streamed] == [e["event"] for e in history]
    assert [m.data["seq"] for m in streamed] == list(range(1, len(streamed) + 1))
    assert after[0].data["seq"] == before[-1].data["seq"] + 1


def _of_run(messages: Iterator[SseMessage], run_id: str, last_type: str) -> list[SseMessage]:
    """The stream's messages about ``run_id`` until one of ``last_type`` (other runs' are skipped)."""
    found = []
    for message in messages:
        if message.data.get("run_id") == run_id:
            found.append(message)
            if message.data["type"] == last_type:
                return found
    raise AssertionError(f"the stream ended before {last_type} of {run_id}")


def test_the_all_runs_stream_carries_status_and_waits_and_resumes_by_last_event_id(
    workspace: Path, worker: subprocess.Popen[bytes], nats_url: str
) -> None:
    env = workspace_env(workspace)
    server = launch("serve", GRAPHS, "--port", "0", env=env)
    try:
        with sse_at(server.url, "/api/events") as messages:
            run_id = _submit(server.url, "web_asking", {"topic": "all runs"})
            before = _of_run(messages, run_id, "wait.requested")
        garbage = subprocess_env()  # a stray message on a run subject is no event: it never reaches the stream
        subprocess.run(
            [sys.executable, "-c", STRAY, nats_url, f"ag.evt.{run_id}.run.completed"], env=garbage, check=True
        )
        wait_id = before[-1].data["wait_id"]
        status, body, _ = call(
            server.url, "POST", f"/api/runs/{run_id}/resume", {"wait_id": wait_id, "payload": {"ok": True}}
        )
        assert status == 200, body
        with sse_at(server.url, "/api/events", last_event_id=before[-1].id) as messages:
            after = _of_run(messages, run_id, "run.completed")
        history = get(server.url, f"/api/runs/{run_id}/events")["events"]
        since = get(server.url, f"/api/events?after={before[-1].id}")["events"]
        head = get(server.url, "/api/events")  # no `after`: no events, and where the stream is now
    finally:
        server.stop()
    wanted = [e for e in history if e["event"]["type"].split(".")[0] in ("run", "wait")]
    streamed = before + after
    assert [m.id for m in streamed] == [e["stream_seq"] for e in wanted]  # no gap, no duplicate, no stray
    assert [m.data for m in streamed] == [e["event"] for e in wanted]
    assert [e["stream_seq"] for e in since if e["event"]["run_id"] == run_id] == [m.id for m in after]
    assert head["events"] == [] and head["last_event_id"] >= history[-1]["stream_seq"]


STRAY = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    await nc.jetstream().publish(sys.argv[2], b'{"type": "run.completed", "not": "an event"}')
    await nc.close()
asyncio.run(main())
"""


async def test_token_deltas_ride_the_stream_as_their_own_event_type(
    runtime: ProcessHost, workspace: Path, worker: subprocess.Popen[bytes]
) -> None:
    import asyncio

    server = launch("serve", GRAPHS, "--port", "0", env=workspace_env(workspace))
    try:
        run_id = _submit(server.url, "web_asking", {"topic": "tokens"})
        await asyncio.to_thread(wait_status, server.url, run_id, {"waiting"})

        def listen() -> list[tuple[str, object]]:
            seen: list[tuple[str, object]] = []
            with sse(server.url, run_id) as messages:
                for message in messages:
                    seen.append((message.event, message.data))
                    if message.event == "token" and message.data["done"]:  # type: ignore[index]
                        return seen
            return seen

        listening = asyncio.create_task(asyncio.to_thread(listen))
        deltas = [
            {"run_id": run_id, "node_id": "root", "call_seq": 7, "index": i, "text": t, "done": i == 2}
            for i, t in enumerate(["Hel", "lo", ""])
        ]
        while not listening.done():  # published until the listener (whose subscription is not up yet) sees them
            for delta in deltas:
                await runtime.bus.nc.publish(f"ag.stream.{run_id}.root", json.dumps(delta).encode())
            await asyncio.sleep(0.1)
        seen = await asyncio.wait_for(listening, 60)
    finally:
        server.stop()
    journal = [data for kind, data in seen if kind == "message"]
    tokens = [data for kind, data in seen if kind == "token"]
    assert journal[-1]["type"] == "run.waiting"  # type: ignore[index]
    assert tokens[-3:] == [{**d, "attempt": 1} for d in deltas]  # as published (attempt 1 when not given), no id


def test_binding_beyond_127_0_0_1_needs_a_token_and_then_every_api_call_carries_it(tmp_path: Path) -> None:
    env = workspace_env(tmp_path / "ws")
    env.pop("AETHERGRAPH_API_TOKEN", None)
    for args in (["--host", "127.0.0.2"], ["--require-token"]):
        refused = subprocess.run(
            [sys.executable, "-m", "aethergraph", "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 2, refused.stderr
        assert "AETHERGRAPH_API_TOKEN" in refused.stderr

    token = "t0ken-" + os.urandom(12).hex()
    server = launch("serve", GRAPHS, "--host", "127.0.0.2", "--port", "0", env={**env, "AETHERGRAPH_API_TOKEN": token})
    try:
        assert server.url.startswith("http://127.0.0.2:")
        for path in ("/api/runs", "/api/waits", "/api/graphs"):
            status, _, headers = call(server.url, "GET", path)
            assert status == 401 and headers["www-authenticate"].startswith("Bearer")
            assert call(server.url, "GET", path, headers={"Authorization": "Bearer wrong"})[0] == 401
            assert call(server.url, "GET", path, headers={"Authorization": token})[0] == 401
            assert call(server.url, "GET", path, headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert call(server.url, "POST", "/api/sql", {"sql": "SELECT 1"})[0] == 401
        assert call(server.url, "POST", "/api/runs", {"graph": "web_counting", "inputs": {"n": 1}})[0] == 401
        assert token not in json.dumps(get(server.url, "/openapi.json"))
    finally:
        server.stop()


def test_no_secret_from_the_settings_appears_in_any_response(tmp_path: Path) -> None:
    secret = "sk-" + os.urandom(16).hex()
    token = "tok-" + os.urandom(16).hex()
    env = workspace_env(tmp_path / "ws", AETHERGRAPH_LLM__DEFAULT__API_KEY=secret, AETHERGRAPH_API_TOKEN=token)
    auth = {"Authorization": f"Bearer {token}"}
    worker = launch_worker(env)
    server = launch("serve", GRAPHS, "--port", "0", env=env)
    try:
        run_id = _submit_with(server.url, auth)
        wait_status_auth(server.url, run_id, auth)
        bodies = [
            call(server.url, "GET", path, headers=auth)[1]
            for path in (
                "/api/runs",
                f"/api/runs/{run_id}",
                f"/api/runs/{run_id}/events",
                "/api/waits",
                "/api/graphs",
                "/openapi.json",
                "/",
            )
        ]
        bodies.append(call(server.url, "POST", "/api/sql", {"sql": "SELECT * FROM runs"}, headers=auth)[1])
        text = json.dumps(bodies)
        assert secret not in text and token not in text
    finally:
        server.stop()
        stop_process(worker)


def _submit_with(url: str, auth: dict[str, str]) -> str:
    status, body, _ = call(url, "POST", "/api/runs", {"graph": "web_counting", "inputs": {"n": 2}}, headers=auth)
    assert status == 202, body
    return str(body["run_id"])


def wait_status_auth(url: str, run_id: str, auth: dict[str, str]) -> None:
    wait_until(
        lambda: True if call(url, "GET", f"/api/runs/{run_id}", headers=auth)[1].get("status") == "succeeded" else None,
        timeout_s=60,
        what=f"run {run_id} to succeed",
        interval_s=0.05,
    )


def test_dev_starts_bus_worker_projector_and_server_and_ctrl_c_stops_what_it_started(
    tmp_path: Path, stop_servers: list[Path]
) -> None:
    workspace = tmp_path / "dev-ws"
    stop_servers.append(workspace)
    env = subprocess_env(AETHERGRAPH_WORKSPACE=str(workspace))
    env.pop("AETHERGRAPH_NATS_URL")  # the embedded default: dev starts the workspace's nats-server
    dev = launch("dev", GRAPHS, "--port", "0", env=env)
    try:
        server_json = json.loads((workspace / "nats" / "server.json").read_text())
        run_id = _submit(dev.url, "web_static", {"x": 2})
        assert wait_status(dev.url, run_id, {"succeeded"})["outputs"] == {"y": 8}
        # The projector runs in the dev process: the run is listed.
        wait_until(
            lambda: True if run_id in {r["run_id"] for r in get(dev.url, "/api/runs")["runs"]} else None,
            timeout_s=60,
            what="the run in the list",
        )
    finally:
        dev.process.send_signal(signal.SIGINT)
        code = dev.process.wait(timeout=60)
    assert code == 0, "".join(dev.stderr)
    assert "stopped the embedded NATS server" in "".join(dev.stderr)
    wait_until(lambda: True if not _alive(server_json["pid"]) else None, timeout_s=30, what="nats-server to stop")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_server_with_http_in_code(tmp_path: Path) -> None:
    import aethergraph

    settings = aethergraph.Settings(workspace=tmp_path / "ws", nats_url=os.environ["AETHERGRAPH_NATS_URL"])
    handle = aethergraph.start_server(settings, http=True, port=0, modules=[GRAPHS])
    assert isinstance(handle, HttpServer)
    try:
        assert handle.url.startswith("http://127.0.0.1:")
        assert handle.bus == os.environ["AETHERGRAPH_NATS_URL"]
        assert "web_static" in {g["name"] for g in get(handle.url, "/api/graphs")["graphs"]}
    finally:
        handle.stop()
    assert aethergraph.start_server(settings) == os.environ["AETHERGRAPH_NATS_URL"]  # the bus alone, as before
    with pytest.raises(aethergraph.errors.AetherGraphError, match="AETHERGRAPH_API_TOKEN"):
        aethergraph.start_server(settings, http=True, host="127.0.0.2", port=0)


async def test_clients_of_one_run_share_one_feed_which_ends_after_the_last_leaves(runtime: ProcessHost) -> None:
    import asyncio

    import aethergraph
    from aethergraph.adapters.web import live
    from aethergraph.host.loader import import_module

    graphs = import_module(GRAPHS)
    handle = await aethergraph.start_run(graphs.web_counting, {"n": 3})
    await handle.result()
    hub = live.LiveHub(runtime.event_log, runtime.bus, keepalive_s=0.2)
    try:
        async with hub.follow(handle.run_id) as first, hub.follow(handle.run_id) as second:
            assert first is second and hub.feeds == 1
            await first.ready.wait()
            after = first.items[2].stream_seq  # the third event's: a client that saw three
            one, two = first.tail(None), second.tail(after)
            seen_one = await anext(one)  # everything there is, in one batch
            seen_two = await anext(two)
            [keepalive] = await anext(one)  # nothing new for keepalive_s: an SSE comment keeps the stream open
            assert keepalive.kind == "keepalive" and keepalive.frame == b": keepalive\n\n"
            await one.aclose()
            await two.aclose()
        assert len(seen_one) == len(first.items) and seen_one[0].data.startswith('{"type":"run.started"')
        assert [i.stream_seq for i in seen_one] == sorted(i.stream_seq for i in seen_one)
        assert [i.data for i in seen_one][-1].startswith('{"type":"run.completed"')
        assert seen_two == seen_one[3:]
        assert hub.feeds == 1  # kept a little while for a client that reconnects
        await asyncio.sleep(live.LINGER_S + 1)
        assert hub.feeds == 0
    finally:
        await hub.close()
