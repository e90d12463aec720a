"""Graphs for tests/test_strict_io.py: run through ``aethergraph run`` and from the test process."""

from __future__ import annotations

import datetime as dt

from aethergraph import Wait, graph_fn, tool


@graph_fn(name="si_echo", outputs=["types", "values"])
async def si_echo(**given):  # type: ignore[no-untyped-def]
    """Returns what it was given and the Python type of each input."""
    return {"types": {key: type(value).__name__ for key, value in given.items()}, "values": given}


@graph_fn(name="si_typed", outputs=["next"])
async def si_typed(x: int, tags: list[str] | None = None) -> dict:
    return {"next": x + 1}


@tool(name="si_when", outputs=["when"])
def si_when() -> dict:
    return {"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)}


@tool(name="si_tags", outputs=["report"])
def si_tags() -> dict:
    return {"report": {"tags": ["a", {"b", "c"}]}}


@graph_fn(name="si_returns_datetime", outputs=["at"])
async def si_returns_datetime() -> dict:
    return {"at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)}


@graph_fn(name="si_calls_datetime_tool", outputs=["when"])
async def si_calls_datetime_tool() -> dict:
    return await si_when()


@graph_fn(name="si_calls_set_tool", outputs=["report"])
async def si_calls_set_tool() -> dict:
    return await si_tags()


@graph_fn(name="si_waits", outputs=["answer"])
async def si_waits(*, context):  # type: ignore[no-untyped-def]
    return {"answer": await context.wait(Wait(kind="data", prompt="send the data"))}
