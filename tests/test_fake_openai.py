"""The fake OpenAI-compatible server, driven by the real ``openai`` SDK over real loopback HTTP."""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from aethergraph.testing import FakeOpenAI, Reply, ToolCall, Usage
from tests.helpers import REPO_ROOT, run_python, stop_process, subprocess_env, wait_until

USER = [{"role": "user", "content": "What is the weather in Paris today?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)
    yield client
    await client.close()


async def test_plain_chat_answers_the_script_in_order_then_echoes(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.script(Reply.text("Sunny and warm."), Reply.text("cut", finish_reason="length", usage=Usage(7, 1, 3, 2)))
    first = await client.chat.completions.create(model="my-model", messages=USER)
    assert first.choices[0].message.content == "Sunny and warm."
    assert first.choices[0].finish_reason == "stop" and first.model == "my-model"
    assert first.usage is not None and (first.usage.prompt_tokens, first.usage.completion_tokens) == (7, 3)
    second = await client.chat.completions.create(model="my-model", messages=USER)
    assert second.choices[0].finish_reason == "length"
    usage = second.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 1, 8)
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 3
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 2
    assert fake.pending() == 0
    echoed = await client.chat.completions.create(model="m", messages=[*USER, {"role": "user", "content": "And Rome?"}])
    assert echoed.choices[0].message.content == "echo: And Rome?"
    assert fake.call_count("chat") == 3
    assert [call.seq for call in fake.calls] == [1, 2, 3] and first.id == "chatcmpl-fake-1"


async def test_streamed_chat_sends_word_deltas_and_a_usage_chunk(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    text = "Pack a light jacket and an umbrella."
    fake.script(Reply.text(text))
    stream = await client.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    deltas: list[str] = []
    finish: list[str | None] = []
    usages = []
    async for chunk in stream:
        if chunk.choices:
            deltas += [chunk.choices[0].delta.content] if chunk.choices[0].delta.content else []
            finish.append(chunk.choices[0].finish_reason)
        else:
            usages.append(chunk.usage)
    assert "".join(deltas) == text and len(deltas) == len(text.split())
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    assert len(usages) == 1 and usages[0] is not None
    assert (usages[0].prompt_tokens, usages[0].completion_tokens) == (7, 7)
    (call,) = fake.calls
    assert call.stream and call.status == 200 and call.completed
    # Without include_usage no usage chunk is sent.
    plain = await client.chat.completions.create(model="m", messages=USER, stream=True)
    chunks = [chunk async for chunk in plain]
    assert chunks and all(chunk.choices and chunk.usage is None for chunk in chunks)


async def test_tool_calls_plain_and_streamed(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    calls = (ToolCall("weather", {"city": "Paris", "days": 3}), ToolCall("clock", {}, id="call_mine"))
    fake.script(Reply.tool_call("weather", {"city": "Paris"}), Reply.parallel_tool_calls(*calls))
    plain = await client.chat.completions.create(model="m", messages=USER)
    assert plain.choices[0].finish_reason == "tool_calls"
    (tool_call,) = plain.choices[0].message.tool_calls or []
    assert tool_call.type == "function" and tool_call.id == "call_fake_1_0"
    assert (tool_call.function.name, json.loads(tool_call.function.arguments)) == ("weather", {"city": "Paris"})
    # The SDK's stream helper assembles the tool-call deltas into the final message.
    async with client.chat.completions.stream(model="m", messages=USER) as stream:
        streamed = await stream.get_final_completion()
    assert streamed.choices[0].finish_reason == "tool_calls"
    message = streamed.choices[0].message
    assembled = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
    assert assembled == [("call_fake_2_0", "weather", {"city": "Paris", "days": 3}), ("call_mine", "clock", {})]
    assert fake.calls[1].stream and fake.calls[1].completed


async def test_json_reply_is_a_json_document(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    document = {"city": "Paris", "temperatures": [21.5, 23], "rain": False}
    fake.script(Reply.json(document))
    reply = await client.chat.completions.create(model="m", messages=USER, response_format={"type": "json_object"})
    assert json.loads(reply.choices[0].message.content or "") == document
    assert fake.calls[0].body["response_format"] == {"type": "json_object"}


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_embeddings_are_deterministic_unit_vectors_near_for_shared_words(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    texts = ["The red apple pie", "a RED apple", "quantum tunnelling of electrons"]
    # The SDK asks for base64 unless told otherwise; both encodings give the same vectors.
    as_base64 = await client.embeddings.create(model="e", input=texts)
    as_floats = await client.embeddings.create(model="e", input=texts, encoding_format="float")
    vectors = [item.embedding for item in as_base64.data]
    assert [item.index for item in as_base64.data] == [0, 1, 2] and all(len(v) == 64 for v in vectors)
    for vector, exact in zip(vectors, (item.embedding for item in as_floats.data), strict=True):
        assert math.isclose(math.sqrt(sum(x * x for x in exact)), 1.0, rel_tol=1e-9)
        assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(vector, exact, strict=True))
    assert _cosine(vectors[0], vectors[1]) > 0.5 > _cosine(vectors[0], vectors[2])
    assert as_base64.usage.prompt_tokens == 4 + 3 + 4 and as_base64.usage.total_tokens == 11
    single = await client.embeddings.create(model="e", input="a red apple", dimensions=16, encoding_format="float")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 16
    again = await client.embeddings.create(model="e", input="a red apple", dimensions=16, encoding_format="float")
    assert again.data[0].embedding == single.data[0].embedding
    assert fake.call_count("embeddings") == 4 and fake.call_count("chat") == 0


async def test_models_lists_the_configured_names(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [model.id for model in models.data] == ["fake-model", "fake-embedding"]


async def test_a_request_without_the_key_gets_401(fake: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            await wrong.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert caught.value.body is not None
    (call,) = fake.calls
    assert call.status == 401 and call.authorization == "Bearer sk-wrong"
    assert fake.call_count("chat") == 0 and fake.call_count("chat", all_attempts=True) == 1


def test_a_request_with_no_authorization_header_gets_401(fake: FakeOpenAI) -> None:
    request = urllib.request.Request(f"{fake.base_url}/models")
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(request, timeout=30)
    assert http_error.value.code == 401
    assert json.loads(http_error.value.read())["error"]["type"] == "invalid_request_error"


async def test_injected_429_carries_retry_after_and_the_next_call_succeeds(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script(Reply.failure(429, retry_after=2.5), Reply.text("finally"))
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 429 and caught.value.response.headers["retry-after"] == "2.5"
    assert caught.value.code == "rate_limit_exceeded"
    reply = await client.chat.completions.create(model="m", messages=USER)
    assert reply.choices[0].message.content == "finally"
    assert [call.status for call in fake.calls] == [429, 200]
    assert fake.call_count("chat") == 1 and fake.call_count("chat", all_attempts=True) == 2


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(500, openai.InternalServerError), (503, openai.InternalServerError), (408, openai.APIStatusError)],
)
async def test_injected_server_failures(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, status: int, error_class: type[openai.APIStatusError]
) -> None:
    fake.script(Reply.failure(status, message=f"planted {status}"))
    with pytest.raises(error_class) as caught:
        await client.chat.completions.create(model="m", messages=USER, stream=True)
    assert caught.value.status_code == status and caught.value.message.endswith(f"planted {status}")
    assert "retry-after" not in caught.value.response.headers
    fake.script_embeddings(Reply.failure(status))
    with pytest.raises(error_class):
        await client.embeddings.create(model="e", input="text")
    assert (await client.embeddings.create(model="e", input="text")).data
    assert fake.call_count("embeddings") == 1 and fake.call_count("embeddings", all_attempts=True) == 2
    with pytest.raises(ValueError, match=r"only Reply\.failure"):
        fake.script_embeddings(Reply.text("vectors are computed"))


async def test_headers_are_recorded_with_the_idempotency_key(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="m", messages=USER, extra_headers={"Idempotency-Key": "run-1:n_1:7"})
    await client.embeddings.create(model="e", input="x", extra_headers={"Idempotency-Key": "run-1:n_1:8"})
    chat, embed = fake.calls
    assert (chat.kind, chat.idempotency_key, embed.kind, embed.idempotency_key) == (
        "chat",
        "run-1:n_1:7",
        "embeddings",
        "run-1:n_1:8",
    )
    assert chat.authorization == f"Bearer {fake.api_key}" and chat.headers["content-type"] == "application/json"
    assert chat.path == "/v1/chat/completions" and chat.method == "POST" and chat.body["messages"] == USER


async def test_responder_answers_an_empty_script_and_its_errors_are_500s(fake: FakeOpenAI) -> None:
    def responder(body: dict[str, Any]) -> Reply | str:
        if body["messages"][-1]["content"] == "boom":
            raise RuntimeError("no answer for boom")
        return Reply.tool_call("lookup", {"q": body["messages"][-1]["content"]}) if body.get("tools") else "plain"

    custom = FakeOpenAI(responder=responder)
    async with custom, openai.AsyncOpenAI(base_url=custom.base_url, api_key=custom.api_key, max_retries=0) as client:
        plain = await client.chat.completions.create(model="m", messages=USER)
        assert plain.choices[0].message.content == "plain"
        tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        called = await client.chat.completions.create(model="m", messages=USER, tools=[tool])  # type: ignore[list-item]
        (lookup,) = called.choices[0].message.tool_calls or []
        assert json.loads(lookup.function.arguments) == {"q": USER[0]["content"]}
        with pytest.raises(openai.InternalServerError, match="RuntimeError: no answer for boom"):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "boom"}])
        assert custom.call_count("chat") == 2


async def test_bad_requests_are_answered_in_openais_error_shape(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="non-empty `messages`"):
        await client.chat.completions.create(model="m", messages=[])
    with pytest.raises(openai.BadRequestError, match="list of strings"):
        await client.embeddings.create(model="e", input=[[1, 2, 3]])
    with pytest.raises(openai.NotFoundError, match="Unknown request URL: POST /v1/responses"):
        await client.responses.create(model="m", input="hi")
    assert [(c.kind, c.status) for c in fake.calls] == [("chat", 400), ("embeddings", 400), ("other", 404)]


async def test_reset_forgets_the_log_and_the_script(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.script("one", "two")
    await client.chat.completions.create(model="m", messages=USER)
    assert fake.pending() == 1 and len(fake.calls) == 1
    fake.reset()
    assert fake.pending() == 0 and fake.calls == [] and fake.call_count("chat", all_attempts=True) == 0
    reply = await client.chat.completions.create(model="m", messages=USER)
    assert reply.choices[0].message.content == f"echo: {USER[0]['content']}" and reply.id == "chatcmpl-fake-1"


def test_answers_are_not_held_back_by_nagle(fake: FakeOpenAI) -> None:
    """Accepted connections have TCP_NODELAY: without it each answer waits ~40 ms for a delayed ACK."""
    with socket.create_connection(("127.0.0.1", fake.port), timeout=30) as connection:
        connection.sendall(
            f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fake.api_key}\r\n\r\n".encode()
        )
        assert connection.recv(65536).startswith(b"HTTP/1.1 200")
        assert fake._server is not None  # the uvicorn server, to look at the socket it accepted
        (served,) = fake._server.server_state.connections
        accepted = served.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_reply_validation_names_the_fix() -> None:
    with pytest.raises(ValueError, match="needs content or tool calls"):
        Reply()
    with pytest.raises(ValueError, match=r"400\.\.599"):
        Reply.failure(200)
    with pytest.raises(ValueError, match="not negative"):
        Reply.text("x", stream_delay=-1)
    with pytest.raises(ValueError, match="at least one ToolCall"):
        Reply.parallel_tool_calls()
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeOpenAI().base_url


# A worker in another process: two chat calls (one streamed) and one embedding call, then prints what it got.
OTHER_PROCESS = """
import json, sys
import openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
text = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                      extra_headers={"Idempotency-Key": "other-process"})
pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
    model="m", messages=[{"role": "user", "content": "stream me"}], stream=True) if c.choices]
vector = client.embeddings.create(model="e", input="hello world").data[0].embedding
print(json.dumps([text.choices[0].message.content, "".join(pieces), len(vector)]))
"""


def test_workers_in_other_processes_share_the_server(fake: FakeOpenAI) -> None:
    fake.script("scripted for the other process")
    result = run_python(OTHER_PROCESS, fake.base_url, fake.api_key)
    assert result == ["scripted for the other process", "echo: stream me", 64]
    assert fake.call_count("chat") == 2 and fake.call_count("embeddings") == 1
    assert fake.calls[0].idempotency_key == "other-process" and fake.calls[1].completed


# Streams a long slow answer, printing each delta as it arrives (the test kills it mid-stream).
SLOW_STREAM = """
import sys
import openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "go"}], stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, flush=True)
"""


def test_a_worker_killed_mid_stream_leaves_an_incomplete_record(fake: FakeOpenAI) -> None:
    fake.script(Reply.text(" ".join(f"word{i}" for i in range(400)), stream_delay=0.05))
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_STREAM, fake.base_url, fake.api_key],
        stdout=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"word0"  # the stream has begun
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop_process(process)
    (call,) = fake.calls
    assert call.status == 200 and not call.completed
    assert fake.call_count("chat") == 1  # it was answered 200, though never read to the end
    fake.script("after the kill")
    with openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0) as client:
        assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == "after the kill"


def test_importing_the_testing_package_does_not_import_the_server() -> None:
    script = "import json, sys, aethergraph.testing as t; print(json.dumps(['starlette' in sys.modules, "
    script += "'uvicorn' in sys.modules, t.Reply.text('x').content, 'uvicorn' in sys.modules]))"
    assert run_python(script) == [False, False, "x", False]


def test_the_command_line_server_answers_with_the_echo_responder() -> None:
    command = [sys.executable, "-m", "aethergraph.testing.fake_openai", "--port", "0", "--api-key", "sk-cli"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().split("base_url:", 1)[1].strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
        assert process.stdout.readline().split()[-1] == "sk-cli"
        with openai.OpenAI(base_url=base_url, api_key="sk-cli", max_retries=0) as client:
            answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        assert answer.choices[0].message.content == "echo: ping"
        process.send_signal(signal.SIGINT)
        assert wait_until(process.poll, timeout_s=30, what="the fake server to exit on Ctrl-C") == 0
    finally:
        stop_process(process)


# Runs the python example of docs/testing.md's fake-server section in a fresh process (its own runtime
# and model profiles), as a user's test file would.
DOC_EXAMPLE = """
import asyncio, json, re, sys
import aethergraph
text = open(sys.argv[1]).read()
section = text.split("## Testing agents offline with the fake model server", 1)[1].split("\\n## ", 1)[0]
(block,) = re.findall(r"```python\\n(.*?)```", section, flags=re.S)
namespace = {"__name__": "docs_example"}
exec(compile(block, "docs/testing.md", "exec"), namespace)
tests = [value for name, value in namespace.items() if name.startswith("test_")]

async def main():
    try:
        for test in tests:
            await test()
    finally:
        await aethergraph.close_runtime()

asyncio.run(main())
print(json.dumps([test.__name__ for test in tests]))
"""


def test_the_documented_example_runs() -> None:
    ran = run_python(DOC_EXAMPLE, str(REPO_ROOT / "docs" / "testing.md"))
    assert ran == ["test_packing_advice_asks_the_weather_once"]
