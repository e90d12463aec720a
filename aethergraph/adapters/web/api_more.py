"""``/api/waits``, ``/api/graphs``, ``/api/sql`` and ``/api/artifacts``."""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request
from fastapi.responses import FileResponse

from aethergraph.core.errors import ArtifactNotFoundError, ProjectionError
from aethergraph.core.model.registry import registered_graphs
from aethergraph.core.model.spec import CallableSpec
from aethergraph.projections.store import check_read_only

from ..cli_inspect import OPEN_WAITS_SQL
from .state import jsonable, web_state

__all__ = ["router"]

router = APIRouter(prefix="/api")


@router.get("/waits", tags=["waits"])
async def list_waits(request: Request, run_id: str | None = None) -> dict[str, Any]:
    """Open waits across runs (or of one run and its nested runs), each with its payload's JSON Schema.

    ``resume`` names the call that answers it: POST /api/runs/{resume.run_id}/resume with
    ``{"wait_id": resume.wait_id, "payload": ...}``.
    """
    rows = (await web_state(request).query(OPEN_WAITS_SQL, [run_id])).dicts()
    waits = []
    for row in rows:
        root = row["root_run_id"]
        waits.append(
            {
                "run_id": row["run_id"],
                "wait_id": row["wait_id"],
                "node_id": row["node_id"],
                "kind": row["kind"],
                "prompt": row["prompt"],
                "channel": row["channel"],
                "schema": json.loads(row["payload_schema"]) if row["payload_schema"] else {},
                "requested_at": jsonable(row["requested_at"]),
                "deadline": jsonable(row["deadline"]),
                "root_run_id": root,
                "resume": {
                    "run_id": root,
                    "wait_id": row["wait_id"] if row["run_id"] == root else f"{row['run_id']}/{row['wait_id']}",
                },
            }
        )
    return {"waits": waits}


def _default(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _graph_json(spec: CallableSpec) -> dict[str, Any]:
    inputs = [
        {
            "name": name,
            "required": param.default is inspect.Parameter.empty,
            "default": None if param.default is inspect.Parameter.empty else _default(param.default),
        }
        for name, param in spec.signature.parameters.items()
        if name != spec.context_param and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    ]
    structure = None
    if spec.kind == "static":
        graph = spec.task_graph()
        structure = {**graph.describe(), "digest": graph.digest, "order": list(graph.order)}
    outputs = list(spec.outputs)
    return {"name": spec.name, "kind": spec.kind, "inputs": inputs, "outputs": outputs, "structure": structure}


@router.get("/graphs", tags=["graphs"])
async def list_graphs(request: Request) -> dict[str, Any]:
    """The graphs this server serves (from the modules it imported): inputs, outputs, and a static graph's
    structure (nodes, dependencies, io signature: what `aethergraph graph --format json` prints)."""
    web_state(request)
    specs = sorted((s for s in registered_graphs().values() if s.kind != "tool"), key=lambda s: s.name)
    return {"graphs": [_graph_json(spec) for spec in specs]}


@router.post("/sql", tags=["sql"])
async def run_sql(
    request: Request,
    body: Annotated[dict[str, Any], Body(description='{"sql": "SELECT ...", "params"?: [...]}')],
) -> dict[str, Any]:
    """Read-only SQL on the projections: one SELECT (or WITH, DESCRIBE, SHOW, SUMMARIZE); anything else is 400."""
    sql, params = body.get("sql"), body.get("params")
    if not isinstance(sql, str) or not (params is None or isinstance(params, list | dict)):
        raise HTTPException(422, 'the body is {"sql": "SELECT ...", "params"?: [...] or {...}}')
    try:
        check_read_only(sql)  # refused here already, before it reaches the projector
        result = await web_state(request).query(sql, params)
    except ProjectionError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"columns": list(result.columns), "types": list(result.types), "rows": jsonable(result.rows)}


@router.get("/artifacts/{ref:path}", tags=["artifacts"], response_class=FileResponse)
async def download_artifact(request: Request, ref: str) -> FileResponse:
    """An artifact's content, by its id (sha256) or its URI; named and typed as the run saved it."""
    state = web_state(request)
    blobs = state.host.service_backends.blobs
    digest = blobs.digest_of(ref)
    if digest is None:
        raise HTTPException(404, f"{ref!r} names no artifact: give its artifact_id (sha256) or its URI")
    try:
        path = await blobs.get_file(digest, None)
    except ArtifactNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    rows = (
        await state.query("SELECT mime, name FROM artifacts WHERE artifact_id = $1 ORDER BY seq LIMIT 1", [digest])
    ).rows
    mime, name = (rows[0][0] or None, rows[0][1] or None) if rows else (None, None)
    return FileResponse(
        path,
        media_type=mime or "application/octet-stream",
        filename=name or digest,
        content_disposition_type="inline",
    )
