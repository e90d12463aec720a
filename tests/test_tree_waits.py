"""A resume by the id of the run the user started reaches the open wait anywhere in the run's tree.

Nested graph_fn runs, dual-stage nodes of static graphs (node runs) and runs
spawned with ``context.runs()`` hold their own waits; a resume command on
``ag.cmd.resume.<top_run_id>`` finds them from the journals (see
``aethergraph/core/journal/wait_tree.py``), its outcome is published for the top-level
id, and the top-level run continues to its end. Every resume here is handled
by an in-process :class:`Worker` on the test server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import nats
import pytest

import aethergraph
from aethergraph import DualStageTool, NodeContext, RunHandle, Wait, graph_fn, graphify, tool
from aethergraph.core.errors import ResumeRejectedError
from aethergraph.core.ids import ROOT_NODE, child_run_id, new_run_id, node_run_id
from aethergraph.core.journal.replay import ChainBuilder
from aethergraph.core.journal.run_control import bind_run_inputs
from aethergraph.core.model.registry import must_get_graph
from aethergraph.core.run.resume import AlreadyAnswered, accept_resume
from aethergraph.core.wire import events as ev
from aethergraph.host.runs import Suspended
from aethergraph.host.worker import Worker
from aethergraph.runtime import ProcessHost, load_target

SAFETY_S = 30.0
"""Bound on anything awaited, so a hang fails the test instead of blocking the session."""

OK_SCHEMA: dict[str, Any] = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}


@tool(name="ttw_double", outputs=["v"])
def ttw_double(x: int) -> dict[str, int]:
    return {"v": x * 2}


class TtwGate(DualStageTool):
    name = "ttw_gate"
    outputs: ClassVar[Sequence[str] | None] = ["ok", "v"]

    async def setup(self, v: int, label: str, *, context: NodeContext) -> Wait:
        return Wait(kind="review", prompt=f"review {label}={v}", schema=OK_SCHEMA)

    async def on_resume(self, resume: Any, v: int, label: str, *, context: NodeContext) -> dict[str, Any]:
        return {"ok": bool(resume["ok"]), "v": v}


ttw_gate = TtwGate()


@graphify(name="ttw_one_gate", inputs=["x"], outputs=["ok", "v"])
def ttw_one_gate(x):  # type: ignore[no-untyped-def]
    doubled = ttw_double(x=x)
    gate = ttw_gate(v=doubled.v, label="a")
    return {"ok": gate.ok, "v": ttw_double(x=gate.v).v}


@graphify(name="ttw_two_gates", inputs=["x"], outputs=["a", "b"])
def ttw_two_gates(x):  # type: ignore[no-untyped-def]
    a = ttw_gate(v=x, label="a")
    b = ttw_gate(v=x, label="b")
    return {"a": a.ok, "b": b.ok}


@graph_fn(name="ttw_asker", outputs=["answer"])
async def ttw_asker(question: str, *, context: NodeContext) -> dict[str, Any]:
    return {"answer": await context.channel().ask_text(question)}


@graph_fn(name="ttw_parent", outputs=["answer", "n"])
async def ttw_parent(*, context: NodeContext) -> dict[str, Any]:
    doubled = await ttw_double(5)
    child = await ttw_asker("who are you?")
    return {"answer": child["answer"], "n": doubled["v"]}


@graph_fn(name="ttw_spawner", outputs=["answer"])
async def ttw_spawner(*, context: NodeContext) -> dict[str, Any]:
    runs = context.runs()
    child = await runs.spawn_run(ttw_asker, {"question": "spawned?"})
    return {"answer": (await runs.wait_run(child))["answer"]}


# --- helpers --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(env: ProcessHost) -> AsyncIterator[Worker]:
    """An in-process worker on ``env`` consuming resume commands until the block ends."""
    worker = Worker(env.driver, env.commands)
    serving_task = asyncio.create_task(worker.serve())
    try:
        async with asyncio.timeout(SAFETY_S):
            ready = asyncio.ensure_future(worker.ready.wait())
            await asyncio.wait({ready, serving_task}, return_when=asyncio.FIRST_COMPLETED)
            if serving_task.done():
                ready.cancel()
                serving_task.result()
        yield worker
    finally:
        worker.stop()
        async with asyncio.timeout(SAFETY_S):
            await serving_task


def start(
    env: ProcessHost, target: object, inputs: dict[str, Any] | None = None
) -> tuple[RunHandle, asyncio.Task[Any]]:
    spec = load_target(target)
    run_id = new_run_id()
    task = env.driver.start(spec, bind_run_inputs(spec, inputs), run_id)
    return RunHandle(run_id, env.env, task), task


async def suspended(task: asyncio.Task[Any]) -> Suspended:
    async with asyncio.timeout(SAFETY_S):
        end = await task
    assert isinstance(end, Suspended), f"the run did not suspend: {end!r}"
    return end


async def until(env: ProcessHost, run_id: str, check: Callable[[list[ev.Event]], bool]) -> list[ev.Event]:
    """Follow the run's journal until ``check(chain)``; return that chain."""
    builder = ChainBuilder()
    async with asyncio.timeout(SAFETY_S):
        async for record in env.event_log.read_run(run_id, follow=True):
            if builder.add(record.event) and check(list(builder.chain)):
                return list(builder.chain)
    raise AssertionError(f"stopped reading run {run_id}")


def waits_again_after(node_id: str) -> Callable[[list[ev.Event]], bool]:
    """The static run journaled ``node_id``'s completion and then waits again."""

    def check(chain: list[ev.Event]) -> bool:
        done = [e.seq for e in chain if isinstance(e, ev.NodeCompleted) and e.node_id == node_id]
        return bool(done) and isinstance(chain[-1], ev.RunWaiting) and chain[-1].seq > done[0]

    return check


async def resume_ok(run_id: str, payload: Any, wait_id: str | None = None) -> Any:
    outcome = await aethergraph.resume(run_id, payload, wait_id=wait_id, timeout=SAFETY_S)
    assert outcome is not None, "no worker answered the resume command"
    assert outcome.status == "accepted", outcome
    return outcome


# --- a dual-stage node of a static graph -------------------------------------------------------------


async def test_static_dual_stage_node_resumed_by_the_top_level_id_over_nats(
    runtime: ProcessHost, nats_url: str
) -> None:
    async with serving(runtime):
        handle, task = start(runtime, ttw_one_gate, {"x": 3})
        end = await suspended(task)
        gate_run = node_run_id(handle.run_id, "ttw_gate_1", 1)
        assert (end.wait_run_id, end.prompt) == (gate_run, "review a=6")
        assert await handle.status() == "waiting"

        nc = await nats.connect(nats_url)
        try:
            outcomes = await nc.subscribe(f"ag.cmd.outcome.{handle.run_id}")
            await nc.publish(f"ag.cmd.resume.{handle.run_id}", json.dumps({"payload": {"ok": True}}).encode())
            outcome = json.loads((await outcomes.next_msg(timeout=SAFETY_S)).data)
        finally:
            await nc.close()
        assert outcome["status"] == "accepted", outcome
        assert (outcome["run_id"], outcome["wait_id"]) == (handle.run_id, f"{gate_run}/{end.wait_id}")
        assert await handle.result(timeout=SAFETY_S) == {"ok": True, "v": 12}
    node_chain = await until(runtime, gate_run, lambda chain: isinstance(chain[-1], ev.RunCompleted))
    [resumed] = [e for e in node_chain if isinstance(e, ev.WaitResumed)]
    assert resumed.payload == {"ok": True} and resumed.command_seq == outcome["command_seq"]


async def test_two_open_waits_are_listed_then_each_answered_by_its_id(runtime: ProcessHost) -> None:
    async with serving(runtime):
        handle, task = start(runtime, ttw_two_gates, {"x": 1})
        run_id = handle.run_id
        await suspended(task)
        gates = {node: node_run_id(run_id, node, 1) for node in ("ttw_gate_1", "ttw_gate_2")}
        # The run suspends once both nodes wait; both node runs hold an open wait.
        for gate_run in gates.values():
            await until(runtime, gate_run, lambda chain: isinstance(chain[-1], ev.RunWaiting))

        with pytest.raises(ResumeRejectedError) as info:
            await aethergraph.resume(run_id, {"ok": True})
        assert info.value.reason == "ambiguous_wait"
        listed = {w["run_id"]: w for w in info.value.open_waits}
        assert sorted(listed) == sorted(gates.values())
        assert [(listed[gates[node]]["node_id"], listed[gates[node]]["prompt"]) for node in gates] == [
            ("ttw_gate_1", "review a=1"),
            ("ttw_gate_2", "review b=1"),
        ]
        for gate_run, wait in listed.items():
            assert wait["wait_id"].startswith(f"{gate_run}/") and wait["kind"] == "review"
            assert wait["wait_id"] in str(info.value) and wait["prompt"] in str(info.value)

        # The command line says the same and lists both waits with the ids to name them by.
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aethergraph",
            "resume",
            run_id,
            "--approve",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(SAFETY_S):
            _, err = await cli.communicate()
        shown = " ".join(err.decode().split())
        assert cli.returncode == 1 and "rejected (ambiguous_wait)" in shown, shown
        for wait in listed.values():
            assert f"--wait-id {wait['wait_id']}" in shown and f"node {wait['node_id']}" in shown

        # Wait ids are per run: both node runs opened the same one, so the plain id is ambiguous too.
        local_ids = {wait["wait_id"].split("/")[-1] for wait in listed.values()}
        if len(local_ids) == 1:
            with pytest.raises(ResumeRejectedError) as plain:
                await aethergraph.resume(run_id, {"ok": True}, wait_id=local_ids.pop())
            assert plain.value.reason == "ambiguous_wait" and len(plain.value.open_waits) == 2

        a_ref, b_ref = (listed[gates[node]]["wait_id"] for node in ("ttw_gate_1", "ttw_gate_2"))
        outcome = await resume_ok(run_id, {"ok": True}, wait_id=a_ref)
        assert (outcome.run_id, outcome.wait_id) == (run_id, a_ref)
        await until(runtime, run_id, waits_again_after("ttw_gate_1"))
        with pytest.raises(ResumeRejectedError) as closed:
            await aethergraph.resume(run_id, {"ok": True}, wait_id=a_ref)
        assert closed.value.reason == "wait_closed"
        outcome = await resume_ok(run_id, {"ok": False}, wait_id=b_ref)
        assert outcome.wait_id == b_ref
        assert await handle.result(timeout=SAFETY_S) == {"a": True, "b": False}


# --- a nested graph_fn, a spawned child ----------------------------------------------------------------


@pytest.mark.parametrize("env_name", ["live", "always_suspend"])
async def test_nested_graph_fn_wait_resumed_by_the_parent_id(
    env_name: str, runtime: ProcessHost, suspending_runtime: ProcessHost
) -> None:
    env = suspending_runtime if env_name == "always_suspend" else runtime
    async with serving(env):
        handle, task = start(env, ttw_parent)
        end = await suspended(task)
        child_id = child_run_id(handle.run_id, "ttw_asker_1")
        assert end.wait_run_id == child_id
        # The wait named by its plain id (unique in the tree) or by <nested_run_id>/<wait_id> is the same wait.
        with pytest.raises(ResumeRejectedError) as info:
            await aethergraph.resume(handle.run_id, 42, wait_id=end.wait_id)  # not a string: the schema refuses
        assert (info.value.reason, info.value.wait_id) == ("invalid_payload", f"{child_id}/{end.wait_id}")
        outcome = await resume_ok(handle.run_id, "Grace")
        assert (outcome.run_id, outcome.wait_id) == (handle.run_id, f"{child_id}/{end.wait_id}")
        assert await handle.result(timeout=SAFETY_S) == {"answer": "Grace", "n": 10}
    with pytest.raises(ResumeRejectedError) as ended:
        await aethergraph.resume(handle.run_id, "again")
    assert ended.value.reason == "run_ended"


async def test_nested_wait_named_directly_and_unknown_nested_runs_are_refused(runtime: ProcessHost) -> None:
    async with serving(runtime):
        handle, task = start(runtime, ttw_parent)
        end = await suspended(task)
        child_id = child_run_id(handle.run_id, "ttw_asker_1")
        with pytest.raises(ResumeRejectedError) as info:
            await aethergraph.resume(handle.run_id, "x", wait_id=f"{handle.run_id}-nope/{end.wait_id}")
        assert info.value.reason == "unknown_wait"
        with pytest.raises(ResumeRejectedError) as unknown:
            await aethergraph.resume(handle.run_id, "x", wait_id="w999")
        assert unknown.value.reason == "unknown_wait" and unknown.value.open_waits[0]["run_id"] == child_id
        outcome = await resume_ok(handle.run_id, "Ada", wait_id=f"{child_id}/{end.wait_id}")
        assert outcome.wait_id == f"{child_id}/{end.wait_id}"
        assert await handle.result(timeout=SAFETY_S) == {"answer": "Ada", "n": 10}


async def test_wait_of_a_spawned_child_resumed_by_the_parent_id(runtime: ProcessHost) -> None:
    async with serving(runtime):
        handle, task = start(runtime, ttw_spawner)
        child_id = child_run_id(handle.run_id, f"{ROOT_NODE}.spawn1")
        await until(runtime, child_id, lambda chain: isinstance(chain[-1], ev.RunWaiting))
        outcome = await resume_ok(handle.run_id, "spawned answer")
        assert outcome.wait_id.startswith(f"{child_id}/")
        async with asyncio.timeout(SAFETY_S):
            assert await task == {"answer": "spawned answer"}


async def test_a_redelivered_command_for_a_nested_wait_changes_nothing(runtime: ProcessHost) -> None:
    """Delivered again after its answer (in the nested run) was journaled and the whole tree ended."""
    async with serving(runtime):
        handle, task = start(runtime, ttw_parent)
        end = await suspended(task)
        outcome = await resume_ok(handle.run_id, "once")
        assert await handle.result(timeout=SAFETY_S) == {"answer": "once", "n": 10}
    child_id = child_run_id(handle.run_id, "ttw_asker_1")
    again = await accept_resume(
        runtime, handle.run_id, wait_id=None, payload="once", command_seq=outcome.command_seq, graphs=must_get_graph
    )
    assert isinstance(again, AlreadyAnswered) and again.by_this_command
    assert (again.run_id, again.wait_id) == (handle.run_id, f"{child_id}/{end.wait_id}")
    with pytest.raises(ResumeRejectedError) as info:  # on a first delivery no earlier answer is looked for
        await accept_resume(
            runtime,
            handle.run_id,
            wait_id=None,
            payload="once",
            command_seq=outcome.command_seq,
            graphs=must_get_graph,
            first_delivery=True,
        )
    assert info.value.reason == "run_ended"
