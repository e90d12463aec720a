"""Graphs for tests/test_durable_processes.py, imported by worker and driver subprocesses only.

Every side effect is a line appended to the count file named by the ``log``
input (inputs are journaled, so whichever process continues a run writes to
the same file):

* ``run <label> <idempotency key> <pid>`` when a step starts executing,
* ``done <label> <pid>`` when it finishes,
* ``committed <label> <pid>`` when the graph body saw the step committed (the
  body re-runs on replay, so these lines may repeat),
* ``hold <point> <pid>`` when a process parks at a hold point.

``hold`` names one point (``in-<label>``: inside that step after its ``run``
line; ``after-<label>``: in the body right after that step committed),
optionally with how many processes park there (``in-s2@2``; one by default).
The first processes to reach it park there for good (so the test can kill -9
them at a known place); every later process passes, because flag files next to
the count file record how often the point was held.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aethergraph import NodeContext, graph_fn, tool

STEP_SLEEP_S = 0.1


def note(log: str, line: str) -> None:
    with open(log, "a") as f:
        f.write(f"{line} {os.getpid()}\n")


def _take_hold_slot(log: str, point: str, slots: int) -> bool:
    for slot in range(1, slots + 1):
        try:
            fd = os.open(Path(f"{log}.held-{point}-{slot}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return True
    return False


async def hold_point(log: str, hold: str, point: str) -> None:
    """Park forever if ``point`` is the hold point and fewer processes than it allows held it before."""
    name, _, slots = hold.partition("@")
    if name != point or not _take_hold_slot(log, point, int(slots or 1)):
        return
    note(log, f"hold {point}")
    await asyncio.Event().wait()  # until killed


@tool(name="dp_step", outputs=["v"])
async def dp_step(label: str, x: int, log: str, hold: str, *, context: NodeContext) -> dict:
    note(log, f"run {label} {context.idempotency_key()}")
    await hold_point(log, hold, f"in-{label}")
    await asyncio.sleep(STEP_SLEEP_S)
    note(log, f"done {label}")
    return {"v": x + 1}


@graph_fn(name="dp_chain", outputs=["v"])
async def dp_chain(n: int, log: str, hold: str = "", *, context: NodeContext) -> dict:
    """``n`` steps s1..sn, each adding one."""
    x = 0
    for i in range(1, n + 1):
        x = (await dp_step(f"s{i}", x, log, hold))["v"]
        note(log, f"committed s{i}")
        await hold_point(log, hold, f"after-s{i}")
    return {"v": x}


@graph_fn(name="dp_approval", outputs=["first", "second", "approved"])
async def dp_approval(log: str, hold: str = "", approvals: int = 1, *, context: NodeContext) -> dict:
    """Step ``first``, then ``approvals`` approval waits, then step ``second``."""
    first = (await dp_step("first", 0, log, hold))["v"]
    note(log, "committed first")
    approved = True
    for k in range(1, approvals + 1):
        decision = await context.channel().ask_approval(f"Approve #{k}?")
        approved = approved and decision["approved"]
    second = (await dp_step("second", first, log, hold))["v"]
    note(log, "committed second")
    return {"first": first, "second": second, "approved": approved}
