"""The ``aethergraph`` command line (also ``python -m aethergraph``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from aethergraph.bus.embedded import ensure_embedded_server, running_server, stop_embedded_server
from aethergraph.core.errors import AetherGraphError, ResumeRejectedError, RunExistsError
from aethergraph.core.ids import check_run_id, new_run_id
from aethergraph.core.journal.run_control import bind_run_inputs
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.resume import resolve_resume
from aethergraph.core.wire.events import RunCancelled, RunCompleted, RunFailed
from aethergraph.host.runs import Suspended
from aethergraph.projections.run_state import RunState, rebuild_run_state
from aethergraph.runtime import get_runtime, load_target, resume, serve_worker

from .cli_common import (
    EXIT_USAGE,
    app,
    checked_run_id,
    console,
    drive,
    err_console,
    reader_settings,
    settings_or_exit,
)
from .console import add_event_row, event_line, event_table, event_to_json, outputs_table, run_state_json
from .progress import RunProgress

__all__ = ["app", "main"]


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
        inputs[key] = _input_value(key, raw)
    return inputs


_JSON_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")


def _input_value(key: str, raw: str) -> Any:
    """An ``--input`` value: JSON where it looks like JSON, else the text as given.

    A value starting with ``[``, ``{`` or ``"`` must be valid JSON; a JSON
    number, ``true``, ``false`` or ``null`` is that value; anything else
    (``hello``, ``1.2.3``) is a string.
    """
    text = raw.strip()
    if text[:1] in ("[", "{", '"'):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(
                f"input {key!r}: {raw!r} looks like JSON but does not parse ({exc.msg} at character {exc.pos}); "
                f'fix the JSON, or pass a plain string without a leading [, {{ or "'
            ) from None
    if text in ("true", "false", "null") or _JSON_NUMBER.fullmatch(text):
        return json.loads(text)
    return raw


_RUN_JSON_HELP = "print only the outputs, as JSON, on stdout (messages, logs and failures go to stderr)"
T = TypeVar("T")


@app.command()
def run(
    graph: Annotated[str, typer.Argument(help="MODULE:GRAPH or path/to/file.py:GRAPH")],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            help='KEY=VALUE; VALUE is JSON if it starts with [ { " or is a number, true, false or null, else a string',
        ),
    ] = None,
    inputs_json: Annotated[str | None, typer.Option("--inputs-json", help="all inputs as one JSON object")] = None,
    run_id: Annotated[str | None, typer.Option("--run-id", help="choose the run id (must be new)")] = None,
    events: Annotated[bool, typer.Option("--events/--no-events", help="print the run's events afterwards")] = False,
    as_json: Annotated[bool, typer.Option("--json", help=_RUN_JSON_HELP)] = False,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="if the run waits for an answer, wait until a worker finishes it")
    ] = False,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", min=1, help="static graphs: nodes of this run executing at once")
    ] = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", help="put the run on the run queue, print its id and exit; a worker runs it"),
    ] = False,
) -> None:
    """Run a graph_fn (or tool) as a journaled run and print its outputs.

    A run that waits for an answer it cannot read here is left waiting (exit
    status 3) unless --wait: answer it with `aethergraph resume`, and a worker
    (`aethergraph worker MODULE`) continues it. With --detach the run is
    submitted (status `queued`) and a worker serving the graph runs it.

    Exit status: 0 succeeded, 1 failed, 2 bad arguments, 3 waiting for an answer.
    """
    try:
        spec = load_target(graph)
        inputs = bind_run_inputs(spec, _parse_inputs(input or [], inputs_json))
        chosen = check_run_id(run_id) if run_id else new_run_id()
        if max_concurrency is not None and spec.kind != "static":
            raise ValueError("--max-concurrency applies to static graphs (@graphify)")
        if detach and (wait or events):
            raise ValueError("--detach returns at once; follow the run with `aethergraph status RUN_ID` instead")
    except (AetherGraphError, TypeError, ValueError) as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    settings_or_exit()
    if detach:
        _submit_detached(spec, inputs, chosen, max_concurrency, graph=graph, as_json=as_json)
        return

    async def go() -> tuple[dict[str, Any], list[Any]]:
        return await _run_here(spec, inputs, chosen, max_concurrency=max_concurrency, wait=wait, events=events)

    outputs, journal = _drive_with_pure_stdout(go) if as_json else drive(go)
    if as_json:
        sys.stdout.write(json.dumps(outputs) + "\n")
        return
    console.print(f"[bold green]run {chosen} succeeded[/] ({spec.label})")
    console.print(outputs_table(outputs))
    if events:
        _print_events(chosen, journal)


async def _run_here(
    spec: CallableSpec,
    inputs: dict[str, Any],
    chosen: str,
    *,
    max_concurrency: int | None,
    wait: bool,
    events: bool,
) -> tuple[dict[str, Any], list[Any]]:
    """Drive the run in this process with a progress display; exit 3 if it waits, 1 if it fails."""
    runtime = await get_runtime()
    runtime.driver.on_suspend = functools.partial(_announce_suspension, continue_here=wait)
    failure: BaseException | None = None
    outputs: dict[str, Any] = {}
    waiting = False
    total_nodes = len(spec.task_graph().nodes) if spec.kind == "static" else None
    interval = runtime.settings.progress_interval_s
    async with RunProgress(
        runtime.bus, chosen, spec.name, err_console, total_nodes=total_nodes, plain_interval_s=interval
    ):
        try:
            end = await runtime.driver.start(spec, inputs, chosen, max_concurrency=max_concurrency)
            if isinstance(end, Suspended) and wait:
                end = await runtime.runs.handle(chosen).result()
            if isinstance(end, Suspended):
                waiting = True
            else:
                outputs = end
        except RunExistsError as exc:  # refused before anything was written: not this run's failure
            err_console.print(f"[red]error:[/] {escape(exc.message)}")
            raise typer.Exit(2) from None
        except Exception as exc:  # noqa: BLE001 - reported below with the run id
            failure = exc
    journal = [record.event async for record in runtime.event_log.read_run(chosen)] if events or failure else []
    if waiting:
        if journal:
            _print_events(chosen, journal)
        raise typer.Exit(3)
    if failure is not None:
        if journal:
            _print_events(chosen, journal)
        err_console.print(f"[red]run {chosen} failed:[/] {type(failure).__name__}: {escape(str(failure))}")
        raise typer.Exit(1)
    return outputs, journal


def _drive_with_pure_stdout(go: Callable[[], Awaitable[T]]) -> T:
    """``drive(go)`` with stdout sent to stderr: whatever the run prints (channel messages, a tool's own
    prints, the failure's events) stays off stdout, which ``--json`` keeps for the outputs alone."""
    with contextlib.redirect_stdout(sys.stderr):
        return drive(go)


def _submit_detached(
    spec: CallableSpec, inputs: dict[str, Any], run_id: str, max_concurrency: int | None, *, graph: str, as_json: bool
) -> None:
    async def go() -> None:
        await (await get_runtime()).runs.submit(spec, inputs, run_id, max_concurrency)

    drive(go)
    module = graph.partition(":")[0]
    sys.stdout.write((json.dumps({"run_id": run_id, "status": "queued"}) if as_json else run_id) + "\n")
    sys.stdout.flush()
    err_console.print(
        f"run {run_id} is queued; a worker serving its graph runs it (`aethergraph worker {module}`). "
        f"Follow it with `aethergraph status {run_id}`"
    )


def _announce_suspension(suspended: Suspended, *, continue_here: bool) -> None:
    nested = suspended.wait_run_id != suspended.run_id
    where = f" (in nested run {suspended.wait_run_id})" if nested else ""
    wait_ref = f"{suspended.wait_run_id}/{suspended.wait_id}" if nested else suspended.wait_id
    how = (
        "this process continues it when the answer comes"
        if continue_here
        else "a worker (`aethergraph worker MODULE`) continues it (`run --wait` stays and continues its own run)"
    )
    answer = {"text": "--text '...'", "approval": "--approve (or --reject)"}.get(suspended.kind, "--json '...'")
    err_console.print(
        f"run {suspended.run_id} is waiting for {suspended.kind} wait {suspended.wait_id}{where}: "
        f"{escape(repr(suspended.prompt))}. Answer it with `aethergraph resume {suspended.run_id} "
        f"--wait-id {wait_ref} {answer}`; {how}.",
        soft_wrap=True,
        highlight=False,
    )


def _print_events(run_id: str, journal: list[Any]) -> None:
    table = event_table(title=f"events of run {run_id} (subject ag.evt.{run_id}.<type>)")
    for event in journal:
        add_event_row(table, event)
    console.print(table)


@app.command("events")
def events_command(
    run_id: Annotated[str, typer.Argument(help="the run whose events to print")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="print new events as they come, until the run ends (or Ctrl-C)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON event per line")] = False,
) -> None:
    """Print a run's events in journal order; with --follow, until the run ends.

    Exit status: 0 printed, 1 no bus to read, 2 no such run.
    """
    checked_run_id(run_id)
    reader_settings()

    async def go() -> int | None:
        runtime = await get_runtime()
        if not await runtime.event_log.started_runs([run_id]):
            return None
        count = 0
        table = event_table(title=f"events of run {run_id}")
        records = runtime.event_log.read_run(run_id, follow=follow)
        try:
            async for record in records:
                count += 1
                if as_json:
                    sys.stdout.write(event_to_json(record.event) + "\n")
                    sys.stdout.flush()
                elif follow:
                    console.print(event_line(record.event), highlight=False)
                else:
                    add_event_row(table, record.event)
                if follow and isinstance(record.event, RunCompleted | RunFailed | RunCancelled):
                    break  # the run ended
        finally:
            close = getattr(records, "aclose", None)
            if close is not None:
                await close()  # stop following: no subscription is left behind
        if not as_json and not follow and count:
            console.print(table)
        return count

    if drive(go) is None:
        err_console.print(f"[red]error:[/] no run {run_id} on the bus; list runs with `aethergraph runs`")
        raise typer.Exit(EXIT_USAGE)


@app.command("worker")
def worker_command(
    modules: Annotated[list[str], typer.Argument(help="modules (pkg.module or path/file.py) whose graphs to serve")],
) -> None:
    """Serve as a worker: continue resumed runs and take over runs of dead processes, until Ctrl-C."""
    settings = settings_or_exit()
    err_console.print(
        f"[bold]worker[/] serving graphs of {', '.join(modules)}; takeover after {settings.lease_s:g}s of silence"
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_worker(*modules, stop=stop)

    drive(go)


def _resume_payload(as_json: str | None, text: str | None, approve: bool | None) -> Any:
    given = [value is not None for value in (as_json, text, approve)]
    if sum(given) != 1:
        raise typer.BadParameter("give exactly one of --json, --text, --approve/--reject")
    if as_json is not None:
        try:
            return json.loads(as_json)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--json is not valid JSON: {exc}") from None
    if text is not None:
        return text
    return {"approved": bool(approve)}


@app.command("resume")
def resume_command(
    run_id: Annotated[
        str, typer.Argument(help="the run whose wait to answer (a wait of any run nested under it is found too)")
    ],
    as_json: Annotated[str | None, typer.Option("--json", help="the payload as JSON")] = None,
    text: Annotated[str | None, typer.Option("--text", help="the payload as a plain string")] = None,
    approve: Annotated[
        bool | None, typer.Option("--approve/--reject", help="shorthand for --json '{\"approved\": true|false}'")
    ] = None,
    wait_id: Annotated[
        str | None,
        typer.Option("--wait-id", help="which wait, if several are open: w4, or <nested_run_id>/w4 for a nested run's"),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for a worker's answer")] = 10.0,
) -> None:
    """Answer a run's wait by publishing a resume command to ag.cmd.resume.<run_id>.

    The wait may be held by the run or by any run nested under it (a graph it
    called, a dual-stage node of a static graph, a run started with
    context.runs()); with several open, the rejection lists them.

    Exit status: 0 accepted (the run continues), 1 rejected (the reason is
    printed; nothing changed), 2 bad arguments, 3 queued (no process that
    serves the run's graph took it yet; the message says what to start).
    """
    checked_run_id(run_id)
    try:
        payload = _resume_payload(as_json, text, approve)
    except typer.BadParameter as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    reader_settings()

    async def go() -> None:
        try:
            located = await resolve_resume((await get_runtime()).env, run_id, wait_id, payload)
            where = "" if located.run.run_id == run_id else f" of nested run {located.run.run_id}"
            wait = located.requested
            err_console.print(f"answering wait {located.ref}{where} ({wait.kind}): {escape(wait.prompt)}")
            outcome = await resume(run_id, payload, located.ref, timeout=timeout)
        except ResumeRejectedError as exc:
            err_console.print(f"[red]rejected ({exc.reason}):[/] {escape(str(exc))}")
            for open_wait in exc.open_waits:
                node = f" node {open_wait['node_id']}" if open_wait["node_id"] else ""
                err_console.print(
                    f"  --wait-id {open_wait['wait_id']}  (run {open_wait['run_id']}{node}, {open_wait['kind']}): "
                    f"{escape(str(open_wait['prompt']))}"
                )
            raise typer.Exit(1) from None
        if outcome is None or outcome.status in ("queued", "deferred"):
            console.print(f"[yellow]resume of run {run_id} queued:[/] {outcome.message if outcome else ''}")
            raise typer.Exit(3)
        else:
            console.print(
                f"[green]resume of run {run_id} {outcome.status}[/] by {outcome.worker} (wait {outcome.wait_id})"
            )

    drive(go)


@app.command("status")
def status_command(
    run_id: Annotated[str, typer.Argument(help="the run")],
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Print a run's status, nodes and open waits, rebuilt from the stream (works on any host).

    A failed run's error is shown with its traceback (as journaled with the failure).
    """
    checked_run_id(run_id)
    reader_settings()

    async def go() -> RunState:
        return await rebuild_run_state((await get_runtime()).event_log, run_id)

    state = drive(go)
    if as_json:
        sys.stdout.write(json.dumps(run_state_json(state)) + "\n")
        return
    console.print(
        f"[bold]{run_id}[/] ({state.graph_id}): [bold]{state.status}[/] after {state.event_count} events"
        + (f" [red]{escape(state.error)}[/]" if state.error else "")
    )
    for node in state.nodes:
        where = "" if node.run_id == run_id else f" [dim](nested run {node.run_id})[/]"
        skipped = f" ({node.skip_reason})" if node.status == "skipped" and node.skip_reason else ""
        console.print(f"  node {node.node_id} {node.status}{skipped}{where}")
    for wait in state.open_waits:
        where = "" if wait.run_id == run_id else f" in nested run {wait.run_id}"
        console.print(f"  open wait [bold]{wait.wait_id}[/]{where} ({wait.kind}): {escape(wait.prompt)}")
    if state.waiting_on and state.waiting_on[1] != run_id:
        console.print(f"  waiting on wait {state.waiting_on[0]} of nested run {state.waiting_on[1]}")
    if state.traceback:
        console.print("[bold]traceback[/] (journaled with the failure):")
        console.print(escape(state.traceback.rstrip()), highlight=False, soft_wrap=True)


@app.command("nats")
def nats_command(
    stop: Annotated[bool, typer.Option("--stop", help="stop the workspace's embedded server")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the server as JSON")] = False,
    migrate: Annotated[
        bool,
        typer.Option("--migrate", help="update existing streams to these settings' replicas and limits"),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="with --migrate: print the changes only")] = False,
) -> None:
    """Show the bus URL, starting the workspace's embedded nats-server if none runs.

    With --migrate: connect, print how the streams differ from the AETHERGRAPH_* settings
    (replicas, duplicate window, largest event) and update them (see docs/cluster.md).
    """
    settings = settings_or_exit()
    if migrate:
        cli_migrate.migrate_streams(settings, dry_run=dry_run, as_json=as_json)
        return
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
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/]: {value}")


# The projection commands (projector, sql, runs, lineage, export) and the static-graph
# commands (graph, cancel, retry) register on the same app.
from . import cli_graphs, cli_inspect, cli_migrate, cli_projections, cli_server  # noqa: E402

__all__ += ["cli_graphs", "cli_inspect", "cli_migrate", "cli_projections", "cli_server"]


def main() -> None:
    app()
