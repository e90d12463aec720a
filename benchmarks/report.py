"""Turning results into rich tables, ``latest.json`` and the generated section of docs/benchmarks.md."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from .harness import DEFAULT_SYNC, BenchResult, Figure

START_MARKER = "<!-- results:start -->"
END_MARKER = "<!-- results:end -->"
SCHEMA = 1


# --- number formatting ------------------------------------------------------------


def fmt(value: float | None, unit: str, *, with_unit: bool = True) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    if unit == "events/s":
        text = f"{value:,.0f}"
    elif unit == "x":
        return f"{value:.2f}x"
    elif unit == "%":
        text = f"{value:.0f}"
    else:
        magnitude = abs(value)
        text = f"{value:,.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"
    return f"{text} {unit}" if with_unit else text


def spread(figure: Figure) -> str:
    return f"{fmt(figure.min, figure.unit, with_unit=False)} - {fmt(figure.max, figure.unit, with_unit=False)}"


def sync_label(figure: Figure) -> str:
    return figure.sync_interval or "n/a"


def size_label(figure: Figure) -> str:
    return f"{figure.repeats} x {figure.per_repeat_n:,}"


# --- targets ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Headline:
    benchmark: str
    key: str
    sync_interval: str | None
    what: str
    target: float | None = None
    target_text: str = ""
    value: Callable[[Figure], float | None] = lambda figure: figure.median


HEADLINES = (
    Headline(
        benchmark="steps",
        key="durable_step",
        sync_interval=DEFAULT_SYNC,
        what="durable step, p50",
        target=250.0,
        target_text="≤ 250 µs",
    ),
    Headline(
        benchmark="steps",
        key="ratio_to_floor",
        sync_interval=DEFAULT_SYNC,
        what="durable step / one raw JetStream ack (`nc.request`)",
        target=1.5,
        target_text="≤ 1.5x",
    ),
    Headline(
        benchmark="steps",
        key="ratio_to_transport_floor",
        sync_interval=DEFAULT_SYNC,
        what="durable step / one publish on the event log's own path",
    ),
    Headline(benchmark="steps", key="durable_step", sync_interval="always", what="durable step, p50"),
    Headline(benchmark="steps", key="in_memory", sync_interval=None, what="runtime CPU per step, no bus (p50)"),
    Headline(benchmark="publish", key="raw_none", sync_interval=DEFAULT_SYNC, what="raw JetStream ack floor, p50"),
    Headline(benchmark="publish", key="append_awaited", sync_interval=DEFAULT_SYNC, what="awaited append, p50"),
    Headline(benchmark="publish", key="append_awaited", sync_interval="always", what="awaited append, p50"),
    Headline(benchmark="publish", key="append_pipelined", sync_interval=DEFAULT_SYNC, what="pipelined append"),
    Headline(benchmark="publish", key="append_pipelined", sync_interval="always", what="pipelined append"),
    Headline(
        benchmark="cold_start",
        key="import",
        sync_interval=None,
        what="`python -c 'import aethergraph'`",
        target=300.0,
        target_text="≤ 300 ms",
    ),
    Headline(
        benchmark="cold_start",
        key="start_fresh",
        sync_interval=DEFAULT_SYNC,
        what="import + start embedded server",
        target=300.0,
        target_text="≤ 300 ms",
    ),
    Headline(
        benchmark="cold_start",
        key="start_reuse",
        sync_interval=DEFAULT_SYNC,
        what="import + reuse running server",
        target=300.0,
        target_text="≤ 300 ms",
    ),
    Headline(benchmark="replay", key="read_run", sync_interval=DEFAULT_SYNC, what="replay read (`read_run`)"),
    Headline(benchmark="codec", key="roundtrip", sync_interval=None, what="encode + decode one event"),
    Headline(
        benchmark="projections",
        key="ingest",
        sync_interval=DEFAULT_SYNC,
        what="projection ingest (`Projector.catch_up`, stream to DuckDB)",
        target=50_000.0,
        target_text="≥ 50,000 events/s",
    ),
    Headline(
        benchmark="projections",
        key="store_apply",
        sync_interval=None,
        what="projection store only (`ProjectionStore.apply_encoded`)",
    ),
    Headline(
        benchmark="projections",
        key="rebuild",
        sync_interval=DEFAULT_SYNC,
        what="projection rebuild, empty store to caught up (1M events in full mode)",
    ),
    Headline(
        benchmark="projections",
        key="lineage_ancestors_artifact",
        sync_interval=None,
        what="lineage `ancestors(artifact)` on the rebuilt store, p99",
        target=100.0,
        target_text="≤ 100 ms",
        value=lambda figure: figure.p99,
    ),
    Headline(
        benchmark="projections",
        key="lineage_descendants_root",
        sync_interval=None,
        what="lineage `descendants(run)` on the rebuilt store, p99",
        target=100.0,
        target_text="≤ 100 ms",
        value=lambda figure: figure.p99,
    ),
    Headline(
        benchmark="static",
        key="wide_nodes_per_s",
        sync_interval=DEFAULT_SYNC,
        what="static graph, 10,000-node wide DAG (full mode)",
        target=2_000.0,
        target_text="≥ 2,000 nodes/s",
    ),
    Headline(
        benchmark="static",
        key="chain_nodes_per_s",
        sync_interval=DEFAULT_SYNC,
        what="static graph, 1,000-node chain (full mode)",
        target=2_000.0,
        target_text="≥ 2,000 nodes/s",
    ),
    Headline(
        benchmark="static",
        key="completed_to_started",
        sync_interval=DEFAULT_SYNC,
        what="static graph: upstream `node.completed` -> dependent starts (median of repeats)",
    ),
    Headline(
        benchmark="projections",
        key="live_count_by_status",
        sync_interval=DEFAULT_SYNC,
        what="`runs` aggregate via the projector while it ingests, p99",
        value=lambda figure: figure.p99,
    ),
    Headline(
        benchmark="server",
        key="sse_fanout",
        sync_interval=DEFAULT_SYNC,
        what="SSE fan-out: event appended -> received by 1,000 clients of one run, p99 (full mode)",
        target=100.0,
        target_text="≤ 100 ms",
        value=lambda figure: figure.p99,
    ),
    Headline(
        benchmark="server",
        key="runs_page_offset",
        sync_interval=DEFAULT_SYNC,
        what="`GET /api/runs` page over 100,000 runs (offset half-way), p50 (full mode)",
        target=50.0,
        target_text="≤ 50 ms",
    ),
    Headline(
        benchmark="viewer",
        key="run_page_10k",
        sync_interval=None,
        what="run page of a 10,000-event run rendered in headless Chromium, median",
        target=1000.0,
        target_text="≤ 1 s",
    ),
)


def find_figure(results: Iterable[BenchResult], benchmark: str, key: str, sync: str | None) -> Figure | None:
    for result in results:
        if result.name != benchmark:
            continue
        for figure in result.figures:
            if figure.key == key and figure.sync_interval == sync:
                return figure
    return None


def verdict(headline: Headline, figure: Figure) -> str:
    if headline.target is None:
        return ""
    value = headline.value(figure)
    if value is None:
        return "—"
    if figure.better == "higher":
        if value >= headline.target:
            return "met"
        return f"missed by {(1 - value / headline.target) * 100:.0f}%"
    if value <= headline.target:
        return "met"
    return f"missed by {(value / headline.target - 1) * 100:.0f}%"


def headline_rows(results: list[BenchResult]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for headline in HEADLINES:
        figure = find_figure(results, headline.benchmark, headline.key, headline.sync_interval)
        if figure is None:
            continue
        rows.append(
            (
                headline.what,
                sync_label(figure),
                fmt(headline.value(figure), figure.unit),
                headline.target_text,
                verdict(headline, figure),
            )
        )
    return rows


# --- rich -------------------------------------------------------------------------


def rich_table(result: BenchResult) -> Table:
    load = f", load {result.load_avg[0]} -> {result.load_avg[1]}" if result.load_avg else ""
    if result.cpu:
        load += f", cores {result.cpu['busy_pct']:.0f}% busy"
    table = Table(title=f"{result.title} ({result.mode}, {result.duration_s:.0f} s{load})", title_justify="left")
    for column, justify in (
        ("measurement", "left"),
        ("sync", "left"),
        ("median", "right"),
        ("min - max", "right"),
        ("p50", "right"),
        ("p99", "right"),
        ("repeats x n", "right"),
        ("note", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for figure in result.figures:
        table.add_row(*figure_cells(figure))
    return table


def figure_cells(figure: Figure) -> tuple[str, ...]:
    """One figure as the cells of a results row (console and markdown tables alike)."""
    return (
        figure.label,
        sync_label(figure),
        fmt(figure.median, figure.unit),
        spread(figure),
        fmt(figure.p50, figure.unit, with_unit=False),
        fmt(figure.p99, figure.unit, with_unit=False),
        size_label(figure),
        figure.note,
    )


def rich_headlines(results: list[BenchResult]) -> Table:
    table = Table(title="Headline figures vs targets", title_justify="left")
    for column in ("figure", "sync", "value", "target", "verdict"):
        table.add_column(column)
    for row in headline_rows(results):
        style = "green" if row[4] == "met" else "red" if row[4].startswith("missed") else None
        table.add_row(*row, style=style)
    return table


# --- JSON -------------------------------------------------------------------------


def load_results(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def merge_results(
    previous: dict[str, Any] | None, machine: dict[str, Any], results: list[BenchResult], order: list[str]
) -> list[BenchResult]:
    """This run's results, plus earlier results of other benchmarks measured on the same machine."""
    merged = {result.name: result for result in results}
    if previous is not None:
        same_machine = all(
            previous.get("machine", {}).get(key) == machine.get(key) for key in ("cpu_model", "cores", "python")
        )
        if same_machine:
            for name, data in previous.get("benchmarks", {}).items():
                if name not in merged:
                    merged[name] = BenchResult.from_json(data)
    return [merged[name] for name in order if name in merged]


def results_json(machine: dict[str, Any], results: list[BenchResult], generated_at: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "generated_at": generated_at,
        "machine": machine,
        "benchmarks": {result.name: result.to_json() for result in results},
        "headlines": [
            {"figure": what, "sync_interval": sync, "value": value, "target": target, "verdict": verdict_text}
            for what, sync, value, target, verdict_text in headline_rows(results)
        ],
    }


# --- markdown ---------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, {machine['os']}; "
        f"Python {machine['python']}; nats-server {machine['nats_server']}; nats-py {machine['nats_py']}; "
        f"msgspec {machine['msgspec']}; aethergraph {machine['aethergraph']} at {machine['aethergraph_commit']}; "
        f"JetStream store on {machine['workspace_filesystem']}; default sync_interval "
        f"`{machine['default_sync_interval']}` (also measured: "
        + ", ".join(f"`{sync}`" for sync in machine["sync_intervals_measured"])
        + ")."
    )


def markdown_section(machine: dict[str, Any], results: list[BenchResult], generated_at: str) -> str:
    lines = [
        f"_Generated by `python -m benchmarks` on {generated_at}; do not edit between the markers._",
        "",
        f"**Machine:** {machine_line(machine)}",
        "",
        "### Headline figures vs targets",
        "",
        "| figure | sync_interval | value | target | verdict |",
        "|---|---|---:|---|---|",
    ]
    lines += [f"| {' | '.join(_md_escape(cell) for cell in row)} |" for row in headline_rows(results)]
    for result in results:
        lines += [
            "",
            f"### {result.title}",
            "",
            f"_{result.mode} mode, measured {result.measured_at}, {result.duration_s:.0f} s"
            + (f", load average {result.load_avg[0]} -> {result.load_avg[1]}" if result.load_avg else "")
            + (
                f", all cores {result.cpu['busy_pct']:.0f}% busy (steal {result.cpu['steal_pct']:.1f}%)"
                if result.cpu
                else ""
            )
            + "._",
            "",
            "| measurement | sync_interval | median | min - max | p50 | p99 | repeats x n | note |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for figure in result.figures:
            cells = figure_cells(figure)
            lines.append(f"| {' | '.join(_md_escape(cell) for cell in cells)} |")
        if result.notes:
            lines.append("")
            lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _marker_line(text: str, marker: str, start: int = 0) -> tuple[int, int] | None:
    """The span of the first line at or after ``start`` that is exactly ``marker`` (prose may quote it)."""
    match = re.compile(rf"^{re.escape(marker)}[ \t]*$", re.MULTILINE).search(text, start)
    return match.span() if match else None


def update_docs(path: Path, section: str) -> None:
    """Replace the text between the results marker lines, keeping everything outside them."""
    block = f"{START_MARKER}\n{section}{END_MARKER}"
    text = path.read_text() if path.exists() else ""
    start = _marker_line(text, START_MARKER)
    end = _marker_line(text, END_MARKER, start[1]) if start else None
    if start is None or end is None:
        text = (text.rstrip() + "\n\n" if text.strip() else "# Benchmarks\n\n## Results\n\n") + block + "\n"
    else:
        text = text[: start[0]] + block + text[end[1] :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
