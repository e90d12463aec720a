"""``aethergraph projector | sql | runs | lineage | export | projections rebuild``: the projections from the
command line."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import re
import signal
import sys
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

from aethergraph.projections.client import ProjectionAccess, serve_projections, store_path
from aethergraph.projections.projector import Projector
from aethergraph.projections.schema import node_entity
from aethergraph.projections.store import EXPORT_STORAGE_VERSION, QueryResult
from aethergraph.runtime import get_runtime

from .cli_common import app, checked_run_id, console, drive, err_console, reader_settings, settings_or_exit

__all__ = ["CatchUpProgress", "notice", "parse_duration", "query_projections", "result_table"]

projections_app = typer.Typer(help="Manage the workspace's projection store (the DuckDB tables behind `sql`).")
app.add_typer(projections_app, name="projections")


def notice(message: str) -> None:
    """Tell the user something about the store on stderr (it is folded again, and why)."""
    err_console.print(f"[yellow]{escape(message)}[/]", soft_wrap=True)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta:
    """``30s``, ``15m``, ``2h``, ``1d``, ``1w`` as a timedelta (typer.BadParameter otherwise)."""
    match = _DURATION.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration; write a number and a unit: 30s, 15m, 2h, 1d or 1w")
    return dt.timedelta(seconds=float(match[1]) * _UNIT_S[match[2]])


# Catch-ups shorter than this many events finish before a bar would be worth drawing.
_PROGRESS_FROM = 20_000


class CatchUpProgress:
    """A progress bar on stderr while the store folds a long backlog."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._progress: Progress | None = None
        self._task: Any = None
        self._first: int | None = None

    def __call__(self, reached: int, target: int) -> None:
        if self._first is None:
            self._first = reached
        if self._progress is None:
            if not target or target - self._first < _PROGRESS_FROM:
                return
            self._progress = Progress(
                TextColumn(f"[bold]{self._what}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("events"),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._what, total=target - self._first)
        self._progress.update(self._task, completed=reached - self._first)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    return value if isinstance(value, str | int | float) else _json_default(value)


def _cell(value: Any) -> str:
    if value is None:
        return "[dim]NULL[/]"
    if isinstance(value, dt.datetime):
        return escape(value.isoformat(sep=" ", timespec="milliseconds"))
    return escape(str(value))


def result_table(result: QueryResult, *, title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False)
    for column, kind in zip(result.columns, result.types, strict=True):
        numeric = kind.split("(")[0] in {"BIGINT", "INTEGER", "DOUBLE", "HUGEINT", "SMALLINT", "FLOAT", "DECIMAL"}
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in result.rows:
        table.add_row(*(_cell(v) for v in row))
    return table


def query_projections(sql: str, params: list[Any] | None = None, *, what: str = "catching up") -> QueryResult:
    """Run read-only ``sql`` on the workspace's projections (exits with a message when there is no bus)."""
    reader_settings()
    progress = CatchUpProgress(what)

    async def go() -> QueryResult:
        runtime = await get_runtime()
        try:
            access = ProjectionAccess(runtime.bus, runtime.settings, on_progress=progress, on_notice=notice)
            return await access.query(sql, params)
        finally:
            progress.close()

    return drive(go)


_query = query_projections


@app.command("sql")
def sql_command(
    query: Annotated[
        str, typer.Argument(help='SQL on the projections, e.g. "SELECT status, count(*) FROM runs GROUP BY 1"')
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON array of row objects")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print CSV with a header row")] = False,
) -> None:
    """Query the projections (runs, nodes, tool_calls, service_calls, waits, artifacts, edges, events) with SQL.

    Queries are read-only: one SELECT (or DESCRIBE, SHOW, SUMMARIZE); anything that would change the
    tables is refused. `aethergraph projections rebuild` folds them again from the stream.
    """
    if as_json and as_csv:
        err_console.print("[red]error:[/] give at most one of --json and --csv")
        raise typer.Exit(2)
    result = _query(query)
    if as_json:
        sys.stdout.write(json.dumps(result.dicts(), default=_json_default) + "\n")
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow([_csv_cell(v) for v in row])
    else:
        console.print(result_table(result))
        console.print(f"[dim]{len(result.rows)} row{'s' if len(result.rows) != 1 else ''}[/]")


@app.command("runs")
def runs_command(
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help="only runs with this status (queued, running, waiting, succeeded, failed, cancelled)"
        ),
    ] = None,
    graph: Annotated[str | None, typer.Option("--graph", help="only runs of this graph")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="only runs started within this long: 30s, 15m, 2h, 1d, 1w")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many, newest first")] = 50,
    nested: Annotated[
        bool, typer.Option("--nested/--top-level", help="include runs started inside other runs")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List runs with their status and duration, newest first."""
    try:
        cutoff = None if since is None else dt.datetime.now(dt.UTC).replace(tzinfo=None) - parse_duration(since)
    except typer.BadParameter as exc:
        err_console.print(f"[red]error:[/] --since: {escape(str(exc))}")
        raise typer.Exit(2) from None
    sql = (
        "SELECT run_id, graph_id, status, started_at, "
        "round(date_diff('microsecond', started_at, coalesce(ended_at, last_event_at)) / 1000.0, 1) AS duration_ms, "
        "event_count AS events, parent_run_id FROM runs WHERE ($1::VARCHAR IS NULL OR status = $1) "
        "AND ($2 OR parent_run_id IS NULL) AND ($4::VARCHAR IS NULL OR graph_id = $4) "
        "AND ($5::TIMESTAMP IS NULL OR started_at >= $5) "
        "ORDER BY started_at DESC NULLS LAST, run_id LIMIT $3"
    )
    result = _query(sql, [status, nested, limit, graph, cutoff])
    if as_json:
        sys.stdout.write(json.dumps(result.dicts(), default=_json_default) + "\n")
        return
    console.print(_runs_table(result, nested=nested))


def _runs_table(result: QueryResult, *, nested: bool) -> Table:
    """The runs as a table whose run ids never wrap: the other columns are cut short first."""
    rows = result.dicts()
    id_width = max((len(r["run_id"]) for r in rows), default=6)
    table = Table(title="runs", show_lines=False, header_style="bold")
    table.add_column("run_id", no_wrap=True, min_width=id_width, overflow="fold")
    for column in ("graph", "status", "started (UTC)"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for column in ("ms", "events"):
        table.add_column(column, justify="right", no_wrap=True, overflow="ellipsis")
    if nested:
        table.add_column("parent", no_wrap=True, overflow="ellipsis")
    for r in rows:
        started = r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else ""
        cells = [
            r["run_id"],
            escape(str(r["graph_id"] or "")),
            _status(r["status"]),
            started,
            "" if r["duration_ms"] is None else f"{r['duration_ms']:g}",
            str(r["events"]),
        ]
        table.add_row(*cells, *([r["parent_run_id"] or ""] if nested else []))
    return table


_LINEAGE_SQL = """
WITH RECURSIVE tree(run_id) AS (
    SELECT $1::VARCHAR
    UNION
    SELECT r.run_id FROM runs r JOIN tree t ON r.parent_run_id = t.run_id
)
SELECT 'run' AS what, r.run_id, NULL AS id, r.graph_id AS label, r.status,
       date_diff('microsecond', r.started_at, coalesce(r.ended_at, r.last_event_at)) AS duration_us,
       r.parent_run_id AS parent_run, r.parent_node_id AS parent_node, NULL AS source, 0 AS ord
FROM runs r JOIN tree USING (run_id)
UNION ALL
SELECT 'node', n.run_id, n.node_id, n.tool, n.status, n.duration_us, NULL, NULL, NULL, n.first_seq
FROM nodes n JOIN tree USING (run_id)
UNION ALL
SELECT 'wait', w.run_id, w.wait_id, w.kind || ': ' || w.prompt, w.status, NULL, NULL, w.node_id, NULL, 0
FROM waits w JOIN tree USING (run_id)
UNION ALL
SELECT 'artifact', a.run_id, a.artifact_id, coalesce(nullif(a.name, ''), a.uri), NULL, a.size, NULL, a.node_id,
       NULL, a.seq
FROM artifacts a JOIN tree USING (run_id)
UNION ALL
SELECT 'data', e.run_id, e.dst, NULL, NULL, NULL, NULL, NULL, e.src, 0
FROM edges e JOIN tree USING (run_id) WHERE e.kind = 'data'
ORDER BY ord
"""

_STATUS_STYLE = {
    "queued": "blue",
    "succeeded": "green",
    "failed": "red",
    "waiting": "yellow",
    "running": "cyan",
    "cancelled": "magenta",
}


def _status(status: str | None) -> str:
    if status is None:
        return ""
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _duration(us: int | None) -> str:
    if us is None:
        return ""
    return f"{us / 1000:.1f} ms" if us < 10_000_000 else f"{us / 1_000_000:.1f} s"


def _lineage_tree(run_id: str, result: QueryResult) -> Tree:
    rows = result.dicts()
    runs = {r["run_id"]: r for r in rows if r["what"] == "run"}
    if run_id not in runs:
        err_console.print(f"[red]error:[/] no run {run_id} in the projections; list runs with `aethergraph runs`")
        raise typer.Exit(1)
    nodes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    attached: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
    inputs: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row["what"] == "node":
            nodes[row["run_id"]].append(row)
        elif row["what"] in ("wait", "artifact"):
            attached[(row["run_id"], row["parent_node"])].append(row)
        elif row["what"] == "data":
            inputs[row["id"]].append(row["source"])
    children = {(r["parent_run"], r["parent_node"]): r for r in runs.values() if r["parent_run"]}

    def short(entity: str, here: str) -> str:
        """A source as the tree shows it: a node of this run by its id, anything else in full."""
        kind, _, rest = entity.partition(":")
        owner, _, node = rest.partition("/")
        return node if kind == "node" and owner == here else entity

    def add_run(parent: Tree, run: dict[str, Any]) -> None:
        label = (
            f"[bold]run {run['run_id']}[/] {escape(str(run['label']))} {_status(run['status'])} "
            f"[dim]{_duration(run['duration_us'])}[/]"
        )
        branch = parent.add(label)
        for extra in attached.get((run["run_id"], None), []) + attached.get((run["run_id"], "root"), []):
            add_attached(branch, extra)
        for node in nodes.get(run["run_id"], []):
            entity = node_entity(run["run_id"], node["id"])
            sources = ", ".join(short(s, run["run_id"]) for s in sorted(inputs.get(entity, [])))
            text = (
                f"[bold]{escape(node['id'])}[/] {_status(node['status'])} [dim]{_duration(node['duration_us'])}[/]"
                + (f" [dim]<- {escape(sources)}[/]" if sources else "")
            )
            node_branch = branch.add(text)
            for extra in attached.get((run["run_id"], node["id"]), []):
                add_attached(node_branch, extra)
            child = children.get((run["run_id"], node["id"]))
            if child is not None:
                add_run(node_branch, child)

    def add_attached(branch: Tree, row: dict[str, Any]) -> None:
        if row["what"] == "wait":
            branch.add(f"wait {escape(row['id'])} {escape(str(row['label']))} {_status(row['status'])}")
        else:
            branch.add(f"artifact {escape(str(row['label']))} [dim]{escape(row['id'][:12])}[/]")

    root = Tree(f"lineage of run [bold]{run_id}[/]")
    add_run(root, runs[run_id])
    return root


@app.command("lineage")
def lineage_command(
    run_id: Annotated[str, typer.Argument(help="the run (its nested runs are included)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the rows behind the tree as JSON")] = False,
) -> None:
    """Print a run's DAG as a tree: nodes, nested runs, waits, artifacts, and where each node's inputs came from."""
    checked_run_id(run_id)
    reader_settings()
    result = _query(_LINEAGE_SQL, [run_id])
    if as_json:
        sys.stdout.write(json.dumps(result.dicts(), default=_json_default) + "\n")
        return
    console.print(_lineage_tree(run_id, result))


@app.command("export")
def export_command(
    target: Annotated[Path, typer.Argument(help="the DuckDB file to write (must not exist)")],
    storage_version: Annotated[
        str,
        typer.Option(
            "--storage-version",
            help=f"DuckDB storage format to write: {EXPORT_STORAGE_VERSION} (the default) opens in the DuckDB 1.5 "
            "command line (`pip install duckdb-cli`) and later; `latest` is the installed DuckDB's own format",
        ),
    ] = EXPORT_STORAGE_VERSION,
) -> None:
    """Write a read-only snapshot of the projections to a DuckDB file (open it with `duckdb -readonly FILE`)."""
    reader_settings()
    progress = CatchUpProgress("catching up")

    async def go() -> Path:
        runtime = await get_runtime()
        try:
            access = ProjectionAccess(runtime.bus, runtime.settings, on_progress=progress, on_notice=notice)
            return await access.export(target, storage_version)
        finally:
            progress.close()

    path = drive(go)
    console.print(
        f"exported the projections to [bold]{path}[/] (read-only, DuckDB storage {storage_version}); "
        f"open it with `duckdb -readonly {path}`"
    )


@projections_app.command("rebuild")
def rebuild_command() -> None:
    """Empty the workspace's projection store and fold every event of the stream into it again.

    Use it when the tables look wrong (a store is otherwise kept up to date by itself, and folded
    again when the bus or its stream changed). Stop a running `aethergraph projector` first.
    """
    reader_settings()
    progress = CatchUpProgress("rebuilding")

    async def go() -> Projector:
        runtime = await get_runtime()
        try:
            return await ProjectionAccess(runtime.bus, runtime.settings, on_progress=progress).rebuild()
        finally:
            progress.close()

    projector = drive(go)
    console.print(
        f"rebuilt the projections: {projector.stats.messages} messages folded up to stream sequence "
        f"{projector.store.last_seq} ({projector.stats.dead_letters} dead letters)"
    )


@app.command("projector")
def projector_command() -> None:
    """Own the workspace's projection store: fold new events as they land and answer queries, until Ctrl-C."""
    settings = settings_or_exit()
    progress = CatchUpProgress("catching up")

    def ready(projector: Projector) -> None:
        progress.close()
        console.print(
            f"projector ready: {store_path(settings)} at stream sequence {projector.store.last_seq}; "
            "answering `aethergraph sql` (Ctrl-C to stop)"
        )

    async def go() -> None:
        runtime = await get_runtime()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        projector = await serve_projections(
            runtime.bus, runtime.settings, stop, on_progress=progress, on_ready=ready, on_notice=notice
        )
        console.print(
            f"projector stopped at stream sequence {projector.store.last_seq} "
            f"({projector.stats.messages} messages folded, {projector.stats.dead_letters} dead letters)"
        )

    drive(go)
