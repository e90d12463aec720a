"""DBOS Transact: the workloads as ``@DBOS.workflow`` / ``@DBOS.step`` with its SQLite system database.

The system database is a file in the repeat's folder
(``system_database_url="sqlite:///..."``), with DBOS's defaults: it sets no
``synchronous`` or ``journal_mode`` pragma, so SQLite's defaults apply
(rollback journal, ``synchronous=FULL``); the pragmas are read back from the
file and reported. Every step's output is written to the database before the
workflow goes on. Sequential chains are synchronous workflows (the faster
form for one workflow at a time); fan-out, concurrency and waits are async
workflows. A wait is ``DBOS.recv_async(topic)``; a resume is
``DBOS.send_async(workflow_id, message, topic)``. On SQLite, a waiting
``recv`` learns of a message by polling (``notification_listener_polling_interval_sec``,
default 1 s, left at its default). A workflow that was running or waiting
when its process stopped is recovered by the next ``DBOS.launch()`` with the
same executor id.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import peer_common as pc
from dbos import DBOS, SetWorkflowID

TOPIC = "go"
START_BATCH = 250
arrived = 0  # workflows that reached their recv in this process (test instrumentation only)


def db_file(p: dict) -> Path:
    return Path(p["workdir"], "dbos.sqlite")


def launch(p: dict) -> None:
    DBOS(
        config={
            "name": "peerbench",
            "system_database_url": f"sqlite:///{db_file(p)}",
            "log_level": "ERROR",
        }
    )
    DBOS.launch()


def settings(p: dict) -> dict[str, Any]:
    modes = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    conn = sqlite3.connect(db_file(p))
    try:
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    return {
        "journal_mode": journal,
        "synchronous": f"{modes.get(sync, sync)} (SQLite default; DBOS sets none)",
        "sqlite": sqlite3.sqlite_version,
        "recv_polling_s": 1.0,
    }


@DBOS.step()
def incr(x: int) -> int:
    return x + 1


@DBOS.step()
def traced_incr(x: int) -> int:
    pc.side_step(x + 1)
    return x + 1


@DBOS.workflow()
def chain(steps: int) -> int:
    x = 0
    for _ in range(steps):
        x = incr(x)
    return x


@DBOS.workflow()
def traced_chain(steps: int) -> int:
    x = 0
    for _ in range(steps):
        x = traced_incr(x)
    return x


@DBOS.step()
async def aincr(x: int) -> int:
    return x + 1


@DBOS.step()
async def asum(values: list[int]) -> int:
    return sum(values)


@DBOS.workflow()
async def achain(steps: int) -> int:
    x = 0
    for _ in range(steps):
        x = await aincr(x)
    return x


@DBOS.workflow()
async def afanout(width: int) -> int:
    values = await asyncio.gather(*(aincr(i) for i in range(width)))
    return await asum(list(values))


@DBOS.workflow()
async def waiter() -> int:
    global arrived
    arrived += 1
    answer = await DBOS.recv_async(TOPIC, timeout_seconds=3600)
    return await aincr(answer)


def w_seq(p: dict) -> dict:
    launch(p)
    steps = p["steps"]

    def one() -> None:
        assert chain(steps) == steps

    pc.timed_runs(p["warmup"], one)
    return {"run_s": pc.timed_runs(p["runs"], one)}


async def w_fanout(p: dict) -> dict:
    launch(p)
    width = p["width"]
    expected = sum(range(1, width + 1))
    ok = True

    async def one() -> None:
        nonlocal ok
        ok = ok and await afanout(width) == expected

    await pc.timed_awaits(p["warmup"], one)
    return {"run_s": await pc.timed_awaits(p["runs"], one), "ok": ok}


async def w_concurrent(p: dict) -> dict:
    launch(p)
    count, steps = p["workflows"], p["steps"]

    async def together(n: int = count) -> None:
        assert await asyncio.gather(*(achain(steps) for _ in range(n))) == [steps] * n

    await pc.timed_awaits(p["warmup"], lambda: together(p.get("warmup_workflows", count)))
    return {"run_s": await pc.timed_awaits(p["runs"], together)}


async def _start_waiting(ids: list[str]) -> list[Any]:
    target = arrived + len(ids)
    handles = []
    for workflow_id in ids:
        with SetWorkflowID(workflow_id):
            handles.append(await DBOS.start_workflow_async(waiter))
    while arrived < target:  # noqa: ASYNC110 - the workflows' own counter, no event to wait on
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.2)  # from the counter to the recv's registration
    return handles


async def w_hold(p: dict) -> dict:
    launch(p)
    count, single, keep = p["workflows"], p["single"], p["other"]
    stamp = time.time_ns()
    warm = await _start_waiting([f"warm-{stamp}-{i}" for i in range(20)])
    for handle in warm:
        await DBOS.send_async(handle.get_workflow_id(), 1, TOPIC)
    await asyncio.gather(*(handle.get_result() for handle in warm))
    del warm
    rss_base = pc.settled_rss()
    began = time.perf_counter()
    handles = []
    for first in range(0, count, START_BATCH):
        handles += await _start_waiting([f"w-{stamp}-{i}" for i in range(first, min(count, first + START_BATCH))])
    suspend_s = time.perf_counter() - began
    rss_suspended = pc.settled_rss()
    singles = []
    correct = 0
    for index, handle in enumerate(handles[:single]):
        sent = pc.now_ns()
        await DBOS.send_async(handle.get_workflow_id(), index, TOPIC)
        value = await handle.get_result()
        correct += value == index + 1
        singles.append(pc.now_ns() - sent)
    latencies: list[int] = []

    async def resume_one(index: int, handle: Any) -> None:
        nonlocal correct
        sent = pc.now_ns()
        await DBOS.send_async(handle.get_workflow_id(), index, TOPIC)
        value = await handle.get_result()
        correct += value == index + 1
        latencies.append(pc.now_ns() - sent)

    began_ns = pc.now_ns()
    await asyncio.gather(*(resume_one(index, handle) for index, handle in enumerate(handles[single : count - keep])))
    total_s = (pc.now_ns() - began_ns) / 1e9
    left = [handle.get_workflow_id() for handle in handles[count - keep :]]
    pc.save_left(p["workdir"], left)
    return {
        "rss_base": rss_base,
        "rss_suspended": rss_suspended,
        "suspend_s": suspend_s,
        "single_ns": singles,
        "burst_ns": latencies,
        "burst_total_s": total_s,
        "completed": single + len(latencies),
        "correct": correct,
        "left": keep,
    }


async def w_other(p: dict) -> dict:
    """A fresh process: launch recovers the holder's pending workflows (same executor id); then send to each."""
    left = pc.load_left(p["workdir"])
    launch(p)
    latencies = []
    ok = 0
    for index, workflow_id in enumerate(left):
        sent = pc.now_ns()
        await DBOS.send_async(workflow_id, index, TOPIC)
        handle = await DBOS.retrieve_workflow_async(workflow_id)
        value = await handle.get_result()
        ok += value == index + 1
        latencies.append(pc.now_ns() - sent)
    return {
        "supported": True,
        "resumed": len(left),
        "ok": ok,
        "latency_ns": latencies,
        "note": "the new process first recovers the pending workflows (same executor id), then receives the messages",
    }


def w_crash(p: dict) -> dict:
    launch(p)
    with SetWorkflowID(p["run_id"]):
        return {"result": traced_chain(p["steps"])}


def w_recover(p: dict) -> dict:
    launch(p)  # recovers the pending workflow in the background
    ready = pc.wall_ns()
    result = DBOS.retrieve_workflow(p["run_id"]).get_result()
    return {"result": result, "ready_wall_ns": ready, "done_wall_ns": pc.wall_ns()}


SYNC_WORKLOADS = {"seq": w_seq, "crash": w_crash, "recover": w_recover}
ASYNC_WORKLOADS = {"fanout": w_fanout, "concurrent": w_concurrent, "hold": w_hold, "other": w_other}


def main() -> None:
    workload, p = pc.params()
    sync = SYNC_WORKLOADS.get(workload)
    result = sync(p) if sync is not None else asyncio.run(ASYNC_WORKLOADS[workload](p))
    result["settings"] = settings(p)
    pc.emit(result)
    os._exit(0)  # skip DBOS's shutdown of its background threads (and of waiting workflows in W4)


if __name__ == "__main__":
    main()
