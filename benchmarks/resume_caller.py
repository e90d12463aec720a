"""A fresh process that resumes runs as a user's script does, for the ``resume`` benchmark.

``python -m benchmarks.resume_caller`` imports aethergraph (and nothing that
defines a graph: the worker continues the runs), says ``ready`` on standard
output, then reads one line of run ids separated by spaces. For each run id,
in order, it times the two calls a user makes, in this process::

    await aethergraph.resume(run_id, payload)
    await (await aethergraph.get_run(run_id)).result()

and prints one JSON line: for each run, nanoseconds from the start of the
``resume`` call to its return, and to ``result()``'s return, plus the
continuation's first tool stamp (wall clock) and pid from the run's outputs.
The first run's calls open this process's connection to the bus (settings,
connect, JetStream and topology checks): the new-process figure. Later runs
reuse it: the same process resuming again (hot). Settings come from
``AETHERGRAPH_*``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aethergraph


async def _main(run_ids: list[str]) -> list[dict[str, int]]:
    samples = []
    try:
        for index, run_id in enumerate(run_ids):
            began = time.perf_counter_ns()
            sent_wall = time.time_ns()
            await aethergraph.resume(run_id, index)
            resumed = time.perf_counter_ns()
            outputs = await (await aethergraph.get_run(run_id)).result()
            ended = time.perf_counter_ns()
            samples.append(
                {
                    "resume_ns": resumed - began,
                    "total_ns": ended - began,
                    "tool_after_ns": int(outputs["t_ns"]) - sent_wall,
                    "pid": int(outputs["pid"]),
                }
            )
    finally:
        await aethergraph.close_runtime()
    return samples


def main() -> None:
    print("ready", flush=True)
    run_ids = sys.stdin.readline().split()
    print(json.dumps(asyncio.run(_main(run_ids))), flush=True)


if __name__ == "__main__":
    main()
