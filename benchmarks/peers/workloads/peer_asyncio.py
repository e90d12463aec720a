"""Plain asyncio, no durability: the workloads as ordinary coroutines. The lower bound of Python itself.

Nothing is recorded anywhere, so a suspended workflow is a coroutine holding
an ``asyncio.Future`` in this process's memory, no other process can resume
it, and after a crash the workflow starts again from step 1.
"""

from __future__ import annotations

import asyncio
import time

import peer_common as pc

SETTINGS = {"durability": "none (in-memory coroutines)"}


async def incr(x: int) -> int:
    return x + 1


async def traced_incr(x: int) -> int:
    pc.side_step(x + 1)
    return x + 1


async def chain(steps: int, step=incr) -> int:
    x = 0
    for _ in range(steps):
        x = await step(x)
    return x


async def fanout(width: int) -> int:
    values = await asyncio.gather(*(incr(i) for i in range(width)))
    return sum(values)


async def w_seq(p: dict) -> dict:
    steps = p["steps"]
    await pc.timed_awaits(p["warmup"], lambda: chain(steps))
    return {"run_s": await pc.timed_awaits(p["runs"], lambda: chain(steps))}


async def w_fanout(p: dict) -> dict:
    width = p["width"]
    expected = sum(range(1, width + 1))
    await pc.timed_awaits(p["warmup"], lambda: fanout(width))
    runs = await pc.timed_awaits(p["runs"], lambda: fanout(width))
    return {"run_s": runs, "ok": await fanout(width) == expected}


async def w_concurrent(p: dict) -> dict:
    count, steps = p["workflows"], p["steps"]

    async def together(n: int = count) -> None:
        results = await asyncio.gather(*(chain(steps) for _ in range(n)))
        assert results == [steps] * n

    await pc.timed_awaits(p["warmup"], lambda: together(p.get("warmup_workflows", count)))
    return {"run_s": await pc.timed_awaits(p["runs"], together)}


async def w_hold(p: dict) -> dict:
    count, single = p["workflows"], p["single"]
    rss_base = pc.settled_rss()
    events: list[asyncio.Future[int]] = []
    done: dict[int, int] = {}
    loop = asyncio.get_running_loop()

    async def workflow(index: int, gate: asyncio.Future[int]) -> None:
        answer = await gate
        done[index] = pc.now_ns()
        assert await incr(answer) == answer + 1

    started = time.perf_counter()
    tasks = []
    for index in range(count):
        gate = loop.create_future()
        events.append(gate)
        tasks.append(asyncio.ensure_future(workflow(index, gate)))
    await asyncio.sleep(0)
    suspend_s = time.perf_counter() - started
    await asyncio.sleep(0.5)
    rss_suspended = pc.settled_rss(0)
    singles = []
    for index in range(single):
        sent = pc.now_ns()
        events[index].set_result(index)
        await tasks[index]
        singles.append(done[index] - sent)
    keep = p["other"]
    burst_ids = list(range(single, count - keep))
    sent_at = {}
    began = pc.now_ns()
    for index in burst_ids:
        sent_at[index] = pc.now_ns()
        events[index].set_result(index)
    await asyncio.gather(*(tasks[index] for index in burst_ids))
    total_s = (pc.now_ns() - began) / 1e9
    for index in range(count - keep, count):
        tasks[index].cancel()
    return {
        "rss_base": rss_base,
        "rss_suspended": rss_suspended,
        "suspend_s": suspend_s,
        "single_ns": singles,
        "burst_ns": [done[index] - sent_at[index] for index in burst_ids],
        "burst_total_s": total_s,
        "completed": len(done),
        "left": count - len(done),
    }


async def w_other(p: dict) -> dict:
    return {
        "supported": False,
        "ok": 0,
        "resumed": 0,
        "note": "the suspended coroutines lived in the exited process; nothing was recorded",
    }


async def w_crash(p: dict) -> dict:
    return {"result": await chain(p["steps"], traced_incr)}


async def w_recover(p: dict) -> dict:
    # Nothing was recorded: the only way to finish is to start again from step 1.
    started = pc.wall_ns()
    result = await chain(p["steps"], traced_incr)
    return {"result": result, "ready_wall_ns": started, "done_wall_ns": pc.wall_ns(), "restarted_from_scratch": True}


WORKLOADS = {
    "seq": w_seq,
    "fanout": w_fanout,
    "concurrent": w_concurrent,
    "hold": w_hold,
    "other": w_other,
    "crash": w_crash,
    "recover": w_recover,
}


def main() -> None:
    workload, p = pc.params()
    result = asyncio.run(WORKLOADS[workload](p))
    result["settings"] = SETTINGS
    pc.emit(result)


if __name__ == "__main__":
    main()
