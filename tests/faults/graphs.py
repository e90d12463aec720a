"""Graphs of the fault suite, imported by its worker and driver processes only (never by the test process).

Every execution of a step is a line appended (``O_APPEND``, one ``write``) to
the log file named by the ``log`` input, so the test sees every execution from
outside, whichever process ran it:

* ``exec <run_id> <step> <x> <pid> <t_us>`` when a step starts executing
  (``x`` is the previous step's result it was given),
* ``done <run_id> <step> <pid> <t_us>`` when it finishes,
* ``saw <run_id> <k> <pid> <t_us>`` when the body of ``ft_chain`` got step
  ``k``'s result back, i.e. saw step ``k`` committed (the body re-runs on
  replay, so these lines repeat).

``t_us`` is the wall clock in Unix microseconds, the clock events carry in
``ts``. ``ft_chain`` passes each step's result to the next step, so its output
``v`` is ``n (n + 1) / 2`` only if every step saw its predecessor's committed
result. ``ft_fan`` is a static fan-out: ``FT_FAN_WIDTH`` (environment, same in
every process) independent nodes, then one sum.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aethergraph import NodeContext, graph_fn, graphify, tool

FAN_WIDTH = int(os.environ.get("FT_FAN_WIDTH", "12"))


def note(log: str, line: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line} {os.getpid()} {time.time_ns() // 1000}\n".encode())
    finally:
        os.close(fd)


@tool(name="ft_step", outputs=["v", "step"])
async def ft_step(step: int, x: int, log: str, sleep_s: float, *, context: NodeContext) -> dict[str, Any]:
    note(log, f"exec {context.run_id} {step} {x}")
    await asyncio.sleep(sleep_s)
    note(log, f"done {context.run_id} {step}")
    return {"v": x + step, "step": step}


@graph_fn(name="ft_chain", outputs=["v"])
async def ft_chain(n: int, log: str, sleep_s: float = 0.2, *, context: NodeContext) -> dict[str, Any]:
    """``n`` steps; step ``k`` adds ``k`` to the previous step's result."""
    x = 0
    for k in range(1, n + 1):
        x = (await ft_step(k, x, log, sleep_s))["v"]
        note(log, f"saw {context.run_id} {k}")
    return {"v": x}


@tool(name="ft_work", outputs=["v"])
async def ft_work(run: str, label: str, x: int, log: str, sleep_s: float) -> dict[str, Any]:
    note(log, f"exec {run} {label} {x}")
    await asyncio.sleep(sleep_s)
    note(log, f"done {run} {label}")
    return {"v": 2 * x}


@tool(name="ft_total", outputs=["total"])
def ft_total(values: list[int]) -> dict[str, Any]:
    return {"total": sum(values)}


@graphify(name="ft_fan", inputs=["run", "log", "sleep_s"], outputs=["total"])
def ft_fan(run, log, sleep_s):  # type: ignore[no-untyped-def]
    """``FAN_WIDTH`` independent nodes ``w<i>`` (each ``2 i``), then their sum: ``FAN_WIDTH (FAN_WIDTH - 1)``."""
    nodes = [ft_work(run=run, label=f"w{i}", x=i, log=log, sleep_s=sleep_s) for i in range(FAN_WIDTH)]
    return {"total": ft_total(values=[node.v for node in nodes]).total}


def chain_output(n: int) -> dict[str, Any]:
    return {"v": n * (n + 1) // 2}


def fan_output(width: int = FAN_WIDTH) -> dict[str, Any]:
    return {"total": width * (width - 1)}
