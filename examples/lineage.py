"""A small study whose provenance you can ask about in SQL.

``study`` loads a series, cleans it, hands it to a nested graph
(``featurize``, a child run) and writes a report from the features:

    aethergraph run examples/lineage.py:study --run-id study-1
    aethergraph lineage study-1
    aethergraph sql "SELECT * FROM ancestors(node_entity('study-1', 'write_report_1'))"

Every step is an event; the projections fold them into DuckDB tables
(``runs``, ``nodes``, ``tool_calls``, ``edges``, ...) and docs/lineage.md walks
through the queries.
"""

from __future__ import annotations

import math

from aethergraph import graph_fn, tool


@tool(name="load_series", outputs=["values"])
def load_series(source: str, n: int = 48) -> dict[str, list[float]]:
    """Stands in for reading a sensor export: a noisy daily cycle with two dropouts."""
    values = [round(20 + 5 * math.sin(i / 24 * 2 * math.pi) + (i % 7) * 0.1, 3) for i in range(n)]
    values[5] = values[17] = -999.0
    return {"values": values}


@tool(name="drop_dropouts", outputs=["clean", "dropped"])
def drop_dropouts(values: list[float], sentinel: float = -999.0) -> dict[str, object]:
    clean = [v for v in values if v != sentinel]
    return {"clean": clean, "dropped": len(values) - len(clean)}


@tool(name="summary_stats", outputs=["stats"])
def summary_stats(series: list[float]) -> dict[str, dict[str, float]]:
    mean = sum(series) / len(series)
    spread = math.sqrt(sum((v - mean) ** 2 for v in series) / len(series))
    return {"stats": {"mean": round(mean, 4), "std": round(spread, 4), "n": len(series)}}


@graph_fn(name="featurize", outputs=["stats"])
async def featurize(series: list[float]) -> dict[str, object]:
    """A nested graph: called from ``study`` it runs as a child run."""
    return await summary_stats(series=series)


@tool(name="write_report", outputs=["report"])
def write_report(source: str, stats: dict[str, float], dropped: int) -> dict[str, str]:
    return {
        "report": f"{source}: mean {stats['mean']} (std {stats['std']}) over {stats['n']} samples, {dropped} dropped"
    }


@graph_fn(name="study", outputs=["report"])
async def study(source: str = "site-a/2026-11-20.csv") -> dict[str, object]:
    raw = await load_series(source=source)
    cleaned = await drop_dropouts(values=raw["values"])
    features = await featurize(series=cleaned["clean"])
    return await write_report(source=source, stats=features["stats"], dropped=cleaned["dropped"])
