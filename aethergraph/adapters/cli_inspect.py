"""``aethergraph result | waits``: how a run ended, and what waits for an answer."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from aethergraph.core.errors import RunNotFoundError
from aethergraph.projections.run_state import OpenWait, RunState, rebuild_run_state
from aethergraph.runtime import get_runtime

from .cli_common import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_NOT_ENDED,
    EXIT_USAGE,
    EXIT_WAITING,
    app,
    checked_run_id,
    console,
    drive,
    err_console,
    reader_settings,
)
from .cli_projections import query_projections
from .console import outputs_table

__all__ = ["OPEN_WAITS_SQL", "answer_command", "result_command", "waits_command"]

_EXIT = {"succeeded": 0, "failed": EXIT_FAILED, "waiting": EXIT_WAITING, "cancelled": EXIT_CANCELLED}


def answer_command(root_run_id: str, run_id: str, wait_id: str, kind: str) -> str:
    """The command that answers wait ``wait_id`` of ``run_id`` (nested under ``root_run_id``, or that run)."""
    ref = wait_id if run_id == root_run_id else f"{run_id}/{wait_id}"
    payload = "--text '...'" if kind == "text" else "--json '...'"
    return f"aethergraph resume {shlex.quote(root_run_id)} --wait-id {shlex.quote(ref)} {payload}"


def _result_json(state: RunState) -> dict[str, Any]:
    return {
        "run_id": state.run_id,
        "graph": state.graph_id,
        "status": state.status,
        "outputs": state.outputs,
        "error": state.error,
        "traceback": state.traceback,
        "open_waits": [_wait_json(state.run_id, w) for w in state.open_waits],
    }


def _wait_json(root_run_id: str, wait: OpenWait) -> dict[str, Any]:
    return {
        "run_id": wait.run_id,
        "wait_id": wait.wait_id,
        "node_id": wait.node_id,
        "kind": wait.kind,
        "prompt": wait.prompt,
        "answer": answer_command(root_run_id, wait.run_id, wait.wait_id, wait.kind),
    }


@app.command("result")
def result_command(
    run_id: Annotated[str, typer.Argument(help="the run")],
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object: status, outputs, error, traceback, open waits")
    ] = False,
) -> None:
    """Print a run's outputs, or its error with the journaled traceback; the exit status says which.

    Exit status: 0 succeeded (the outputs are on stdout), 1 failed (the error and its traceback on
    stderr), 2 no such run, 3 waiting for an answer (how to answer is printed), 4 not ended yet
    (queued or running), 5 cancelled.
    """
    checked_run_id(run_id)
    reader_settings()

    async def go() -> RunState | None:
        try:
            return await rebuild_run_state((await get_runtime()).event_log, run_id)
        except RunNotFoundError:
            return None

    state = drive(go)
    if state is None:
        err_console.print(f"[red]error:[/] no run {run_id} on the bus; list runs with `aethergraph runs`")
        raise typer.Exit(EXIT_USAGE)
    status = state.status or "unknown"
    if as_json:
        sys.stdout.write(json.dumps(_result_json(state)) + "\n")
    elif status == "succeeded":
        console.print(outputs_table(state.outputs or {}))
    _explain(state, status)
    raise typer.Exit(_EXIT.get(status, EXIT_NOT_ENDED))


def _explain(state: RunState, status: str) -> None:
    """What the run's status means for the user, on stderr."""
    run_id = state.run_id
    if status == "succeeded":
        err_console.print(f"[green]run {run_id} succeeded[/] ({state.graph_id})")
    elif status == "failed":
        err_console.print(f"[red]run {run_id} failed:[/] {escape(state.error or 'no error recorded')}")
        if state.traceback:
            err_console.print(escape(state.traceback.rstrip()), highlight=False, soft_wrap=True)
    elif status == "cancelled":
        err_console.print(f"[magenta]run {run_id} was cancelled[/]: {escape(state.error or 'no reason given')}")
    elif status == "waiting":
        err_console.print(f"[yellow]run {run_id} is waiting for an answer[/]")
        for wait in state.open_waits:
            err_console.print(
                f"  wait {wait.wait_id} ({wait.kind}): {escape(wait.prompt)}\n"
                f"    answer: {escape(answer_command(run_id, wait.run_id, wait.wait_id, wait.kind))}",
                soft_wrap=True,
            )
    else:
        err_console.print(
            f"[cyan]run {run_id} has not ended[/] ({status}, {state.event_count} events); "
            f"follow it with `aethergraph events {run_id} --follow`",
            soft_wrap=True,
        )


OPEN_WAITS_SQL = """
SELECT w.run_id, w.wait_id, w.node_id, w.kind, w.prompt, w.requested_at, w.deadline,
       w.payload_schema, w.channel, coalesce(r.root_run_id, w.run_id) AS root_run_id
FROM waits w
LEFT JOIN runs r ON r.run_id = w.run_id
LEFT JOIN runs root ON root.run_id = coalesce(r.root_run_id, w.run_id)
WHERE w.status = 'open'
  AND coalesce(r.status, '') NOT IN ('succeeded', 'failed', 'cancelled')
  AND coalesce(root.status, '') NOT IN ('succeeded', 'failed', 'cancelled')
  AND ($1::VARCHAR IS NULL OR coalesce(r.root_run_id, w.run_id) = $1 OR w.run_id = $1)
ORDER BY w.requested_at, w.run_id, w.wait_id
"""


@app.command("waits")
def waits_command(
    run_id: Annotated[
        str | None, typer.Option("--run", help="only the waits of this run (and its nested runs)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON array")] = False,
) -> None:
    """List every open wait across runs: run, wait id, node, prompt, and the command that answers it.

    Waits of runs that ended (cancelled, failed) are closed with their run and not listed.
    """
    if run_id is not None:
        checked_run_id(run_id)
    result = query_projections(OPEN_WAITS_SQL, [run_id])
    waits = [
        {
            "run_id": row["run_id"],
            "wait_id": row["wait_id"],
            "node_id": row["node_id"],
            "kind": row["kind"],
            "prompt": row["prompt"],
            "requested_at": row["requested_at"].isoformat() if row["requested_at"] else None,
            "answer": answer_command(row["root_run_id"], row["run_id"], row["wait_id"], row["kind"] or ""),
        }
        for row in result.dicts()
    ]
    if as_json:
        sys.stdout.write(json.dumps(waits) + "\n")
        return
    if not waits:
        console.print("no open waits")
        return
    table = Table(title="open waits", show_lines=True, header_style="bold")
    table.add_column("run", no_wrap=True)
    table.add_column("wait", no_wrap=True)
    table.add_column("node")
    table.add_column("prompt")
    table.add_column("answer with", overflow="fold")
    for wait in waits:
        table.add_row(
            wait["run_id"],
            f"{wait['wait_id']} ({wait['kind']})",
            escape(wait["node_id"] or ""),
            escape(wait["prompt"] or ""),
            escape(wait["answer"]),
        )
    console.print(table)
