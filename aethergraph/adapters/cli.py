"""The ``aethergraph`` command line (also ``python -m aethergraph``)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from aethergraph.bus.embedded import ensure_embedded_server, running_server, stop_embedded_server
from aethergraph.core.errors import AetherGraphError
from aethergraph.core.executor import execute_run
from aethergraph.core.ids import check_run_id, new_run_id
from aethergraph.core.settings import Settings, load_settings
from aethergraph.runtime import close_runtime, get_runtime, load_target

from .console import add_event_row, event_line, event_table, event_to_json, outputs_table
from .progress import RunProgress

__all__ = ["app", "main"]

app = typer.Typer(
    name="aethergraph",
    help="Run journaled agent graphs on NATS JetStream and inspect their events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:
        err_console.print(f"[red]invalid AETHERGRAPH_* setting:[/] {exc}")
        raise typer.Exit(2) from None


def _drive(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, closing the runtime after; AetherGraph errors become messages, not tracebacks."""

    async def main() -> T:
        try:
            return await make()
        finally:
            await close_runtime()

    try:
        return asyncio.run(main())
    except AetherGraphError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def _parse_inputs(pairs: list[str], inputs_json: str | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if inputs_json:
        try:
            loaded = json.loads(inputs_json)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--inputs-json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise typer.BadParameter("--inputs-json must be a JSON object")
        inputs.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--input takes KEY=VALUE, got {pair!r}")
        try:
            inputs[key] = json.loads(raw)
        except json.JSONDecodeError:
            inputs[key] = raw
    return inputs


@app.command()
def run(
    graph: Annotated[str, typer.Argument(help="MODULE:GRAPH or path/to/file.py:GRAPH")],
    input: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="KEY=VALUE (VALUE parsed as JSON when it can be)")
    ] = None,
    inputs_json: Annotated[str | None, typer.Option("--inputs-json", help="all inputs as one JSON object")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="choose the run id (must be new)")] = None,
    events: Annotated[bool, typer.Option("--events/--no-events", help="print the run's events afterwards")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print outputs as JSON only")] = False,
) -> None:
    """Run a graph_fn (or tool) as a journaled run and print its outputs."""
    try:
        spec = load_target(graph)
        inputs = spec.bind((), _parse_inputs(input or [], inputs_json))
        chosen = check_run_id(run_id) if run_id else new_run_id()
    except (AetherGraphError, TypeError, ValueError) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    _settings()

    async def go() -> tuple[dict[str, Any], list[Any]]:
        runtime = await get_runtime()
        failure: BaseException | None = None
        outputs: dict[str, Any] = {}
        async with RunProgress(runtime.bus.nc, chosen, spec.name, err_console):
            try:
                outputs = await execute_run(spec, inputs, run_id=chosen, env=runtime)
            except Exception as exc:  # noqa: BLE001 - reported below with the run id
                failure = exc
        journal = [record.event async for record in runtime.event_log.read_run(chosen)] if events or failure else []
        if failure is not None:
            if journal:
                _print_events(chosen, journal)
            err_console.print(f"[red]run {chosen} failed:[/] {type(failure).__name__}: {failure}")
            raise typer.Exit(1)
        return outputs, journal

    outputs, journal = _drive(go)
    if as_json:
        sys.stdout.write(json.dumps(outputs) + "\n")
        return
    console.print(f"[bold green]run {chosen} succeeded[/] ({spec.label})")
    console.print(outputs_table(outputs))
    if events:
        _print_events(chosen, journal)


def _print_events(run_id: str, journal: list[Any]) -> None:
    table = event_table(title=f"events of run {run_id} (subject ag.evt.{run_id}.<type>)")
    for event in journal:
        add_event_row(table, event)
    console.print(table)


@app.command("events")
def events_command(
    run_id: Annotated[str, typer.Argument(help="the run whose events to print")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events (Ctrl-C to stop)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON event per line")] = False,
) -> None:
    """Print a run's events in journal order."""
    try:
        check_run_id(run_id)
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    _settings()

    async def go() -> int:
        runtime = await get_runtime()
        count = 0
        table = event_table(title=f"events of run {run_id}")
        async for record in runtime.event_log.read_run(run_id, follow=follow):
            count += 1
            if as_json:
                sys.stdout.write(event_to_json(record.event) + "\n")
                sys.stdout.flush()
            elif follow:
                console.print(event_line(record.event), highlight=False)
            else:
                add_event_row(table, record.event)
        if not as_json and not follow and count:
            console.print(table)
        return count

    if _drive(go) == 0:
        err_console.print(f"[yellow]no events for run {run_id}[/]")
        raise typer.Exit(1)


@app.command("nats")
def nats_command(
    stop: Annotated[bool, typer.Option("--stop", help="stop the workspace's embedded server")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the server as JSON")] = False,
) -> None:
    """Show the bus URL, starting the workspace's embedded nats-server if none runs."""
    settings = _settings()
    try:
        if settings.nats_url:
            if stop:
                err_console.print("[yellow]AETHERGRAPH_NATS_URL is set: that server is not managed here[/]")
                raise typer.Exit(1)
            info: dict[str, Any] = {"url": settings.nats_url, "embedded": False}
        elif stop:
            stopped = stop_embedded_server(settings.workspace)
            console.print("stopped the embedded server" if stopped else "no embedded server was running")
            return
        else:
            before = running_server(settings.workspace)
            server = before or ensure_embedded_server(settings.workspace, sync_interval=settings.sync_interval)
            info = {
                "url": server.url,
                "embedded": True,
                "pid": server.pid,
                "workspace": str(server.workspace),
                "sync_interval": server.sync_interval,
                "started": before is None,
                "log": str(server.log_file),
            }
    except AetherGraphError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/]: {value}")


def main() -> None:
    app()
