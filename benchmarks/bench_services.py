"""10. Context services: journaled call overhead, kv latency, artifact throughput (local files and Object Store)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aethergraph import Service, Settings, graph_fn, register_context_service
from aethergraph.core.run.executor import execute_run
from aethergraph.host.process import ProcessHost

from .harness import (
    SYNC_INTERVALS,
    BenchContext,
    Figure,
    isolated_server,
    latency_figure,
    median,
    value_figure,
)

NAME = "services"
TITLE = "11. Context services"
CALLS = 200
ARTIFACT_MB = 8

# Samples the graphs below append to (the graphs run live, never replayed, in this benchmark).
_samples: dict[str, list[int]] = {}


class BenchEcho(Service):
    async def echo(self, x: int) -> int:
        return x


_echo = BenchEcho()
_bare_echo = BenchEcho.echo  # the undecorated method: what the call costs without the runtime


def _sample(key: str, started: int) -> None:
    _samples.setdefault(key, []).append(time.perf_counter_ns() - started)


@graph_fn(name="bench_service_calls", outputs=["n"])
async def bench_service_calls(n: int, *, context: Any) -> dict[str, int]:
    for i in range(n):
        started = time.perf_counter_ns()
        await context.bench_echo().echo(i)
        _sample("journaled", started)
    return {"n": n}


@graph_fn(name="bench_kv", outputs=["n"])
async def bench_kv(n: int, prefix: str, *, context: Any) -> dict[str, int]:
    kv = context.kv()
    for i in range(n):
        started = time.perf_counter_ns()
        await kv.set(f"{prefix}{i}", {"i": i, "payload": "x" * 64})
        _sample("kv_set", started)
    for i in range(n):
        started = time.perf_counter_ns()
        await kv.get(f"{prefix}{i}")
        _sample("kv_get", started)
    return {"n": n}


@graph_fn(name="bench_artifacts", outputs=["n"])
async def bench_artifacts(count: int, mb: int, *, context: Any) -> dict[str, int]:
    arts = context.artifacts()
    saved = []
    for _ in range(count):
        data = os.urandom(mb * 1024 * 1024)  # fresh content: nothing is deduplicated
        started = time.perf_counter_ns()
        saved.append(await arts.save_bytes(data, kind="bench"))
        _sample("save", started)
    for artifact in saved:
        started = time.perf_counter_ns()
        await arts.load_bytes(artifact.uri)
        _sample("load", started)
    return {"n": count}


async def _bare_calls(n: int) -> tuple[list[int], list[int]]:
    """The undecorated method, and the registered (wrapped) method called outside any run."""
    bare: list[int] = []
    wrapped: list[int] = []
    for i in range(n):
        started = time.perf_counter_ns()
        await _bare_echo(_echo, i)
        bare.append(time.perf_counter_ns() - started)
        started = time.perf_counter_ns()
        await _echo.echo(i)
        wrapped.append(time.perf_counter_ns() - started)
    return bare, wrapped


async def _measure(ctx: BenchContext, sync: str) -> list[Figure]:
    repeats = ctx.pick(10, 2)
    artifact_count = ctx.pick(4, 2)
    register_context_service("bench_echo", _echo)
    blocks: dict[str, list[list[int]]] = {}
    throughput: dict[str, list[float]] = {}
    with isolated_server(sync) as (server, workspace):
        runtimes = {
            store: await ProcessHost.open(
                Settings(
                    nats_url=server.url,
                    workspace=workspace,
                    sync_interval=sync,
                    artifact_store=store,  # type: ignore[arg-type]
                    artifacts_dir=workspace / "artifacts",
                )
            )
            for store in ("local", "object_store")
        }
        try:
            rt = runtimes["object_store"]
            ctx.say(f"warm-up (sync_interval={sync})")
            await execute_run(bench_service_calls.spec, {"n": 20}, env=rt.env)
            await execute_run(bench_kv.spec, {"n": 20, "prefix": "warm."}, env=rt.env)
            for index in range(repeats):
                ctx.say(f"repeat {index + 1}/{repeats}: {CALLS} service calls, {CALLS} kv set + get")
                _samples.clear()
                await execute_run(bench_service_calls.spec, {"n": CALLS}, env=rt.env)
                await execute_run(bench_kv.spec, {"n": CALLS, "prefix": f"r{index}."}, env=rt.env)
                bare, wrapped = await _bare_calls(CALLS)
                for key, samples in (*_samples.items(), ("bare", bare), ("wrapped", wrapped)):
                    blocks.setdefault(key, []).append(list(samples))
            for store, store_rt in runtimes.items():
                ctx.say(f"artifacts on {store}: {artifact_count} x {ARTIFACT_MB} MiB saved and loaded")
                await execute_run(bench_artifacts.spec, {"count": 1, "mb": 1}, env=store_rt.env)
                for _ in range(max(1, repeats // 3)):
                    _samples.clear()
                    await execute_run(
                        bench_artifacts.spec, {"count": artifact_count, "mb": ARTIFACT_MB}, env=store_rt.env
                    )
                    for op in ("save", "load"):
                        seconds = sum(_samples[op]) / 1e9
                        throughput.setdefault(f"{op}_{store}", []).append(artifact_count * ARTIFACT_MB / seconds)
        finally:
            for store_rt in runtimes.values():
                await store_rt.close()

    journaled_p50 = [median(block) / 1e3 for block in blocks["journaled"]]
    bare_p50 = [median(block) / 1e3 for block in blocks["bare"]]
    figures = [
        latency_figure(
            NAME,
            "journaled_call",
            f"journaled service call (`await context.svc().echo(i)` in a graph_fn, {CALLS} sequential)",
            blocks["journaled"],
            sync_interval=sync,
            note="service.called pipelined, service.returned awaited (one round trip)",
        ),
        latency_figure(
            NAME, "bare_call", "the same method called bare (no runtime)", blocks["bare"], sync_interval=None
        ),
        latency_figure(
            NAME,
            "outside_run",
            "the registered (wrapped) method called outside any run",
            blocks["wrapped"],
            sync_interval=None,
        ),
        value_figure(
            NAME,
            "overhead",
            "journaling overhead per call (journaled p50 - bare p50, paired per repeat)",
            [j - b for j, b in zip(journaled_p50, bare_p50, strict=True)],
            unit="µs",
            per_repeat_n=CALLS,
            better="lower",
            sync_interval=sync,
        ),
        latency_figure(
            NAME,
            "kv_set",
            "`await context.kv().set(k, v)` (journaled, ~90 B value)",
            blocks["kv_set"],
            sync_interval=sync,
        ),
        latency_figure(NAME, "kv_get", "`await context.kv().get(k)` (journaled)", blocks["kv_get"], sync_interval=sync),
    ]
    labels = {"local": "local files (aiofiles)", "object_store": "JetStream Object Store"}
    for key, rates in throughput.items():
        op, _, store = key.partition("_")
        figures.append(
            value_figure(
                NAME,
                f"artifact_{key}",
                f"artifact {op} of {ARTIFACT_MB} MiB, {labels[store]}"
                + (" (incl. sha256 and the committed artifact.saved)" if op == "save" else " (by URI)"),
                rates,
                unit="MB/s",
                per_repeat_n=artifact_count,
                better="higher",
                sync_interval=sync,
            )
        )
    return figures


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    for sync in SYNC_INTERVALS:
        figures.extend(asyncio.run(_measure(ctx, sync)))
    notes = [
        f"A journaled service call appends `service.called` without waiting, runs the method, then appends "
        f"`service.returned` and waits for JetStream's acknowledgement: one round trip, like a tool step. "
        f"Samples are the wall time of each call inside a graph_fn ({CALLS} per run); the bare and outside-run "
        "figures call the same coroutine method directly.",
        "kv calls are journaled service calls whose method does one JetStream KV operation: a set is two round "
        "trips (the KV publish, then the commit of `service.returned`), a get a direct get plus the commit.",
        f"Artifact throughput: {ARTIFACT_MB} MiB of fresh random bytes per save (never deduplicated); a save "
        "hashes, stores and commits `artifact.saved`; a load reads the content back by URI. Object Store chunks "
        "are 256 KiB, each an awaited publish. MB = 2^20 bytes.",
    ]
    return figures, notes
