"""AetherGraph: the peer workloads through the public API, on the nats-server the runner started.

Runs in the project's own venv with ``AETHERGRAPH_NATS_URL`` (the runner's
server, started with the ``sync_interval`` under test), a temporary
``AETHERGRAPH_WORKSPACE`` and the repository root on ``PYTHONPATH`` (for the
raw JetStream floor in ``benchmarks.workload``). Waits are ``context.wait``
(durable: the run journals ``run.waiting`` and releases its coroutine);
resumes are the public contract, a JSON command published to
``ag.cmd.resume.<run_id>``; completions are observed as
``ag.evt.<run_id>.run.completed`` on a plain NATS subscription.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import ag_graphs
import peer_common as pc

import aethergraph
from benchmarks.workload import raw_requests, sample_payload

GRAPHS_MODULE = "ag_graphs"
WARM_LIFECYCLES = 20
START_BATCH = 250


def settings() -> dict[str, Any]:
    return {
        "sync_interval": os.environ.get("AETHERGRAPH_SYNC_INTERVAL", "1s"),
        "lease_s": os.environ.get("AETHERGRAPH_LEASE_S", "1"),
    }


async def w_seq(p: dict) -> dict:
    steps = p["steps"]
    runtime = await aethergraph.get_runtime()
    nc = runtime.bus.nc
    payload = sample_payload()

    async def one() -> None:
        out = await aethergraph.run_async(ag_graphs.peer_chain, {"steps": steps})
        assert out == {"value": steps}, out

    for _ in range(p["warmup"]):
        await one()
        await raw_requests(nc, steps, payload, "none")
    runs: list[float] = []
    floor_us: list[float] = []
    floor_mean_us: list[float] = []
    step_p50_us: list[float] = []
    for index in range(p["runs"]):
        # Interleaved with the runs, taking turns going first: one awaited JetStream publish
        # acknowledgement (no headers) on the same server, the floor of any design that commits each step.
        for variant in ("run", "floor") if index % 2 == 0 else ("floor", "run"):
            if variant == "run":
                ag_graphs.STEP_SAMPLES = []
                runs.extend(await pc.timed_awaits(1, one))
                step_p50_us.append(pc.median(ag_graphs.STEP_SAMPLES) / 1e3)
                ag_graphs.STEP_SAMPLES = None
            else:
                acks = await raw_requests(nc, steps, payload, "none")
                floor_us.append(pc.median(acks) / 1e3)
                floor_mean_us.append(sum(acks) / len(acks) / 1e3)
    await aethergraph.close_runtime()
    return {"run_s": runs, "floor_us": floor_us, "floor_mean_us": floor_mean_us, "step_p50_us": step_p50_us}


async def w_fanout(p: dict) -> dict:
    """The fan-out as a graph_fn (``asyncio.gather`` of tool calls) and as a ``@graphify`` static graph, interleaved."""
    width = p["width"]
    expected = sum(range(1, width + 1))
    static_graph = ag_graphs.peer_fanout_static(width)
    ok = True

    async def dynamic() -> None:
        nonlocal ok
        out = await aethergraph.run_async(ag_graphs.peer_fanout, {"width": width})
        ok = ok and out == {"value": expected}

    async def static() -> None:
        nonlocal ok
        out = await aethergraph.run_async(static_graph, {})
        ok = ok and out == {"value": expected}

    await pc.timed_awaits(p["warmup"], dynamic)
    await pc.timed_awaits(p["warmup"], static)
    runs: list[float] = []
    static_runs: list[float] = []
    for index in range(p["runs"]):
        order = ((runs, dynamic), (static_runs, static)) if index % 2 == 0 else ((static_runs, static), (runs, dynamic))
        for samples, one in order:
            samples.extend(await pc.timed_awaits(1, one))
    await aethergraph.close_runtime()
    return {"run_s": runs, "static_run_s": static_runs, "ok": ok}


async def w_concurrent(p: dict) -> dict:
    count, steps = p["workflows"], p["steps"]

    async def together(n: int = count) -> None:
        outs = await asyncio.gather(*(aethergraph.run_async(ag_graphs.peer_chain, {"steps": steps}) for _ in range(n)))
        assert all(out == {"value": steps} for out in outs)

    await pc.timed_awaits(p["warmup"], lambda: together(p.get("warmup_workflows", count)))
    runs = await pc.timed_awaits(p["runs"], together)
    await aethergraph.close_runtime()
    return {"run_s": runs}


class Watch:
    """``run.waiting`` and ``run.completed`` of every run, from a plain NATS subscription."""

    def __init__(self) -> None:
        self.waiting: set[str] = set()
        self.completed: dict[str, int] = {}
        self.values: dict[str, int] = {}
        self.futures: dict[str, asyncio.Future[None]] = {}
        self.target = 0
        self.all_waiting = asyncio.Event()

    async def subscribe(self, nc) -> list:
        return [
            await nc.subscribe("ag.evt.*.run.waiting", cb=self._waiting),
            await nc.subscribe("ag.evt.*.run.completed", cb=self._completed),
        ]

    async def _waiting(self, msg) -> None:
        self.waiting.add(msg.subject.split(".")[2])
        if self.target and len(self.waiting) >= self.target:
            self.all_waiting.set()

    async def _completed(self, msg) -> None:
        run_id = msg.subject.split(".")[2]
        self.completed[run_id] = pc.now_ns()
        self.values[run_id] = json.loads(msg.data)["outputs"]["value"]
        future = self.futures.pop(run_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    def expect(self, run_id: str) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        if run_id in self.completed:
            future.set_result(None)
        else:
            self.futures[run_id] = future
        return future


async def _publish_resume(js, run_id: str, answer: int) -> None:
    await js.publish(f"ag.cmd.resume.{run_id}", json.dumps({"payload": answer}).encode())


async def _start_waiting(watch: Watch, count: int) -> list[str]:
    run_ids: list[str] = []
    for first in range(0, count, START_BATCH):
        size = min(START_BATCH, count - first)
        watch.target = len(watch.waiting) + size
        watch.all_waiting.clear()
        handles = [await aethergraph.start_run(ag_graphs.peer_wait) for _ in range(size)]
        run_ids.extend(handle.run_id for handle in handles)
        await asyncio.wait_for(watch.all_waiting.wait(), timeout=120)  # this batch suspended
    return run_ids


async def _serve(*, settle: bool = True) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    serving = asyncio.create_task(aethergraph.serve_worker(GRAPHS_MODULE, stop=stop))
    if settle:
        await asyncio.sleep(0.2)  # the worker declares its consumer and adopts orphans first
    return stop, serving


async def _resume_all(js, watch: Watch, run_ids: list[str]) -> tuple[list[int], float]:
    """Resume ``run_ids`` together (all publishes issued at once); per-run latency to completion."""
    sent: dict[str, int] = {}
    futures = [watch.expect(run_id) for run_id in run_ids]
    began = pc.now_ns()

    async def send(index: int, run_id: str) -> None:
        sent[run_id] = pc.now_ns()
        await _publish_resume(js, run_id, index)

    await asyncio.gather(*(send(index, run_id) for index, run_id in enumerate(run_ids)))
    await asyncio.wait_for(asyncio.gather(*futures), timeout=300)
    total_s = (pc.now_ns() - began) / 1e9
    return [watch.completed[run_id] - sent[run_id] for run_id in run_ids], total_s


async def w_hold(p: dict) -> dict:
    count, single, keep = p["workflows"], p["single"], p["other"]
    runtime = await aethergraph.get_runtime(inline_answers=False)
    runtime.driver.on_suspend = None  # no console line per suspended run
    nc = runtime.bus.nc
    js = nc.jetstream()
    watch = Watch()
    subs = await watch.subscribe(nc)
    stop, serving = await _serve()
    # Warm-up: a few runs through their whole life here.
    warm = await _start_waiting(watch, WARM_LIFECYCLES)
    await _resume_all(js, watch, warm)
    rss_base = pc.settled_rss()
    began = time.perf_counter()
    run_ids = await _start_waiting(watch, count)
    suspend_s = time.perf_counter() - began
    rss_suspended = pc.settled_rss()
    singles = []
    for index, run_id in enumerate(run_ids[:single]):
        future = watch.expect(run_id)
        sent = pc.now_ns()
        await _publish_resume(js, run_id, index)
        await asyncio.wait_for(future, timeout=60)
        singles.append(watch.completed[run_id] - sent)
    burst_ids = run_ids[single : count - keep]
    burst, total_s = await _resume_all(js, watch, burst_ids)
    done = run_ids[: count - keep]
    correct = sum(1 for index, run_id in enumerate(done) if watch.values.get(run_id) == _answer(index, single) + 1)
    left = run_ids[count - keep :]
    pc.save_left(p["workdir"], left)
    stop.set()
    await serving
    for sub in subs:
        await sub.unsubscribe()
    await aethergraph.close_runtime()
    return {
        "rss_base": rss_base,
        "rss_suspended": rss_suspended,
        "suspend_s": suspend_s,
        "single_ns": singles,
        "burst_ns": burst,
        "burst_total_s": total_s,
        "completed": len([run_id for run_id in done if run_id in watch.completed]),
        "correct": correct,
        "left": len(left),
    }


def _answer(index: int, single: int) -> int:
    # singles are answered with their index; the burst with its position in the burst
    return index if index < single else index - single


async def w_other(p: dict) -> dict:
    """A fresh process (the holder has exited): serve as a worker and resume the runs it left suspended."""
    left = pc.load_left(p["workdir"])
    runtime = await aethergraph.get_runtime(inline_answers=False)
    nc = runtime.bus.nc
    watch = Watch()
    subs = await watch.subscribe(nc)
    stop, serving = await _serve()
    js = nc.jetstream()
    latencies = []
    for index, run_id in enumerate(left):  # one at a time, as the other peers do
        future = watch.expect(run_id)
        sent = pc.now_ns()
        await _publish_resume(js, run_id, index)
        await asyncio.wait_for(future, timeout=60)
        latencies.append(watch.completed[run_id] - sent)
    ok = sum(1 for index, run_id in enumerate(left) if watch.values.get(run_id) == index + 1)
    stop.set()
    await serving
    for sub in subs:
        await sub.unsubscribe()
    await aethergraph.close_runtime()
    return {"supported": True, "resumed": len(left), "ok": ok, "latency_ns": latencies}


def w_crash(p: dict) -> dict:
    return {"result": aethergraph.run(ag_graphs.peer_traced_chain, {"steps": p["steps"]}, run_id=p["run_id"])}


async def w_recover(p: dict) -> dict:
    """A fresh process after the kill, with the dead one's worker id: its worker takes the run back at start."""
    await aethergraph.get_runtime(inline_answers=False)
    ready = pc.wall_ns()
    stop, serving = await _serve(settle=False)  # the result is followed while the worker starts
    handle = await aethergraph.get_run(p["run_id"])
    out = await handle.result(timeout=120)
    done = pc.wall_ns()
    stop.set()
    await serving
    await aethergraph.close_runtime()
    return {"result": out["value"], "ready_wall_ns": ready, "done_wall_ns": done}


WORKLOADS = {
    "seq": w_seq,
    "fanout": w_fanout,
    "concurrent": w_concurrent,
    "hold": w_hold,
    "other": w_other,
    "recover": w_recover,
}


def main() -> None:
    workload, p = pc.params()
    result = w_crash(p) if workload == "crash" else asyncio.run(WORKLOADS[workload](p))
    result["settings"] = settings()
    pc.emit(result)


if __name__ == "__main__":
    main()
