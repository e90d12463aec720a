"""The projections against a real nats-server: the projector, the query service, other processes, the CLI.

Each test gets its own nats-server (``bus`` fixture), so the AG_EVENTS stream holds
exactly the test's events and tables can be compared exactly. Runs are real
graph_fn runs on an in-process runtime; the processes that read the projections
(``aethergraph projector``, ``aethergraph sql``/``runs``/``lineage``/``export``/
``status``, small scripts) are subprocesses, each its own "host" with its own
``AETHERGRAPH_WORKSPACE`` and sharing only the NATS server with the others.
Nothing here measures time: every wait is a poll bounded by ``SAFETY_S``.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import decimal
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import msgspec
import pytest
from helpers import NatsServer, eventually, read_events, run_message_count, start_nats_server, subprocess_env
from test_projections import TABLES, dump

from aethergraph import NodeContext, Wait, graph_fn, tool
from aethergraph.bus.topology import EVENTS_STREAM, event_subject, projector_consumer, projector_query_subject
from aethergraph.core.errors import ProjectionError, ProjectionLockedError
from aethergraph.core.ids import new_run_id
from aethergraph.core.settings import Settings, load_settings
from aethergraph.core.wire import events as ev
from aethergraph.core.wire.codec import encode_event
from aethergraph.host.runs import Suspended
from aethergraph.projections.client import ProjectionAccess, store_path
from aethergraph.projections.projector import Projector
from aethergraph.projections.service import QueryChunk, QueryRequest, QueryService, remote_request, store_id_for
from aethergraph.projections.store import ProjectionStore
from aethergraph.runtime import ProcessHost, load_target

pytestmark = pytest.mark.slow
T = TypeVar("T")

SAFETY_S = 60.0  # an upper bound for anything to happen, never a measurement
PROCS = Path(__file__).resolve().parent / "procs" / "proj_graphs.py"
PAYMENT_SCHEMA = {
    "type": "object",
    "required": ["amount"],
    "properties": {"amount": {"type": "integer", "minimum": 1}, "note": {"type": "string"}},
}
REVIEW_SCHEMA = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}

# --- graphs (in-process runs) ---------------------------------------------------------------------


@tool(name="pjb_load", outputs=["text"])
def pjb_load(name: str) -> dict[str, Any]:
    return {"text": f"the contents of {name}"}


@tool(name="pjb_upper", outputs=["text"])
def pjb_upper(text: str) -> dict[str, Any]:
    return {"text": text.upper()}


@tool(name="pjb_count", outputs=["n"])
def pjb_count(text: str) -> dict[str, Any]:
    return {"n": len(text)}


@tool(name="pjb_boom", outputs=[])
def pjb_boom(text: str) -> dict[str, Any]:
    raise ValueError(f"cannot handle {text}")


@graph_fn(name="pjb_inner", outputs=["text"])
async def pjb_inner(text: str, *, context: NodeContext) -> dict[str, Any]:
    return {"text": (await pjb_upper(text))["text"]}


@graph_fn(name="pjb_outer", outputs=["text", "n"])
async def pjb_outer(name: str, *, context: NodeContext) -> dict[str, Any]:
    """load -> nested run (upper) -> count: each step's input is the previous step's output."""
    loaded = await pjb_load(name)
    inner = await pjb_inner(loaded["text"])
    counted = await pjb_count(inner["text"])
    return {"text": inner["text"], "n": counted["n"]}


@graph_fn(name="pjb_failing", outputs=[])
async def pjb_failing(name: str, *, context: NodeContext) -> dict[str, Any]:
    loaded = await pjb_load(name)
    await pjb_boom(loaded["text"])
    return {}


@graph_fn(name="pjb_asking", outputs=["answer"])
async def pjb_asking(name: str, *, context: NodeContext) -> dict[str, Any]:
    loaded = await pjb_load(name)
    answer = await context.wait(Wait(kind="review", prompt=f"review {loaded['text']}", schema=REVIEW_SCHEMA))
    return {"answer": answer}


# --- the bus of one test -----------------------------------------------------------------------------


@dataclass
class Bus:
    """A test's own nats-server, an in-process runtime on it, and "hosts" (subprocesses) sharing it."""

    server: NatsServer
    rt: ProcessHost
    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def settings(self, workspace: Path) -> Settings:
        return load_settings(nats_url=self.server.url, workspace=workspace)

    def workspace(self, host: str) -> Path:
        return self.root / f"host-{host}"

    def env(self, host: str) -> dict[str, str]:
        return subprocess_env(
            AETHERGRAPH_NATS_URL=self.server.url,
            AETHERGRAPH_WORKSPACE=str(self.workspace(host)),
            AETHERGRAPH_CONSOLE_INPUT="never",
            COLUMNS="250",
        )

    async def cli(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``aethergraph ARGS`` on ``host``, off the event loop (the in-process runtime stays responsive)."""
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "aethergraph", *args],
            env=self.env(host),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SAFETY_S,
            check=False,
        )

    async def python(self, host: str, script: str, *args: str) -> Any:
        """A Python script on ``host``; its last stdout line as JSON."""
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script, *args],
            env=self.env(host),
            capture_output=True,
            text=True,
            timeout=SAFETY_S,
            check=False,
        )
        assert done.returncode == 0, f"script failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    def spawn(self, host: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        """A long-running ``aethergraph ARGS`` on ``host``; its output goes to a file."""
        out = self.root / f"{host}.out"
        with out.open("wb") as sink:
            popen = subprocess.Popen(
                [sys.executable, "-m", "aethergraph", *args],
                env=self.env(host),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(popen)
        return popen, out

    async def run(self, graph: Any, inputs: dict[str, Any], run_id: str | None = None) -> tuple[str, Any]:
        """A run on the in-process runtime: (run id, outputs or Suspended); a failed run raises."""
        spec = load_target(graph)
        run_id = run_id or new_run_id()
        async with asyncio.timeout(SAFETY_S):
            end = await self.rt.driver.start(spec, spec.bind((), inputs), run_id)
        return run_id, end

    async def last_seq(self) -> int:
        return int((await self.rt.bus.js.stream_info(EVENTS_STREAM)).state.last_seq)

    async def consumers(self) -> set[str]:
        return {info.name for info in await self.rt.bus.js.consumers_info(EVENTS_STREAM)}


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    server = start_nats_server(tmp_path / "nats")
    rt: ProcessHost | None = None
    b: Bus | None = None
    try:
        rt = await ProcessHost.open(
            load_settings(nats_url=server.url, workspace=tmp_path / "host-test"), inline_answers=False
        )
        b = Bus(server=server, rt=rt, root=tmp_path)
        yield b
    finally:
        if b is not None:
            for popen in b.procs:
                if popen.poll() is None:
                    popen.kill()
                    popen.wait(timeout=SAFETY_S)
        if rt is not None:
            await rt.close()
        server.stop()


async def catch_up_fresh(b: Bus, path: Path | str = ":memory:") -> ProjectionStore:
    """A store rebuilt from stream sequence 1 (the caller closes it)."""
    store = await asyncio.to_thread(ProjectionStore.open, path)
    await Projector(b.rt.bus, store, store_id=f"fresh-{os.urandom(4).hex()}").catch_up()
    return store


def rows(store: ProjectionStore, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in store.query(sql, params).rows]


# --- 4. a restarted projector catches up from its cursor ---------------------------------------------


async def test_restarted_catch_up_reads_only_new_events_and_equals_a_rebuild(bus: Bus) -> None:
    rt = bus.rt
    first = [(await bus.run(pjb_outer, {"name": f"doc-{i}.txt"}))[0] for i in range(2)]
    with pytest.raises(Exception, match="cannot handle"):
        await bus.run(pjb_failing, {"name": "bad.txt"}, run_id="pjbfail1")
    path = store_path(rt.settings)
    store_id = store_id_for(path)
    consumer = projector_consumer(store_id)
    target = await bus.last_seq()

    store = await asyncio.to_thread(ProjectionStore.open, path)
    try:
        projector = Projector(rt.bus, store, store_id=store_id)
        assert await projector.catch_up() == target
        assert store.cursors == dict.fromkeys(store.cursors, target)
        assert await projector.catch_up() == 0  # nothing new
        statuses = dict(rows(store, "SELECT run_id, status FROM runs"))
        assert statuses == {
            **dict.fromkeys(first, "succeeded"),
            **{f"{r}-pjb_inner_1": "succeeded" for r in first},
            "pjbfail1": "failed",
        }
    finally:
        store.close()
    assert consumer not in await bus.consumers(), "a one-off catch-up left its durable consumer on the server"

    later = [(await bus.run(pjb_outer, {"name": f"later-{i}.txt"}))[0] for i in range(2)]
    target2 = await bus.last_seq()
    assert target2 > target

    store = await asyncio.to_thread(ProjectionStore.open, path)
    fresh = await catch_up_fresh(bus, bus.root / "fresh.duckdb")
    try:
        assert store.rebuilt == [] and store.last_seq == target
        assert await Projector(rt.bus, store, store_id=store_id).catch_up() == target2 - target  # only the new ones
        assert fresh.last_seq == target2
        assert dump(store) == dump(fresh)
        counts = dict(rows(store, "SELECT run_id, event_count FROM runs"))
        for run_id in [*first, *later, "pjbfail1"]:
            assert counts[run_id] == await run_message_count(rt, run_id)
        assert rows(store, "SELECT error_type, error_message, failed_node_id FROM runs WHERE run_id = 'pjbfail1'") == [
            ("ValueError", "cannot handle the contents of bad.txt", "pjb_boom_1")
        ]
        assert rows(
            store, "SELECT status, error_type FROM nodes WHERE run_id = 'pjbfail1' AND node_id = 'pjb_boom_1'"
        ) == [("failed", "ValueError")]
    finally:
        store.close()
        fresh.close()
    assert consumer not in await bus.consumers()

    # A version bump of one projection, then a catch-up through the bus: rebuilt to the same rows.
    con = duckdb.connect(str(path))
    con.execute("UPDATE projection_state SET version = version - 1 WHERE projection = 'lineage'")
    con.close()
    store = await asyncio.to_thread(ProjectionStore.open, path)
    fresh = await catch_up_fresh(bus)
    try:
        assert store.rebuilt == ["lineage"] and store.cursors["lineage"] == 0
        assert rows(store, "SELECT count(*) FROM edges") == [(0,)]
        assert await Projector(rt.bus, store, store_id=store_id).catch_up() == target2
        assert dump(store) == dump(fresh)
    finally:
        store.close()
        fresh.close()
    assert consumer not in await bus.consumers()


async def test_a_catch_up_in_many_small_batches_folds_every_message_once(bus: Bus) -> None:
    """Deliveries keep arriving while a batch is folded and acknowledged; none may be skipped or folded twice."""
    futures: list[asyncio.Future[int]] = []
    for r in range(200):
        run_id = f"many{r:03d}"
        writer = bus.rt.event_log.writer(run_id)
        common: dict[str, Any] = {"run_id": run_id, "ts": 1_700_000_000_000_000 + r, "worker": "w-1"}
        events: list[ev.Event] = [ev.RunStarted(seq=1, graph_id="many", inputs={"r": r}, **common)]
        for step in range(4):
            node = f"step_{step + 1}"
            called = len(events) + 1
            args = {"data": f"value {r}/{step}"}
            events.append(
                ev.ToolCalled(
                    seq=called, parent=called - 1, node_id=node, tool="t", args=args, args_digest="d", **common
                )
            )
            events.append(
                ev.ToolReturned(
                    seq=called + 1,
                    parent=called,
                    node_id=node,
                    tool="t",
                    outputs={"data": f"value {r}/{step + 1}"},
                    **common,
                )
            )
        events.append(
            ev.RunCompleted(seq=len(events) + 1, parent=len(events), outputs={"data": f"value {r}/4"}, **common)
        )
        futures += [writer.append(event) for event in events]
    await asyncio.gather(*futures)
    target = await bus.last_seq()

    class SlowProjector(Projector):
        """Folds slowly, so that deliveries arrive while a batch is folded and acknowledged."""

        def _fold(self, decoded: Any) -> None:
            time.sleep(0.01)
            super()._fold(decoded)

    store = await asyncio.to_thread(ProjectionStore.open, ":memory:")
    reference = await catch_up_fresh(bus)
    try:
        # A window just above the batch size: the server sends more only as batches are acknowledged.
        projector = SlowProjector(bus.rt.bus, store, store_id="many-batches", batch_max=37, window=40)
        assert await projector.catch_up() == target
        assert rows(store, "SELECT count(*), count(DISTINCT stream_seq) FROM events") == [(target, target)]
        assert store.last_seq == target
        assert dump(store) == dump(reference)
    finally:
        store.close()
        reference.close()


# --- 5. dead letters --------------------------------------------------------------------------------


async def test_bad_messages_become_dead_letters_and_the_projector_keeps_folding(bus: Bus) -> None:
    rt = bus.rt
    js = rt.bus.js
    before, _ = await bus.run(pjb_outer, {"name": "before.txt"})
    victim = ev.ToolCalled(
        run_id="pjbvictim",
        seq=2,
        ts=1_700_000_000_000_000,
        worker="w",
        node_id="t_1",
        tool="t",
        args={},
        args_digest="d",
    )
    published = [
        ("ag.evt.pjbbad.tool.called", b"\x00\xff\xfe garbage, not JSON", "undecodable event"),
        ("ag.evt.pjbbad.tool.called", b'{"type": "tool.called", "run_id": "pjbbad", "seq": 1}', "undecodable event"),
        ("ag.evt.pjbbad.run.started", b'{"hello": "world"}', "undecodable event"),
        (
            "ag.evt.pjbvictim.tool.returned",
            encode_event(victim),
            "subject ag.evt.pjbvictim.tool.returned does not match the event (expected ag.evt.pjbvictim.tool.called)",
        ),
        (
            "ag.evt.pjbother.tool.called",
            encode_event(victim),
            "subject ag.evt.pjbother.tool.called does not match the event (expected ag.evt.pjbvictim.tool.called)",
        ),
    ]
    seqs = [(await js.publish(subject, data)).seq for subject, data, _ in published]
    after, outputs = await bus.run(pjb_outer, {"name": "after.txt"})
    assert outputs == {"text": "THE CONTENTS OF AFTER.TXT", "n": 25}

    store = await asyncio.to_thread(ProjectionStore.open, ":memory:")
    try:
        projector = Projector(rt.bus, store, store_id="dead-letters")
        assert await projector.catch_up() == await bus.last_seq()
        letters = rows(store, "SELECT stream_seq, subject, raw, reason FROM dead_letters ORDER BY stream_seq")
        assert [(s, subj, bytes(raw)) for s, subj, raw, _ in letters] == [
            (seq, subject, data) for seq, (subject, data, _) in zip(seqs, published, strict=True)
        ]
        for (_, _, _, reason), (_, _, expected) in zip(letters, published, strict=True):
            assert reason.startswith(expected), reason
        assert projector.stats.dead_letters == len(published)
        assert rows(store, "SELECT count(*) FROM events WHERE stream_seq IN (SELECT stream_seq FROM dead_letters)") == [
            (0,)
        ]
        assert rows(store, "SELECT count(*) FROM runs WHERE run_id IN ('pjbbad', 'pjbvictim', 'pjbother')") == [(0,)]
        # The valid events after the bad ones are all folded.
        for run_id in (before, after, f"{after}-pjb_inner_1"):
            [(status, count)] = rows(store, "SELECT status, event_count FROM runs WHERE run_id = ?", [run_id])
            assert (status, count) == ("succeeded", await run_message_count(rt, run_id))
        assert rows(store, "SELECT outputs FROM tool_calls WHERE run_id = ? AND node_id = 'pjb_count_1'", [after]) == [
            ('{"n":25}',)
        ]
        assert rows(store, "SELECT count(*) FROM events") == [(await bus.last_seq() - len(published),)]
    finally:
        store.close()


async def test_an_orphan_event_is_held_out_of_the_tables_and_later_events_are_folded(bus: Bus) -> None:
    """A decodable event for a run whose earlier events are not on the stream (an orphan) is not part of a
    journal: it waits in ``journal_pending`` for the gap before it, changes no table, and stops nothing."""
    rt = bus.rt
    orphan = ev.ToolCalled(
        run_id="pjborphan",
        seq=3,
        ts=1_700_000_000_000_000,
        worker="w",
        node_id="t_1",
        tool="t",
        args={},
        args_digest="d",
    )
    orphan_seq = (await rt.bus.js.publish("ag.evt.pjborphan.tool.called", encode_event(orphan))).seq
    after, _ = await bus.run(pjb_outer, {"name": "after.txt"})
    store = await asyncio.to_thread(ProjectionStore.open, ":memory:")
    try:
        await Projector(rt.bus, store, store_id="orphans").catch_up()
        assert rows(store, "SELECT count(*) FROM events WHERE stream_seq = ?", [orphan_seq]) == [(0,)]
        assert rows(store, "SELECT count(*) FROM dead_letters") == [(0,)]
        assert rows(store, "SELECT stream_seq, run_id, seq FROM journal_pending") == [(orphan_seq, "pjborphan", 3)]
        for table in ("runs", "nodes", "tool_calls"):
            assert rows(store, f"SELECT count(*) FROM {table} WHERE run_id = 'pjborphan'") == [(0,)]
        [(status, count)] = rows(store, "SELECT status, event_count FROM runs WHERE run_id = ?", [after])
        assert (status, count) == ("succeeded", await run_message_count(rt, after))
        assert store.last_seq == await bus.last_seq()
    finally:
        store.close()


async def test_catch_up_ends_when_the_last_messages_of_the_stream_were_purged(bus: Bus) -> None:
    """AG_EVENTS keeps events "until deleted": an operator may purge a run. If its events were the last ones
    on the stream, the stream's last sequence names a message no consumer will ever deliver."""
    rt = bus.rt
    kept, _ = await bus.run(pjb_outer, {"name": "kept.txt"})
    purged, _ = await bus.run(pjb_outer, {"name": "purged.txt"})
    last = await bus.last_seq()
    for run_id in (purged, f"{purged}-pjb_inner_1"):
        await rt.bus.js.purge_stream(EVENTS_STREAM, subject=f"ag.evt.{run_id}.>")
    assert await bus.last_seq() == last

    store = await asyncio.to_thread(ProjectionStore.open, ":memory:")
    try:
        try:
            async with asyncio.timeout(15):  # a safety bound: the catch-up folds a few dozen messages
                await Projector(rt.bus, store, store_id="purged-tail").catch_up()
        except TimeoutError:
            pytest.fail(
                f"Projector.catch_up never returns once the stream's tail was purged: it waits for "
                f"stream sequence {last} (stream_info last_seq), which no consumer delivers; the store is at "
                f"{store.last_seq}"
            )
        assert sorted(r[0] for r in rows(store, "SELECT run_id FROM runs")) == sorted([kept, f"{kept}-pjb_inner_1"])
    finally:
        store.close()
    assert projector_consumer("purged-tail") not in await bus.consumers()


# --- 6. lineage of a real nested run ---------------------------------------------------------------


async def test_a_nested_run_has_spawned_and_data_edges_and_its_artifact_reaches_the_parent_run(bus: Bus) -> None:
    rt = bus.rt
    run_id, outputs = await bus.run(pjb_outer, {"name": "lineage.txt"})
    child = f"{run_id}-pjb_inner_1"
    text, upper = "the contents of lineage.txt", "THE CONTENTS OF LINEAGE.TXT"
    assert outputs == {"text": upper, "n": len(upper)}

    # Nothing emits artifact.saved yet: publish the child node's artifact the way a writer would.
    last = (await read_events(rt, child))[-1]
    artifact_id = hashlib.sha256(upper.encode()).hexdigest()
    saved = encode_event(
        ev.ArtifactSaved(
            run_id=child,
            seq=last.event.seq + 1,
            ts=time.time_ns() // 1000,
            worker=rt.worker_id,
            parent=last.event.seq,
            node_id="pjb_upper_1",
            epoch=last.event.epoch,
            artifact_id=artifact_id,
            uri=f"file:///artifacts/{artifact_id}",
            kind="text",
            name="upper.txt",
            mime="text/plain",
            size=len(upper),
            tool="pjb_upper",
        )
    )
    await rt.bus.js.publish(event_subject(child, "artifact.saved"), saved)

    store = await catch_up_fresh(bus)
    try:
        node = f"node:{run_id}/"
        edges = set(rows(store, "SELECT src, dst, kind FROM edges WHERE root_run_id = ?", [run_id]))
        assert (f"{node}pjb_inner_1", f"run:{child}", "spawned") in edges
        assert {
            (f"{node}pjb_load_1", f"{node}pjb_inner_1", "data"),  # the loaded text is the nested run's input
            (f"{node}pjb_load_1", f"node:{child}/pjb_upper_1", "data"),  # ... and its tool's input
            (f"node:{child}/pjb_upper_1", f"{node}pjb_count_1", "data"),  # the child's output feeds count
            (f"run:{child}", f"{node}pjb_count_1", "data"),
            (f"{node}pjb_inner_1", f"{node}pjb_count_1", "data"),
        } <= edges
        assert (f"run:{run_id}", f"{node}pjb_load_1", "in_run") in edges
        assert (f"node:{child}/pjb_upper_1", f"artifact:{artifact_id}", "produced") in edges
        assert not [e for e in edges if e[2] == "data" and e[1] == f"{node}pjb_load_1"]  # nothing fed the first step

        ancestors = dict(rows(store, "SELECT entity, via FROM ancestors(?)", [f"artifact:{artifact_id}"]))
        assert ancestors[f"node:{child}/pjb_upper_1"] == "produced"
        assert {f"run:{child}", f"{node}pjb_inner_1", f"run:{run_id}", f"{node}pjb_load_1"} <= set(ancestors)
        descendants = dict(rows(store, "SELECT entity, via FROM descendants(?)", [f"run:{run_id}"]))
        assert f"artifact:{artifact_id}" in descendants
        assert rows(store, "SELECT run_id, node_id, tool, uri, size FROM artifacts") == [
            (child, "pjb_upper_1", "pjb_upper", f"file:///artifacts/{artifact_id}", len(upper))
        ]
        assert rows(store, "SELECT child_run_id FROM nodes WHERE run_id = ? AND node_id = 'pjb_inner_1'", [run_id]) == [
            (child,)
        ]
        assert rows(store, "SELECT args FROM tool_calls WHERE run_id = ? AND node_id = 'pjb_upper_1'", [child]) == [
            (json.dumps({"text": text}, separators=(",", ":")),)
        ]
    finally:
        store.close()


# --- 7. another host rebuilds a waiting run from the stream alone ---------------------------------------

REBUILD_SCRIPT = """
import asyncio, json, sys
from aethergraph.projections.run_state import rebuild_run_state
from aethergraph.host.process import ProcessHost

async def main():
    rt = await ProcessHost.open()
    try:
        state = await rebuild_run_state(rt.event_log, sys.argv[1])
    finally:
        await rt.close()
    print(json.dumps({
        "status": state.status, "graph": state.graph_id, "runs": state.runs, "waiting_on": state.waiting_on,
        "nodes": [[n.run_id, n.node_id, n.status] for n in state.nodes],
        "open_waits": [[w.run_id, w.kind, w.prompt, w.payload_schema] for w in state.open_waits],
    }))

asyncio.run(main())
"""


@pytest.mark.parametrize("graph", ["pj_pay", "pj_pay_outer"], ids=["wait-in-the-run", "wait-in-a-nested-run"])
async def test_a_fresh_workspace_in_another_process_rebuilds_a_waiting_run_from_the_stream(
    bus: Bus, graph: str
) -> None:
    run_id = new_run_id()
    nested = graph == "pj_pay_outer"
    wait_run = f"{run_id}-pj_pay_1" if nested else run_id
    left = await bus.cli("a", "run", f"{PROCS}:{graph}", "--inputs-json", '{"item": "tea"}', "--run-id", run_id)
    assert left.returncode == 3, left.stdout + left.stderr  # left waiting
    assert f"aethergraph resume {run_id} --wait-id {wait_run + '/w4' if nested else 'w'}" in left.stderr
    assert not bus.workspace("b").exists()

    status = await bus.cli("b", "status", run_id, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["status"], info["graph"]) == ("waiting", graph)
    expected_prompt = "pay quote for tea: 42 credits"
    waits = [(w["run_id"], w["kind"], w["prompt"], w["schema"]) for w in info["open_waits"]]
    nodes = [(n["run_id"], n["node_id"], n["status"]) for n in info["nodes"]]
    if not nested:
        assert info["runs"] == [run_id]
        assert nodes == [(run_id, "pj_quote_1", "succeeded")]
    else:
        assert info["runs"] == [run_id, wait_run], (
            f"rebuild_run_state does not find the nested run {wait_run}: runs {info['runs']}"
        )
        assert nodes == [
            (run_id, "pj_quote_1", "succeeded"),
            (run_id, "pj_pay_1", "running"),
            (wait_run, "pj_quote_1", "succeeded"),
        ]
    assert waits == [(wait_run, "payment", expected_prompt, PAYMENT_SCHEMA)]
    assert info["waiting_on"] == {"wait_id": info["open_waits"][0]["wait_id"], "run_id": wait_run}

    script = await bus.python("c", REBUILD_SCRIPT, run_id)
    assert script["status"] == "waiting" and script["open_waits"] == [
        [wait_run, "payment", expected_prompt, PAYMENT_SCHEMA]
    ]

    sql = await bus.cli(
        "b", "sql", "--json", "SELECT run_id, graph_id, status, parent_run_id FROM runs ORDER BY run_id"
    )
    assert sql.returncode == 0, sql.stderr
    listed = json.loads(sql.stdout)
    expected_runs = [{"run_id": run_id, "graph_id": graph, "status": "waiting", "parent_run_id": None}]
    if nested:
        expected_runs.append({"run_id": wait_run, "graph_id": "pj_pay", "status": "waiting", "parent_run_id": run_id})
    assert listed == expected_runs
    open_waits = await bus.cli("b", "sql", "--json", "SELECT run_id, kind, prompt, payload_schema, status FROM waits")
    assert json.loads(open_waits.stdout) == [
        {
            "run_id": wait_run,
            "kind": "payment",
            "prompt": expected_prompt,
            "payload_schema": json.dumps(PAYMENT_SCHEMA, separators=(",", ":")),
            "status": "open",
        }
    ]
    assert (bus.workspace("b") / "projections.duckdb").exists()  # `sql` caught up into host b's own store


# --- 8. queries while the projector writes -------------------------------------------------------------

async def test_concurrent_queries_of_one_process_fold_the_store_once(bus: Bus) -> None:
    """Without a projector, queries fold the store themselves: two at once must not fold over each other."""
    for index in range(30):
        await bus.run(pjb_outer, {"name": f"file{index}.txt"})
    access = ProjectionAccess(bus.rt.bus, bus.settings(bus.workspace("concurrent")))
    expected = await bus.rt.bus.js.stream_info(EVENTS_STREAM)

    async def count() -> int:
        return int((await access.query("SELECT count(*) FROM events")).rows[0][0])

    counts = await asyncio.gather(*(count() for _ in range(4)))
    assert counts == [counts[0]] * 4 and counts[0] == expected.state.messages
    dead = await access.query("SELECT count(*) FROM dead_letters")
    assert dead.rows[0][0] == 0


QUERY_SCRIPT = """
import json, sys
import aethergraph
print(json.dumps(aethergraph.query(sys.argv[1]), default=str))
"""


async def test_queries_are_answered_by_the_projector_process_while_it_folds(bus: Bus) -> None:
    rt = bus.rt
    await bus.run(pjb_outer, {"name": "early.txt"})
    projector, out = bus.spawn("p", "projector")

    async def ready() -> bool | None:
        assert projector.poll() is None, out.read_text()
        return True if "projector ready" in out.read_text() else None

    await eventually(ready, "the projector to be ready")
    settings = bus.settings(bus.workspace("p"))
    path = store_path(settings)
    with pytest.raises(ProjectionLockedError):  # so every answer below comes from the projector process
        ProjectionStore.open(path)
    access = ProjectionAccess(rt.bus, settings)

    async def folded() -> int:
        return int((await access.query("SELECT count(*) AS n FROM events")).rows[0][0])

    def reaches(target: int) -> Callable[[], Awaitable[int | None]]:
        async def check() -> int | None:
            n = await folded()
            return n if n >= target else None

        return check

    # Results grow as events land.
    seen = [await folded()]
    for i in range(2):
        run_id, _ = await bus.run(pjb_outer, {"name": f"round-{i}.txt"})
        target = await bus.last_seq()
        seen.append(await eventually(reaches(target), f"the projector to fold run {run_id}"))
        status = await access.query("SELECT status, started_at FROM runs WHERE run_id = ?", [run_id])
        assert status.rows[0][0] == "succeeded" and isinstance(status.rows[0][1], dt.datetime)
    assert seen[0] < seen[1] < seen[2]

    # Queries while runs are being appended: every answer is consistent and they never go back.
    async def appending() -> None:
        for i in range(4):
            await bus.run(pjb_outer, {"name": f"busy-{i}.txt"})

    writer = asyncio.create_task(appending())
    answers: list[int] = []
    while not writer.done():
        answers.append(await folded())
        await asyncio.sleep(0.01)
    await writer
    final = await bus.last_seq()
    answers.append(await eventually(reaches(final), "the projector to fold the busy runs"))
    assert answers == sorted(answers) and answers[-1] == final

    remote = await remote_request(rt.bus, store_id_for(path), QueryRequest(sql="SELECT count(*) FROM runs"))
    assert remote is not None and remote.rows == [(3 * 2 + 4 * 2,)]

    # Bad SQL: DuckDB's message comes back, and the projector keeps running.
    with pytest.raises(ProjectionError, match=r"(?i)parser error|syntax error"):
        await access.query("SELEC * FROM runs")
    with pytest.raises(ProjectionError, match=r"Table with name no_such_table does not exist"):
        await access.query("SELECT * FROM no_such_table")
    bad_cli = await bus.cli("p", "sql", "SELEC 1")
    assert bad_cli.returncode == 1 and "syntax error" in bad_cli.stderr.lower(), bad_cli.stderr
    assert projector.poll() is None
    run_id, _ = await bus.run(pjb_outer, {"name": "after-errors.txt"})
    await eventually(reaches(await bus.last_seq()), "the projector to fold after the bad queries")

    # Other processes of the same workspace are answered by it too (the store stays locked).
    via_query = await bus.python("p", QUERY_SCRIPT, f"SELECT status FROM runs WHERE run_id = '{run_id}'")
    assert via_query == [{"status": "succeeded"}]
    via_cli = await bus.cli("p", "sql", "--json", "SELECT count(*) AS n FROM runs")
    assert via_cli.returncode == 0, via_cli.stderr
    assert json.loads(via_cli.stdout) == [{"n": 4 * 2 + 4 * 2}]
    snapshot = bus.root / "snapshot.duckdb"
    exported = await bus.cli("p", "export", str(snapshot))
    assert exported.returncode == 0, exported.stderr
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (16,)
    finally:
        con.close()

    projector.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(projector.wait, SAFETY_S) == 0, out.read_text()
    last = await bus.last_seq()
    assert f"projector stopped at stream sequence {last}" in out.read_text()
    store = await asyncio.to_thread(ProjectionStore.open, path)  # unlocked now
    fresh = await catch_up_fresh(bus)
    try:
        assert store.last_seq == last
        assert dump(store) == dump(fresh)
    finally:
        store.close()
        fresh.close()


# --- 9. the command line ---------------------------------------------------------------------------------


async def test_cli_sql_runs_lineage_and_export(bus: Bus) -> None:
    rt = bus.rt
    outer, _ = await bus.run(pjb_outer, {"name": "cli.txt"})
    child = f"{outer}-pjb_inner_1"
    with pytest.raises(Exception, match="cannot handle"):
        await bus.run(pjb_failing, {"name": "cli.txt"}, run_id="pjbclifail")
    asking, end = await bus.run(pjb_asking, {"name": "cli.txt"})
    assert isinstance(end, Suspended)
    expected = sorted([(outer, "succeeded"), ("pjbclifail", "failed"), (asking, "waiting")])
    sql = "SELECT run_id, status FROM runs WHERE parent_run_id IS NULL ORDER BY run_id"

    shown = await bus.cli("c", "sql", sql)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    for run_id, status in expected:
        assert any(run_id in line and status in line for line in lines), shown.stdout
    assert "3 rows" in shown.stdout

    as_json = await bus.cli("c", "sql", "--json", sql)
    assert json.loads(as_json.stdout) == [{"run_id": r, "status": s} for r, s in expected]

    as_csv = await bus.cli(
        "c", "sql", "--csv", "SELECT run_id, status, parent_run_id, started_at FROM runs ORDER BY run_id"
    )
    parsed = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert parsed[0] == ["run_id", "status", "parent_run_id", "started_at"]
    assert [row[:3] for row in parsed[1:]] == [
        [r, s, p]
        for r, s, p in sorted(
            [
                (outer, "succeeded", ""),
                (child, "succeeded", outer),
                ("pjbclifail", "failed", ""),
                (asking, "waiting", ""),
            ]
        )
    ]
    assert all(dt.datetime.fromisoformat(row[3]) for row in parsed[1:])

    both = await bus.cli("c", "sql", "--json", "--csv", sql)
    assert both.returncode == 2 and "at most one of --json and --csv" in both.stderr

    runs = json.loads((await bus.cli("c", "runs", "--json")).stdout)
    assert sorted((r["run_id"], r["status"], r["graph_id"]) for r in runs) == sorted(
        [(outer, "succeeded", "pjb_outer"), ("pjbclifail", "failed", "pjb_failing"), (asking, "waiting", "pjb_asking")]
    )
    for r in runs:
        assert r["events"] == await run_message_count(rt, r["run_id"]) and r["parent_run_id"] is None
    failed = json.loads((await bus.cli("c", "runs", "--status", "failed", "--json")).stdout)
    assert [r["run_id"] for r in failed] == ["pjbclifail"]
    nested = json.loads((await bus.cli("c", "runs", "--nested", "--status", "succeeded", "--json")).stdout)
    assert sorted(r["run_id"] for r in nested) == sorted([outer, child])
    listing = await bus.cli("c", "runs")
    assert listing.returncode == 0 and all(r in listing.stdout for r in (outer, asking, "pjbclifail"))

    lineage = await bus.cli("c", "lineage", outer)
    assert lineage.returncode == 0, lineage.stderr
    text = lineage.stdout
    line_of = {
        name: next(line for line in text.splitlines() if f"{name} " in line)
        for name in ("pjb_load_1", "pjb_inner_1", "pjb_count_1")
    }
    assert "<-" not in line_of["pjb_load_1"]
    assert "<- pjb_load_1" in line_of["pjb_inner_1"]
    count_sources = line_of["pjb_count_1"].split("<-", 1)[1]
    assert "pjb_inner_1" in count_sources and f"node:{child}/pjb_upper_1" in count_sources
    upper_line = next(line for line in text.splitlines() if "pjb_upper_1" in line)
    assert f"<- node:{outer}/pjb_load_1" in upper_line
    assert f"run {child}" in text and "pjb_inner" in text
    missing = await bus.cli("c", "lineage", "pjbnosuchrun")
    assert missing.returncode == 1 and "no run pjbnosuchrun" in missing.stderr

    target = bus.root / "export" / "snapshot.duckdb"
    written = await bus.cli("c", "export", str(target))
    assert written.returncode == 0, written.stderr
    assert "exported the projections" in written.stdout
    assert not target.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    store = await asyncio.to_thread(ProjectionStore.open, store_path(bus.settings(bus.workspace("c"))))
    con = duckdb.connect(str(target), read_only=True)
    try:
        for table in TABLES:
            [(n,)] = con.execute(f"SELECT count(*) FROM {table}").fetchall()
            assert n == store.query(f"SELECT count(*) FROM {table}").rows[0][0], table
        walk = f"SELECT entity, via, depth FROM ancestors('node:{outer}/pjb_count_1') ORDER BY ALL"
        exported_walk = con.execute(walk).fetchall()
        assert exported_walk == store.query(walk).rows
        assert f"node:{outer}/pjb_load_1" in {entity for entity, _, _ in exported_walk}
        with pytest.raises(duckdb.Error):
            con.execute("DELETE FROM runs")
    finally:
        con.close()
        store.close()

    again = await bus.cli("c", "export", str(target))
    assert again.returncode == 1
    assert "already exists" in again.stderr and str(target) in again.stderr.replace("\n", "")


# --- 10. large results and types over the query service -------------------------------------------------


@pytest.fixture
async def service(bus: Bus) -> AsyncIterator[tuple[Bus, str]]:
    store = await asyncio.to_thread(ProjectionStore.open, ":memory:")
    served = QueryService(bus.rt.bus, store, "pjbchunks")
    await served.start()
    try:
        yield bus, "pjbchunks"
    finally:
        await served.stop()
        store.close()


async def test_a_large_result_comes_back_complete_in_chunks(service: tuple[Bus, str]) -> None:
    bus, store_id = service
    nc = bus.rt.bus.nc
    sql = "SELECT repeat('x', 1000) AS s, i FROM range(5000) t(i) ORDER BY i"
    result = await remote_request(bus.rt.bus, store_id, QueryRequest(sql=sql))
    assert result is not None
    assert result.columns == ("s", "i") and result.types == ("VARCHAR", "BIGINT")
    assert result.rows == [("x" * 1000, i) for i in range(5000)]

    # On the wire: several messages, each within the server's payload limit.
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    chunks: list[QueryChunk] = []
    try:
        await nc.publish(projector_query_subject(store_id), msgspec.msgpack.encode(QueryRequest(sql=sql)), reply=inbox)
        async with asyncio.timeout(SAFETY_S):
            while not chunks or chunks[-1].more:
                msg = await sub.next_msg(timeout=SAFETY_S)
                assert len(msg.data) <= nc.max_payload
                chunks.append(msgspec.msgpack.decode(msg.data, type=QueryChunk))
    finally:
        await sub.unsubscribe()
    assert nc.max_payload < 5000 * 1000  # the result cannot fit in one message
    assert len(chunks) > 1 and all(c.more for c in chunks[:-1])
    assert sum(len(c.rows) for c in chunks) == 5000


async def test_timestamps_and_other_types_come_back_as_python_values(service: tuple[Bus, str]) -> None:
    bus, store_id = service
    result = await remote_request(
        bus.rt.bus,
        store_id,
        QueryRequest(
            sql="SELECT TIMESTAMP '2024-05-06 07:08:09.123456' AS t, DATE '2024-05-06' AS d, NULL::TIMESTAMP AS n, "
            "12.50::DECIMAL(6, 2) AS m, 'b'::BLOB AS b, ? AS p",
            params=["given"],
        ),
    )
    assert result is not None
    assert result.rows == [
        (dt.datetime(2024, 5, 6, 7, 8, 9, 123456), dt.date(2024, 5, 6), None, decimal.Decimal("12.50"), b"b", "given")
    ]
    with pytest.raises(ProjectionError, match=r"(?i)syntax error"):
        await remote_request(bus.rt.bus, store_id, QueryRequest(sql="SELEC 1"))


async def test_a_value_the_wire_cannot_carry_is_answered_with_an_error(service: tuple[Bus, str]) -> None:
    bus, store_id = service
    try:
        answer = await remote_request(
            bus.rt.bus,
            store_id,
            QueryRequest(sql="SELECT 170141183460469231731687303715884105727::HUGEINT AS h"),
            timeout_s=10,
        )
    except ProjectionError:
        return  # an error the caller can read
    assert answer is not None, (
        "the query service never answered a query whose result it could not encode "
        "(msgpack OverflowError in QueryService._send is not caught), so the requester saw no projector"
    )
