"""AetherGraph's graphs for the peer workloads, in a module of their own so a worker can import them by name.

``python -m aethergraph worker ag_graphs`` (or ``serve_worker("ag_graphs")``)
serves them; the workload script imports the same module, so the graphs
register once under the same names in every process.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import peer_common as pc

from aethergraph import NodeContext, Wait, graph_fn, graphify, tool

# W1 sets this to a list: the wall time of every ``await peer_incr(x)`` inside the graph, in nanoseconds.
STEP_SAMPLES: list[int] | None = None


@tool(name="peer_incr", outputs=["value"])
def peer_incr(x: int) -> int:
    return x + 1


@tool(name="peer_sum", outputs=["value"])
def peer_sum(values: list[int]) -> int:
    return sum(values)


@tool(name="peer_traced_incr", outputs=["value"])
def peer_traced_incr(x: int) -> int:
    pc.side_step(x + 1)
    return x + 1


@graph_fn(name="peer_chain", outputs=["value"])
async def peer_chain(steps: int) -> dict[str, int]:
    """W1/W3: ``steps`` sequential journaled steps."""
    x = 0
    samples = STEP_SAMPLES
    for _ in range(steps):
        started = time.perf_counter_ns()
        x = (await peer_incr(x))["value"]
        if samples is not None:
            samples.append(time.perf_counter_ns() - started)
    return {"value": x}


@graph_fn(name="peer_fanout", outputs=["value"])
async def peer_fanout(width: int) -> dict[str, int]:
    """W2: ``width`` steps in parallel, then a reduce step over their outputs."""
    outputs = await asyncio.gather(*(peer_incr(i) for i in range(width)))
    total = await peer_sum([out["value"] for out in outputs])
    return {"value": total["value"]}


_STATIC_FANOUTS: dict[int, Any] = {}


def peer_fanout_static(width: int) -> Any:
    """W2 as a ``@graphify`` static graph of ``width`` nodes without dependencies and a reduce node.

    A static graph's shape is fixed when it is built, so there is one graph per width
    (``peer_fanout_static_<width>``), built on first use.
    """
    if width not in _STATIC_FANOUTS:

        @graphify(name=f"peer_fanout_static_{width}", inputs=[], outputs=["value"])
        def fanout():  # type: ignore[no-untyped-def]
            outputs = [peer_incr(x=i) for i in range(width)]
            return {"value": peer_sum(values=[out.value for out in outputs]).value}

        _STATIC_FANOUTS[width] = fanout
    return _STATIC_FANOUTS[width]


@graph_fn(name="peer_wait", outputs=["value"])
async def peer_wait(*, context: NodeContext) -> dict[str, int]:
    """W4: suspend on an external event (a durable wait), then one step with the answer."""
    answer = await context.wait(Wait(kind="peer-bench", prompt="resume me"))
    return {"value": (await peer_incr(int(answer)))["value"]}


@graph_fn(name="peer_traced_chain", outputs=["value"])
async def peer_traced_chain(steps: int) -> dict[str, int]:
    """W5: like ``peer_chain``, each execution of a step recorded in the side file."""
    x = 0
    for _ in range(steps):
        x = (await peer_traced_incr(x))["value"]
    return {"value": x}
