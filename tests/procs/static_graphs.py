"""Static graphs for tests/test_static_processes.py, imported by worker and driver subprocesses only.

The test process never imports this module, so its own node executor (which
takes ``node.ready`` events from the shared ``ag-work`` consumer like any
other) cannot execute these nodes: it puts them back for a process that has
the tools.

Every side effect is a line appended to the count file named by the ``log``
input (inputs are journaled, so whichever process executes a node writes to
the same file):

* ``run <label> <pid>`` when a node starts executing,
* ``done <label> <pid>`` when it finishes,
* ``hold <label> <pid>`` when a process parks inside a node (see below),
* ``setup <label> <pid>`` / ``resumed <label> <pid>`` for the dual-stage tool.

A process started with ``SP_HOLDER=<n>`` parks forever (until killed) inside
the first ``n`` nodes it executes, after their ``run`` line: the kill -9 tests
park a worker mid-node this way, never by sleeping.

``SP_VARIANT=2`` makes ``sp_chain`` a different graph under the same name
(one more node): what a process running a newer version of the code sees.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from aethergraph import DualStageTool, RetryPolicy, Wait, graphify, tool

WIDTH = 60  # nodes of the wide graph's fan-out


def note(log: str, line: str) -> None:
    with open(log, "a") as f:
        f.write(f"{line} {os.getpid()}\n")


def _take_hold_slot(log: str) -> bool:
    slots = int(os.environ.get("SP_HOLDER", "0") or 0)
    for slot in range(1, slots + 1):
        try:
            fd = os.open(Path(f"{log}.held-{os.getpid()}-{slot}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return True
    return False


@tool(name="sp_work", outputs=["v"])
async def sp_work(label: str, x: int, log: str, sleep_s: float = 0.0) -> dict[str, Any]:
    note(log, f"run {label}")
    if _take_hold_slot(log):
        note(log, f"hold {label}")
        await asyncio.Event().wait()  # until killed
    if sleep_s:
        await asyncio.sleep(sleep_s)
    note(log, f"done {label}")
    return {"v": x + 1}


@tool(name="sp_sum", outputs=["total", "count"])
def sp_sum(values: list[int]) -> dict[str, Any]:
    return {"total": sum(values), "count": len(values)}


@graphify(name="sp_wide", inputs=["log", "sleep_s"], outputs=["total", "count"])
def sp_wide(log, sleep_s):  # type: ignore[no-untyped-def]
    """``WIDTH`` independent nodes (node i computes i + 1), then one sum: total = WIDTH * (WIDTH + 1) / 2."""
    nodes = [sp_work(label=f"w{i}", x=i, log=log, sleep_s=sleep_s) for i in range(WIDTH)]
    reduced = sp_sum(values=[node.v for node in nodes])
    return {"total": reduced.total, "count": reduced.count}


@tool(name="sp_flaky", outputs=["v"])
def sp_flaky(x: int, log: str, flag: str) -> dict[str, Any]:
    """Fails until the file ``flag`` exists."""
    note(log, "run flaky")
    if not os.path.exists(flag):
        raise RuntimeError(f"flag file {flag} is missing")
    note(log, "done flaky")
    return {"v": x * 10}


@graphify(name="sp_retry", inputs=["log", "flag"], outputs=["v"])
def sp_retry(log, flag):  # type: ignore[no-untyped-def]
    """a -> flaky -> c, and b beside them: retrying the failed run runs flaky and c only."""
    a = sp_work(label="a", x=0, log=log)
    sp_work(label="b", x=100, log=log)
    f = sp_flaky(x=a.v, log=log, flag=flag)
    c = sp_work(label="c", x=f.v, log=log)
    return {"v": c.v}


class SpGate(DualStageTool):
    """Asks for a review; the answer decides the node's outputs."""

    name = "sp_gate"
    outputs = ("ok", "note")

    async def setup(self, value: int, log: str, *, context) -> Wait:  # type: ignore[no-untyped-def]
        note(log, f"setup gate-{value}")
        return Wait(
            kind="review",
            prompt=f"review value {value}",
            schema={"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}},
        )

    async def on_resume(self, resume, value: int, log: str, *, context):  # type: ignore[no-untyped-def]
        note(log, f"resumed gate-{value}")
        return {"ok": bool(resume["ok"]), "note": str(resume.get("note", ""))}


sp_gate = SpGate()


@graphify(name="sp_dual", inputs=["log"], outputs=["before", "ok", "note", "after"])
def sp_dual(log):  # type: ignore[no-untyped-def]
    """first -> gate (dual-stage: waits for a review) -> after (only if the review said ok)."""
    first = sp_work(label="first", x=0, log=log)
    gate = sp_gate(value=first.v, log=log)
    after = sp_work(label="after", x=first.v, log=log, _condition=gate.ok)
    return {"before": first.v, "ok": gate.ok, "note": gate.note, "after": after.v}


if os.environ.get("SP_VARIANT", "1") == "2":

    @graphify(name="sp_chain", inputs=["log"], outputs=["v"])
    def sp_chain(log):  # type: ignore[no-untyped-def]
        a = sp_work(label="c1", x=0, log=log)
        b = sp_work(label="c2", x=a.v, log=log)
        extra = sp_work(label="c2b", x=b.v, log=log)
        c = sp_work(label="c3", x=extra.v, log=log)
        return {"v": c.v}

else:

    @graphify(name="sp_chain", inputs=["log"], outputs=["v"])
    def sp_chain(log):  # type: ignore[no-untyped-def]
        a = sp_work(label="c1", x=0, log=log)
        b = sp_work(label="c2", x=a.v, log=log)
        c = sp_work(label="c3", x=b.v, log=log, _retry=RetryPolicy(attempts=2, backoff_s=0.01))
        return {"v": c.v}
