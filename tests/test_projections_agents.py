"""The agent-service projections at the store level: ``llm_calls`` and ``viz`` folded from hand-journaled events.

Real DuckDB, no bus: the events are built as the executor numbers them
(``RunJournal`` of test_projections) and applied as the projector would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
from test_projections import BASE_TS, RunJournal, apply_range, decoded, dump

from aethergraph.core.wire import events as ev
from aethergraph.projections.store import ProjectionStore

LLM_COLUMNS = [
    "run_id", "call_seq", "node_id", "profile", "model", "operation", "streamed", "status", "input_tokens",
    "output_tokens", "cached_tokens", "reasoning_tokens", "duration_us", "attempts", "finish_reason", "error_type",
    "error_message", "called_at", "ended_at",
]  # fmt: skip


def _model_calls() -> list[ev.Event]:
    """A chat call that returned, an embed call that failed, a call in flight, and one re-executed after a takeover."""
    out: list[ev.Event] = []
    run = RunJournal(out, "lc1")
    run.add(ev.RunStarted, graph_id="agent")
    chat = {"profile": "default", "operation": "chat"}
    called = run.add(
        ev.LlmCalled, "root", model="gpt-x", request={"messages": []}, request_digest="r1", streamed=True, **chat
    )
    run.add(
        ev.LlmReturned,
        "root",
        parent=called,
        model="gpt-x-2025",
        response={"content": "hi"},
        finish_reason="stop",
        input_tokens=120,
        output_tokens=30,
        cached_tokens=100,
        reasoning_tokens=7,
        attempts=2,
        duration_us=5_000,
        **chat,
    )
    embed = {"profile": "embedder", "operation": "embed"}
    called = run.add(ev.LlmCalled, "search_1", model="emb", request={"input": ["a"]}, request_digest="r2", **embed)
    run.add(
        ev.LlmFailed,
        "search_1",
        parent=called,
        model="emb",
        error_type="LLMEndpointError",
        message="profile 'embedder': 503 from http://127.0.0.1:9/v1",
        attempts=4,
        duration_us=9_000,
        **embed,
    )
    in_flight = run.add(ev.LlmCalled, "root", model="gpt-x", request_digest="r3", **chat)
    run.claim("w-2")  # the worker died during the call: the next one executes it again under its llm.called
    run.add(
        ev.LlmReturned,
        "root",
        parent=in_flight,
        model="gpt-x",
        response={"content": "again"},
        finish_reason="length",
        output_tokens=4096,
        duration_us=70_000,
        **chat,
    )
    run.add(ev.LlmCalled, "root", model="gpt-x", request_digest="r4", **chat)  # still in flight
    return out


def _rows(store: ProjectionStore) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM llm_calls ORDER BY run_id, call_seq").dicts()


def test_llm_calls_fold_usage_failures_and_calls_in_flight_in_any_batching() -> None:
    items = decoded(_model_calls())
    whole = ProjectionStore.open(":memory:")
    split = ProjectionStore.open(":memory:")
    try:
        apply_range(whole, items, 1, len(items))
        for first, last in ((1, 2), (3, 6), (4, 7), (8, len(items))):  # the called/outcome pairs split, one overlap
            apply_range(split, items, first, last)
        assert dump(split, ["llm_calls"]) == dump(whole, ["llm_calls"])
        assert store_columns(whole) == LLM_COLUMNS
        rows = _rows(whole)
        picked = [
            {k: row[k] for k in LLM_COLUMNS if k not in ("run_id", "called_at", "ended_at", "error_message")}
            for row in rows
        ]
        assert picked == [
            {"call_seq": 2, "node_id": "root", "profile": "default", "model": "gpt-x-2025", "operation": "chat",
             "streamed": True, "status": "ok", "input_tokens": 120, "output_tokens": 30, "cached_tokens": 100,
             "reasoning_tokens": 7, "duration_us": 5_000, "attempts": 2, "finish_reason": "stop", "error_type": None},
            {"call_seq": 4, "node_id": "search_1", "profile": "embedder", "model": "emb", "operation": "embed",
             "streamed": False, "status": "failed", "input_tokens": None, "output_tokens": None,
             "cached_tokens": None, "reasoning_tokens": None, "duration_us": 9_000, "attempts": 4,
             "finish_reason": None, "error_type": "LLMEndpointError"},
            {"call_seq": 6, "node_id": "root", "profile": "default", "model": "gpt-x", "operation": "chat",
             "streamed": False, "status": "ok", "input_tokens": 0, "output_tokens": 4096, "cached_tokens": 0,
             "reasoning_tokens": 0, "duration_us": 70_000, "attempts": 1, "finish_reason": "length",
             "error_type": None},
            {"call_seq": 9, "node_id": "root", "profile": "default", "model": "gpt-x", "operation": "chat",
             "streamed": False, "status": "in_flight", "input_tokens": None, "output_tokens": None,
             "cached_tokens": None, "reasoning_tokens": None, "duration_us": None, "attempts": None,
             "finish_reason": None, "error_type": None},
        ]  # fmt: skip
        assert rows[1]["error_message"] == "profile 'embedder': 503 from http://127.0.0.1:9/v1"
        assert [(r["called_at"] is not None, r["ended_at"] is not None) for r in rows] == [
            (True, True),
            (True, True),
            (True, True),
            (True, False),
        ]
        # Tokens per profile, as a user would ask.
        spent = whole.query(
            "SELECT profile, sum(input_tokens + output_tokens) FROM llm_calls WHERE status = 'ok' GROUP BY 1"
        ).rows
        assert spent == [("default", 120 + 30 + 4096)]
    finally:
        whole.close()
        split.close()


def store_columns(store: ProjectionStore) -> list[str]:
    return [
        r[0]
        for r in store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'llm_calls' "
            "ORDER BY ordinal_position"
        ).rows
    ]


def _points() -> list[ev.Event]:
    out: list[ev.Event] = []
    run = RunJournal(out, "vz1")
    run.add(ev.RunStarted, graph_id="train")
    run.add(ev.VizRecorded, "root", track="loss", kind="scalar", step=0, value=0.75)
    run.add(ev.VizRecorded, "fit_1", track="w", kind="vector", step=None, value=[1.0, -2.5], meta={"layer": "fc"})
    run.add(ev.VizRecorded, "fit_1", track="cm", kind="matrix", step=3, value=[[1.0, 0.0], [0.0, 1.0]])
    run.add(ev.VizRecorded, "root", track="pic", kind="image", step=3, artifact_uri="file:///a/b", mime="image/png")
    return out


def test_viz_rows_one_per_point() -> None:
    store = ProjectionStore.open(":memory:")
    try:
        store.apply(decoded(_points()))
        rows = store.query(
            "SELECT seq, node_id, track, kind, step, value::VARCHAR, artifact_uri, mime, meta::VARCHAR, recorded_at "
            "FROM viz ORDER BY seq"
        ).rows
    finally:
        store.close()
    assert [r[:9] for r in rows] == [
        (2, "root", "loss", "scalar", 0, "0.75", None, None, "{}"),
        (3, "fit_1", "w", "vector", None, "[1.0,-2.5]", None, None, '{"layer":"fc"}'),
        (4, "fit_1", "cm", "matrix", 3, "[[1.0,0.0],[0.0,1.0]]", None, None, "{}"),
        (5, "root", "pic", "image", 3, None, "file:///a/b", "image/png", "{}"),
    ]
    assert all(r[9].timestamp() * 1_000_000 >= BASE_TS for r in rows)


def test_a_store_from_before_these_projections_folds_them_from_the_start(tmp_path: Path) -> None:
    """Opening a store that lacks a projection creates its tables and folds the stream into them from sequence 0."""
    items = decoded(_model_calls() + _points())
    path = tmp_path / "projections.duckdb"
    store = ProjectionStore.open(path)
    apply_range(store, items, 1, len(items))
    expected = dump(store, ["llm_calls", "viz", "tool_calls", "runs"])
    store.close()
    with duckdb.connect(str(path)) as con:  # the store as a version without them left it
        con.execute("DROP TABLE llm_calls")
        con.execute("DROP TABLE viz")
        con.execute("DELETE FROM projection_state WHERE projection IN ('llm', 'viz')")
    store = ProjectionStore.open(path)
    try:
        assert store.cursors["llm"] == store.cursors["viz"] == 0 and store.last_seq == 0
        assert store.query("SELECT count(*) FROM llm_calls").rows == [(0,)]
        apply_range(store, items, 1, len(items))  # what the projector's catch-up delivers from sequence 0
        assert dump(store, ["llm_calls", "viz", "tool_calls", "runs"]) == expected
    finally:
        store.close()
