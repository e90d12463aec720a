"""16. Model calls: the journaled call's overhead over a bare ``openai`` call, and a 10-round tool loop.

Both sides call the same fake OpenAI-compatible server (real HTTP on
loopback, in its own process so it does not share the measured process's
interpreter), so the difference is what journaling costs: ``llm.called``
(pipelined) and the committed ``llm.returned``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from aethergraph import Settings, graph_fn, register_llm_client, tool
from aethergraph.core.run.executor import execute_run
from aethergraph.host.process import ProcessHost
from aethergraph.services.llm import unregister_llm_client
from aethergraph.testing import FakeOpenAI, Reply

from .harness import DEFAULT_SYNC, BenchContext, Figure, isolated_server, latency_figure, median, value_figure

NAME = "llm"
TITLE = "16. Model calls (context.llm)"
CALLS = 200
ROUNDS = 10
API_KEY = "sk-fake-benchmark"

_samples: dict[str, list[int]] = {}


@tool(name="bench_lookup", outputs=["value"])
def bench_lookup(key: str) -> dict[str, str]:
    """Look a key up."""
    return {"value": key.upper()}


@graph_fn(name="bench_llm_calls", outputs=["n"])
async def bench_llm_calls(n: int, base_url: str, *, context: Any) -> dict[str, int]:
    """Bare and journaled calls taking turns, so that each pair meets the machine in the same state."""
    import openai

    llm = context.llm()
    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    try:
        for i in range(n):
            started = time.perf_counter_ns()
            await client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": f"question {i}"}]
            )
            _samples.setdefault("bare", []).append(time.perf_counter_ns() - started)
            started = time.perf_counter_ns()
            await llm.chat(f"question {i}")
            _samples.setdefault("journaled", []).append(time.perf_counter_ns() - started)
    finally:
        await client.close()
    return {"n": n}


@graph_fn(name="bench_llm_tool_loop", outputs=["text"])
async def bench_llm_tool_loop(*, context: Any) -> dict[str, str]:
    started = time.perf_counter_ns()
    text, _ = await context.llm().chat("look everything up", tools=[bench_lookup], max_tool_rounds=ROUNDS)
    _samples.setdefault("loop", []).append(time.perf_counter_ns() - started)
    return {"text": text}


@contextlib.contextmanager
def _fake_server_process() -> Iterator[str]:
    """``python -m aethergraph.testing.fake_openai`` on a free loopback port; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aethergraph.testing.fake_openai", "--port", "0", "--api-key", API_KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first.startswith("base_url:"):
            raise RuntimeError(f"the fake model server did not start: {first!r}")
        yield first.split(":", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _measure(ctx: BenchContext, base_url: str, fake: FakeOpenAI) -> list[Figure]:
    repeats = ctx.pick(10, 2)
    loops = ctx.pick(10, 2)
    blocks: dict[str, list[list[int]]] = {"bare": [], "journaled": []}
    with isolated_server(DEFAULT_SYNC) as (server, workspace):
        rt = await ProcessHost.open(Settings(nats_url=server.url, workspace=workspace, sync_interval=DEFAULT_SYNC))
        try:
            register_llm_client("default", base_url=base_url, api_key=API_KEY, model="fake-model")
            ctx.say("warm-up")
            await execute_run(bench_llm_calls.spec, {"n": 20, "base_url": base_url}, env=rt.env)
            for index in range(repeats):
                ctx.say(f"repeat {index + 1}/{repeats}: {CALLS} bare and {CALLS} journaled calls, taking turns")
                _samples.clear()
                await execute_run(bench_llm_calls.spec, {"n": CALLS, "base_url": base_url}, env=rt.env)
                blocks["bare"].append(list(_samples["bare"]))
                blocks["journaled"].append(list(_samples["journaled"]))
            register_llm_client("default", base_url=fake.base_url, api_key=fake.api_key, model="fake-model")
            ctx.say(f"{loops} tool loops of {ROUNDS} rounds (scripted, the fake server on a thread)")
            _samples.clear()
            for _ in range(loops):
                fake.script(*[Reply.tool_call("bench_lookup", {"key": f"k{i}"}) for i in range(ROUNDS)])
                fake.script(Reply.text("done"))
                await execute_run(bench_llm_tool_loop.spec, {}, env=rt.env)
        finally:
            await rt.close()
    overhead = [median(j) / 1e3 - median(b) / 1e3 for j, b in zip(blocks["journaled"], blocks["bare"], strict=True)]
    loop_ms = [sample / 1e6 for sample in _samples["loop"]]
    return [
        latency_figure(
            NAME, "bare_call", "bare `openai` chat call to the fake server", blocks["bare"], sync_interval=None
        ),
        latency_figure(
            NAME,
            "journaled_call",
            f"`await context.llm().chat(...)` in a graph_fn ({CALLS} sequential)",
            blocks["journaled"],
            sync_interval=DEFAULT_SYNC,
            note="llm.called pipelined, llm.returned committed",
        ),
        value_figure(
            NAME,
            "overhead",
            "journaling overhead per model call (journaled p50 - bare p50, paired per repeat)",
            overhead,
            unit="µs",
            per_repeat_n=CALLS,
            better="lower",
            sync_interval=DEFAULT_SYNC,
            note="target <= 300 µs",
        ),
        value_figure(
            NAME,
            "tool_loop",
            f"a {ROUNDS}-round tool loop end to end ({ROUNDS + 1} model turns, {ROUNDS} tool steps)",
            loop_ms,
            unit="ms",
            per_repeat_n=1,
            better="lower",
            sync_interval=DEFAULT_SYNC,
        ),
    ]


async def _run_all(ctx: BenchContext) -> list[Figure]:
    with _fake_server_process() as base_url, FakeOpenAI() as fake:
        try:
            return await _measure(ctx, base_url, fake)
        finally:
            unregister_llm_client("default")


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    figures = asyncio.run(_run_all(ctx))
    notes = [
        "The fake model server (`python -m aethergraph.testing.fake_openai`, its own process) answers at once, "
        "so both figures are dominated by HTTP and the `openai` SDK; the bare call uses the same SDK client "
        "settings (no retries), and the two take turns call by call inside one graph_fn. The overhead is the "
        "median journaled call minus the median bare call of the same repeat.",
        f"The tool loop: the model asks for one `@tool` call per turn for {ROUNDS} turns, then answers; each turn "
        "and each tool call is a journaled step.",
    ]
    return figures, notes
