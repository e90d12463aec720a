"""Journaled service calls: what is recorded, what replay returns, and every bad input's error."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from helpers import eventually, read_events

import aethergraph
from aethergraph import graph_fn, journal_by_digest, not_journaled, tool
from aethergraph.core.api.callables import GraphFunction
from aethergraph.core.context.service_registry import BUILTIN_SERVICES
from aethergraph.core.errors import (
    AetherGraphError,
    NonDeterminismError,
    ReplayedError,
    SerializationError,
    ServiceNameError,
    UnknownServiceError,
)
from aethergraph.core.ids import new_run_id
from aethergraph.core.run.executor import execute_run, resume_run
from aethergraph.core.wire import events as ev
from aethergraph.host.process import ProcessHost
from aethergraph.services.runtime.base import Service
from aethergraph.services.runtime.registry import register_context_service


class Crash(BaseException):
    """Stands for the death of the process: nothing after it is journaled."""


class QuotaExceeded(Exception):
    """A service's own error type, rebuilt from its message on replay."""


class Ledger(Service):
    """Counts every real execution of each method."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    async def charge(self, account: str, cents: int) -> dict[str, Any]:
        self.calls.append(("charge", (account, cents)))
        return {"account": account, "cents": cents, "receipt": f"r{len(self.calls)}"}

    async def refuse(self, account: str) -> None:
        self.calls.append(("refuse", account))
        raise QuotaExceeded(f"account {account} is over quota")

    async def opaque(self) -> None:
        self.calls.append(("opaque", None))
        raise KeyConflictLike(3)

    async def handle(self) -> object:
        self.calls.append(("handle", None))
        return object()

    async def report(self, size: int) -> str:
        self.calls.append(("report", size))
        return "x" * size

    @not_journaled
    async def peek(self) -> int:
        self.calls.append(("peek", None))
        return len(self.calls)

    @journal_by_digest
    async def open_session(self, secret: str) -> object:
        self.calls.append(("open_session", secret))
        return object()

    def sync_helper(self) -> str:
        return "plain"


class KeyConflictLike(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")


def graph(body: Callable[..., Coroutine[Any, Any, dict[str, Any]]]) -> GraphFunction:
    return graph_fn(name="ledger_flow", outputs=["v"])(body)


@pytest.fixture
def ledger() -> Ledger:
    service = Ledger()
    register_context_service("ledger", service)
    return service


async def test_a_call_is_journaled_with_arguments_and_result(runtime: ProcessHost, ledger: Ledger) -> None:
    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        return {"v": await context.ledger().charge("acme", cents=250)}

    run_id = new_run_id()
    assert await execute_run(flow.spec, {}, run_id=run_id, env=runtime.env) == {
        "v": {"account": "acme", "cents": 250, "receipt": "r1"}
    }
    events = [r.event for r in await read_events(runtime, run_id)]
    [called] = [e for e in events if isinstance(e, ev.ServiceCalled)]
    [returned] = [e for e in events if isinstance(e, ev.ServiceReturned)]
    assert (called.service, called.method, called.args, called.kwargs) == ("ledger", "charge", ["acme"], {"cents": 250})
    assert returned.parent == called.seq and returned.result == {"account": "acme", "cents": 250, "receipt": "r1"}
    assert returned.result_ref is None and returned.duration_us >= 0


async def test_resume_returns_recorded_results_without_calling_the_service(
    runtime: ProcessHost, ledger: Ledger
) -> None:
    async def crashes(*, context: Any) -> dict[str, Any]:
        await context.ledger().charge("acme", 1)
        await context.ledger().charge("acme", 2)
        raise Crash

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=runtime.env)
    assert len(ledger.calls) == 2

    async def finishes(*, context: Any) -> dict[str, Any]:
        first = await context.ledger().charge("acme", 1)
        second = await context.ledger().charge("acme", 2)
        third = await context.ledger().charge("acme", 3)
        return {"v": [first["receipt"], second["receipt"], third["receipt"]]}

    assert await resume_run(graph(finishes).spec, run_id, env=runtime.env) == {"v": ["r1", "r2", "r3"]}
    assert [args for _, args in ledger.calls] == [("acme", 1), ("acme", 2), ("acme", 3)]


async def test_a_failure_is_journaled_and_raised_again_on_replay_without_calling(
    runtime: ProcessHost, ledger: Ledger
) -> None:
    async def body(*, context: Any) -> dict[str, Any]:
        caught = []
        for call in (context.ledger().refuse("acme"), context.ledger().opaque()):
            try:
                await call
            except Exception as exc:  # noqa: BLE001 - the test looks at what was raised
                caught.append((type(exc).__name__, str(exc)))
        await context.ledger().charge("acme", 1)
        return {"v": caught}

    async def crashes(*, context: Any) -> dict[str, Any]:
        await body(context=context)
        raise Crash

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=runtime.env)
    events = [r.event for r in await read_events(runtime, run_id)]
    failed = [e for e in events if isinstance(e, ev.ServiceFailed)]
    assert [(f.method, f.error_type, f.message) for f in failed] == [
        ("refuse", f"{__name__}.QuotaExceeded", "account acme is over quota"),
        ("opaque", f"{__name__}.KeyConflictLike", "code 3"),
    ]
    ledger.calls.clear()
    outputs = await resume_run(graph(body).spec, run_id, env=runtime.env)
    # Same type and message where the type can be rebuilt from its message; ReplayedError names it otherwise.
    [rebuilt, opaque] = outputs["v"]
    assert rebuilt == ["QuotaExceeded", "account acme is over quota"]
    assert opaque[0] == "ReplayedError" and opaque[1].startswith(f"{__name__}.KeyConflictLike: code 3 [run=")
    assert ledger.calls == []
    assert issubclass(ReplayedError, AetherGraphError)


async def test_a_replay_asking_for_another_call_is_non_deterministic(runtime: ProcessHost, ledger: Ledger) -> None:
    async def crashes(*, context: Any) -> dict[str, Any]:
        await context.ledger().charge("acme", 1)
        raise Crash

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=runtime.env)

    async def other_amount(*, context: Any) -> dict[str, Any]:
        await context.ledger().charge("acme", 999)
        return {"v": 0}

    with pytest.raises(NonDeterminismError) as caught:
        await resume_run(graph(other_amount).spec, run_id, env=runtime.env)
    assert "service call ledger.charge()" in str(caught.value)
    assert caught.value.recorded != caught.value.attempted
    assert len(ledger.calls) == 1


async def test_a_call_in_flight_when_the_process_died_runs_again_under_the_same_called_event(
    runtime: ProcessHost, ledger: Ledger
) -> None:
    class DiesMidCall(Service):
        async def submit(self, spec: dict[str, Any]) -> str:
            ledger.calls.append(("submit", spec))
            if len(ledger.calls) == 1:
                raise Crash
            return "job-7"

    register_context_service("cluster", DiesMidCall())

    async def body(*, context: Any) -> dict[str, Any]:
        return {"v": await context.cluster().submit({"epochs": 2})}

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(body).spec, {}, run_id=run_id, env=runtime.env)

    async def called_is_stored() -> bool | None:  # service.called is pipelined: acknowledged a moment later
        records = await read_events(runtime, run_id)
        return True if any(isinstance(r.event, ev.ServiceCalled) for r in records) else None

    await eventually(called_is_stored, "service.called to be stored")
    assert await resume_run(graph(body).spec, run_id, env=runtime.env) == {"v": "job-7"}
    events = [r.event for r in await read_events(runtime, run_id)]
    [called] = [e for e in events if isinstance(e, ev.ServiceCalled)]
    [returned] = [e for e in events if isinstance(e, ev.ServiceReturned)]
    assert returned.parent == called.seq


async def test_unencodable_arguments_and_results_name_the_service_and_method(
    runtime: ProcessHost, ledger: Ledger
) -> None:
    @graph
    async def bad_result(*, context: Any) -> dict[str, Any]:
        await context.ledger().handle()
        return {"v": 0}

    with pytest.raises(SerializationError) as caught:
        await aethergraph.run_async(bad_result, {})
    assert "ledger.handle()" in str(caught.value) and "journal_by_digest" in str(caught.value)

    @graph
    async def bad_args(*, context: Any) -> dict[str, Any]:
        await context.ledger().charge(object(), 1)
        return {"v": 0}

    with pytest.raises(SerializationError) as caught:
        await aethergraph.run_async(bad_args, {})
    assert "ledger.charge()" in str(caught.value)


async def test_opted_out_methods_journal_nothing_or_only_digests(runtime: ProcessHost, ledger: Ledger) -> None:
    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        seen = await context.ledger().peek()
        session = await context.ledger().open_session("s3cr3t")
        return {"v": [seen, type(session).__name__, context.ledger().sync_helper()]}

    run_id = new_run_id()
    assert await execute_run(flow.spec, {}, run_id=run_id, env=runtime.env) == {"v": [1, "object", "plain"]}
    events = [r.event for r in await read_events(runtime, run_id)]
    called = [e for e in events if isinstance(e, ev.ServiceCalled)]
    assert [c.method for c in called] == ["open_session"]
    assert called[0].args == [] and "s3cr3t" not in repr(events)
    [returned] = [e for e in events if isinstance(e, ev.ServiceReturned)]
    assert returned.result["type"] == "object"


async def test_large_results_ride_as_artifact_references(runtime: ProcessHost, ledger: Ledger) -> None:
    size = runtime.settings.max_event_bytes  # larger than any event may be

    async def crashes(*, context: Any) -> dict[str, Any]:
        await context.ledger().report(size)
        raise Crash

    run_id = new_run_id()
    with pytest.raises(Crash):
        await execute_run(graph(crashes).spec, {}, run_id=run_id, env=runtime.env)
    events = [r.event for r in await read_events(runtime, run_id)]
    [returned] = [e for e in events if isinstance(e, ev.ServiceReturned)]
    assert returned.result is None and returned.result_ref

    async def finishes(*, context: Any) -> dict[str, Any]:
        return {"v": len(await context.ledger().report(size))}

    ledger.calls.clear()
    assert await resume_run(graph(finishes).spec, run_id, env=runtime.env) == {"v": size}
    assert ledger.calls == []


async def test_unknown_service_lists_the_registered_names(runtime: ProcessHost, ledger: Ledger) -> None:
    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        return {"v": await context.trainr().submit({})}

    with pytest.raises(UnknownServiceError) as caught:
        await aethergraph.run_async(flow, {})
    assert isinstance(caught.value, AttributeError) and isinstance(caught.value, AetherGraphError)
    assert "trainr" in str(caught.value) and "ledger" in str(caught.value)
    assert "ledger" in caught.value.registered


@pytest.mark.parametrize(
    "name", ["memory", "artifacts", "kv", "channel", "logger", "runs", "now", "run_id", "mcp", "llm", "viz", "rag"]
)
def test_built_in_names_cannot_be_taken(name: str) -> None:
    with pytest.raises(ServiceNameError) as caught:
        register_context_service(name, Ledger())
    assert f"context.{name}() is built into AetherGraph" in str(caught.value)


@pytest.mark.parametrize("name", ["", "2fast", "has space", "_private"])
def test_names_must_be_identifiers(name: str) -> None:
    with pytest.raises(ServiceNameError):
        register_context_service(name, Ledger())


def test_a_class_instead_of_an_instance_is_refused() -> None:
    with pytest.raises(ServiceNameError) as caught:
        register_context_service("ledger2", Ledger)
    assert "register_context_service('ledger2', MyService())" in str(caught.value)


async def test_calling_a_service_without_call_with_arguments_says_what_to_do(
    runtime: ProcessHost, ledger: Ledger
) -> None:
    @graph
    async def flow(*, context: Any) -> dict[str, Any]:
        return {"v": await context.ledger("acme")}

    with pytest.raises(TypeError) as caught:
        await aethergraph.run_async(flow, {})
    assert "async def __call__" in str(caught.value)


async def test_services_outside_runs_are_plain_python(ledger: Ledger) -> None:
    assert (await ledger.charge("acme", 5))["cents"] == 5
    with pytest.raises(AetherGraphError) as caught:
        ledger.ctx()
    assert "outside a run" in str(caught.value)


@tool(name="ctx_probe", outputs=["where"])
async def ctx_probe(*, context: Any) -> dict[str, Any]:
    return {"where": await context.probe().where()}


class Probe(Service):
    async def where(self) -> str:
        ctx = self.ctx()
        return f"{ctx.graph_id}/{ctx.node_id}"


async def test_ctx_is_the_calling_node_under_concurrency(runtime: ProcessHost) -> None:
    import asyncio

    register_context_service("probe", Probe())

    @graph_fn(name="probe_flow", outputs=["v"])
    async def probe_flow(*, context: Any) -> dict[str, Any]:
        results = await asyncio.gather(*(ctx_probe() for _ in range(5)))
        mine = await context.probe().where()
        return {"v": [*sorted(r["where"] for r in results), mine]}

    outputs = await aethergraph.run_async(probe_flow, {})
    assert outputs["v"] == [f"probe_flow/ctx_probe_{i}" for i in range(1, 6)] + ["probe_flow/root"]


async def test_every_service_kind_under_always_suspend(
    runtime: ProcessHost, suspending_runtime: ProcessHost, ledger: Ledger
) -> None:
    """The same graph, live and suspended-and-replayed after every step, gives the same outputs."""
    import os

    key = f"as:{os.urandom(4).hex()}"

    @graph_fn(name="every_service", outputs=["v"])
    async def every_service(run: int, *, context: Any) -> dict[str, Any]:
        receipt = (await context.ledger().charge("acme", run))["cents"]
        count = await context.kv().incr(f"{key}:{run}")
        art = await context.artifacts().save_text(f"body {run}")
        await context.memory().record("note", f"note {run}")
        notes = [e.text for e in await context.memory().recent("note")]
        listed = [a.id for a in await context.artifacts().list()]
        return {"v": [receipt, count, await context.artifacts().load_text(art), notes, listed == [art.id]]}

    expected = {"v": [1, 1, "body 1", ["note 1"], True]}
    assert await execute_run(every_service.spec, {"run": 1}, env=runtime.env) == expected
    ledger.calls.clear()
    assert await execute_run(every_service.spec, {"run": 1}, env=suspending_runtime.env) == {
        "v": [1, 2, "body 1", ["note 1"], True]
    }
    assert ledger.calls == [("charge", ("acme", 1))]  # called once though the body re-ran after every step


def test_services_doc_names_every_built_in_and_setting() -> None:
    from pathlib import Path

    from aethergraph.core.settings import Settings

    text = (Path(__file__).resolve().parent.parent / "docs" / "services.md").read_text()
    missing = [name for name in sorted(BUILTIN_SERVICES) if f"`{name}`" not in text]
    assert not missing, f"docs/services.md does not list the built-in names {missing}"
    for setting in ("artifact_store", "artifacts_dir"):
        assert setting in Settings.model_fields and f"AETHERGRAPH_{setting.upper()}" in text
