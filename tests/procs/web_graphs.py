"""Graphs for tests/test_server_api.py, served by ``aethergraph serve``/``dev``/``worker`` subprocesses.

``web_asking`` waits for a review whose payload must match ``REVIEW_SCHEMA``;
``web_counting`` logs ``n`` lines (one event each) and returns their count;
``web_failing`` fails inside a tool; ``web_static`` is a two-node static graph; ``web_parent``
runs ``web_counting`` as its child run; ``web_saving`` saves an artifact; ``web_retry`` fails until
the file ``flag`` exists (for retries).
"""

from __future__ import annotations

import os
from typing import Any

from aethergraph import NodeContext, Wait, graph_fn, graphify, tool

REVIEW_SCHEMA = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}


@tool(name="web_double", outputs=["v"])
def web_double(x: int) -> dict[str, Any]:
    return {"v": x * 2}


@tool(name="web_explode", outputs=["v"])
def web_explode(x: int) -> dict[str, Any]:
    raise ValueError(f"web_explode refuses {x}")


@graph_fn(name="web_asking", outputs=["answer", "doubled"])
async def web_asking(topic: str, *, context: NodeContext) -> dict[str, Any]:
    doubled = await web_double(len(topic))
    answer = await context.wait(Wait(kind="review", prompt=f"review {topic}", schema=REVIEW_SCHEMA))
    return {"answer": answer, "doubled": doubled["v"]}


@graph_fn(name="web_counting", outputs=["count"])
async def web_counting(n: int, *, context: NodeContext) -> dict[str, Any]:
    for index in range(n):
        context.logger().info(f"line {index}")
        await web_double(index)
    return {"count": n}


@graph_fn(name="web_failing", outputs=["v"])
async def web_failing(x: int, *, context: NodeContext) -> dict[str, Any]:
    return {"v": (await web_explode(x))["v"]}


@graphify(name="web_static", inputs=["x"], outputs=["y"])
def web_static(x: Any) -> dict[str, Any]:
    first = web_double(x=x)
    second = web_double(x=first.v)
    return {"y": second.v}


@graph_fn(name="web_parent", outputs=["count"])
async def web_parent(n: int, *, context: NodeContext) -> dict[str, Any]:
    child = await web_counting(n)
    return {"count": child["count"]}


@graph_fn(name="web_saving", outputs=["id", "uri"])
async def web_saving(text: str, *, context: NodeContext) -> dict[str, Any]:
    saved = await context.artifacts().save_bytes(text.encode(), name="note.txt", mime="text/plain")
    return {"id": saved.id, "uri": saved.uri}


@tool(name="web_flaky", outputs=["v"])
def web_flaky(x: int, flag: str) -> dict[str, Any]:
    if not os.path.exists(flag):
        raise RuntimeError(f"flag file {flag} is missing")
    return {"v": x + 1}


@graphify(name="web_retry", inputs=["x", "flag"], outputs=["y"])
def web_retry(x: Any, flag: Any) -> dict[str, Any]:
    first = web_double(x=x)
    second = web_flaky(x=first.v, flag=flag)
    return {"y": second.v}
