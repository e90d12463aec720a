"""The graph behind benchmarks/bench_viewer.py: a long graph_fn run, served by ``aethergraph dev``.

``bench_viewer_long`` journals three events per iteration (a log line, a tool call and its return), so
``n=3332`` makes a run of 10,000 events.
"""

from __future__ import annotations

from typing import Any

from aethergraph import NodeContext, graph_fn, tool


@tool(name="bench_viewer_step", outputs=["v"])
def bench_viewer_step(i: int) -> dict[str, Any]:
    return {"v": i * 2}


@graph_fn(name="bench_viewer_long", outputs=["count"])
async def bench_viewer_long(n: int, *, context: NodeContext) -> dict[str, Any]:
    for index in range(n):
        context.logger().info(f"step {index} of {n}")
        await bench_viewer_step(index)
    return {"count": n}
