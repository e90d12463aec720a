"""Graphs for tests/test_terminal.py, run by ``aethergraph run`` under a pseudo-terminal (and served by its worker)."""

from __future__ import annotations

import asyncio

from aethergraph import graph_fn, graphify, tool


@tool(name="tt_double", outputs=["y"])
async def tt_double(x: int) -> dict:
    return {"y": 2 * x}


@tool(name="tt_slow", outputs=["y"])
async def tt_slow(x: int, pause_s: float) -> dict:
    """Doubles ``x`` after ``pause_s`` seconds, so that a run lasts long enough to be watched."""
    await asyncio.sleep(pause_s)
    return {"y": 2 * x}


@graph_fn(name="tt_ask", outputs=["name", "ok"])
async def tt_ask(*, context):  # type: ignore[no-untyped-def]
    """One step, then a question and an approval on the console."""
    await tt_double(1)
    name = await context.channel().ask_text("Your name?")
    decision = await context.channel().ask_approval(f"Ship it, {name}?")
    return {"name": name, "ok": decision["approved"]}


@graph_fn(name="tt_steps", outputs=["total"])
async def tt_steps(n: int, pause_s: float, *, context):  # type: ignore[no-untyped-def]
    """``n`` slow steps in a row."""
    total = 0
    for i in range(n):
        total += (await tt_slow(i, pause_s))["y"]
    return {"total": total}


@graphify(name="tt_chain", inputs=["pause_s"], outputs=["y"])
def tt_chain(pause_s):  # type: ignore[no-untyped-def]
    """A static graph of four slow nodes in a row."""
    a = tt_slow(x=1, pause_s=pause_s)
    b = tt_slow(x=a.y, pause_s=pause_s)
    c = tt_slow(x=b.y, pause_s=pause_s)
    return {"y": tt_slow(x=c.y, pause_s=pause_s).y}
