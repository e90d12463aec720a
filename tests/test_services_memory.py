"""``context.memory()``: recording, recent, lexical search, last_by_name, chat history, replay."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import read_events

import aethergraph
from aethergraph import MemoryEntry, graph_fn
from aethergraph.core.api.callables import GraphFunction
from aethergraph.core.errors import NonDeterminismError
from aethergraph.core.ids import new_run_id
from aethergraph.core.run.executor import execute_run, resume_run
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost


class Crash(BaseException):
    """Stands for the death of the process."""


def graph(body: Callable[..., Coroutine[Any, Any, dict[str, Any]]]) -> GraphFunction:
    return graph_fn(name="memory_flow", outputs=["v"])(body)


async def test_record_recent_search_and_last_by_name(runtime: ProcessHost) -> None:
    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        mem = context.memory()
        await mem.record("fact", "the pump in hall B runs hot", tags=["hall-b"], name="pump")
        await mem.record("fact", {"sensor": "t7", "reading": 81.5}, name="sensor")
        await mem.record("decision", "replace the pump bearing", tags=["maintenance"], name="pump")
        await mem.record("fact", "hall A is quiet", name="hall-a")
        recent = await mem.recent(limit=2)
        facts = await mem.recent("fact")
        hits = await mem.search("pump bearing")
        tagged = await mem.search("maintenance")
        pump = await mem.last_by_name("pump")
        pump_fact = await mem.last_by_name("pump", kind="fact")
        nothing = await mem.last_by_name("nobody")
        none = await mem.search("zebra")
        return {
            "v": {
                "recent": [e.text for e in recent],
                "facts": [e.name for e in facts],
                "hits": [e.text for e in hits],
                "tagged": [e.kind for e in tagged],
                "pump": [pump.kind, pump_fact.kind, nothing],
                "none": none,
                "types": isinstance(recent[0], MemoryEntry),
            }
        }

    v = (await aethergraph.run_async(flow, {}))["v"]
    assert v["recent"] == ["replace the pump bearing", "hall A is quiet"]
    assert v["facts"] == ["pump", "sensor", "hall-a"]
    # "bearing" is rarer than "pump", so the entry with both ranks first
    assert v["hits"] == ["replace the pump bearing", "the pump in hall B runs hot"]
    assert v["tagged"] == ["decision"]
    assert v["pump"] == ["decision", "fact", None]
    assert v["none"] == [] and v["types"] is True


async def test_chat_history_helpers(runtime: ProcessHost) -> None:
    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        mem = context.memory()
        await mem.record_chat("user", "how warm is hall B?")
        await mem.record_chat("assistant", "81.5 degrees at sensor t7")
        await mem.record("fact", "unrelated")
        await mem.record_chat("user", "thanks")
        return {"v": [await mem.chat_history(), await mem.chat_history(limit=1)]}

    full, last = (await aethergraph.run_async(flow, {}))["v"]
    assert full == [
        {"role": "user", "text": "how warm is hall B?"},
        {"role": "assistant", "text": "81.5 degrees at sensor t7"},
        {"role": "user", "text": "thanks"},
    ]
    assert last == [{"role": "user", "text": "thanks"}]


async def test_records_are_events_and_replay_neither_records_nor_reads_again(runtime: ProcessHost) -> None:
    async def crashes(*, context: Any) -> dict[str, Any]:
        await context.memory().record("note", "first", name="n1")
        await context.memory().recent()
        raise Crash

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=runtime.env)

    async def finishes(*, context: Any) -> dict[str, Any]:
        mem = context.memory()
        await mem.record("note", "first", name="n1")
        early = await mem.recent()
        await mem.record("note", "second", name="n2")
        late = await mem.recent()
        return {"v": [[e.text for e in early], [e.text for e in late]]}

    assert await resume_run(graph(finishes).spec, run_id, env=runtime.env) == {"v": [["first"], ["first", "second"]]}
    events = [r.event for r in await read_events(runtime, run_id)]
    recorded = [e for e in events if isinstance(e, ev.MemoryRecorded)]
    assert [(e.kind, e.text, e.name, e.node_id) for e in recorded] == [
        ("note", "first", "n1", "root"),
        ("note", "second", "n2", "root"),
    ]
    reads = [e for e in events if isinstance(e, ev.ServiceCalled) and e.service == "memory"]
    assert [e.method for e in reads] == ["recent", "recent"]

    async def diverges(*, context: Any) -> dict[str, Any]:
        await context.memory().record("other-kind", "first")
        return {"v": 0}

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=runtime.env)
    with pytest.raises(NonDeterminismError) as caught:
        await resume_run(graph(diverges).spec, run_id, env=runtime.env)
    assert "'note' memory record" in str(caught.value)


async def test_bad_input(runtime: ProcessHost) -> None:
    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        with pytest.raises(ValueError):
            await context.memory().record("", "no kind")
        with pytest.raises(aethergraph.errors.SerializationError):
            await context.memory().record("fact", object())
        return {"v": await context.memory().recent(limit=0)}

    assert await aethergraph.run_async(flow, {}) == {"v": []}


async def test_memories_and_artifacts_are_projected_for_sql(runtime: ProcessHost) -> None:
    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        await context.memory().record("fact", {"pump": "hot"}, tags=["hall-b"], name="pump")
        art = await context.artifacts().save_text("projected", kind="note")
        return {"v": art.id}

    run_id = new_run_id()
    artifact_id = (await execute_run(flow.spec, {}, run_id=run_id, env=runtime.env))["v"]
    rows = await aethergraph.query_async(
        "SELECT kind, name, data, tags, node_id FROM memories WHERE run_id = ?", [run_id]
    )
    assert [(r["kind"], r["name"], r["node_id"]) for r in rows] == [("fact", "pump", "root")]
    assert '"hot"' in str(rows[0]["data"]) and "hall-b" in str(rows[0]["tags"])
    edges = await aethergraph.query_async(
        "SELECT src FROM edges WHERE dst = ? AND kind = 'produced'", [f"artifact:{artifact_id}"]
    )
    assert [e["src"] for e in edges] == [f"run:{run_id}"]
