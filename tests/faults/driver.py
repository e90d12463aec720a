"""A driver process of the fault suite: start runs with ``aethergraph.start_run``, then await their results.

``python driver.py <graphs.py> <spec.json>``; the spec names the runs
(``{"runs": [{"run_id", "graph", "inputs"}], "results": <path>, "timeout_s": <s>}``).
Prints ``started <n>`` once every ``start_run`` returned, and appends one JSON
line per run to the results file: ``{"run_id", "ok": outputs}`` or
``{"run_id", "error": "<type>: <message>"}`` (what the driver saw).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aethergraph


def append_line(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


async def main(graphs: str, spec: dict[str, Any]) -> None:
    handles = []
    try:
        for run in spec["runs"]:
            target = f"{graphs}:{run['graph']}"
            handles.append(await aethergraph.start_run(target, run["inputs"], run_id=run["run_id"]))
        print(f"started {len(handles)}", flush=True)

        async def outcome(handle: aethergraph.RunHandle) -> None:
            try:
                line = {"run_id": handle.run_id, "ok": await handle.result(timeout=spec["timeout_s"])}
            except Exception as exc:  # noqa: BLE001 - what the driver saw, reported as it is
                line = {"run_id": handle.run_id, "error": f"{type(exc).__name__}: {exc}"[:500]}
            append_line(spec["results"], json.dumps(line))

        await asyncio.gather(*(outcome(handle) for handle in handles))
    finally:
        await aethergraph.close_runtime()


if __name__ == "__main__":
    with open(sys.argv[2]) as f:
        asyncio.run(main(sys.argv[1], json.load(f)))
