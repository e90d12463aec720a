"""A durable start writes the run's ownership record and its ``run.started`` together; either may fail alone.

``RunDriver.start`` writes the record just before ``run.started`` and awaits
both acknowledgements at once (one round trip). These tests make the server
refuse one of the two and check that no run is left running unowned, and that
no record is left behind or taken from another run's owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import NatsServer, start_nats_server
from nats.js.api import DiscardPolicy

from aethergraph import graph_fn, tool
from aethergraph.bus.topology import LEASES_STREAM, run_owner_subject
from aethergraph.core.errors import BusUnavailableError, StaleWriterError
from aethergraph.core.ids import new_run_id
from aethergraph.core.journal.run_journal import load_journal
from aethergraph.core.run.resume import journal_state
from aethergraph.core.settings import load_settings
from aethergraph.core.wire.events import RunFailed, RunStarted, ToolCalled
from aethergraph.host.process import ProcessHost
from aethergraph.runtime import load_target

SAFETY_S = 30.0
EXECUTED: list[str] = []  # run ids whose step executed in this process
GATES: dict[str, asyncio.Event] = {}  # run id -> set to let its step finish


@tool(name="ds_step", outputs=["x"])
async def ds_step(x: int, run_id: str) -> int:
    EXECUTED.append(run_id)
    gate = GATES.get(run_id)
    if gate is not None:
        await gate.wait()
    return x + 1


@graph_fn(name="ds_one_step", outputs=["x"])
async def ds_one_step(x: int, run_id: str) -> dict[str, int]:
    return {"x": (await ds_step(x, run_id))["x"]}


@graph_fn(name="ds_other_graph", outputs=["x"])
async def ds_other_graph(x: int, run_id: str) -> dict[str, int]:
    return {"x": (await ds_step(x * 10, run_id))["x"]}


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A nats-server of this test alone: its AG_LEASES stream is made to refuse writes."""
    server = start_nats_server(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


async def _open(url: str, workspace: Path, worker_id: str) -> ProcessHost:
    return await ProcessHost.open(load_settings(nats_url=url, workspace=workspace, worker_id=worker_id))


async def _last_record_headers(rt: ProcessHost, worker_id: str, run_id: str) -> dict[str, str]:
    msg = await rt.bus.js.get_last_msg(LEASES_STREAM, run_owner_subject(worker_id, run_id))
    return dict(msg.headers or {})


async def test_a_record_the_server_refuses_fails_the_run_before_its_first_step(
    own_server: NatsServer, tmp_path: Path
) -> None:
    """run.started is stored, the ownership record is refused: the run is failed at once (journaled), with
    the reason, and start raises it; nothing runs, so the run is never left `running` with nobody to take it
    over if this process died."""
    rt = await _open(own_server.url, tmp_path / "ws", f"refused-{new_run_id()}")
    try:
        await rt.leases.start()  # the heartbeat is stored: the record is the only lease write of the start
        js = rt.bus.js
        info = await js.stream_info(LEASES_STREAM)
        config = info.config
        config.max_msgs, config.discard = info.state.messages, DiscardPolicy.NEW  # full: new messages refused
        await js.update_stream(config)
        run_id = new_run_id()
        spec = load_target(ds_one_step)
        with pytest.raises(BusUnavailableError, match="could not be recorded as driven by this process"):
            async with asyncio.timeout(SAFETY_S):
                await rt.driver.start_durably(spec, {"x": 1, "run_id": run_id}, run_id)
        chain, _ = await load_journal(rt, run_id)
        state = journal_state(run_id, chain)
        assert isinstance(chain[0], RunStarted)
        assert state.status == "failed"
        failure = chain[-1]
        assert isinstance(failure, RunFailed)
        assert failure.error_type.endswith("BusUnavailableError")
        assert "maximum messages" in failure.message
        assert not any(isinstance(event, ToolCalled) for event in chain)
        assert run_id not in EXECUTED
        async with asyncio.timeout(SAFETY_S):
            await rt.driver.drain()  # the given-up path finds the failure journaled and lets go
        assert run_id not in rt.driver.tasks
        config.max_msgs, config.discard = -1, DiscardPolicy.OLD
        await js.update_stream(config)
    finally:
        await rt.close()


async def test_a_refused_run_started_releases_its_record_and_leaves_the_other_owners_record(
    own_server: NatsServer, tmp_path: Path
) -> None:
    """The run id is taken by a run another process drives: this process's record (written alongside the
    refused run.started) is released once stored, the other process's record stays, and its run completes."""
    other = await _open(own_server.url, tmp_path / "other", f"other-{new_run_id()}")
    rt = await _open(own_server.url, tmp_path / "ws", f"late-{new_run_id()}")
    run_id = new_run_id()
    GATES[run_id] = asyncio.Event()
    try:
        first = await other.driver.start_durably(load_target(ds_one_step), {"x": 1, "run_id": run_id}, run_id)
        with pytest.raises(StaleWriterError):
            async with asyncio.timeout(SAFETY_S):
                await rt.driver.start_durably(load_target(ds_other_graph), {"x": 5, "run_id": run_id}, run_id)
        async with asyncio.timeout(SAFETY_S):
            await rt.driver.drain()
        # This process's record was stored, then released (a tombstone is the subject's last message).
        assert "AG-Released" in await _last_record_headers(rt, rt.worker_id, run_id)
        assert run_id not in {owned.run_id for owned in await rt.leases.owned_runs(rt.worker_id)}
        # The other process still owns its run, which goes on and ends with its own graph's outputs.
        owned = await rt.leases.owned_runs(other.worker_id)
        assert [(o.run_id, o.graph_id) for o in owned] == [(run_id, "ds_one_step")]
        GATES[run_id].set()
        async with asyncio.timeout(SAFETY_S):
            assert await first == {"x": 2}
        assert EXECUTED.count(run_id) == 1
        chain, _ = await load_journal(rt, run_id)
        assert journal_state(run_id, chain).status == "succeeded"
        assert {event.worker for event in chain} == {other.worker_id}
    finally:
        GATES.pop(run_id).set()
        await rt.close()
        await other.close()


async def test_starting_a_run_this_process_drives_again_is_refused_and_keeps_its_record(runtime: ProcessHost) -> None:
    """The same run id started twice in one process: the second start is refused before it writes anything,
    so the record of the run that goes on is not overwritten (with another graph) or released."""
    run_id = new_run_id()
    GATES[run_id] = asyncio.Event()
    try:
        first = await runtime.driver.start_durably(load_target(ds_one_step), {"x": 1, "run_id": run_id}, run_id)
        with pytest.raises(StaleWriterError, match="already running in this process"):
            await runtime.driver.start_durably(load_target(ds_other_graph), {"x": 5, "run_id": run_id}, run_id)
        owned = await runtime.leases.owned_runs(runtime.worker_id)
        assert (run_id, "ds_one_step") in {(o.run_id, o.graph_id) for o in owned}
        GATES[run_id].set()
        async with asyncio.timeout(SAFETY_S):
            assert await first == {"x": 2}
        assert run_id not in {o.run_id for o in await runtime.leases.owned_runs(runtime.worker_id)}
    finally:
        GATES.pop(run_id).set()
