"""Graphs for tests/test_submit.py, imported by worker subprocesses (and by the test to submit runs).

Every execution of a body appends ``<label> <pid>`` to the count file named by
the ``log`` input, so the tests count executions from outside the processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from aethergraph import graph_fn, graphify, tool


@tool(name="sub_double", outputs=["y"])
async def sub_double(x: int) -> dict:
    return {"y": 2 * x}


@graph_fn(name="sub_sum", outputs=["total"])
async def sub_sum(x: int, label: str, log: str) -> dict:
    """Doubles ``x`` in a step and adds one."""
    with Path(log).open("a") as f:  # noqa: ASYNC230 - a one-line test side effect
        f.write(f"{label} {os.getpid()}\n")
    return {"total": (await sub_double(x))["y"] + 1}


@graphify(name="sub_static", inputs=["x"], outputs=["y"])
def sub_static(x):  # type: ignore[no-untyped-def]
    """A static graph: two doublings in a row."""
    return {"y": sub_double(x=sub_double(x=x).y).y}
