"""Graphs of the model-call tests that run in other processes (tests/test_llm_processes.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from aethergraph import graph_fn


async def _until(flag: str) -> None:
    """Hold the body (no step is taken) until the test creates ``flag``."""
    while not Path(flag).exists():  # noqa: ASYNC110, ASYNC240 - another process creates it
        await asyncio.sleep(0.02)


@graph_fn(name="llm_two_calls", outputs=["first", "second"])
async def llm_two_calls(flag: str, *, context: Any) -> dict[str, Any]:
    first, _ = await context.llm().chat("first question")
    # Written by the process whose call was committed.
    Path(flag + ".committed").write_text(str(os.getpid()))  # noqa: ASYNC240
    await _until(flag)
    second, _ = await context.llm().chat("second question")
    return {"first": first, "second": second}


@graph_fn(name="llm_streamed", outputs=["text", "deltas"])
async def llm_streamed(*, context: Any) -> dict[str, Any]:
    pieces: list[str] = []
    text, _ = await context.llm().chat_stream("tell a long story", on_delta=pieces.append)
    return {"text": text, "deltas": len(pieces)}
