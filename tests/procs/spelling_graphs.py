"""A static graph for tests/test_original_spelling.py's script: ``aethergraph.run(..., max_concurrency=...)``."""

from __future__ import annotations

from aethergraph import graphify, tool


@tool(name="os_square", outputs=["y"])
def os_square(x: int) -> dict:
    return {"y": x * x}


@tool(name="os_total", outputs=["total"])
def os_total(values: list) -> dict:
    return {"total": sum(values)}


@graphify(name="os_squares", inputs=["xs"], outputs=["total"], max_concurrency=8)
def os_squares(xs):  # type: ignore[no-untyped-def]
    return {"total": os_total(values=[os_square(x=xs[i]).y for i in range(3)]).total}
