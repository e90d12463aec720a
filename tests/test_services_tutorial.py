"""Every code example of the custom-services tutorial (seeds/tutorial-7-custom-services.txt), as written.

The tutorial leaves backend calls to the reader (``_submit_to_cluster``,
``_upload``, ``...``); those are the only lines added here, kept in a fake
cluster and fake clients. Each example runs as journaled runs on the test
server; the journal is read back to show what was recorded.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import read_events

import aethergraph
from aethergraph import graph_fn, start_server, tool
from aethergraph.core.run.executor import execute_run
from aethergraph.core.settings import load_settings
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost
from aethergraph.services.runtime.base import Service
from aethergraph.services.runtime.registry import register_context_service

# --- the backends the tutorial leaves to the reader ----------------------------------------

CLUSTER: dict[str, dict[str, Any]] = {}
SUBMITTED: list[dict[str, Any]] = []


class FakeHttpClient:
    def __init__(self) -> None:
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


# --- section 2: a minimal service ------------------------------------------------------------------


class Trainer(Service):
    async def submit(self, spec: dict) -> str:
        """Submit a training job to your cluster/scheduler."""
        job_id = await self._submit_to_cluster(spec)  # implement backend call
        return job_id

    async def inspect_job(self, job_id: str) -> dict:
        status = await self._query_cluster(job_id)  # implement backend call
        return {"job_id": job_id, "status": status}

    async def _submit_to_cluster(self, spec: dict) -> str:
        SUBMITTED.append(spec)
        job_id = f"job-{len(SUBMITTED)}"
        CLUSTER[job_id] = {"spec": spec, "status": "COMPLETED"}
        return job_id

    async def _query_cluster(self, job_id: str) -> str:
        return str(CLUSTER[job_id]["status"])


@graph_fn(name="demo_trainer")
async def demo_trainer(*, context):
    job_id = await context.trainer().submit({"epochs": 10})
    return {"job_id": job_id}


# --- section 3, example A: submit and track a job --------------------------------------------------


@graph_fn(name="train_and_wait", outputs=["job_id", "done"])
async def train_and_wait(spec: dict, *, context):
    job_id = await context.trainer().submit(spec)
    ready = await wait_for_training(job_id=job_id, context=context)
    return {"job_id": job_id, "done": ready["ready"]}


@tool(name="wait_for_training", outputs=["ready"])
async def wait_for_training(job_id: str, *, context) -> dict:
    info = await context.trainer().inspect_job(job_id)
    return {"ready": info["status"] == "COMPLETED"}


# --- section 3, example B: a storage wrapper ----------------------------------------------------------

BUCKET: dict[str, bytes] = {}


class Storage(Service):
    async def put(self, local_path: str, key: str) -> str:
        uri = await self._upload(local_path, key)  # implement upload
        self.ctx().logger().info("storage.put", extra={"uri": uri})
        return uri

    async def get(self, uri: str, dest: str) -> None:
        await self._download(uri, dest)

    async def _upload(self, local_path: str, key: str) -> str:
        BUCKET[key] = await asyncio.to_thread(Path(local_path).read_bytes)
        return f"mem://bucket/{key}"

    async def _download(self, uri: str, dest: str) -> None:
        await asyncio.to_thread(Path(dest).write_bytes, BUCKET[uri.removeprefix("mem://bucket/")])


@graph_fn(name="upload_report", outputs=["uri"])
async def upload_report(*, context):
    uri = await context.storage().put("/tmp/report.pdf", key="reports/2025-01-01.pdf")
    return {"uri": uri}


# --- section 4: concurrency and shared state -----------------------------------------------------------


class CounterService(Service):
    def __init__(self):
        super().__init__()
        self._value = 0
        # Decorate incr with the bound service-wide mutex
        # The entire method runs under a critical section
        self.incr = self.critical()(self.incr)  # type: ignore

    async def incr(self, n: int = 1) -> int:
        self._value += n
        await asyncio.sleep(0)  # yield to event loop
        return self._value


@tool(name="count_worker", outputs=["seen"])
async def count_worker(times: int, *, context) -> dict:
    seen = [await context.counter().incr() for _ in range(times)]
    return {"seen": seen}


@graph_fn(name="count_concurrently", outputs=["seen"])
async def count_concurrently(workers: int, times: int, *, context):
    results = await asyncio.gather(*(count_worker(times) for _ in range(workers)))
    return {"seen": [value for result in results for value in result["seen"]]}


class Heavy(Service):
    async def compute(self, x: int) -> int:
        return await self.run_blocking(self._slow_cpu_fn, x)  # threadpool offload

    def _slow_cpu_fn(self, x: int) -> int:
        HEAVY_THREADS.append(threading.get_ident())
        return sum(i * i for i in range(x))  # pure CPU work


HEAVY_THREADS: list[int] = []


@graph_fn(name="heavy_compute", outputs=["value"])
async def heavy_compute(x: int, *, context):
    return {"value": await context.heavy().compute(x)}


# --- section 5: lifecycle ---------------------------------------------------------------------------------


class Tracker(Service):
    async def start(self):
        self._client = FakeHttpClient()  # open DB/HTTP client

    async def close(self):
        if getattr(self, "_client", None):
            await self._client.aclose()

    async def job_status(self, job_id: str) -> str:
        return "open" if not self._client.closed else "closed"


# --- section 6: swapping implementations -------------------------------------------------------------------


class FakeTrainer(Service):
    async def submit(self, spec: dict) -> str:
        return "job-test-123"

    async def inspect_job(self, job_id: str) -> dict:
        return {"job_id": job_id, "status": "COMPLETED"}


# --- section 8: callable services ------------------------------------------------------------------------------


class Predictor(Service):
    async def __call__(self, prompt: str) -> str:
        return await self.generate(prompt)

    async def generate(self, prompt: str) -> str:
        return f"echo: {prompt}"


@graph_fn(name="predict_twice", outputs=["short", "explicit"])
async def predict_twice(*, context):
    text = await context.predictor("hello")  # calls __call__
    text2 = await context.predictor().generate("hello")  # explicit method
    return {"short": text, "explicit": text2}


# --- the tests ----------------------------------------------------------------------------------------------------


def tagged(records: list[Any], cls: type[ev.Event]) -> list[Any]:
    return [r.event for r in records if isinstance(r.event, cls)]


async def test_register_at_startup_then_call_anywhere(runtime: ProcessHost) -> None:
    start_server()  # start sidecar so services can be wired

    trainer_service = Trainer()
    register_context_service("trainer", trainer_service)

    handle = await aethergraph.start_run(demo_trainer, {})
    outputs = await handle.result()
    assert outputs["job_id"].startswith("job-")
    records = await read_events(runtime, handle.run_id)
    [called] = tagged(records, ev.ServiceCalled)
    [returned] = tagged(records, ev.ServiceReturned)
    assert (called.service, called.method, called.args, called.node_id) == (
        "trainer",
        "submit",
        [{"epochs": 10}],
        "root",
    )
    assert returned.parent == called.seq and returned.result == outputs["job_id"]


async def test_train_and_wait_uses_the_service_from_graph_and_tool(runtime: ProcessHost) -> None:
    register_context_service("trainer", Trainer())
    handle = await aethergraph.start_run(train_and_wait, {"spec": {"epochs": 3}})
    outputs = await handle.result()
    assert outputs == {"job_id": outputs["job_id"], "done": True}
    records = await read_events(runtime, handle.run_id)
    called = tagged(records, ev.ServiceCalled)
    assert [(c.method, c.node_id) for c in called] == [("submit", "root"), ("inspect_job", "wait_for_training_1")]


async def test_storage_wrapper_logs_through_its_callers_context(runtime: ProcessHost, tmp_path: Path) -> None:
    register_context_service("storage", Storage())
    await asyncio.to_thread(Path("/tmp/report.pdf").write_bytes, b"%PDF-1.7 quarterly numbers")
    handle = await aethergraph.start_run(upload_report, {})
    assert await handle.result() == {"uri": "mem://bucket/reports/2025-01-01.pdf"}
    records = await read_events(runtime, handle.run_id)
    [log] = [e for e in tagged(records, ev.LogRecorded) if e.message == "storage.put"]
    [called] = tagged(records, ev.ServiceCalled)
    assert log.fields == {"uri": "mem://bucket/reports/2025-01-01.pdf"} and log.parent == called.seq
    assert called.kwargs == {"key": "reports/2025-01-01.pdf"}

    # get(), outside any run, is plain Python
    await Storage().get("mem://bucket/reports/2025-01-01.pdf", str(tmp_path / "copy.pdf"))
    assert (tmp_path / "copy.pdf").read_bytes() == b"%PDF-1.7 quarterly numbers"


async def test_ten_concurrent_workers_times_100_increments_is_1000(runtime: ProcessHost) -> None:
    register_context_service("counter", CounterService())
    handle = await aethergraph.start_run(count_concurrently, {"workers": 10, "times": 100})
    seen = (await handle.result())["seen"]
    # Under the critical section every increment sees its own value: 1..1000, each once.
    assert sorted(seen) == list(range(1, 1001))
    records = await read_events(runtime, handle.run_id)
    assert len(tagged(records, ev.ServiceReturned)) == 1000


class Overlap(Service):
    """Measures how many calls run inside ``work`` at once."""

    def __init__(self, guarded: bool) -> None:
        super().__init__()
        self.inside = 0
        self.most = 0
        if guarded:
            self.work = self.critical()(self.work)  # type: ignore[method-assign]

    async def work(self) -> int:
        self.inside += 1
        self.most = max(self.most, self.inside)
        for _ in range(3):
            await asyncio.sleep(0)
        self.inside -= 1
        return self.most


@tool(name="overlap_worker", outputs=["most"])
async def overlap_worker(*, context) -> dict:
    return {"most": await context.overlap().work()}


@graph_fn(name="overlap_graph", outputs=["most"])
async def overlap_graph(*, context):
    results = await asyncio.gather(*(overlap_worker() for _ in range(10)))
    return {"most": max(r["most"] for r in results)}


@pytest.mark.parametrize(("guarded", "expected"), [(True, 1), (False, 10)])
async def test_critical_serialises_and_unguarded_calls_interleave(
    runtime: ProcessHost, guarded: bool, expected: int
) -> None:
    service = Overlap(guarded)
    register_context_service("overlap", service)
    assert await aethergraph.run_async(overlap_graph, {}) == {"most": expected}
    assert service.most == expected


async def test_heavy_work_runs_in_a_worker_thread(runtime: ProcessHost) -> None:
    register_context_service("heavy", Heavy())
    HEAVY_THREADS.clear()
    assert await aethergraph.run_async(heavy_compute, {"x": 2000}) == {"value": sum(i * i for i in range(2000))}
    assert HEAVY_THREADS and HEAVY_THREADS[0] != threading.get_ident()


async def test_tracker_is_started_when_the_runtime_opens_and_closed_when_it_closes() -> None:
    tracker = Tracker()
    register_context_service("tracker", tracker)
    rt = await ProcessHost.open(load_settings())
    try:
        assert isinstance(tracker._client, FakeHttpClient) and not tracker._client.closed
        assert await tracker.job_status("j1") == "open"
    finally:
        await rt.close()
    assert tracker._client.closed


async def test_a_service_registered_later_is_started_before_its_first_call(runtime: ProcessHost) -> None:
    tracker = Tracker()
    register_context_service("tracker", tracker)

    @graph_fn(name="track_once", outputs=["status"])
    async def track_once(*, context):
        return {"status": await context.tracker().job_status("j1")}

    assert await aethergraph.run_async(track_once, {}) == {"status": "open"}


async def test_fake_trainer_swapped_in_by_registering_again(runtime: ProcessHost) -> None:
    register_context_service("trainer", Trainer())
    # Test setup
    register_context_service("trainer", FakeTrainer())
    # All code using context.trainer() now talks to the fake.
    assert await aethergraph.run_async(demo_trainer, {}) == {"job_id": "job-test-123"}
    assert await aethergraph.run_async(train_and_wait, {"spec": {}}) == {"job_id": "job-test-123", "done": True}


async def test_callable_service_and_its_explicit_method(runtime: ProcessHost) -> None:
    register_context_service("predictor", Predictor())
    handle = await aethergraph.start_run(predict_twice, {})
    assert await handle.result() == {"short": "echo: hello", "explicit": "echo: hello"}
    records = await read_events(runtime, handle.run_id)
    # __call__ is one journaled call; the generate() it makes inside is part of it.
    assert [(c.method, c.args) for c in tagged(records, ev.ServiceCalled)] == [
        ("__call__", ["hello"]),
        ("generate", ["hello"]),
    ]


async def test_tutorial_graphs_replay_without_calling_services_again(suspending_runtime: ProcessHost) -> None:
    """Always-suspend mode: every run suspends after each step and continues by replay."""
    SUBMITTED.clear()
    register_context_service("trainer", Trainer())
    outputs = await execute_run(train_and_wait.spec, {"spec": {"epochs": 1}}, env=suspending_runtime.env)
    assert outputs["done"] is True
    assert SUBMITTED == [{"epochs": 1}]  # submitted once, though the body re-ran after every step
