"""The README's example agent (examples/agent.py), through the CLI, against the fake model server.

``aethergraph run`` calls the model (which calls the hall_temperature tool),
then waits for approval and exits 3; ``aethergraph resume --approve`` hands
the answer to a worker process (``aethergraph worker examples/agent.py``),
which continues the run without making either model call again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import subprocess_env, worker_process

from aethergraph.testing import FakeOpenAI, Reply

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SAFETY_S = 90  # an upper bound for anything to happen, never a measurement


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def agent_env(fake: FakeOpenAI, workspace: Path) -> dict[str, str]:
    return subprocess_env(
        AETHERGRAPH_WORKSPACE=str(workspace),
        AETHERGRAPH_CONSOLE_INPUT="never",
        AETHERGRAPH_LLM__DEFAULT__BASE_URL=fake.base_url,
        AETHERGRAPH_LLM__DEFAULT__MODEL="fake-model",
        AETHERGRAPH_LLM__DEFAULT__API_KEY=fake.api_key,
    )


def cli(fake: FakeOpenAI, workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aethergraph", *args],
        cwd=ROOT,
        env=agent_env(fake, workspace),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SAFETY_S,
        check=False,
    )


def test_the_example_agent_calls_a_tool_waits_for_approval_and_finishes(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.script(Reply.tool_call("hall_temperature", {"hall": "B"}), Reply.text("Hall B is 24 C: too warm."))
    run_id = f"agent{os.urandom(5).hex()}"
    waiting = cli(fake, tmp_path, "run", "examples/agent.py:hall_agent", "-i", "question=Is hall B too warm?",
                  "--run-id", run_id)  # fmt: skip
    assert waiting.returncode == 3, waiting.stderr
    assert f"aethergraph resume {run_id}" in waiting.stderr

    with worker_process("examples/agent.py", agent_env(fake, tmp_path), tmp_path / "worker.log", cwd=ROOT):
        resumed = cli(fake, tmp_path, "resume", run_id, "--approve", "--timeout", str(SAFETY_S))
        assert resumed.returncode == 0, resumed.stderr + resumed.stdout
        followed = cli(fake, tmp_path, "events", run_id, "--follow", "--json")  # ends when the run ends
    result = cli(fake, tmp_path, "result", run_id, "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    assert json.loads(result.stdout)["outputs"] == {"answer": "Hall B is 24 C: too warm.", "approved": True}

    assert fake.call_count("chat", all_attempts=True) == 2  # the resumed run replayed both model turns
    tool_message = fake.calls[1].body["messages"][-1]
    assert tool_message["role"] == "tool" and json.loads(tool_message["content"]) == {"celsius": 24.0}
    types = [json.loads(line)["type"] for line in followed.stdout.splitlines()]
    assert types.count("llm.called") == 2 and types.count("tool.called") == 1 and types[-1] == "run.completed"
