"""Graphs for tests/test_projections_bus.py that run in subprocesses (``aethergraph run FILE:GRAPH``).

Each one does a step, then waits durably for a payment (a custom ``Wait`` with a
JSON Schema), so a first process leaves the run waiting and exits; a second
process, on another workspace, rebuilds the run's state from the stream alone.
"""

from __future__ import annotations

from typing import Any

from aethergraph import NodeContext, Wait, graph_fn, tool

PAYMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["amount"],
    "properties": {"amount": {"type": "integer", "minimum": 1}, "note": {"type": "string"}},
}


@tool(name="pj_quote", outputs=["quote"])
def pj_quote(item: str) -> dict[str, Any]:
    return {"quote": f"quote for {item}: 42 credits"}


@graph_fn(name="pj_pay", outputs=["quote", "payment"])
async def pj_pay(item: str, *, context: NodeContext) -> dict[str, Any]:
    """A step, then a payment wait in this run."""
    quote = (await pj_quote(item))["quote"]
    payment = await context.wait(Wait(kind="payment", prompt=f"pay {quote}", schema=PAYMENT_SCHEMA))
    return {"quote": quote, "payment": payment}


@graph_fn(name="pj_pay_outer", outputs=["quote", "payment"])
async def pj_pay_outer(item: str, *, context: NodeContext) -> dict[str, Any]:
    """A step, then a nested run (``pj_pay``) that waits for the payment."""
    first = (await pj_quote(f"outer {item}"))["quote"]
    inner = await pj_pay(item)
    return {"quote": first, "payment": inner["payment"]}
