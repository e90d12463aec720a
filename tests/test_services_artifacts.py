"""``context.artifacts()``: content addressing, loads, finding, pinning, lineage events and replay, on both stores."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from helpers import read_events

from aethergraph import Artifact, graph_fn, tool
from aethergraph.core.api.callables import GraphFunction
from aethergraph.core.errors import ArtifactNotFoundError, NonDeterminismError
from aethergraph.core.ids import new_run_id
from aethergraph.core.run.executor import execute_run, resume_run
from aethergraph.core.settings import load_settings
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost


class Crash(BaseException):
    """Stands for the death of the process."""


@pytest.fixture(params=["local", "object_store"])
async def store_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProcessHost]:
    """A runtime whose artifacts go to local files (aiofiles) or to the JetStream Object Store."""
    rt = await ProcessHost.open(load_settings(artifact_store=request.param, artifacts_dir=tmp_path / "artifacts"))
    try:
        yield rt
    finally:
        await rt.close()


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def graph(body: Callable[..., Coroutine[Any, Any, dict[str, Any]]]) -> GraphFunction:
    return graph_fn(name="artifact_flow", outputs=["v"])(body)


async def run(rt: ProcessHost, body: Callable[..., Coroutine[Any, Any, dict[str, Any]]]) -> tuple[Any, str]:
    run_id = new_run_id()
    outputs = await execute_run(graph(body).spec, {}, run_id=run_id, env=rt.env)
    return outputs["v"], run_id


async def test_same_content_same_uri_and_loads_by_uri_or_id(store_runtime: ProcessHost, tmp_path: Path) -> None:
    text = f"report {os.urandom(4).hex()}"
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(300_000))

    async def body(*, context: Any) -> dict[str, Any]:
        arts = context.artifacts()
        a = await arts.save_text(text, kind="report", name="r.txt")
        b = await arts.save_text(text, kind="report")
        j1 = await arts.save_json({"b": 1, "a": [1, 2]})
        j2 = await arts.save_json({"a": [1, 2], "b": 1})
        f = await arts.save_file(source, kind="model")
        raw = await arts.save_bytes(b"\x00\x01", kind="blob")
        copy = await arts.load_file(f.uri, tmp_path / "copy.bin")
        return {
            "v": {
                "same": [a.uri == b.uri, a.id == b.id, j1.uri == j2.uri],
                "id": a.id,
                "loads": [await arts.load_text(a.uri), await arts.load_text(a.id), await arts.load_json(j1)],
                "bytes": (await arts.load_bytes(raw)).hex(),
                "file": [f.name, f.size, f.mime],
                "paths": [copy, await arts.load_file(f)],
            }
        }

    v, _ = await run(store_runtime, body)
    assert v["same"] == [True, True, True]
    assert v["id"] == hashlib.sha256(text.encode()).hexdigest()
    assert v["loads"] == [text, text, {"a": [1, 2], "b": 1}]
    assert v["bytes"] == "0001"
    assert v["file"] == ["model.bin", 300_000, "application/octet-stream"]
    assert all(same_bytes(Path(p), source) for p in v["paths"])


@tool(name="train_model", outputs=["uri"])
async def train_model(loss: float, *, context: Any) -> dict[str, Any]:
    art = await context.artifacts().save_json({"loss": loss}, kind="ckpt", labels={"loss": loss, "task": "t1"})
    return {"uri": art.uri}


async def test_saves_are_events_naming_run_node_and_tool(store_runtime: ProcessHost) -> None:
    async def body(*, context: Any) -> dict[str, Any]:
        return {"v": (await train_model(0.5))["uri"]}

    uri, run_id = await run(store_runtime, body)
    [saved] = [r.event for r in await read_events(store_runtime, run_id) if isinstance(r.event, ev.ArtifactSaved)]
    assert (saved.uri, saved.node_id, saved.tool, saved.kind) == (uri, "train_model_1", "train_model", "ckpt")
    assert saved.labels == {"loss": 0.5, "task": "t1"} and saved.mime == "application/json"


async def test_list_search_best_and_pin(store_runtime: ProcessHost) -> None:
    task = f"t{os.urandom(3).hex()}"

    async def body(*, context: Any) -> dict[str, Any]:
        arts = context.artifacts()
        for loss in (0.9, 0.2, 0.5):
            await arts.save_json({"loss": loss, "task": task}, kind="ckpt", labels={"loss": loss, "task": task})
        await arts.save_text("notes", kind="note", labels={"task": task})
        mine = await arts.list()
        found = await arts.search("ckpt", {"task": task})
        lowest = await arts.best("ckpt", "loss", "min", labels={"task": task})
        highest = await arts.best("ckpt", "loss", labels={"task": task})
        none = await arts.best("ckpt", "accuracy", labels={"task": task})
        pinned = await arts.pin(lowest)
        after = await arts.search("ckpt", {"task": task, "loss": 0.2})
        return {"v": [mine, found, lowest, highest, none, pinned, after]}

    (mine, found, lowest, highest, none, pinned, after), _ = await run(store_runtime, body)
    assert [a["kind"] for a in mine] == ["ckpt", "ckpt", "ckpt", "note"]
    assert [a["labels"]["loss"] for a in found] == [0.9, 0.2, 0.5]
    assert lowest["labels"]["loss"] == 0.2 and highest["labels"]["loss"] == 0.9 and none is None
    assert pinned["pinned"] is True and pinned["id"] == lowest["id"]
    assert len(after) == 1 and after[0]["pinned"] is True


async def test_replay_returns_recorded_artifacts_without_writing(store_runtime: ProcessHost) -> None:
    async def crashes(*, context: Any) -> dict[str, Any]:
        await context.artifacts().save_text("first version")
        raise Crash

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=store_runtime.env)

    async def finishes(*, context: Any) -> dict[str, Any]:
        first: Artifact = await context.artifacts().save_text("first version")
        second: Artifact = await context.artifacts().save_text("second version")
        listed = await context.artifacts().list()
        return {"v": [first.uri, second.uri, [a.uri for a in listed]]}

    first, second, listed = (await resume_run(graph(finishes).spec, run_id, env=store_runtime.env))["v"]
    assert listed == [first, second]
    saved = [r.event for r in await read_events(store_runtime, run_id) if isinstance(r.event, ev.ArtifactSaved)]
    assert [s.uri for s in saved] == [first, second]  # the replayed save was not saved again

    async def diverges(*, context: Any) -> dict[str, Any]:
        await context.artifacts().save_text("other content")
        return {"v": 0}

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=store_runtime.env)
    with pytest.raises(NonDeterminismError) as caught:
        await resume_run(graph(diverges).spec, run_id, env=store_runtime.env)
    assert "artifact save" in str(caught.value)


async def test_bad_references_and_inputs_say_what_is_wrong(store_runtime: ProcessHost, tmp_path: Path) -> None:
    async def body(*, context: Any) -> dict[str, Any]:
        arts = context.artifacts()
        messages = []
        for call in (
            arts.load_text("not-a-reference"),
            arts.load_text("0" * 64),
            arts.pin("f" * 64),
        ):
            with pytest.raises(ArtifactNotFoundError) as caught:
                await call
            messages.append(str(caught.value))
        with pytest.raises(TypeError):
            await arts.save_bytes("text is not bytes")
        with pytest.raises(FileNotFoundError):
            await arts.save_file(tmp_path / "missing.txt")
        with pytest.raises(ValueError):
            await arts.best("ckpt", "loss", "median")
        return {"v": messages}

    messages, _ = await run(store_runtime, body)
    assert "neither an artifact URI nor an artifact id" in messages[0]
    assert "0" * 64 in messages[1] and "cannot pin" in messages[2]
