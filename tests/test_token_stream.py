"""Streamed tokens on ``ag.stream.<run_id>.<node_id>``: publish and watch on a real server, and ``aethergraph tokens``.

The deltas are published the way a streamed model call publishes them: through
the run environment's token stream (``RunEnvironment.token_stream``, a
``NatsTokenStream`` on the process's connection). The CLI runs as a subprocess,
its own process on the session's nats-server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import nats
import nats.js.errors
import pytest
from helpers import subprocess_env

import aethergraph
from aethergraph import graph_fn
from aethergraph.bus.token_stream import NatsTokenStream, TokenWatch, watch_tokens
from aethergraph.bus.topology import token_stream_subject
from aethergraph.core.ids import new_run_id
from aethergraph.core.wire.token_delta import TokenDelta, encode_token_delta
from aethergraph.host.process import ProcessHost

SAFETY_S = 60  # an upper bound for anything to happen, never a measurement


def _deltas(run_id: str, node_id: str, call_seq: int, pieces: list[str]) -> list[TokenDelta]:
    return [
        TokenDelta(run_id=run_id, node_id=node_id, call_seq=call_seq, index=i, text=text, done=i == len(pieces) - 1)
        for i, text in enumerate(pieces)
    ]


def _publish(stream: Any, deltas: list[TokenDelta]) -> None:
    for delta in deltas:
        stream.publish(delta.run_id, delta.node_id, encode_token_delta(delta))


async def _collect(watch: TokenWatch) -> list[TokenDelta]:
    return [delta async for delta in watch]


async def test_deltas_reach_another_connection_in_order_and_close_keeps_what_was_sent(
    runtime: ProcessHost, nats_url: str
) -> None:
    stream = runtime.env.token_stream
    assert isinstance(stream, NatsTokenStream)  # the process composes it into every run's environment
    run_id, other = new_run_id(), new_run_id()
    nc = await nats.connect(nats_url)
    try:
        async with watch_tokens(nc, run_id) as watch:
            collected = asyncio.ensure_future(_collect(watch))
            sent = _deltas(run_id, "root", 4, ["Hel", "lo", ", wor", "ld"]) + _deltas(run_id, "ask_2", 9, ["ok"])
            _publish(stream, sent)
            _publish(stream, _deltas(other, "root", 4, ["not", "mine"]))  # another run's subject
            await runtime.bus.nc.publish(token_stream_subject(run_id, "root"), b"{not a delta")
            await runtime.bus.nc.flush()  # the server has them all (routing to the watcher is not awaited here)
            await watch.close()  # a round trip from the watcher: everything routed to it arrives before the end
            got = await asyncio.wait_for(collected, SAFETY_S)
        assert got == sent
        assert watch.undecodable == 1
    finally:
        await nc.close()


async def test_no_stream_stores_the_token_subjects(runtime: ProcessHost) -> None:
    js = runtime.bus.js
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.find_stream_name_by_subject(token_stream_subject(new_run_id(), "root"))
    names = [info.config.name for info in await js.streams_info()]
    assert {"AG_EVENTS", "AG_COMMANDS", "AG_LEASES"} <= set(names)


def _tokens_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aethergraph", "tokens", *args],
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _first_line(process: subprocess.Popen[str], probe: Any) -> str:
    """Probe deltas until the CLI prints one (then it is subscribed); its first line."""
    assert process.stdout is not None
    reading = asyncio.ensure_future(asyncio.to_thread(process.stdout.readline))
    async with asyncio.timeout(SAFETY_S):
        while not reading.done():
            probe()
            await asyncio.wait([reading], timeout=0.05)
    return reading.result()


async def test_the_tokens_command_prints_deltas_until_the_run_ends(runtime: ProcessHost) -> None:
    gate = asyncio.Event()

    @graph_fn(name="token_gate", outputs=["v"])
    async def token_gate(*, context: Any) -> dict[str, Any]:
        await gate.wait()  # the run is running (not waiting): the CLI must wait for its end
        return {"v": "done"}

    handle = await aethergraph.start_run(token_gate, {})
    run_id = handle.run_id
    stream = runtime.env.token_stream
    assert stream is not None
    as_json, as_text = _tokens_cli(run_id, "--json"), _tokens_cli(run_id)
    try:
        probe = _deltas(run_id, "root", 1, ["probe"])
        first_json = await _first_line(as_json, lambda: _publish(stream, probe))
        first_text = await _first_line(as_text, lambda: _publish(stream, probe))
        sent = _deltas(run_id, "root", 7, ["The answer", " is", " 42."]) + _deltas(run_id, "tool_1", 9, ["x"])
        _publish(stream, sent)
        gate.set()  # run.completed goes out after the deltas, on the same connection
        assert await asyncio.wait_for(handle.result(), SAFETY_S) == {"v": "done"}
        out_json, err_json = await asyncio.to_thread(as_json.communicate, timeout=SAFETY_S)
        out_text, err_text = await asyncio.to_thread(as_text.communicate, timeout=SAFETY_S)
    finally:
        for process in (as_json, as_text):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert as_json.returncode == 0, err_json
    lines = [json.loads(line) for line in (first_json + out_json).splitlines()]
    assert [line for line in lines if line["text"] != "probe"] == [
        {
            "run_id": run_id,
            "node_id": d.node_id,
            "call_seq": d.call_seq,
            "index": d.index,
            "text": d.text,
            "done": d.done,
            "attempt": d.attempt,
        }
        for d in sent
    ]
    assert as_text.returncode == 0, err_text
    printed = [line for line in (first_text + out_text).splitlines() if line != "[root call 1] probe"]
    assert printed == ["[root call 7] The answer is 42.", "[tool_1 call 9] x"]


def test_the_tokens_command_of_an_unknown_run_says_so() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aethergraph", "tokens", "no-such-run-xyz"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SAFETY_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert "no run no-such-run-xyz on the bus" in done.stderr


async def test_the_tokens_command_of_an_ended_run_returns_at_once(runtime: ProcessHost) -> None:
    @graph_fn(name="token_done", outputs=["v"])
    async def token_done() -> dict[str, Any]:
        return {"v": 1}

    handle = await aethergraph.start_run(token_done, {})
    await asyncio.wait_for(handle.result(), SAFETY_S)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aethergraph", "tokens", handle.run_id, "--json"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SAFETY_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
