"""The agent services together, as a user combines them: an MCP tool in the model's tool loop (a real stdio
MCP server), streamed tokens watched live on ``ag.stream.<run_id>.<node_id>``, and the ``llm_calls`` table
folded from real model calls."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import chain_of

import aethergraph
from aethergraph import graph_fn, register_llm_client, register_mcp_server
from aethergraph.bus.token_stream import watch_tokens
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost
from aethergraph.projections.projector import Projector
from aethergraph.projections.store import ProjectionStore
from aethergraph.services.llm import unregister_llm_client
from aethergraph.services.mcp import unregister_mcp_server
from aethergraph.testing import FakeOpenAI, Reply

SERVER_SCRIPT = Path(__file__).resolve().parent / "procs" / "mcp_server.py"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        register_llm_client("default", base_url=server.base_url, api_key=server.api_key, model="fake-model")
        try:
            yield server
        finally:
            unregister_llm_client("default")


@pytest.fixture
async def calculator(tmp_path: Path, runtime: ProcessHost) -> AsyncIterator[tuple[str, Path]]:
    name = f"calc_{os.urandom(3).hex()}"
    calls = tmp_path / "calls.txt"
    register_mcp_server(name, command=sys.executable, args=[str(SERVER_SCRIPT), str(calls)], timeout_s=30)
    yield name, calls
    await runtime.mcp.session(name).close()
    unregister_mcp_server(name)


@graph_fn(name="agents_mcp_in_loop", outputs=["text"])
async def agents_mcp_in_loop(server: str, *, context: Any) -> dict[str, Any]:
    add = await context.mcp(server).tool("add")
    text, _ = await context.llm().chat("what is 2 + 40?", tools=[add])
    return {"text": text}


async def test_an_mcp_tool_serves_in_the_models_tool_loop(
    runtime: ProcessHost, fake: FakeOpenAI, calculator: tuple[str, Path]
) -> None:
    name, calls = calculator
    fake.reset()
    fake.script(Reply.tool_call("add", {"a": 2, "b": 40}), Reply.text("42"))
    run_id = f"agmcp{os.urandom(5).hex()}"
    assert await aethergraph.run_async(agents_mcp_in_loop, {"server": name}, run_id=run_id) == {"text": "42"}
    schema = fake.calls[0].body["tools"][0]["function"]
    assert schema["name"] == "add" and schema["description"] == "Add two integers."
    assert set(schema["parameters"]["properties"]) == {"a", "b"}
    tool_message = fake.calls[1].body["messages"][-1]
    assert tool_message["role"] == "tool" and "42" in tool_message["content"]
    chain = await chain_of(runtime, run_id)
    mcp_calls = [e.method for e in chain if isinstance(e, ev.ServiceCalled) and e.service == f"mcp.{name}"]
    assert mcp_calls == ["list_tools", "call"]
    assert [line for line in calls.read_text().splitlines() if not line.startswith("started")] == ["add 2 40"]


@graph_fn(name="agents_streamed", outputs=["text"])
async def agents_streamed(*, context: Any) -> dict[str, Any]:
    text, _ = await context.llm().chat_stream("tell me about hall B")
    return {"text": text}


async def test_streamed_tokens_are_watched_live_and_calls_become_llm_calls_rows(
    runtime: ProcessHost, fake: FakeOpenAI
) -> None:
    fake.reset()
    fake.script(Reply.text("Hall B holds the big press."))
    run_id = f"agstr{os.urandom(5).hex()}"
    async with watch_tokens(runtime.bus.nc, run_id) as watch:
        outputs = await aethergraph.run_async(agents_streamed, {}, run_id=run_id)
        assert outputs == {"text": "Hall B holds the big press."}
        await watch.close()
        deltas = [delta async for delta in watch]
    [called] = [e for e in await chain_of(runtime, run_id) if isinstance(e, ev.LlmCalled)]
    assert "".join(d.text for d in deltas) == "Hall B holds the big press."
    assert [d.index for d in deltas] == list(range(len(deltas))) and deltas[-1].done
    assert {(d.node_id, d.call_seq, d.attempt) for d in deltas} == {("root", called.seq, 1)}

    store = ProjectionStore.open(":memory:")
    try:
        await Projector(runtime.bus, store, store_id=f"agents-{os.urandom(4).hex()}").catch_up()
        rows = store.query(
            "SELECT profile, model, operation, streamed, status, input_tokens, output_tokens, finish_reason "
            "FROM llm_calls WHERE run_id = ?",
            [run_id],
        ).rows
    finally:
        store.close()
    assert [tuple(row) for row in rows] == [("default", "fake-model", "chat", True, "ok", 5, 6, "stop")]
    assert json.dumps(rows).find(fake.api_key) == -1
