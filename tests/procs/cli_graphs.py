"""Graphs for tests/test_cli_everyday.py, run by ``aethergraph`` subprocesses.

``cg_chatty`` writes to every place a run can write to (channel message, log
line, a tool's own ``print``); ``cg_failing`` fails two calls deep inside a
tool, so its traceback names ``cg_check_positive``; ``cg_asking`` waits for a
review (durably: a ``run`` without a terminal leaves it waiting).
"""

from __future__ import annotations

from typing import Any

from aethergraph import NodeContext, Wait, graph_fn, tool

REVIEW_SCHEMA = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}


@tool(name="cg_shout", outputs=["v"])
def cg_shout(x: int) -> dict[str, Any]:
    print(f"printed by the tool: {x}")
    return {"v": x * 2}


@graph_fn(name="cg_chatty", outputs=["y", "note"])
async def cg_chatty(x: int, *, context: NodeContext) -> dict[str, Any]:
    await context.channel().send_text(f"a channel message: x is {x}")
    context.logger().info("a log line of the run")
    shouted = await cg_shout(x)
    return {"y": shouted["v"], "note": "done"}


def cg_check_positive(x: int) -> int:
    if x < 0:
        raise ValueError(f"x must not be negative, got {x}")
    return x


@tool(name="cg_deep", outputs=["v"])
def cg_deep(x: int) -> dict[str, Any]:
    return {"v": cg_check_positive(x) + 1}


@graph_fn(name="cg_failing", outputs=["v"])
async def cg_failing(x: int, *, context: NodeContext) -> dict[str, Any]:
    out = await cg_deep(x)
    return {"v": out["v"]}


@graph_fn(name="cg_asking", outputs=["answer"])
async def cg_asking(topic: str, *, context: NodeContext) -> dict[str, Any]:
    answer = await context.wait(Wait(kind="review", prompt=f"review {topic}", schema=REVIEW_SCHEMA))
    return {"answer": answer}
