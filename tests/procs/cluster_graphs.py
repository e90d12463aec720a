"""A graph and a run driver for tests/test_cluster.py (run in a subprocess).

``python cluster_graphs.py <results file> <stop file>`` starts runs of ``cluster_sum`` one after
another until the stop file exists, appending one JSON line per run to the results file: the run
id, the input, the outputs or the error, and how long the run took (reported, never asserted).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import aethergraph
from aethergraph import graph_fn, tool


@tool(outputs=["total"])
async def add(a: int, b: int) -> dict[str, int]:
    return {"total": a + b}


@graph_fn(name="cluster_sum", outputs=["total"])
async def cluster_sum(n: int, *, context: Any) -> dict[str, int]:
    total = 0
    for step in range(3):
        total = (await add(a=total, b=n + step))["total"]
    await context.kv().set(f"sum-{n}", total)
    await context.artifacts().save_text(f"sum {n} = {total}", kind="note")
    return {"total": total}


def expected_total(n: int) -> int:
    return 3 * n + 3


async def drive(results: Path, stop: Path) -> None:
    n = 0
    while not await asyncio.to_thread(stop.exists):
        n += 1
        started = time.monotonic()
        record: dict[str, Any] = {"n": n, "pid": os.getpid(), "at": time.time()}
        try:
            handle = await aethergraph.start_run(cluster_sum, {"n": n})
            record["run_id"] = handle.run_id
            record["outputs"] = await asyncio.wait_for(handle.result(), timeout=120)
        except Exception as exc:  # noqa: BLE001 - recorded for the test to report
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["where"] = traceback.format_exc(limit=-4)
        record["elapsed_s"] = round(time.monotonic() - started, 3)
        await asyncio.to_thread(_append, results, json.dumps(record))
        if "error" in record:
            await asyncio.sleep(0.2)  # the bus is failing over: do not spin


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    asyncio.run(drive(Path(sys.argv[1]), Path(sys.argv[2])))
