"""Model calls across kill -9: a committed call is never made again, a streamed call is recorded once, whole.

A driver process runs a graph against the fake model server (in this test
process, real HTTP on loopback) and is killed with SIGKILL; a worker in
another process takes the run over (by lease) and finishes it. The fake
server's request log says how often the model was really called.
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
from helpers import chain_of, subprocess_env, wait_until, worker_process

import aethergraph
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost
from aethergraph.testing import FakeOpenAI, Reply

pytestmark = pytest.mark.slow

GRAPHS = Path(__file__).resolve().parent / "procs" / "llm_graphs.py"
SAFETY_S = 60  # an upper bound for anything to happen, never a measurement

START_AND_DRIVE = """
import asyncio, json, sys
import aethergraph

async def main():
    handle = await aethergraph.start_run(sys.argv[1], json.loads(sys.argv[2]), run_id=sys.argv[3])
    print("started", flush=True)
    await handle.result(timeout=600)

asyncio.run(main())
"""


def model_env(fake: FakeOpenAI, root: Path, name: str) -> dict[str, str]:
    return subprocess_env(
        AETHERGRAPH_WORKSPACE=str(root / f"host-{name}"),
        AETHERGRAPH_WORKER_ID=f"llm-{name}-{os.urandom(3).hex()}",
        AETHERGRAPH_CONSOLE_INPUT="never",
        # Longer than the default 1 s, so that a loaded machine does not take the run over before the kill.
        AETHERGRAPH_LEASE_S="3",
        AETHERGRAPH_LLM__DEFAULT__BASE_URL=fake.base_url,
        AETHERGRAPH_LLM__DEFAULT__MODEL="fake-model",
        AETHERGRAPH_LLM__DEFAULT__API_KEY=fake.api_key,
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def worker(fake: FakeOpenAI, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``aethergraph worker tests/procs/llm_graphs.py``: takes over runs whose driver died."""
    with worker_process(GRAPHS, model_env(fake, tmp_path, "worker"), tmp_path / "worker.log") as proc:
        yield proc


def start_driver(
    fake: FakeOpenAI, root: Path, graph: str, inputs: dict[str, object], run_id: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", START_AND_DRIVE, f"{GRAPHS}:{graph}", json.dumps(inputs), run_id],
        env=model_env(fake, root, "driver"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=SAFETY_S)


def asked(fake: FakeOpenAI, question: str) -> int:
    """Requests (every attempt, answered or not) whose last message asks ``question``."""
    return sum(
        1
        for call in fake.calls
        if call.kind == "chat" and call.body and call.body["messages"][-1]["content"] == question
    )


async def test_a_model_call_committed_before_a_kill_is_not_made_again(
    runtime: ProcessHost, fake: FakeOpenAI, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    fake.reset()
    flag = str(tmp_path / "go")
    run_id = f"llmk{os.urandom(6).hex()}"
    driver = start_driver(fake, tmp_path, "llm_two_calls", {"flag": flag}, run_id)
    try:
        marker = Path(flag + ".committed")
        wait_until(lambda: marker.exists() or None, timeout_s=SAFETY_S, what="the first call")
        kill(driver)  # after llm.returned was committed, before the next step
        assert marker.read_text() == str(driver.pid), "the run was taken over before the kill"  # noqa: ASYNC240
    finally:
        if driver.poll() is None:
            kill(driver)
    Path(flag).touch()  # noqa: ASYNC240 - a marker file, instant
    outputs = await (await aethergraph.get_run(run_id)).result(timeout=SAFETY_S)
    assert outputs == {"first": "echo: first question", "second": "echo: second question"}
    assert asked(fake, "first question") == 1 and asked(fake, "second question") == 1
    chain = await chain_of(runtime, run_id)
    assert len([e for e in chain if isinstance(e, ev.LlmReturned)]) == 2
    assert any(isinstance(e, ev.RunClaimed) and e.reason == "takeover" for e in chain)


async def test_a_stream_killed_midway_is_recorded_once_and_whole(
    runtime: ProcessHost, fake: FakeOpenAI, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    fake.reset()
    story = " ".join(f"word{i}" for i in range(40))
    fake.script(Reply.text(story, stream_delay=0.1), Reply.text(story))
    run_id = f"llms{os.urandom(6).hex()}"
    driver = start_driver(fake, tmp_path, "llm_streamed", {}, run_id)
    try:
        wait_until(lambda: fake.calls or None, timeout_s=SAFETY_S, what="the streamed call to start")
        kill(driver)  # mid-stream: the first answer takes about 4 s to stream
    finally:
        if driver.poll() is None:
            kill(driver)
    outputs = await (await aethergraph.get_run(run_id)).result(timeout=SAFETY_S)
    assert outputs["text"] == story
    [first, second] = fake.calls
    assert not first.completed and second.completed  # the killed stream never finished; the retry did
    assert first.idempotency_key == second.idempotency_key  # made again under the same step
    chain = await chain_of(runtime, run_id)
    called = [e for e in chain if isinstance(e, ev.LlmCalled)]
    returned = [e for e in chain if isinstance(e, ev.LlmReturned)]
    assert len(called) == 1 and len(returned) == 1 and returned[0].response["content"] == story
