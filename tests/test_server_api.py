"""The HTTP API against a real ``aethergraph serve`` process and a real worker process, on the test nats-server.

The server has its own workspace (its own projection store, which it owns as
the projector); runs are submitted through the API and run by an
``aethergraph worker`` process serving the same graphs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import stop_process
from web_client import (
    GRAPHS,
    ServerProc,
    call,
    get,
    launch,
    launch_worker,
    poll,
    read_until,
    sse,
    wait_status,
    workspace_env,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    env = workspace_env(tmp_path_factory.mktemp("web-workspace"))
    worker = launch_worker(env)
    proc = launch("serve", GRAPHS, "--port", "0", env=env)
    try:
        yield proc
    finally:
        proc.stop()
        stop_process(worker)


def submit(url: str, graph: str, inputs: dict[str, Any], **extra: Any) -> str:
    status, body, _ = call(url, "POST", "/api/runs", {"graph": graph, "inputs": inputs, **extra})
    assert status == 202, body
    assert body["status"] == "queued"
    return str(body["run_id"])


def test_runs_list_filters_and_pages(server: ServerProc) -> None:
    url = server.url
    counting = [submit(url, "web_counting", {"n": 2}) for _ in range(5)]
    failing = submit(url, "web_failing", {"x": 3})
    for run_id in counting:
        wait_status(url, run_id, {"succeeded"})
    wait_status(url, failing, {"failed"})

    # The list comes from the projections, which fold the stream just behind it.
    everything = poll(
        url,
        "/api/runs?graph=web_counting&limit=1000",
        lambda body, _: (
            {r["run_id"]: r["status"] for r in body["runs"] if r["run_id"] in counting}
            == dict.fromkeys(counting, "succeeded")
        ),
    )
    assert everything["total"] == len(everything["runs"]) >= 5
    assert {run["graph"] for run in everything["runs"]} == {"web_counting"}
    started = [run["started_at"] for run in everything["runs"]]
    assert started == sorted(started, reverse=True)  # newest first

    failed = poll(
        url,
        "/api/runs?status=failed&graph=web_failing",
        lambda body, _: failing in {run["run_id"] for run in body["runs"]},
    )
    [row] = [run for run in failed["runs"] if run["run_id"] == failing]
    assert "web_explode refuses 3" in row["error"]
    assert get(url, "/api/runs?status=succeeded&graph=web_failing")["total"] == 0

    # Pages by cursor and by offset visit the same runs once each.
    by_cursor: list[str] = []
    cursor = ""
    while True:
        page = get(url, f"/api/runs?graph=web_counting&limit=2{'&cursor=' + cursor if cursor else ''}")
        assert page["total"] == everything["total"]
        by_cursor += [run["run_id"] for run in page["runs"]]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    by_offset = [
        run["run_id"]
        for offset in range(0, everything["total"], 2)
        for run in get(url, f"/api/runs?graph=web_counting&limit=2&offset={offset}")["runs"]
    ]
    assert by_cursor == by_offset == [run["run_id"] for run in everything["runs"]]

    assert set(counting) <= {r["run_id"] for r in get(url, "/api/runs?graph=web_counting&since=1h&limit=1000")["runs"]}
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert get(url, f"/api/runs?graph=web_counting&since={future.replace('+', '%2B')}")["total"] == 0
    status, body, _ = call(url, "GET", "/api/runs?since=yesterday")
    assert status == 422 and "duration" in body["detail"]


def test_run_detail_shows_inputs_outputs_errors_nodes_and_children(server: ServerProc) -> None:
    url = server.url
    failing = wait_status(url, submit(url, "web_failing", {"x": 7}), {"failed"})
    assert failing["inputs"] == {"x": 7}
    assert "web_explode refuses 7" in failing["error"]
    assert "web_explode" in failing["traceback"] and "ValueError" in failing["traceback"]
    [node] = failing["nodes"]
    assert (node["tool"], node["status"]) == ("web_explode", "failed")
    assert failing["outputs"] is None and failing["parent"] is None and failing["children"] == []

    parent_id = submit(url, "web_parent", {"n": 3})
    parent = wait_status(url, parent_id, {"succeeded"})
    assert parent["outputs"] == {"count": 3}
    [child] = parent["children"]
    assert child["graph"] == "web_counting" and child["status"] == "succeeded"
    detail = get(url, f"/api/runs/{child['run_id']}")
    assert detail["parent"] == {"run_id": parent_id, "node_id": child["node_id"]}
    assert detail["root_run_id"] == parent_id and detail["inputs"] == {"n": 3}

    static = wait_status(url, submit(url, "web_static", {"x": 5}), {"succeeded"})
    assert static["outputs"] == {"y": 20}
    assert sorted(n["status"] for n in static["nodes"]) == ["succeeded", "succeeded"]

    assert call(url, "GET", "/api/runs/no_such_run")[0] == 404
    assert call(url, "GET", "/api/runs/bad.id")[0] == 422


def test_submit_refuses_unknown_graphs_bad_inputs_and_taken_ids(server: ServerProc) -> None:
    url = server.url
    status, body, _ = call(url, "POST", "/api/runs", {"graph": "nope", "inputs": {}})
    assert status == 404 and "web_asking" in body["detail"]
    status, body, _ = call(url, "POST", "/api/runs", {"graph": "web_counting", "inputs": {"m": 1}})
    assert status == 422 and "n" in body["detail"]
    status, body, _ = call(url, "POST", "/api/runs", {"graph": "web_counting", "inputs": {"n": 1}, "colour": 1})
    assert status == 422
    run_id = submit(url, "web_counting", {"n": 1})
    status, body, _ = call(url, "POST", "/api/runs", {"graph": "web_counting", "inputs": {"n": 1}, "run_id": run_id})
    assert status == 409
    wait_status(url, run_id, {"succeeded"})


def test_graphs_list_served_graphs_with_their_structure(server: ServerProc) -> None:
    graphs = {g["name"]: g for g in get(server.url, "/api/graphs")["graphs"]}
    assert {"web_asking", "web_counting", "web_static", "web_parent"} <= set(graphs)
    assert "web_double" not in graphs  # tools are no graphs
    assert graphs["web_asking"]["inputs"] == [{"name": "topic", "required": True, "default": None}]
    assert graphs["web_asking"]["structure"] is None
    structure = graphs["web_static"]["structure"]
    assert [node["tool"] for node in structure["nodes"]] == ["web_double", "web_double"]
    assert structure["nodes"][1]["dependencies"] == [structure["nodes"][0]["id"]]
    assert structure["digest"] and structure["order"] == [n["id"] for n in structure["nodes"]]


def test_resume_through_the_api_checks_the_schema_and_answers_the_outcome(server: ServerProc) -> None:
    url = server.url
    run_id = submit(url, "web_asking", {"topic": "api"})
    waiting = wait_status(url, run_id, {"waiting"})
    [open_wait] = waiting["open_waits"]
    assert open_wait["schema"]["required"] == ["ok"]

    # The waits list comes from the projections.
    [wait] = poll(url, f"/api/waits?run_id={run_id}", lambda body, _: body["waits"])["waits"]
    assert (wait["kind"], wait["prompt"], wait["schema"]) == ("review", "review api", open_wait["schema"])
    assert wait["resume"] == {"run_id": run_id, "wait_id": open_wait["wait_id"]}
    assert run_id in {w["run_id"] for w in get(url, "/api/waits")["waits"]}

    status, body, _ = call(url, "POST", f"/api/runs/{run_id}/resume", {"payload": {"ok": "yes"}})
    assert status == 422
    assert body["status"] == "rejected" and body["reason"] == "invalid_payload"
    assert "boolean" in body["message"]
    status, body, _ = call(url, "POST", f"/api/runs/{run_id}/resume", {"wait_id": "w999", "payload": {"ok": True}})
    assert status == 409 and body["reason"] == "unknown_wait"
    status, body, _ = call(url, "POST", f"/api/runs/{run_id}/resume", {"payload": {"ok": True}, "extra": 1})
    assert status == 422
    assert wait_status(url, run_id, {"waiting"})["status"] == "waiting"  # nothing changed

    status, body, _ = call(
        url, "POST", f"/api/runs/{run_id}/resume", {"wait_id": wait["wait_id"], "payload": {"ok": True}}
    )
    assert status == 200, body
    assert body["status"] == "accepted" and body["wait_id"] == wait["wait_id"] and body["worker"]
    done = wait_status(url, run_id, {"succeeded"})
    assert done["outputs"] == {"answer": {"ok": True}, "doubled": 6}
    status, body, _ = call(url, "POST", f"/api/runs/{run_id}/resume", {"payload": {"ok": True}})
    assert status in (404, 409, 422) and body["status"] == "rejected"
    assert call(url, "POST", "/api/runs/no_such_run/resume", {"payload": 1})[0] == 404


def test_cancel_through_the_api(server: ServerProc) -> None:
    url = server.url
    run_id = submit(url, "web_asking", {"topic": "cancel me"})
    wait_status(url, run_id, {"waiting"})
    status, body, _ = call(url, "POST", f"/api/runs/{run_id}/cancel", {"reason": "not needed"})
    assert status == 200 and body == {"run_id": run_id, "status": "cancelled"}
    detail = wait_status(url, run_id, {"cancelled"})
    assert detail["open_waits"] == [] and "not needed" in detail["error"]
    assert call(url, "POST", "/api/runs/no_such_run/cancel", {})[0] == 404


def test_events_history_json_matches_the_live_stream(server: ServerProc) -> None:
    url = server.url
    run_id = submit(url, "web_counting", {"n": 3})
    wait_status(url, run_id, {"succeeded"})
    history = get(url, f"/api/runs/{run_id}/events")
    events = history["events"]
    assert [e["event"]["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"]["type"] == "run.completed"
    assert history["last_event_id"] == events[-1]["stream_seq"]
    with sse(url, run_id) as messages:
        streamed = read_until(messages, "run.completed")
    assert [(m.id, m.data) for m in streamed] == [(e["stream_seq"], e["event"]) for e in events]
    middle = events[2]["stream_seq"]
    after = get(url, f"/api/runs/{run_id}/events?after={middle}")["events"]
    assert after == events[3:]


def test_sql_is_read_only(server: ServerProc) -> None:
    url = server.url
    status, body, _ = call(url, "POST", "/api/sql", {"sql": "SELECT count(*) AS n FROM runs"})
    assert status == 200 and body["columns"] == ["n"] and body["rows"][0][0] >= 0
    status, body, _ = call(url, "POST", "/api/sql", {"sql": "WITH t AS (SELECT 1 AS a) SELECT a FROM t"})
    assert status == 200 and body["rows"] == [[1]]
    for statement in (
        "DROP TABLE runs",
        "DELETE FROM runs",
        "UPDATE runs SET status = 'x'",
        "SELECT 1; DELETE FROM runs",
        "CREATE TABLE t (a INT)",
        "INSERT INTO runs (run_id) VALUES ('x')",
    ):
        status, body, _ = call(url, "POST", "/api/sql", {"sql": statement})
        assert status == 400, statement
        assert "read-only" in body["detail"] or "one SQL statement" in body["detail"]
    assert call(url, "POST", "/api/sql", {"query": "SELECT 1"})[0] == 422
    assert get(url, "/api/sql".replace("sql", "runs") + "?limit=1")["total"] >= 1  # the tables are still there


def test_artifacts_download_by_id_and_uri(server: ServerProc) -> None:
    url = server.url
    run_id = submit(url, "web_saving", {"text": "hello artifact"})
    outputs = wait_status(url, run_id, {"succeeded"})["outputs"]
    for ref in (outputs["id"], outputs["uri"]):
        # The name and type come from the projections.
        poll(url, f"/api/artifacts/{ref}", lambda _, headers: "note.txt" in headers.get("content-disposition", ""))
        status, body, headers = call(url, "GET", f"/api/artifacts/{ref}")
        assert status == 200 and body == "hello artifact"
        assert headers["content-type"].startswith("text/plain")
    assert call(url, "GET", "/api/artifacts/" + "0" * 64)[0] == 404
    assert call(url, "GET", "/api/artifacts/not-an-id")[0] == 404


def test_the_viewer_is_served_at_the_root(server: ServerProc) -> None:
    status, body, headers = call(server.url, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    index = Path(__file__).resolve().parent.parent / "aethergraph" / "adapters" / "web" / "static" / "index.html"
    if index.is_file():
        assert body == index.read_text()
    else:
        assert "assets are missing" in body
    schema = get(server.url, "/openapi.json")
    assert {"/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/events", "/api/waits", "/api/graphs"} <= set(
        schema["paths"]
    )


def test_retry_continues_a_failed_static_run_in_the_server(server: ServerProc, tmp_path: Path) -> None:
    url = server.url
    flag = tmp_path / "flag"
    run_id = submit(url, "web_retry", {"x": 4, "flag": str(flag)})
    failed = wait_status(url, run_id, {"failed"})
    assert "flag file" in failed["error"]
    flag.touch()
    status, body, _ = call(url, "POST", f"/api/runs/{run_id}/retry")
    assert status == 200 and body == {"run_id": run_id, "status": "running"}
    assert wait_status(url, run_id, {"succeeded"})["outputs"] == {"y": 9}
    status, body, _ = call(url, "POST", f"/api/runs/{run_id}/retry")
    assert status == 409 and "succeeded" in body["detail"]
    graph_fn_run = submit(url, "web_failing", {"x": 1})
    wait_status(url, graph_fn_run, {"failed"})
    status, body, _ = call(url, "POST", f"/api/runs/{graph_fn_run}/retry")
    assert status == 409 and "static graphs" in body["detail"]
