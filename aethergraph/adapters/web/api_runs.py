"""``/api/runs``: listing runs, one run's state, submitting, cancelling, resuming, and its events (JSON or SSE).

Lists come from the projections (the workspace's projector); one run's state
is rebuilt from its journal on the stream, as ``aethergraph status`` does, so
it is exact the moment a command returns. Submitting, cancelling and resuming
go through the same calls as the command line (``RunOps.submit``,
``RunOps.cancel_run``, :func:`aethergraph.runtime.resume`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
import typer
from fastapi import APIRouter, Body, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from aethergraph.core.errors import (
    GraphInputError,
    GraphNotFoundError,
    NotRetryableError,
    ResumeRejectedError,
    RunExistsError,
    RunNotFoundError,
)
from aethergraph.core.ids import check_run_id, new_run_id
from aethergraph.core.journal.run_control import bind_run_inputs
from aethergraph.core.model.registry import registered_graphs
from aethergraph.core.wire.codec import encode_event
from aethergraph.projections.run_state import rebuild_run_state
from aethergraph.projections.store import ProjectionStore
from aethergraph.runtime import resume

from ..cli_projections import parse_duration
from ..console import run_state_json
from .live import ALL_RUNS_RETAIN, ALL_RUNS_TYPES, journal_items
from .state import WebState, jsonable, web_state

__all__ = ["router"]

router = APIRouter(prefix="/api/runs", tags=["runs"])
# ``GET /api/events``: the all-runs stream, beside the runs (it shares their SSE machinery).
events_router = APIRouter(prefix="/api", tags=["runs"])


_FILTERS = """($1::VARCHAR IS NULL OR status = $1) AND ($2::VARCHAR IS NULL OR graph_id = $2)
      AND ($3::TIMESTAMP IS NULL OR started_at >= $3) AND ($4 OR parent_run_id IS NULL)"""
# The page's run ids first (a top-N on two columns), then their rows: the wide columns of 50 runs only.
_RUNS_SQL = f"""
WITH page AS (
    SELECT run_id, started_at FROM runs
    WHERE {_FILTERS} AND ($5::TIMESTAMP IS NULL OR started_at < $5 OR (started_at = $5 AND run_id > $6))
    ORDER BY started_at DESC NULLS LAST, run_id LIMIT $7 OFFSET $8
)
SELECT r.run_id, r.graph_id, r.status, r.started_at, r.ended_at, r.parent_run_id, r.parent_node_id,
       r.event_count, r.error_type, r.error_message,
       round(date_diff('microsecond', r.started_at, coalesce(r.ended_at, r.last_event_at)) / 1000.0, 1) AS duration_ms,
       (SELECT count(*) FROM runs WHERE {_FILTERS}) AS total
FROM page JOIN runs r USING (run_id)
ORDER BY r.started_at DESC NULLS LAST, r.run_id
"""


def _since(text: str | None) -> dt.datetime | None:
    """``since`` as a naive UTC timestamp: a duration back from now (``15m``, ``2h``) or an ISO 8601 time."""
    if text is None:
        return None
    try:
        return dt.datetime.now(dt.UTC).replace(tzinfo=None) - parse_duration(text)
    except typer.BadParameter:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(422, f"since={text!r}: give a duration (30s, 15m, 2h, 1d) or an ISO 8601 time") from None
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def _cursor(text: str | None) -> tuple[dt.datetime | None, str]:
    if not text:
        return None, ""
    when, sep, run_id = text.partition("|")
    try:
        return dt.datetime.fromisoformat(when), check_run_id(run_id) if sep else ""
    except ValueError:
        raise HTTPException(422, "cursor: pass back the next_cursor of the previous page unchanged") from None


@router.get("")
async def list_runs(
    request: Request,
    status: Annotated[str | None, Query(description="queued, running, waiting, succeeded, failed, cancelled")] = None,
    graph: Annotated[str | None, Query(description="only runs of this graph")] = None,
    since: Annotated[str | None, Query(description="started within (30s, 15m, 2h, 1d) or since an ISO time")] = None,
    nested: Annotated[bool, Query(description="include runs started inside other runs")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page (instead of offset)")] = None,
) -> dict[str, Any]:
    """Runs, newest first, with the number matching the filters (``total``) and a cursor to the next page."""
    state = web_state(request)
    after_at, after_id = _cursor(cursor)
    params = [status, graph, _since(since), nested, after_at, after_id, limit, 0 if cursor else offset]
    rows = (await state.query(_RUNS_SQL, params)).dicts()
    total = int(rows[0]["total"]) if rows else await _total(state, params)
    runs = [
        {
            "run_id": r["run_id"],
            "graph": r["graph_id"],
            "status": r["status"],
            "started_at": jsonable(r["started_at"]),
            "ended_at": jsonable(r["ended_at"]),
            "duration_ms": r["duration_ms"],
            "events": r["event_count"],
            "parent_run_id": r["parent_run_id"],
            "parent_node_id": r["parent_node_id"],
            "error": f"{r['error_type']}: {r['error_message']}" if r["error_type"] else r["error_message"],
        }
        for r in rows
    ]
    last = rows[-1] if len(rows) == limit else None
    return {
        "runs": runs,
        "total": total,
        "limit": limit,
        "offset": None if cursor else offset,
        "next_cursor": f"{last['started_at'].isoformat()}|{last['run_id']}" if last and last["started_at"] else None,
    }


async def _total(state: WebState, params: list[Any]) -> int:
    """The count when the page came back empty (past the end): the same filters, no page."""
    rows = (await state.query(_RUNS_SQL, [*params[:4], None, "", 1, 0])).rows
    return int(rows[0][-1]) if rows else 0


async def _known_run(state: WebState, run_id: str) -> str:
    try:
        check_run_id(run_id)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if not await state.host.event_log.started_runs([run_id]):
        raise HTTPException(404, f"no run {run_id} on the bus; list runs with GET /api/runs")
    return run_id


@router.get("/{run_id}")
async def get_run(request: Request, run_id: str) -> dict[str, Any]:
    """One run rebuilt from its journal: status, inputs, outputs or error with traceback, nodes, open waits,
    parent and children."""
    state = web_state(request)
    check = await _known_run(state, run_id)
    store = await asyncio.to_thread(ProjectionStore.open, ":memory:")
    try:
        try:
            run = await rebuild_run_state(state.host.event_log, check, store)
        except RunNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        row = store.query(
            "SELECT inputs, parent_run_id, parent_node_id, root_run_id FROM runs WHERE run_id = ?", [run_id]
        ).rows[0]
        children = store.query(
            "SELECT run_id, graph_id, status, parent_node_id FROM runs WHERE parent_run_id = ? ORDER BY started_at",
            [run_id],
        ).dicts()
    finally:
        store.close()
    body = run_state_json(run)
    body.update(
        inputs=msgspec.json.decode(row[0]) if row[0] is not None else None,
        started_at=jsonable(run.started_at),
        ended_at=jsonable(run.ended_at),
        parent={"run_id": row[1], "node_id": row[2]} if row[1] else None,
        root_run_id=row[3] or run_id,
        children=[
            {"run_id": c["run_id"], "graph": c["graph_id"], "status": c["status"], "node_id": c["parent_node_id"]}
            for c in children
        ],
    )
    return body


class SubmitBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    graph: str
    inputs: dict[str, Any] = {}
    run_id: str | None = None
    max_concurrency: int | None = None


@router.post("", status_code=202)
async def submit_run(
    request: Request,
    body: Annotated[
        dict[str, Any],
        Body(description='{"graph": NAME, "inputs": {...}, "run_id"?: str, "max_concurrency"?: int}'),
    ],
) -> dict[str, Any]:
    """Queue a run of a graph this server serves; a worker serving the graph runs it (202: queued)."""
    state = web_state(request)
    try:
        submit = msgspec.convert(body, SubmitBody)
    except msgspec.ValidationError as exc:
        shape = "{'graph', 'inputs', 'run_id'?, 'max_concurrency'?}"
        raise HTTPException(422, f"the body must be {shape}: {exc}") from None
    spec = registered_graphs().get(submit.graph)
    if spec is None or spec.kind == "tool":
        served = sorted(name for name, s in registered_graphs().items() if s.kind != "tool")
        raise HTTPException(404, f"this server serves no graph {submit.graph!r}; it serves {served} (GET /api/graphs)")
    if submit.max_concurrency is not None and (spec.kind != "static" or submit.max_concurrency < 1):
        raise HTTPException(422, "max_concurrency applies to static graphs (@graphify) and must be >= 1")
    try:
        run_id = check_run_id(submit.run_id) if submit.run_id else new_run_id()
        inputs = bind_run_inputs(spec, submit.inputs)
    except (ValueError, TypeError, GraphInputError) as exc:  # bad id, inputs not matching the signature
        raise HTTPException(422, str(exc)) from None
    try:
        await state.host.runs.submit(spec, inputs, run_id, submit.max_concurrency)
    except RunExistsError as exc:
        raise HTTPException(409, str(exc)) from None
    return {"run_id": run_id, "status": "queued", "graph": spec.name}


@router.post("/{run_id}/cancel")
async def cancel_run(
    request: Request, run_id: str, body: Annotated[dict[str, Any] | None, Body()] = None
) -> dict[str, Any]:
    """Cancel a run wherever it runs (its nodes and nested runs too); answers its status afterwards."""
    state = web_state(request)
    await _known_run(state, run_id)
    reason = str((body or {}).get("reason") or "cancelled from the HTTP API")
    status = await state.host.runs.cancel_run(run_id, reason)
    return {"run_id": run_id, "status": status}


@router.post("/{run_id}/retry")
async def retry_run(request: Request, run_id: str) -> dict[str, Any]:
    """Continue a failed or cancelled static run from its failed nodes, driven by this server's process
    (completed nodes keep their outputs); 409 if the run cannot be retried (the message says why)."""
    state = web_state(request)
    await _known_run(state, run_id)
    try:
        await state.host.runs.retry(run_id)
    except GraphNotFoundError as exc:
        raise HTTPException(409, f"{exc.message}; this server serves the graphs of its modules only") from None
    except NotRetryableError as exc:
        raise HTTPException(409, exc.message) from None
    return {"run_id": run_id, "status": "running"}


_REJECTED_STATUS = {"unknown_run": 404, "invalid_payload": 422, "malformed": 422, "invalid_run_id": 422}


@router.post("/{run_id}/resume")
async def resume_run(
    request: Request,
    run_id: str,
    body: Annotated[dict[str, Any], Body(description='the ag.cmd.resume body: {"wait_id"?: str, "payload"?: any}')],
    timeout_s: Annotated[float, Query(gt=0, le=60, description="how long to wait for a worker's outcome")] = 10.0,
) -> JSONResponse:
    """Answer a wait of the run (or of a run nested under it); answers the resume outcome.

    200 ``accepted``; 202 ``queued`` (no process serving the graph took it yet; the command stays stored);
    404/409/422 rejected, with the reason (``invalid_payload`` is 422: the payload fails the wait's schema).
    """
    web_state(request)
    unknown = sorted(set(body) - {"wait_id", "payload"})
    if unknown or not isinstance(body.get("wait_id"), str | None):
        raise HTTPException(422, f'the body is {{"wait_id"?: str, "payload"?: any}}; unknown fields: {unknown}')
    try:
        outcome = await resume(run_id, body.get("payload"), body.get("wait_id"), timeout=timeout_s)
    except ResumeRejectedError as exc:
        detail = {
            "status": "rejected",
            "reason": exc.reason,
            "message": exc.message,
            "wait_id": exc.wait_id,
            "open_waits": [dict(w) for w in exc.open_waits],
        }
        return JSONResponse(detail, status_code=_REJECTED_STATUS.get(exc.reason, 409))
    except ValueError as exc:  # an invalid run id
        raise HTTPException(422, str(exc)) from None
    assert outcome is not None  # resume() waits for the outcome
    return JSONResponse(msgspec.to_builtins(outcome), status_code=200 if outcome.status == "accepted" else 202)


def _after(last_event_id: str | None, after: int | None) -> int | None:
    text = last_event_id if last_event_id is not None else (None if after is None else str(after))
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise HTTPException(400, f"Last-Event-ID must be a stream sequence (an integer), not {text!r}") from None


@router.get("/{run_id}/events", response_model=None)
async def run_events(
    request: Request,
    run_id: str,
    after: Annotated[int | None, Query(ge=0, description="only events released after this stream sequence")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
    accept: Annotated[str, Header()] = "application/json",
) -> Response | StreamingResponse:
    """The run's journal events; with ``Accept: text/event-stream`` a live SSE tail (ids are stream sequences)."""
    state = web_state(request)
    await _known_run(state, run_id)
    start = _after(last_event_id, after)
    if "text/event-stream" not in accept:
        items = await journal_items(state.host.event_log, run_id, start or 0)
        events = ",".join(f'{{"stream_seq":{item.stream_seq},"event":{item.data}}}' for item in items)
        last = items[-1].stream_seq if items else start
        text = f'{{"run_id":"{run_id}","events":[{events}],"last_event_id":{"null" if last is None else last}}}'
        return Response(text, media_type="application/json")
    return StreamingResponse(
        _sse(state, run_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@events_router.get("/events", response_model=None)
async def all_runs_events(
    request: Request,
    after: Annotated[int | None, Query(ge=0, description="only events stored after this stream sequence")] = None,
    limit: Annotated[int, Query(ge=1, le=ALL_RUNS_RETAIN)] = 1000,
    last_event_id: Annotated[str | None, Header()] = None,
    accept: Annotated[str, Header()] = "application/json",
) -> Response | StreamingResponse:
    """Every run's ``run.*`` and ``wait.*`` events (status changes and waits); with ``Accept:
    text/event-stream`` a live SSE stream whose ids are stream sequences (``Last-Event-ID`` resumes it).

    Without ``after`` the JSON answer is empty and says where the stream is: pass its ``last_event_id``
    as ``after`` later to read what came since (at most ``limit`` events).
    """
    state = web_state(request)
    start = _after(last_event_id, after)
    if "text/event-stream" not in accept:
        events_log = state.host.event_log
        if start is None:  # no events: where the stream is now, to start from
            records, last = [], await events_log.last_stream_seq()
        else:
            records = await events_log.read_types(ALL_RUNS_TYPES, after=start, limit=limit)
            last = records[-1].stream_seq if records else start
        events = ",".join(f'{{"stream_seq":{r.stream_seq},"event":{encode_event(r.event).decode()}}}' for r in records)
        return Response(f'{{"events":[{events}],"last_event_id":{last}}}', media_type="application/json")
    return StreamingResponse(
        _sse_all(state, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse_all(state: WebState, after: int | None) -> AsyncIterator[bytes]:
    """The all-runs SSE body: what a reconnecting client missed (read from the stream), then live events."""
    async with state.hub.follow_all() as feed:
        yield b"retry: 1000\n\n"
        if after is not None:
            missed = await feed.missed(after)
            if missed:
                yield b"".join(item.frame for item in missed)
                after = max(after, *(item.stream_seq or 0 for item in missed))
        async for batch in feed.tail(after):
            yield batch[0].frame if len(batch) == 1 else b"".join(item.frame for item in batch)


async def _sse(state: WebState, run_id: str, after: int | None) -> AsyncIterator[bytes]:
    """The SSE body: journal events with their ids, ``event: token`` deltas, keepalive comments (docs/server.md)."""
    async with state.hub.follow(run_id) as feed:
        yield b"retry: 1000\n\n"
        async for batch in feed.tail(after):
            yield batch[0].frame if len(batch) == 1 else b"".join(item.frame for item in batch)
        if feed.error is not None:
            yield b"event: error\ndata: %s\n\n" % msgspec.json.encode({"message": str(feed.error)})
