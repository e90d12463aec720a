"""``context.llm()`` against the fake OpenAI-compatible server (real HTTP on loopback) and a real nats-server.

Each model turn is one journaled step (``llm.called`` then ``llm.returned``
or ``llm.failed``); replay returns the recorded response without calling the
model; tool calls of the tool loop are their own steps; retries, errors and
the token budget behave as docs/agents.md says; the API key is never stored.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pydantic
import pytest
from helpers import chain_of, closed_port, fake_default_model, read_events

import aethergraph
from aethergraph import graph_fn, register_llm_client, tool
from aethergraph.core.run.executor import execute_run
from aethergraph.core.settings import LLMSettings, load_settings
from aethergraph.core.wire import events as ev
from aethergraph.errors import (
    LLMConfigError,
    LLMEndpointError,
    LLMResponseError,
    NonDeterminismError,
    TokenBudgetExceeded,
)
from aethergraph.host.process import ProcessHost
from aethergraph.services.llm import unregister_llm_client
from aethergraph.testing import FakeOpenAI, Reply, ToolCall, replay_async


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with fake_default_model() as server:
        yield server


@pytest.fixture
def model(fake: FakeOpenAI) -> FakeOpenAI:
    fake.reset()
    return fake


def run_id() -> str:
    return f"llm{os.urandom(6).hex()}"


def of_type(chain: list[ev.Event], cls: type[ev.Event]) -> list[Any]:
    return [event for event in chain if isinstance(event, cls)]


# --- chat -----------------------------------------------------------------------------------------------------------


@graph_fn(name="llm_hello", outputs=["text", "usage"])
async def llm_hello(question: str, *, context: Any) -> dict[str, Any]:
    text, usage = await context.llm().chat(question, system="be brief", temperature=0.1)
    return {"text": text, "usage": usage}


async def test_chat_is_one_journaled_step_with_the_complete_response(runtime: ProcessHost, model: FakeOpenAI) -> None:
    model.script(Reply.text("Hall B is 21 degrees."))
    rid = run_id()
    outputs = await aethergraph.run_async(llm_hello, {"question": "how warm is hall B?"}, run_id=rid)
    assert outputs["text"] == "Hall B is 21 degrees."
    assert outputs["usage"]["output_tokens"] > 0 and outputs["usage"]["rounds"] == 1

    chain = await chain_of(runtime, rid)
    [called] = of_type(chain, ev.LlmCalled)
    [returned] = of_type(chain, ev.LlmReturned)
    assert returned.parent == called.seq
    assert (called.profile, called.model, called.operation, called.streamed) == ("default", "fake-model", "chat", False)
    assert called.request["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "how warm is hall B?"},
    ]
    assert called.request["temperature"] == 0.1
    assert returned.response["content"] == "Hall B is 21 degrees."
    assert returned.finish_reason == "stop" and returned.attempts == 1
    assert returned.output_tokens == outputs["usage"]["output_tokens"]
    [request] = model.calls
    assert request.idempotency_key == called.idempotency_key != ""
    assert request.authorization == f"Bearer {model.api_key}"


async def stored_since(nats_url: str, before: dict[str, int] | None = None) -> tuple[dict[str, int], list[bytes]]:
    """Every stream's last sequence, and every message (subject, headers, data) stored after ``before``."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        lasts = {info.config.name: info.state.last_seq for info in await js.streams_info()}
        found: list[bytes] = []
        for stream, last in lasts.items():
            for seq in range((before or lasts).get(stream, 0) + 1, last + 1):
                try:
                    msg = await js.get_msg(stream, seq)
                except NotFoundError:
                    continue
                found.append(msg.subject.encode() + repr(msg.headers).encode() + (msg.data or b""))
        return lasts, found
    finally:
        await nc.close()


async def test_the_api_key_is_in_no_stored_message(runtime: ProcessHost, model: FakeOpenAI, nats_url: str) -> None:
    before, _ = await stored_since(nats_url)
    model.script(Reply.failure(401, message=f"Incorrect API key provided: {model.api_key}"))
    rid = run_id()
    with pytest.raises(LLMConfigError) as info:
        await aethergraph.run_async(llm_hello, {"question": "q"}, run_id=rid)
    assert model.api_key not in str(info.value) and "API_KEY" in str(info.value)
    model.script(Reply.text("fine"))
    rid2 = run_id()
    await aethergraph.run_async(llm_hello, {"question": "q"}, run_id=rid2)
    _, stored = await stored_since(nats_url, before)
    assert any(rid.encode() in message for message in stored) and any(rid2.encode() in m for m in stored)
    assert not any(model.api_key.encode() in message or b"sk-fake" in message for message in stored)


# --- replay ---------------------------------------------------------------------------------------------------------


@graph_fn(name="llm_three_turns", outputs=["answers"])
async def llm_three_turns(*, context: Any) -> dict[str, Any]:
    answers = []
    for question in ("one", "two", "three"):
        text, _ = await context.llm().chat(question)
        answers.append(text)
    return {"answers": answers}


async def test_replay_under_always_suspend_makes_no_model_call_twice(
    suspending_runtime: ProcessHost, model: FakeOpenAI
) -> None:
    outputs = await execute_run(llm_three_turns.spec, {}, env=suspending_runtime.env)
    assert outputs == {"answers": ["echo: one", "echo: two", "echo: three"]}
    assert model.call_count("chat", all_attempts=True) == 3


# --- structured output ----------------------------------------------------------------------------------------------


class Reading(pydantic.BaseModel):
    hall: str
    celsius: float


@graph_fn(name="llm_structured", outputs=["reading", "raw"])
async def llm_structured(*, context: Any) -> dict[str, Any]:
    reading, _ = await context.llm().chat("read hall B", response_model=Reading)
    assert isinstance(reading, Reading)
    raw, _ = await context.llm().chat(
        "again",
        json_schema={"type": "object", "properties": {"hall": {"type": "string"}}, "required": ["hall"]},
    )
    return {"reading": reading.model_dump(), "raw": raw}


async def test_response_model_and_json_schema_return_validated_values(runtime: ProcessHost, model: FakeOpenAI) -> None:
    model.script(Reply.json({"hall": "B", "celsius": 21.5}), Reply.json({"hall": "C"}))
    outputs = await aethergraph.run_async(llm_structured, {})
    assert outputs == {"reading": {"hall": "B", "celsius": 21.5}, "raw": {"hall": "C"}}
    first = model.calls[0].body["response_format"]
    assert first["type"] == "json_schema" and first["json_schema"]["schema"]["required"] == ["hall", "celsius"]


async def test_an_answer_that_fails_its_model_is_the_steps_failure(runtime: ProcessHost, model: FakeOpenAI) -> None:
    model.script(Reply.text("it is warm"))
    rid = run_id()
    with pytest.raises(LLMResponseError) as info:
        await aethergraph.run_async(llm_structured, {}, run_id=rid)
    assert "not JSON" in str(info.value) and "it is warm" in str(info.value) and info.value.profile == "default"
    chain = await chain_of(runtime, rid)
    [failed] = of_type(chain, ev.LlmFailed)
    assert failed.error_type == "aethergraph.errors.LLMResponseError" and failed.output_tokens > 0
    assert not of_type(chain, ev.LlmReturned)


# --- tools ----------------------------------------------------------------------------------------------------------


@tool(outputs=["sum"])
def add_numbers(a: int, b: int) -> dict[str, int]:
    """Add two integers."""
    return {"sum": a + b}


@graph_fn(name="llm_with_tools", outputs=["text", "rounds"])
async def llm_with_tools(*, context: Any) -> dict[str, Any]:
    text, usage = await context.llm().chat("what is 2+3 and 4+5?", tools=[add_numbers], max_tool_rounds=3)
    return {"text": text, "rounds": usage["rounds"]}


async def test_the_tool_loop_journals_each_turn_and_each_tool_call_once(
    runtime: ProcessHost, model: FakeOpenAI
) -> None:
    model.script(
        Reply.tool_call("add_numbers", {"a": 2, "b": 3}),
        Reply.parallel_tool_calls(ToolCall("add_numbers", {"a": 4, "b": 5}), ToolCall("nope", {})),
        Reply.text("5 and 9"),
    )
    rid = run_id()
    outputs = await aethergraph.run_async(llm_with_tools, {}, run_id=rid)
    assert outputs == {"text": "5 and 9", "rounds": 3}
    chain = await chain_of(runtime, rid)
    assert len(of_type(chain, ev.LlmCalled)) == 3 == len(of_type(chain, ev.LlmReturned))
    tool_calls = of_type(chain, ev.ToolCalled)
    assert [call.args for call in tool_calls] == [{"a": 2, "b": 3}, {"a": 4, "b": 5}]
    schema = model.calls[0].body["tools"][0]["function"]
    assert schema["name"] == "add_numbers" and schema["description"] == "Add two integers."
    assert schema["parameters"]["required"] == ["a", "b"]
    last = model.calls[2].body["messages"]
    assert [m["role"] for m in last][-3:] == ["assistant", "tool", "tool"]
    assert "no tool named 'nope'" in last[-1]["content"]


async def test_a_model_that_keeps_calling_tools_is_stopped(runtime: ProcessHost, model: FakeOpenAI) -> None:
    model.script(*[Reply.tool_call("add_numbers", {"a": i, "b": i}) for i in range(5)])
    with pytest.raises(LLMResponseError, match="max_tool_rounds"):
        await aethergraph.run_async(llm_with_tools, {})


# --- retries and errors ---------------------------------------------------------------------------------------------


async def test_transient_failures_are_retried_honouring_retry_after(runtime: ProcessHost, model: FakeOpenAI) -> None:
    model.script(Reply.failure(429, retry_after=0.05), Reply.failure(503), Reply.text("third time"))
    rid = run_id()
    outputs = await aethergraph.run_async(llm_hello, {"question": "q"}, run_id=rid)
    assert outputs["text"] == "third time"
    [returned] = of_type(await chain_of(runtime, rid), ev.LlmReturned)
    assert returned.attempts == 3
    keys = {call.idempotency_key for call in model.calls}
    assert len(model.calls) == 3 and len(keys) == 1  # every attempt carries the step's key


async def test_a_bad_request_is_not_retried_and_names_the_profile(runtime: ProcessHost, model: FakeOpenAI) -> None:
    model.script(Reply.failure(400, message="unsupported parameter: temperature"))
    rid = run_id()
    with pytest.raises(LLMEndpointError) as info:
        await aethergraph.run_async(llm_hello, {"question": "q"}, run_id=rid)
    assert info.value.status == 400 and "profile 'default'" in str(info.value)
    assert "unsupported parameter" in str(info.value) and len(model.calls) == 1
    [failed] = of_type(await chain_of(runtime, rid), ev.LlmFailed)
    assert failed.error_type == "aethergraph.errors.LLMEndpointError"


@graph_fn(name="llm_profile", outputs=["text"])
async def llm_profile(profile: str, *, context: Any) -> dict[str, Any]:
    text, _ = await context.llm(profile).chat("hello")
    return {"text": text}


async def test_an_unreachable_endpoint_and_an_unknown_profile_say_what_to_set(runtime: ProcessHost) -> None:
    register_llm_client("down", base_url=f"http://127.0.0.1:{closed_port()}/v1", model="m", max_retries=1)
    try:
        rid = run_id()
        with pytest.raises(LLMEndpointError, match=r"cannot reach .* profile 'down'.*BASE_URL") as info:
            await aethergraph.run_async(llm_profile, {"profile": "down"}, run_id=rid)
        assert info.value.attempts == 2
        [failed] = of_type(await chain_of(runtime, rid), ev.LlmFailed)
        assert failed.attempts == 2
    finally:
        unregister_llm_client("down")
    with pytest.raises(LLMConfigError, match=r"no model profile 'nowhere'.*AETHERGRAPH_LLM__PROFILES__NOWHERE__MODEL"):
        await aethergraph.run_async(llm_profile, {"profile": "nowhere"})


# --- streaming ------------------------------------------------------------------------------------------------------


@graph_fn(name="llm_stream_both", outputs=["text", "pieces", "iterated"])
async def llm_stream_both(*, context: Any) -> dict[str, Any]:
    pieces: list[str] = []
    text, _ = await context.llm().chat_stream("tell me", on_delta=pieces.append)
    iterated = [piece async for piece in context.llm().stream("and again")]
    return {"text": text, "pieces": pieces, "iterated": iterated}


async def test_streamed_answers_are_recorded_whole(runtime: ProcessHost, model: FakeOpenAI) -> None:
    model.script(Reply.text("one two three four"), Reply.text("five six"))
    rid = run_id()
    outputs = await aethergraph.run_async(llm_stream_both, {}, run_id=rid)
    assert outputs["text"] == "one two three four" == "".join(outputs["pieces"])
    assert len(outputs["pieces"]) > 1 and "".join(outputs["iterated"]) == "five six"
    chain = await chain_of(runtime, rid)
    assert [c.streamed for c in of_type(chain, ev.LlmCalled)] == [True, True]
    assert [r.response["content"] for r in of_type(chain, ev.LlmReturned)] == ["one two three four", "five six"]
    assert all(call.stream for call in model.calls)


async def test_a_replayed_stream_yields_the_recorded_answer_without_calling(
    suspending_runtime: ProcessHost, model: FakeOpenAI
) -> None:
    model.script(Reply.text("alpha beta"), Reply.text("gamma delta"))
    outputs = await execute_run(llm_stream_both.spec, {}, env=suspending_runtime.env)
    assert outputs["text"] == "alpha beta" and "".join(outputs["iterated"]) == "gamma delta"
    assert model.call_count("chat", all_attempts=True) == 2


# --- embeddings and large responses ---------------------------------------------------------------------------------


@graph_fn(name="llm_embed", outputs=["count", "dim", "same"])
async def llm_embed(count: int, *, context: Any) -> dict[str, Any]:
    texts = [f"document number {i} about hall {i % 7}" for i in range(count)]
    vectors = await context.llm().embed(texts)
    again = await context.llm().embed(texts[:1])
    return {"count": len(vectors), "dim": len(vectors[0]), "same": again[0] == vectors[0]}


async def test_embeddings_large_enough_go_to_the_artifact_store(runtime: ProcessHost, model: FakeOpenAI) -> None:
    rid = run_id()
    outputs = await aethergraph.run_async(llm_embed, {"count": 400}, run_id=rid)
    assert outputs == {"count": 400, "dim": 64, "same": True}
    big, small = of_type(await chain_of(runtime, rid), ev.LlmReturned)
    assert big.response is None and big.response_ref and big.operation == "embed"
    assert small.response is not None and small.response_ref is None


# --- the token budget -----------------------------------------------------------------------------------------------


@pytest.fixture
async def budget_runtime(_aethergraph_environment: None) -> AsyncIterator[ProcessHost]:
    rt = await ProcessHost.open(load_settings(llm=LLMSettings(token_budget=5)))
    try:
        yield rt
    finally:
        await rt.close()


async def test_the_token_budget_stops_the_run_before_it_spends_more(
    budget_runtime: ProcessHost, model: FakeOpenAI
) -> None:
    rid = run_id()
    with pytest.raises(TokenBudgetExceeded) as info:
        await execute_run(llm_three_turns.spec, {}, env=budget_runtime.env, run_id=rid)
    assert info.value.budget == 5 and info.value.spent >= 5
    chain = await chain_of(budget_runtime, rid)
    [failed] = of_type(chain, ev.LlmFailed)
    assert failed.error_type == "aethergraph.errors.TokenBudgetExceeded"
    assert "budget of 5" in failed.message and "AETHERGRAPH_LLM__TOKEN_BUDGET" in failed.message
    assert model.call_count("chat", all_attempts=True) == len(of_type(chain, ev.LlmReturned)) >= 1


# --- graph functions and other objects as tools, and model calls inside a tool -----------------------------------


@graph_fn(name="llm_child_lookup", outputs=["found"])
async def llm_child_lookup(term: str) -> dict[str, str]:
    """Look a term up in the glossary."""
    return {"found": term.upper()}


class Shout:
    """A tool object of one's own (the ChatTool protocol): a pure function, so it needs no journal of its own."""

    name = "shout"
    description = "Shout a word."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"word": {"type": "string"}},
        "required": ["word"],
    }

    async def invoke(self, arguments: dict[str, Any]) -> str:
        return str(arguments["word"]).upper() + "!"


@tool(outputs=["summary"])
async def summarise_in_tool(text: str, *, context: Any) -> dict[str, str]:
    summary, _ = await context.llm().chat(f"summarise: {text}")
    return {"summary": summary}


@graph_fn(name="llm_tool_kinds", outputs=["text", "summary"])
async def llm_tool_kinds(*, context: Any) -> dict[str, Any]:
    text, _ = await context.llm().chat("look up and shout", tools=[llm_child_lookup, Shout()])
    summary = await summarise_in_tool(text="a long text")
    return {"text": text, "summary": summary["summary"]}


async def test_graph_functions_and_tool_objects_serve_as_tools(runtime: ProcessHost, model: FakeOpenAI) -> None:
    model.script(
        Reply.parallel_tool_calls(ToolCall("llm_child_lookup", {"term": "mtbf"}), ToolCall("shout", {"word": "hi"})),
        Reply.text("MTBF, HI!"),
        Reply.text("short"),
    )
    rid = run_id()
    outputs = await aethergraph.run_async(llm_tool_kinds, {}, run_id=rid)
    assert outputs == {"text": "MTBF, HI!", "summary": "short"}
    results = [m["content"] for m in model.calls[1].body["messages"] if m["role"] == "tool"]
    assert json.loads(results[0]) == {"found": "MTBF"} and results[1] == "HI!"
    assert model.calls[0].body["tools"][0]["function"]["description"] == "Look a term up in the glossary."
    chain = await chain_of(runtime, rid)
    [in_tool] = [e for e in of_type(chain, ev.LlmCalled) if e.node_id != "root"]
    assert in_tool.node_id.startswith("summarise_in_tool")


def test_a_plain_function_is_refused_as_a_tool_with_the_fix() -> None:
    from aethergraph.core.context.llm_tools import chat_tools

    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="decorate the function with @tool"):
        chat_tools([plain])


async def test_registering_a_profile_again_takes_effect_for_the_next_call(runtime: ProcessHost) -> None:
    with FakeOpenAI() as first, FakeOpenAI() as second:
        try:
            for server in (first, second):
                register_llm_client("swap", base_url=server.base_url, api_key=server.api_key, model="m")
                assert await aethergraph.run_async(llm_profile, {"profile": "swap"}) == {"text": "echo: hello"}
        finally:
            unregister_llm_client("swap")
        assert first.call_count("chat") == 1 == second.call_count("chat")


# --- offline replay against changed code ------------------------------------------------------------------------


@graph_fn(name="llm_three_turns", outputs=["answers"])
async def llm_three_turns_reworded(*, context: Any) -> dict[str, Any]:
    answers = []
    for question in ("one", "TWO", "three"):  # the change: another prompt in the second turn
        text, _ = await context.llm().chat(question)
        answers.append(text)
    return {"answers": answers}


async def test_offline_replay_needs_no_model_and_names_a_changed_prompt(
    runtime: ProcessHost, model: FakeOpenAI
) -> None:
    rid = run_id()
    await aethergraph.run_async(llm_three_turns, {}, run_id=rid)
    journal = [record.event for record in await read_events(runtime, rid)]
    calls = len(model.calls)
    result = await replay_async(journal, llm_three_turns)
    assert result.outcome == "completed" and len(model.calls) == calls
    with pytest.raises(NonDeterminismError, match=r"llm\('default'\)\.chat\(\)"):
        await replay_async(journal, llm_three_turns_reworded)


async def test_a_missing_api_key_is_the_calls_failure_naming_the_variables(
    runtime: ProcessHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    register_llm_client("keyless", model="gpt-any")  # OpenAI's endpoint, and no key anywhere
    try:
        rid = run_id()
        with pytest.raises(LLMConfigError) as info:
            await aethergraph.run_async(llm_profile, {"profile": "keyless"}, run_id=rid)
    finally:
        unregister_llm_client("keyless")
    message = str(info.value)
    assert "AETHERGRAPH_LLM__PROFILES__KEYLESS__API_KEY" in message and "OPENAI_API_KEY" in message
    [failed] = of_type(await chain_of(runtime, rid), ev.LlmFailed)
    assert failed.error_type == "aethergraph.errors.LLMConfigError" and failed.profile == "keyless"


async def test_without_the_openai_sdk_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from aethergraph.core.settings import LLMProfile
    from aethergraph.services.llm import OpenAIModelPort

    monkeypatch.setitem(sys.modules, "openai", None)  # as on a machine without the [llm] extra
    port = OpenAIModelPort(LLMSettings(default=LLMProfile(model="m", base_url="http://127.0.0.1:9/v1")))
    with pytest.raises(LLMConfigError, match=r"pip install 'aethergraph\[llm\]'"):
        port.endpoint("default")
