"""Commands for static graphs and run control: ``graph``, ``cancel``, ``retry``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from aethergraph.core.errors import AetherGraphError
from aethergraph.runtime import get_runtime, import_modules, load_target

from .cli_common import app, checked_run_id, console, drive, err_console, reader_settings, settings_or_exit
from .console import outputs_table

__all__ = ["cancel_command", "graph_command", "retry_command"]


@app.command("graph")
def graph_command(
    target: Annotated[str, typer.Argument(help="MODULE:GRAPH of a @graphify graph")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="mermaid, dot, or json (nodes, dependencies, io signature)")
    ] = "mermaid",
) -> None:
    """Build a static graph and print it (Mermaid, Graphviz DOT or JSON) without running it."""
    try:
        spec = load_target(target)
        graph = spec.task_graph()
    except (AetherGraphError, TypeError) as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if fmt == "mermaid":
        sys.stdout.write(graph.to_mermaid())
    elif fmt == "dot":
        sys.stdout.write(graph.to_dot())
    elif fmt == "json":
        sys.stdout.write(json.dumps({**graph.describe(), "digest": graph.digest, "order": list(graph.order)}) + "\n")
    else:
        err_console.print(f"[red]error:[/] --format must be mermaid, dot or json, not {escape(repr(fmt))}")
        raise typer.Exit(2)


@app.command("cancel")
def cancel_command(
    run_id: Annotated[str, typer.Argument(help="the run to cancel (its running nodes and nested runs too)")],
    reason: Annotated[str, typer.Option("--reason", help="recorded in run.cancelled")] = "",
) -> None:
    """Cancel a run wherever it runs; a waiting run is cancelled at once."""
    checked_run_id(run_id)
    reader_settings()  # nothing to cancel where there is no bus: no server is started for it

    async def go() -> str:
        return await (await get_runtime()).runs.cancel_run(run_id, reason or "cancelled from the command line")

    status = drive(go)
    colour = "green" if status == "cancelled" else "yellow"
    console.print(f"[{colour}]run {run_id} is {status}[/]")
    if status != "cancelled":
        raise typer.Exit(1)


@app.command("retry")
def retry_command(
    run_id: Annotated[str, typer.Argument(help="a failed or cancelled run of a static graph")],
    module: Annotated[
        list[str] | None, typer.Option("--module", "-m", help="module defining the graph and its tools (repeatable)")
    ] = None,
) -> None:
    """Continue a failed static run from its failed nodes; completed nodes keep their outputs."""
    checked_run_id(run_id)
    settings_or_exit()
    try:
        import_modules(*(module or []))
    except AetherGraphError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None

    async def go() -> dict[str, Any]:
        handle = await (await get_runtime()).runs.retry(run_id)
        return await handle.result()

    outputs = drive(go)
    console.print(f"[bold green]run {run_id} succeeded[/]")
    console.print(outputs_table(outputs))
