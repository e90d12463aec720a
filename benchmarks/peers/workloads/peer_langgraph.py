"""LangGraph: the workloads with the functional API (``@entrypoint`` + ``@task``) and the SQLite checkpointer.

Every invocation passes ``durability="sync"``: each task's result is written
to the checkpointer before the workflow goes on (LangGraph's default,
``"async"``, writes in the background and can lose completed steps on a
crash). The checkpoint database is a file in the repeat's folder; the
checkpointer opens it in WAL mode and leaves ``synchronous`` at SQLite's
default, both read back from its connection and reported. Sequential and
fan-out workloads use the synchronous ``SqliteSaver`` (the faster of the two
for one workflow at a time); the concurrent and human-in-the-loop workloads
use ``AsyncSqliteSaver`` (aiosqlite), so that many workflows share one event
loop. A wait is ``interrupt()``; a resume is ``Command(resume=...)`` on the
workflow's thread id, from any process that opens the same file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import peer_common as pc
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.func import entrypoint, task
from langgraph.types import Command, interrupt

DURABILITY = "sync"
CHECKPOINTERS = "SqliteSaver (W1, W2, W5), AsyncSqliteSaver (W3, W4)"
START_BATCH = 250


def db_path(p: dict) -> str:
    return str(Path(p["workdir"], "langgraph.sqlite"))


def config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


_ids = iter(range(10**9))


def fresh_thread() -> str:
    return f"t{next(_ids)}-{time.time_ns()}"


def sqlite_settings(conn: sqlite3.Connection) -> dict[str, Any]:
    modes = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return {
        "durability": DURABILITY,
        "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
        "synchronous": modes.get(sync, str(sync)),
        "sqlite": sqlite3.sqlite_version,
        "checkpointer": CHECKPOINTERS,
    }


# --- synchronous: W1, W2, W5 ----------------------------------------------------------------


@task
def incr(x: int) -> int:
    return x + 1


@task
def traced_incr(x: int) -> int:
    pc.side_step(x + 1)
    return x + 1


@task
def reduce_sum(values: list[int]) -> int:
    return sum(values)


def build_sync(saver: SqliteSaver) -> dict[str, Any]:
    @entrypoint(checkpointer=saver)
    def chain(steps: int) -> int:
        x = 0
        for _ in range(steps):
            x = incr(x).result()
        return x

    @entrypoint(checkpointer=saver)
    def traced_chain(steps: int) -> int:
        x = 0
        for _ in range(steps):
            x = traced_incr(x).result()
        return x

    @entrypoint(checkpointer=saver)
    def fanout(width: int) -> int:
        futures = [incr(i) for i in range(width)]  # scheduled together, run in LangGraph's thread pool
        return reduce_sum([future.result() for future in futures]).result()

    return {"chain": chain, "traced_chain": traced_chain, "fanout": fanout}


def open_sync(p: dict) -> tuple[sqlite3.Connection, dict[str, Any]]:
    conn = sqlite3.connect(db_path(p), check_same_thread=False)
    saver = SqliteSaver(conn)
    saver.setup()
    return conn, build_sync(saver)


def w_seq(p: dict) -> dict:
    conn, graphs = open_sync(p)
    steps = p["steps"]

    def one() -> None:
        assert graphs["chain"].invoke(steps, config(fresh_thread()), durability=DURABILITY) == steps

    pc.timed_runs(p["warmup"], one)
    return {"run_s": pc.timed_runs(p["runs"], one), "settings": sqlite_settings(conn)}


def w_fanout(p: dict) -> dict:
    conn, graphs = open_sync(p)
    width = p["width"]
    expected = sum(range(1, width + 1))
    ok = True

    def one() -> None:
        nonlocal ok
        ok = ok and graphs["fanout"].invoke(width, config(fresh_thread()), durability=DURABILITY) == expected

    pc.timed_runs(p["warmup"], one)
    runs = pc.timed_runs(p["runs"], one)
    return {"run_s": runs, "ok": ok, "settings": sqlite_settings(conn)}


def w_crash(p: dict) -> dict:
    _, graphs = open_sync(p)
    return {"result": graphs["traced_chain"].invoke(p["steps"], config(p["run_id"]), durability=DURABILITY)}


def w_recover(p: dict) -> dict:
    conn, graphs = open_sync(p)
    ready = pc.wall_ns()
    # Invoking the thread again with no input continues it from its last checkpoint.
    result = graphs["traced_chain"].invoke(None, config(p["run_id"]), durability=DURABILITY)
    return {"result": result, "ready_wall_ns": ready, "done_wall_ns": pc.wall_ns(), "settings": sqlite_settings(conn)}


# --- asynchronous: W3, W4 -------------------------------------------------------------------


@task
async def aincr(x: int) -> int:
    return x + 1


def build_async(saver: AsyncSqliteSaver) -> dict[str, Any]:
    @entrypoint(checkpointer=saver)
    async def achain(steps: int) -> int:
        x = 0
        for _ in range(steps):
            x = await aincr(x)
        return x

    @entrypoint(checkpointer=saver)
    async def waiter(_: int) -> int:
        answer = interrupt("resume me")
        return await aincr(answer)

    return {"chain": achain, "waiter": waiter}


async def async_settings(saver: AsyncSqliteSaver) -> dict[str, Any]:
    modes = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    async with saver.conn.execute("PRAGMA synchronous") as cursor:
        sync = (await cursor.fetchone())[0]
    async with saver.conn.execute("PRAGMA journal_mode") as cursor:
        journal = (await cursor.fetchone())[0]
    return {
        "durability": DURABILITY,
        "journal_mode": journal,
        "synchronous": modes.get(sync, str(sync)),
        "sqlite": sqlite3.sqlite_version,
        "checkpointer": CHECKPOINTERS,
    }


async def w_concurrent(p: dict) -> dict:
    count, steps = p["workflows"], p["steps"]
    async with AsyncSqliteSaver.from_conn_string(db_path(p)) as saver:
        graphs = build_async(saver)

        async def together(n: int = count) -> None:
            results = await asyncio.gather(
                *(graphs["chain"].ainvoke(steps, config(fresh_thread()), durability=DURABILITY) for _ in range(n))
            )
            assert results == [steps] * n

        await pc.timed_awaits(p["warmup"], lambda: together(p.get("warmup_workflows", count)))
        runs = await pc.timed_awaits(p["runs"], together)
        return {"run_s": runs, "settings": await async_settings(saver)}


async def _resume(waiter: Any, thread: str, answer: int) -> int:
    return await waiter.ainvoke(Command(resume=answer), config(thread), durability=DURABILITY)


async def w_hold(p: dict) -> dict:
    count, single, keep = p["workflows"], p["single"], p["other"]
    async with AsyncSqliteSaver.from_conn_string(db_path(p)) as saver:
        waiter = build_async(saver)["waiter"]
        warm = [fresh_thread() for _ in range(20)]
        await asyncio.gather(*(waiter.ainvoke(0, config(t), durability=DURABILITY) for t in warm))
        await asyncio.gather(*(_resume(waiter, t, 1) for t in warm))
        rss_base = pc.settled_rss()
        threads = [fresh_thread() for _ in range(count)]
        began = time.perf_counter()
        for first in range(0, count, START_BATCH):
            batch = threads[first : first + START_BATCH]
            outs = await asyncio.gather(*(waiter.ainvoke(0, config(t), durability=DURABILITY) for t in batch))
            assert all("__interrupt__" in out for out in outs), outs[:2]
            del outs
        suspend_s = time.perf_counter() - began
        rss_suspended = pc.settled_rss()
        singles = []
        correct = 0
        for index, thread in enumerate(threads[:single]):
            sent = pc.now_ns()
            value = await _resume(waiter, thread, index)
            correct += value == index + 1
            singles.append(pc.now_ns() - sent)
        burst_threads = threads[single : count - keep]
        latencies: list[int] = []

        async def resume_one(index: int, thread: str) -> None:
            nonlocal correct
            sent = pc.now_ns()
            value = await _resume(waiter, thread, index)
            correct += value == index + 1
            latencies.append(pc.now_ns() - sent)

        began_ns = pc.now_ns()
        await asyncio.gather(*(resume_one(index, thread) for index, thread in enumerate(burst_threads)))
        total_s = (pc.now_ns() - began_ns) / 1e9
        pc.save_left(p["workdir"], threads[count - keep :])
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
            "settings": await async_settings(saver),
        }


async def w_other(p: dict) -> dict:
    """A fresh process opens the same checkpoint file and resumes the threads the holder left interrupted."""
    left = pc.load_left(p["workdir"])
    async with AsyncSqliteSaver.from_conn_string(db_path(p)) as saver:
        waiter = build_async(saver)["waiter"]
        latencies = []
        ok = 0
        for index, thread in enumerate(left):
            sent = pc.now_ns()
            value = await _resume(waiter, thread, index)
            ok += value == index + 1
            latencies.append(pc.now_ns() - sent)
        return {"supported": True, "resumed": len(left), "ok": ok, "latency_ns": latencies}


SYNC_WORKLOADS = {"seq": w_seq, "fanout": w_fanout, "crash": w_crash, "recover": w_recover}
ASYNC_WORKLOADS = {"concurrent": w_concurrent, "hold": w_hold, "other": w_other}


def main() -> None:
    workload, p = pc.params()
    sync = SYNC_WORKLOADS.get(workload)
    result = sync(p) if sync is not None else asyncio.run(ASYNC_WORKLOADS[workload](p))
    result.setdefault("settings", {"durability": DURABILITY})
    pc.emit(result)


if __name__ == "__main__":
    main()
