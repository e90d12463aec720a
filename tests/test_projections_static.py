"""A static graph's nodes in the projections: a real run on the test nats-server, folded by real DuckDB.

The graph fans out, skips a node by its condition (and the node after it,
upstream), and retries a node (a node run, as its tool takes a ``context``)
that fails once. Its journal is read back from the stream and folded as
``aethergraph status`` folds it (:func:`rebuild_run_state`). Nothing here
measures time.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from helpers import read_events
from test_projections import dump

from aethergraph import RetryPolicy, graphify, tool
from aethergraph.core.ids import new_run_id, node_run_id
from aethergraph.core.run.executor import execute_run
from aethergraph.core.wire import events as ev
from aethergraph.core.wire.codec import encode_event
from aethergraph.host.process import ProcessHost
from aethergraph.projections.fold import Decoded
from aethergraph.projections.run_state import rebuild_run_state
from aethergraph.projections.store import ProjectionStore

CALLS: dict[str, list[str]] = defaultdict(list)  # token -> one label per execution


class Flaky(Exception):
    pass


@tool(name="pjs_load", outputs=["text"])
def pjs_load(tok: str, name: str) -> dict[str, Any]:
    CALLS[tok].append("load")
    return {"text": f"the contents of {name}"}


@tool(name="pjs_part", outputs=["piece"])
def pjs_part(text: str, part: int) -> dict[str, Any]:
    return {"piece": f"{text}, part {part}"}


@tool(name="pjs_check", outputs=["ok"])
def pjs_check(text: str) -> dict[str, Any]:
    return {"ok": text.endswith("wanted")}


@tool(name="pjs_flaky", outputs=["text"])
async def pjs_flaky(tok: str, text: str, *, context) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    CALLS[tok].append("flaky")
    if CALLS[tok].count("flaky") == 1:
        raise Flaky("the first attempt fails on purpose")
    return {"text": text.upper()}


@graphify(name="pjs_graph", inputs=["tok", "name"], outputs=["pieces", "shout", "extra", "after"])
def pjs_graph(tok, name):  # type: ignore[no-untyped-def]
    loaded = pjs_load(tok=tok, name=name)
    pieces = [pjs_part(text=loaded.text, part=i) for i in range(3)]
    check = pjs_check(text=loaded.text)
    extra = pjs_part(text=loaded.text, part=99, _condition=check.ok, _id="extra")
    after = pjs_part(text=extra.piece, part=100, _id="after")
    shout = pjs_flaky(tok=tok, text=pieces[0].piece, _retry=RetryPolicy(attempts=2, backoff_s=0.0))
    return {"pieces": [p.piece for p in pieces], "shout": shout.text, "extra": extra.piece, "after": after.piece}


def nodes(store: ProjectionStore, run_id: str) -> dict[str, tuple[Any, ...]]:
    rows = store.query(
        "SELECT node_id, status, attempts, tool, skip_reason, skip_upstream, error_type, executor, "
        "started_at IS NOT NULL, ended_at IS NOT NULL, duration_us IS NOT NULL, first_seq IS NOT NULL "
        "FROM nodes WHERE run_id = ?",
        [run_id],
    ).rows
    return {r[0]: tuple(r[1:]) for r in rows}


async def test_a_static_run_has_a_row_per_node_with_retries_skips_and_lineage(runtime: ProcessHost) -> None:
    tok, run_id = os.urandom(6).hex(), new_run_id()
    out = await execute_run(pjs_graph.spec, {"tok": tok, "name": "report.txt"}, run_id=run_id, env=runtime.env)
    text = "the contents of report.txt"
    assert out == {
        "pieces": [f"{text}, part {i}" for i in range(3)],
        "shout": f"{text}, part 0".upper(),
        "extra": None,
        "after": None,
    }
    assert CALLS[tok] == ["load", "flaky", "flaky"]

    store = ProjectionStore.open(":memory:")
    try:
        state = await rebuild_run_state(runtime.event_log, run_id, store)
        me = runtime.worker_id
        flaky_error = f"{Flaky.__module__}.Flaky"
        ran = (True, True, True, True)
        assert nodes(store, run_id) == {
            "pjs_load_1": ("succeeded", 1, "pjs_load", "", "", None, me, *ran),
            "pjs_part_1": ("succeeded", 1, "pjs_part", "", "", None, me, *ran),
            "pjs_part_2": ("succeeded", 1, "pjs_part", "", "", None, me, *ran),
            "pjs_part_3": ("succeeded", 1, "pjs_part", "", "", None, me, *ran),
            "pjs_check_1": ("succeeded", 1, "pjs_check", "", "", None, me, *ran),
            # The first attempt's error stays beside the second attempt's success.
            "pjs_flaky_1": ("succeeded", 2, "pjs_flaky", "", "", flaky_error, me, *ran),
            "extra": ("skipped", 0, None, "condition", "", None, None, False, True, False, True),
            "after": ("skipped", 0, None, "upstream_skipped", "extra", None, None, False, True, False, True),
        }
        # The retried node's attempts are node runs; status finds both and lists every node.
        attempts = [node_run_id(run_id, "pjs_flaky_1", attempt) for attempt in (1, 2)]
        assert state.status == "succeeded"
        assert state.runs[0] == run_id and set(state.runs[1:]) == set(attempts)
        listed = {(n.node_id, n.status) for n in state.nodes if n.run_id == run_id}
        assert listed == {(node_id, row[0]) for node_id, row in nodes(store, run_id).items()}
        assert [n.node_id for n in state.nodes][-2:] == ["extra", "after"]  # never started: listed last
        runs = dict(store.query("SELECT run_id, status FROM runs WHERE run_id IN (?, ?)", attempts).rows)
        assert runs == {attempts[0]: "failed", attempts[1]: "succeeded"}
        assert store.query(
            "SELECT child_run_id FROM nodes WHERE run_id = ? AND node_id = 'pjs_flaky_1'", [run_id]
        ).rows == [(attempts[0],)]

        # Lineage: node.ready's arguments are consumed values, so the fan-out has data edges.
        node = f"node:{run_id}/"
        edges = {tuple(r) for r in store.query("SELECT src, dst, kind FROM edges WHERE root_run_id = ?", [run_id]).rows}
        assert {(f"run:{run_id}", f"{node}{n}", "in_run") for n in ("pjs_load_1", "pjs_flaky_1")} <= edges
        assert {(f"{node}pjs_load_1", f"{node}pjs_part_{i}", "data") for i in (1, 2, 3)} <= edges
        assert (f"{node}pjs_load_1", f"{node}pjs_check_1", "data") in edges
        assert (f"{node}pjs_part_1", f"{node}pjs_flaky_1", "data") in edges
        assert (f"{node}pjs_flaky_1", f"run:{attempts[1]}", "spawned") in edges
        assert not {e for e in edges if f"{node}extra" in e[:2] or f"{node}after" in e[:2]}
        ancestors = {r[0] for r in store.query("SELECT entity FROM ancestors(?)", [f"{node}pjs_flaky_1"]).rows}
        assert {f"{node}pjs_part_1", f"{node}pjs_load_1", f"run:{run_id}"} <= ancestors

        # The same journal folded one event per batch gives the same tables.
        records = sorted(
            [r for rid in [run_id, *attempts] for r in await read_events(runtime, rid)], key=lambda r: r.stream_seq
        )
        assert any(isinstance(r.event, ev.NodeFailed) and r.event.retry_at_us is not None for r in records)
        one_by_one = ProjectionStore.open(":memory:")
        try:
            for r in records:
                one_by_one.apply([Decoded(r.stream_seq, r.event, encode_event(r.event).decode())])
            tables = ("runs", "nodes", "edges", "lineage_values", "lineage_roots", "events")
            assert dump(one_by_one, tables) == dump(store, tables)
        finally:
            one_by_one.close()
    finally:
        store.close()


async def test_a_failed_attempt_that_will_be_retried_reads_as_retrying(runtime: ProcessHost) -> None:
    """The journal up to the first attempt's failure: the node is retrying, not failed, until the next one."""
    tok, run_id = os.urandom(6).hex(), new_run_id()
    await execute_run(pjs_graph.spec, {"tok": tok, "name": "partial.txt"}, run_id=run_id, env=runtime.env)
    records = await read_events(runtime, run_id)
    failed = next(i for i, r in enumerate(records) if isinstance(r.event, ev.NodeFailed))
    store = ProjectionStore.open(":memory:")
    try:
        for upto, expected in (
            (failed, ("running", 1)),
            (failed + 1, ("retrying", 1)),
            (len(records), ("succeeded", 2)),
        ):
            store.apply([Decoded(r.stream_seq, r.event, encode_event(r.event).decode()) for r in records[:upto]])
            assert store.query(
                "SELECT status, attempts FROM nodes WHERE run_id = ? AND node_id = 'pjs_flaky_1'", [run_id]
            ).rows == [expected], f"after {upto} events"
    finally:
        store.close()
