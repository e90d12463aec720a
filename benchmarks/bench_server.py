"""16. The HTTP server: SSE fan-out to 1,000 clients of one run, and ``GET /api/runs`` over 100,000 runs.

One isolated embedded nats-server; the stream is filled with 100,000
two-event runs (``run.started``, then ``run.completed`` or ``run.failed``)
by pipelined appends; then ``aethergraph serve`` runs as its own process
(owning the projection store, which folds the backlog before the pages are
timed). Pages are fetched one at a time over one keep-alive connection.
For the fan-out, client processes hold 1,000 SSE connections to one run;
this process appends ``log.recorded`` events to that run (each carrying the
wall clock just before its append) and every client notes when it received
each one.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import multiprocessing
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aethergraph import Settings
from aethergraph.bus.event_log import JetStreamEventLog
from aethergraph.core.ids import new_run_id
from aethergraph.core.wire.events import Event, LogRecorded, RunCompleted, RunFailed, RunStarted
from aethergraph.host.process import ProcessHost

from .harness import (
    DEFAULT_SYNC,
    BenchContext,
    Figure,
    isolated_server,
    latency_figure,
    process_cpu_s,
    temp_workspace,
    value_figure,
)
from .processes import REPO, poll, process_env

NAME = "server"
TITLE = "16. HTTP server"

GRAPHS = ("ingest", "train", "report", "review")
# Between two fan-out events: each event's delivery to every client is measured on its own, not queued
# behind the previous one's (the latency of one event, not the saturation throughput).
GAP_S = 0.2
_T_NS = re.compile(rb'"message":"t(\d+)"')


def _run_events(index: int, now_us: int) -> list[Event]:
    run_id = new_run_id()
    graph = GRAPHS[index % len(GRAPHS)]
    started = RunStarted(run_id=run_id, seq=1, ts=now_us, worker="bench", graph_id=graph, inputs={"i": index})
    if index % 10 == 9:
        end: Event = RunFailed(
            run_id=run_id, seq=2, ts=now_us + 1000, worker="bench", parent=1, error_type="ValueError", message="no"
        )
    else:
        end = RunCompleted(run_id=run_id, seq=2, ts=now_us + 1000, worker="bench", parent=1, outputs={"i": index})
    return [started, end]


async def _fill_runs(log: JetStreamEventLog, count: int) -> None:
    """``count`` runs, appended pipelined (acknowledgements awaited every few thousand)."""
    futures: list[asyncio.Future[int]] = []
    base_us = time.time_ns() // 1000 - count * 10
    for index in range(count):
        for event in _run_events(index, base_us + index * 10):
            futures.append(log.writer(event.run_id).append(event))  # type: ignore[arg-type]
        if len(futures) >= 4096:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, Any]]:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    return time.perf_counter_ns(), json.loads(body)


def _page_latencies(url: str, count: int, runs: int) -> dict[str, list[int]]:
    """Nanoseconds per page of 50: the newest, by cursor deep in the list, at offset half-way, filtered."""
    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        poll(
            lambda: True if _get(conn, "/api/runs?limit=1")[1]["total"] >= runs else None,
            timeout_s=600,
            what=f"the server's projector to fold {runs:,} runs",
            interval_s=0.5,
        )
        _, first = _get(conn, "/api/runs?limit=50")
        deep_cursor = first["next_cursor"]
        for _ in range(40):  # walk a few pages in, for a cursor past the newest
            _, page = _get(conn, f"/api/runs?limit=50&cursor={urllib.parse.quote(deep_cursor)}")
            deep_cursor = page["next_cursor"]
        paths = {
            "newest": "/api/runs?limit=50",
            "cursor": f"/api/runs?limit=50&cursor={urllib.parse.quote(deep_cursor)}",
            "offset": f"/api/runs?limit=50&offset={runs // 2}",
            "filtered": "/api/runs?limit=50&status=failed&graph=train&since=1d",
        }
        samples: dict[str, list[int]] = {key: [] for key in paths}
        for _ in range(count):
            for key, path in paths.items():
                began = time.perf_counter_ns()
                done, _ = _get(conn, path)
                samples[key].append(done - began)
        return samples
    finally:
        conn.close()


# --- SSE clients (run in their own processes) -----------------------------------------------------


async def _client(host: str, port: int, run_id: str, events: int, connected: Any) -> list[int]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /api/runs/{run_id}/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    latencies: list[int] = []
    announced = False
    while len(latencies) < events:
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError("the server closed the stream")
        now = time.time_ns()
        if not announced and b"run.started" in chunk:
            announced = True
            connected.put(1)
        latencies.extend(now - int(t) for t in _T_NS.findall(chunk))
    writer.close()
    return latencies


def client_process(url: str, run_id: str, clients: int, events: int, connected: Any, results: Any) -> None:
    """One process of SSE clients: ``clients`` connections; puts every latency (ns) it saw into ``results``."""
    parsed = urllib.parse.urlparse(url)

    async def main() -> list[int]:
        done = await asyncio.gather(
            *(_client(parsed.hostname or "", parsed.port or 0, run_id, events, connected) for _ in range(clients))
        )
        return [value for latencies in done for value in latencies]

    results.put(asyncio.run(main()))


async def _publish(url: str, workspace: Path, run_id: str, events: int, gap_s: float) -> None:
    host = await ProcessHost.open(Settings(nats_url=url, workspace=workspace, sync_interval=DEFAULT_SYNC))
    try:
        writer = host.event_log.writer(run_id)
        for seq in range(2, events + 2):
            await asyncio.sleep(gap_s)
            now = time.time_ns()
            event = LogRecorded(run_id=run_id, seq=seq, ts=now // 1000, worker="bench", level="info", message=f"t{now}")
            await writer.append(event)
    finally:
        await host.close()


async def _start_run(url: str, workspace: Path, run_id: str) -> None:
    host = await ProcessHost.open(Settings(nats_url=url, workspace=workspace, sync_interval=DEFAULT_SYNC))
    try:
        event = RunStarted(run_id=run_id, seq=1, ts=time.time_ns() // 1000, worker="bench", graph_id="fanout")
        await host.event_log.writer(run_id).append(event)
    finally:
        await host.close()


def _fan_out(
    ctx: BenchContext, url: str, nats_url: str, workspace: Path, clients: int, events: int, server_pid: int
) -> tuple[list[int], float]:
    """Every client's latency per event (ns), and the server process's CPU seconds while the events went out."""
    run_id = new_run_id()
    asyncio.run(_start_run(nats_url, workspace, run_id))
    spawn = multiprocessing.get_context("spawn")
    connected, results = spawn.Queue(), spawn.Queue()
    per_process = [clients // 4 + (1 if i < clients % 4 else 0) for i in range(4)]
    processes = [
        spawn.Process(target=client_process, args=(url, run_id, n, events, connected, results)) for n in per_process
    ]
    for process in processes:
        process.start()
    for index in range(clients):
        connected.get(timeout=120)
        if (index + 1) % 250 == 0:
            ctx.say(f"{index + 1} SSE clients connected")
    cpu_before = process_cpu_s(server_pid)
    asyncio.run(_publish(nats_url, workspace, run_id, events, gap_s=GAP_S))
    latencies = [value for _ in processes for value in results.get(timeout=300)]
    server_cpu = process_cpu_s(server_pid) - cpu_before
    for process in processes:
        process.join(timeout=60)
    return latencies, server_cpu


def _serve(nats_url: str, scratch: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    env = process_env(nats_url, scratch / "server-ws")
    process = subprocess.Popen(
        [sys.executable, "-m", "aethergraph", "serve", "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if " at http://" not in line:
        process.kill()
        raise RuntimeError(f"aethergraph serve printed no URL: {line!r}")
    return process, line.rsplit(" ", 1)[-1].strip()


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    runs = ctx.pick(100_000, 10_000)
    clients, events, pages = ctx.pick(1000, 200), ctx.pick(40, 10), ctx.pick(120, 10)
    with isolated_server(DEFAULT_SYNC) as (server, workspace), temp_workspace("ag-bench-server-") as scratch:

        async def fill() -> None:
            host = await ProcessHost.open(
                Settings(nats_url=server.url, workspace=workspace, sync_interval=DEFAULT_SYNC)
            )
            try:
                await _fill_runs(host.event_log, runs)
            finally:
                await host.close()

        ctx.say(f"appending {runs:,} runs ({2 * runs:,} events)")
        asyncio.run(fill())
        process, url = _serve(server.url, scratch)
        try:
            ctx.say(f"server at {url}; waiting for its projector, then {pages} rounds of 4 pages")
            page_samples = _page_latencies(url, pages, runs)
        finally:
            process.terminate()
            process.wait(timeout=30)
        # The fan-out on a server without a projector, and none running: the figure is the SSE path's alone
        # (a projector folding each event as its own batch costs the server's process far more; see the notes).
        process, url = _serve(server.url, scratch, "--no-projector")
        try:
            ctx.say(f"{clients} SSE clients on one run, {events} events {GAP_S * 1000:.0f} ms apart")
            fan_out, server_cpu = _fan_out(ctx, url, server.url, workspace, clients, events, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    if len(fan_out) != clients * events:
        raise RuntimeError(f"the clients saw {len(fan_out)} events, not {clients * events}")
    labels = {
        "newest": "newest page",
        "cursor": "a page 40 pages deep, by cursor",
        "offset": f"the page at offset {runs // 2:,}",
        "filtered": "status + graph + since filters",
    }
    figures = [
        latency_figure(
            NAME,
            "sse_fanout",
            f"event appended -> received by each of {clients:,} SSE clients of one run",
            [fan_out],
            unit="ms",
            scale=1e-6,
            sync_interval=DEFAULT_SYNC,
            note="target p99 ≤100 ms",
        ),
        value_figure(
            NAME,
            "sse_server_cpu_per_event",
            f"server CPU per event delivered to {clients:,} SSE clients",
            [server_cpu / events * 1000],
            unit="ms",
            per_repeat_n=events,
            better="lower",
            sync_interval=DEFAULT_SYNC,
        ),
        *(
            latency_figure(
                NAME,
                f"runs_page_{key}",
                f"GET /api/runs?limit=50 over {runs:,} runs: {label}",
                [page_samples[key]],
                unit="ms",
                scale=1e-6,
                sync_interval=DEFAULT_SYNC,
                note="target ≤50 ms per page",
            )
            for key, label in labels.items()
        ),
    ]
    notes = [
        f"`aethergraph serve` in its own process owns the projection store (its projector folded the {runs:,} "
        "runs first); each page is one request on a keep-alive connection from this process, the list query "
        "asked of the projector over NATS request/reply like `aethergraph sql`, with the total count of the "
        "filtered runs.",
        f"Fan-out: {clients:,} SSE connections from 4 client processes to `GET /api/runs/<id>/events`; the "
        "server follows the run once (one `ag.live.evt` subscription) and wakes every stream per event. "
        f"{events} events, {GAP_S * 1000:.0f} ms apart. Each "
        "event carries the wall clock just before this process appended it; a client stamps it when the chunk "
        "arrives (same machine, same clock). Clients, server, nats-server and appender share the machine's cores, "
        "so the p99 moves with whatever else runs (see the load and CPU figures of this benchmark's heading). "
        "This server runs with `--no-projector` and no projector runs: with one in the server's process, folding "
        "each event as a batch of its own took about 100 ms of that process's CPU per event (DuckDB, several "
        "threads) on top of the SSE work, and the fan-out's tail grew with it.",
    ]
    return figures, notes
