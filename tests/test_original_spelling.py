"""The original AetherGraph documentation's spelling, accepted where it costs nothing (issue 17).

``@graph_fn(name=..., inputs=[...], outputs=[...])``, ``@tool(outputs=[...])`` on
a ``DualStageTool`` subclass whose ``setup`` returns a wait dict,
``context.artifacts().save(path, kind=..., labels=...)`` (seeds/key-concepts.txt),
``from aethergraph.errors import ...``, ``aethergraph.run(..., max_concurrency=...)``,
and an honest error for ``context.llm()``. Runs go through the session's nats-server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers import read_events, run_python

import aethergraph
from aethergraph import DualStageTool, graph_fn, tool
from aethergraph.core import errors as core_errors
from aethergraph.core.ids import new_run_id
from aethergraph.core.wire import events as ev
from aethergraph.errors import (
    DecorationError,
    LLMConfigError,
    OutputError,
    ResumeRejectedError,
    ServiceNameError,
)
from aethergraph.host.runs import RunHandle, Suspended
from aethergraph.host.worker import Worker
from aethergraph.runtime import ProcessHost, load_target
from aethergraph.services.runtime.base import Service
from aethergraph.services.runtime.registry import register_context_service, unregister_context_service

SAFETY_S = 60  # an upper bound for anything to happen, never a measurement
SPELLING_GRAPHS = Path(__file__).resolve().parent / "procs" / "spelling_graphs.py"


# --- @graph_fn(name=..., inputs=[...], outputs=[...]) ----------------------------------------------------------


@graph_fn(name="os_train", inputs=["spec", "epochs"], outputs=["job_id", "epochs"])
async def os_train(spec: dict, epochs: int = 1, *, context):  # type: ignore[no-untyped-def]
    return {"job_id": f"{spec['model']}-{context.run_id}", "epochs": epochs}


@graph_fn(name="os_forgets_an_output", inputs=["x"], outputs=["y", "z"])
async def os_forgets_an_output(x: int) -> dict:
    return {"y": x}


async def test_graph_fn_with_inputs_and_outputs_runs(runtime: ProcessHost) -> None:
    handle = await aethergraph.start_run(os_train, {"spec": {"model": "m"}, "epochs": 3})
    assert await handle.result(timeout=SAFETY_S) == {"job_id": f"m-{handle.run_id}", "epochs": 3}


def test_graph_fn_inputs_are_checked_against_the_signature_when_decorated() -> None:
    with pytest.raises(DecorationError, match=r"inputs \['spek'\] are not parameters of .*\['spec', 'epochs'\]"):

        @graph_fn(name="os_typo", inputs=["spek"], outputs=["y"])
        async def os_typo(spec: dict, epochs: int = 1) -> dict:
            return {"y": 1}

    with pytest.raises(DecorationError, match=r"parameters \['epochs'\] have no default but are missing"):

        @graph_fn(name="os_missing", inputs=["spec"])
        async def os_missing(spec: dict, epochs: int) -> dict:
            return {}

    with pytest.raises(DecorationError, match=r"inputs must be a list of parameter names"):

        @graph_fn(name="os_string", inputs="spec")  # type: ignore[arg-type]
        async def os_string(spec: dict) -> dict:
            return {}


async def test_declared_outputs_are_checked_against_the_returned_dict_when_the_run_ends(runtime: ProcessHost) -> None:
    handle = await aethergraph.start_run(os_forgets_an_output, {"x": 1})
    with pytest.raises(OutputError, match=r"did not return its declared output 'z' \(returned keys: \['y'\]\)"):
        await handle.result(timeout=SAFETY_S)
    assert await handle.status() == "failed"


# --- @tool(outputs=[...]) on a DualStageTool, setup returning a dict ------------------------------------------------

APPROVAL_SCHEMA = {"type": "object", "required": ["approved"], "properties": {"approved": {"type": "boolean"}}}


@tool(name="os_approve", outputs=["approved", "note"])
class OsApprove(DualStageTool):
    async def setup(self, doc: str, *, context):  # type: ignore[no-untyped-def]
        return {"kind": "approval", "prompt": f"approve {doc}?", "resume_schema": APPROVAL_SCHEMA}

    async def on_resume(self, resume, *, context):  # type: ignore[no-untyped-def]
        return {"approved": resume["approved"], "note": resume.get("note", "")}


@tool(outputs=["ok"])
class OsBadWaitDict(DualStageTool):
    async def setup(self):  # type: ignore[no-untyped-def]
        return {"kind": "approval", "promt": "typo"}

    async def on_resume(self, resume):  # type: ignore[no-untyped-def]
        return {"ok": True}


@graph_fn(name="os_review", outputs=["approved", "note"])
async def os_review(doc: str, *, context):  # type: ignore[no-untyped-def]
    return await OsApprove(doc=doc)  # type: ignore[operator]


@graph_fn(name="os_bad_wait_dict", outputs=["ok"])
async def os_bad_wait_dict() -> dict:
    return await OsBadWaitDict()  # type: ignore[operator,no-any-return]


@pytest.fixture(params=["live", "always_suspend"])
def graph_env(request: pytest.FixtureRequest, runtime: ProcessHost, suspending_runtime: ProcessHost) -> ProcessHost:
    """Run twice: live, and suspending after every step to continue by replay."""
    return suspending_runtime if request.param == "always_suspend" else runtime


async def test_tool_decorator_on_a_dual_stage_tool_whose_setup_returns_a_wait_dict(graph_env: ProcessHost) -> None:
    assert isinstance(OsApprove, DualStageTool)
    assert OsApprove.name == "os_approve" and OsApprove.spec.outputs == ("approved", "note")
    assert OsBadWaitDict.name == "os_bad_wait_dict"
    run_id = new_run_id()
    task = graph_env.driver.start(load_target(os_review), {"doc": "draft.md"}, run_id)
    async with asyncio.timeout(SAFETY_S):
        assert isinstance(await task, Suspended)
    waiting = [r.event for r in await read_events(graph_env, run_id) if isinstance(r.event, ev.RunWaiting)]
    assert [(w.kind, w.prompt) for w in waiting] == [("approval", "approve draft.md?")]
    with pytest.raises(ResumeRejectedError) as info:  # resume_schema is the wait's payload schema
        await aethergraph.resume(run_id, {"note": "no decision"})
    assert info.value.reason == "invalid_payload"
    await aethergraph.resume(run_id, {"approved": True, "note": "fine"}, wait=False)
    worker = Worker(graph_env.driver, graph_env.commands)  # continues the run on graph_env, by replay
    serving = asyncio.create_task(worker.serve())
    try:
        outputs = await RunHandle(run_id, graph_env.env).result(timeout=SAFETY_S)
    finally:
        worker.stop()
        await serving
    assert outputs == {"approved": True, "note": "fine"}


async def test_a_wait_dict_with_an_unknown_key_fails_naming_the_keys(runtime: ProcessHost) -> None:
    handle = await aethergraph.start_run(os_bad_wait_dict)
    with pytest.raises(TypeError, match=r"unknown keys \['promt'\]; it takes \['channel', 'deadline', 'kind'"):
        await handle.result(timeout=SAFETY_S)


# --- context.artifacts().save(path, kind=..., labels=...) -----------------------------------------------------------


@graph_fn(name="os_save", outputs=["text", "kind", "labels", "best"])
async def os_save(path: str, *, context):  # type: ignore[no-untyped-def]
    saved = await context.artifacts().save(path, kind="report", labels={"score": 0.9})
    best = await context.artifacts().best("report", "score", "max", scope="run")
    return {
        "text": await context.artifacts().load_text(saved),
        "kind": saved.kind,
        "labels": saved.labels,
        "best": best.uri == saved.uri,
    }


@graph_fn(name="os_save_a_value", outputs=["uri"])
async def os_save_a_value(*, context):  # type: ignore[no-untyped-def]
    return {"uri": (await context.artifacts().save({"not": "a path"}, kind="x")).uri}


async def test_artifacts_save_takes_a_path_kind_and_labels(runtime: ProcessHost, tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_text("all good")
    outputs = await aethergraph.run_async(os_save, {"path": str(report)})
    assert outputs == {"text": "all good", "kind": "report", "labels": {"score": 0.9}, "best": True}
    with pytest.raises(TypeError, match=r"takes the path of a local file, got dict; use save_json for values"):
        await aethergraph.run_async(os_save_a_value)


# --- from aethergraph.errors import ... ----------------------------------------------------------------------------


def test_aethergraph_errors_is_an_importable_module_with_every_error() -> None:
    names = ", ".join(core_errors.__all__)
    script = (
        f"from aethergraph.errors import {names}\n"
        "import aethergraph, aethergraph.errors, json\n"
        "print(json.dumps({'all': aethergraph.errors.__all__, "
        "'same': aethergraph.errors is __import__('aethergraph').errors}))\n"
    )
    found = run_python(script)
    assert sorted(found["all"]) == sorted(core_errors.__all__)
    assert found["same"] is True
    assert aethergraph.errors.RunFailedError is core_errors.RunFailedError


# --- aethergraph.run() takes run_async's options ---------------------------------------------------------------------

RUN_SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(SPELLING_GRAPHS.parent)!r})
import aethergraph, spelling_graphs
outputs = aethergraph.run(spelling_graphs.os_squares, {{"xs": [1, 2, 3]}}, run_id=sys.argv[1], max_concurrency=1)
print(json.dumps(outputs))
"""


async def test_run_takes_max_concurrency_like_run_async(runtime: ProcessHost) -> None:
    outputs = await asyncio.to_thread(run_python, RUN_SCRIPT, "os-run-mc")
    assert outputs == {"total": 14}
    started = (await read_events(runtime, "os-run-mc"))[0].event
    assert isinstance(started, ev.RunStarted) and started.max_concurrency == 1


# --- context.llm() --------------------------------------------------------------------------------------------------


@graph_fn(name="os_uses_llm", outputs=["reply"])
async def os_uses_llm(*, context):  # type: ignore[no-untyped-def]
    return {"reply": await context.llm().chat("hi")}


class OsLlmClient(Service):
    async def chat(self, text: str) -> str:
        return f"echo: {text}"


@graph_fn(name="os_uses_llm_client", outputs=["reply"])
async def os_uses_llm_client(*, context):  # type: ignore[no-untyped-def]
    return {"reply": await context.llm_client().chat("hi")}


async def test_context_llm_without_a_model_fails_naming_the_setting_and_llm_is_built_in(runtime: ProcessHost) -> None:
    with pytest.raises(LLMConfigError) as info:
        await aethergraph.run_async(os_uses_llm)
    assert "AETHERGRAPH_LLM__DEFAULT__MODEL" in str(info.value) and info.value.profile == "default"
    with pytest.raises(ServiceNameError, match="built in"):
        register_context_service("llm", OsLlmClient())
    register_context_service("llm_client", OsLlmClient())  # a provider of your own lives under another name
    try:
        assert await aethergraph.run_async(os_uses_llm_client) == {"reply": "echo: hi"}
    finally:
        unregister_context_service("llm_client")
