"""The composition root: wires the JetStream bus into the core for this process.

One :class:`Runtime` per event loop (a NATS connection belongs to the loop
that opened it). ``await my_graph(...)`` uses the loop's runtime, opening it
on first use from :class:`~aethergraph.core.settings.Settings`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from aethergraph.bus.commands import JetStreamCommands, ResumeOutcome
from aethergraph.bus.connection import BusConnection, connect_bus
from aethergraph.bus.embedded import EmbeddedServer, ensure_embedded_server
from aethergraph.bus.event_log import JetStreamEventLog
from aethergraph.bus.leases import JetStreamLeases
from aethergraph.bus.service_backends import JetStreamServiceBackends, open_service_backends
from aethergraph.core.environment import set_environment_provider
from aethergraph.core.errors import GraphNotFoundError, ResumeRejectedError
from aethergraph.core.executor import load_journal
from aethergraph.core.ids import check_run_id, new_run_id, new_worker_id, token
from aethergraph.core.resume import check_resume, journal_state
from aethergraph.core.service_registry import close_services, start_services
from aethergraph.core.settings import Settings, load_settings
from aethergraph.core.spec import CallableSpec
from aethergraph.engine.queries import ProjectionAccess, serve_projections
from aethergraph.engine.runs import RunDriver, RunHandle, Suspended
from aethergraph.engine.worker import Worker

__all__ = [
    "Runtime",
    "close_runtime",
    "get_run",
    "get_runtime",
    "load_target",
    "query",
    "query_async",
    "resume",
    "run",
    "run_async",
    "serve_projector",
    "serve_worker",
    "start_run",
    "start_server",
]


@dataclass(eq=False, kw_only=True)
class Runtime:
    """A process's connection to the bus: its event log, commands, leases and the runs it drives."""

    settings: Settings
    bus: BusConnection
    event_log: JetStreamEventLog
    commands: JetStreamCommands
    leases: JetStreamLeases
    worker_id: str
    inline_answers: bool
    service_backends: JetStreamServiceBackends
    driver: RunDriver = field(init=False)

    def __post_init__(self) -> None:
        self.driver = RunDriver(self, self.leases)
        self.driver.on_suspend = _announce_suspension

    @classmethod
    async def open(cls, settings: Settings | None = None, *, inline_answers: bool | None = None) -> Runtime:
        settings = settings or load_settings()
        worker_id = token(settings.worker_id) if settings.worker_id else new_worker_id()
        bus = await connect_bus(settings, client_name=f"aethergraph:{worker_id}")
        event_log = JetStreamEventLog(bus.nc, bus.js, max_event_bytes=settings.max_event_bytes)
        await event_log.start()
        leases = JetStreamLeases(bus.nc, bus.js, worker_id, lease_s=settings.lease_s)
        if inline_answers is None:
            inline_answers = settings.console_input == "always" or (
                settings.console_input == "auto" and sys.stdin is not None and sys.stdin.isatty()
            )
        runtime = cls(
            settings=settings,
            bus=bus,
            event_log=event_log,
            commands=JetStreamCommands(bus.nc, bus.js),
            leases=leases,
            worker_id=worker_id,
            inline_answers=inline_answers,
            service_backends=open_service_backends(bus.js, settings),
        )
        try:
            await start_services()  # registered context services' start() hooks
        except BaseException:
            await runtime.close()
            raise
        return runtime

    @property
    def always_suspend(self) -> bool:
        return self.settings.always_suspend

    async def run_top_level(self, spec: CallableSpec, inputs: Mapping[str, Any]) -> dict[str, Any]:
        run_id = new_run_id()
        return await RunHandle(run_id, self, self.driver.start(spec, inputs, run_id)).result()

    async def schedule_wait_expiry(self, run_id: str, wait_id: str, deadline_us: int) -> None:
        await self.commands.schedule_expiry(run_id, wait_id, deadline_us)

    async def close(self) -> None:
        """Let the runs this process drives end or suspend, then disconnect."""
        await self.driver.drain()
        await close_services()  # context services' close() hooks
        await self.leases.close()
        await self.event_log.close()
        await self.bus.close()


def _announce_suspension(suspended: Suspended) -> None:
    where = "" if suspended.wait_run_id == suspended.run_id else f" (in nested run {suspended.wait_run_id})"
    print(
        f"run {suspended.run_id} is waiting for {suspended.kind} wait {suspended.wait_id}{where}: "
        f"{suspended.prompt!r}. Answer it with `aethergraph resume {suspended.wait_run_id} --wait-id "
        f"{suspended.wait_id} --json '...'`; a worker (`aethergraph worker MODULE`) continues it.",
        file=sys.stderr,
        flush=True,
    )


_runtimes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Runtime] = weakref.WeakKeyDictionary()
_opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def get_runtime(settings: Settings | None = None, *, inline_answers: bool | None = None) -> Runtime:
    """The runtime of the running event loop, opened on first use."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(loop)
    if runtime is not None:
        return runtime
    lock = _opening.setdefault(loop, asyncio.Lock())
    async with lock:
        runtime = _runtimes.get(loop)
        if runtime is None:
            runtime = await Runtime.open(settings, inline_answers=inline_answers)
            _runtimes[loop] = runtime
    return runtime


async def close_runtime() -> None:
    """Close the running loop's runtime, if one is open (its events are all committed)."""
    runtime = _runtimes.pop(asyncio.get_running_loop(), None)
    if runtime is not None:
        await runtime.close()


set_environment_provider(get_runtime)


def load_target(target: object) -> CallableSpec:
    """The spec of a graph_fn or tool, given as the object or as ``"module:attr"`` / ``"file.py:attr"``."""
    if isinstance(target, str):
        target = _import_reference(target)
    spec = getattr(target, "__aethergraph_spec__", None)
    if not isinstance(spec, CallableSpec):
        raise GraphNotFoundError(
            f"{target!r} is not a graph_fn or tool; decorate it with @graph_fn or @tool, or pass the decorated object"
        )
    return spec


def _import_module(module_name: str, *, reference: str | None = None) -> ModuleType:
    """Import ``pkg.module`` or ``path/to/file.py``."""
    what = reference or module_name
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name).resolve()
            if not path.is_file():
                raise GraphNotFoundError(f"no Python file at {path} (from {what!r})")
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))  # as when running the file: its siblings import
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise GraphNotFoundError(f"cannot import {path} (from {what!r})")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            return module
        if "" not in sys.path:
            sys.path.insert(0, "")
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphNotFoundError(f"cannot import module {module_name!r} for {what!r}: {exc}") from exc


def _import_reference(reference: str) -> object:
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise GraphNotFoundError(
            f"{reference!r} is not a graph reference; write MODULE:GRAPH, e.g. "
            "examples.demo:analyze_numbers or examples/demo.py:analyze_numbers"
        )
    module = _import_module(module_name, reference=reference)
    try:
        return getattr(module, attribute)
    except AttributeError:
        names = sorted(
            name for name, value in vars(module).items() if getattr(value, "__aethergraph_spec__", None) is not None
        )
        raise GraphNotFoundError(
            f"module {module_name!r} has no attribute {attribute!r}; graphs and tools there: {names or 'none'}"
        ) from None


async def start_run(target: object, inputs: Mapping[str, Any] | None = None, *, run_id: str | None = None) -> RunHandle:
    """Start a graph_fn or tool as a journaled run in this process; returns its handle at once."""
    spec = load_target(target)
    bound = spec.bind((), dict(inputs or {}))
    runtime = await get_runtime()
    run_id = check_run_id(run_id) if run_id is not None else new_run_id()
    task = runtime.driver.start(spec, bound, run_id)
    return RunHandle(run_id, runtime, task)


async def get_run(run_id: str) -> RunHandle:
    """A handle to any run on the bus, whichever process started it."""
    return RunHandle(check_run_id(run_id), await get_runtime())


async def run_async(
    target: object, inputs: Mapping[str, Any] | None = None, *, run_id: str | None = None
) -> dict[str, Any]:
    """Run a graph_fn or tool as a journaled run and return its outputs (start + result).

    If the run waits for an answer it is not read inline, this keeps waiting
    until a worker has continued the run to its end.
    """
    handle = await start_run(target, inputs, run_id=run_id)
    return await handle.result()


async def resume(
    run_id: str,
    payload: Any = None,
    wait_id: str | None = None,
    *,
    wait: bool = True,
    timeout: float = 10.0,  # noqa: ASYNC109 - public API
) -> ResumeOutcome | None:
    """Answer a run's wait: publish a resume command to ``ag.cmd.resume.<run_id>``.

    The resume is checked against the run's journal first, so a wrong wait id,
    a closed wait or a payload failing the wait's schema raises
    :class:`~aethergraph.errors.ResumeRejectedError` at once and publishes
    nothing. With ``wait``, returns the worker's outcome (``accepted``, or
    ``deferred`` when no worker knows the graph yet), or ``None`` if no worker
    answered within ``timeout`` seconds (the command stays queued).
    """
    runtime = await get_runtime()
    chain, _ = await load_journal(runtime, check_run_id(run_id))
    # Name the wait that was checked, so the answer can never land on a later one.
    wait_id = check_resume(journal_state(run_id, chain), wait_id, payload).wait_id
    if not wait:
        await runtime.commands.publish_resume(run_id, wait_id=wait_id, payload=payload)
        return None
    async with runtime.commands.outcomes(run_id) as outcomes:
        command_seq = await runtime.commands.publish_resume(run_id, wait_id=wait_id, payload=payload)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    outcome = await outcomes.get()
                    if outcome.command_seq == command_seq:
                        break
        except TimeoutError:
            return None
    if outcome.status == "rejected":
        raise ResumeRejectedError(outcome.message, run_id=run_id, reason=outcome.reason, wait_id=outcome.wait_id)
    return outcome


async def serve_worker(*modules: str, stop: asyncio.Event | None = None) -> None:
    """Import ``modules`` (their graphs register themselves) and serve as a worker until ``stop`` is set."""
    for module in modules:
        _import_module(module)
    runtime = await get_runtime(inline_answers=False)
    worker = Worker(runtime.driver, runtime.commands)
    serving = asyncio.create_task(worker.serve())
    try:
        if stop is None:
            await serving
        else:
            await stop.wait()
            worker.stop()
            await serving
    finally:
        if not serving.done():
            worker.stop()
            await serving


async def query_async(sql: str, params: list[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run SQL on the projections (tables ``runs``, ``nodes``, ``tool_calls``, ``waits``, ``edges``, ...).

    Asked of the workspace's projector when one runs (``aethergraph
    projector`` or :func:`serve_projector`), so the answer reflects live data;
    otherwise this process folds the stream into the workspace's store first.
    Rows come back as dicts keyed by column name. See docs/lineage.md.
    """
    runtime = await get_runtime()
    result = await ProjectionAccess(runtime.bus, runtime.settings).query(sql, params)
    return result.dicts()


def query(sql: str, params: list[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Synchronous :func:`query_async` for scripts and notebooks without a running event loop."""
    _refuse_running_loop("aethergraph.query()", "await aethergraph.query_async(...)")

    async def _main() -> list[dict[str, Any]]:
        try:
            return await query_async(sql, params)
        finally:
            await close_runtime()

    return asyncio.run(_main())


async def serve_projector(stop: asyncio.Event | None = None) -> None:
    """Own the workspace's projection store: fold new events and answer queries until ``stop`` is set."""
    runtime = await get_runtime()
    await serve_projections(runtime.bus, runtime.settings, stop or asyncio.Event())


def _refuse_running_loop(what: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} was called inside a running event loop; use `{instead}`")


def run(target: object, inputs: Mapping[str, Any] | None = None, *, run_id: str | None = None) -> dict[str, Any]:
    """Synchronous :func:`run_async` for scripts; opens and closes its own event loop."""
    _refuse_running_loop("aethergraph.run()", "await aethergraph.run_async(...)")

    async def _main() -> dict[str, Any]:
        try:
            return await run_async(target, inputs, run_id=run_id)
        finally:
            await close_runtime()

    return asyncio.run(_main())


def start_server(settings: Settings | None = None) -> EmbeddedServer | str:
    """Make sure the bus is up: start or reuse the embedded server, or name the configured URL.

    Returns the :class:`EmbeddedServer` on the embedded default, else the configured URL.
    """
    settings = settings or load_settings()
    if settings.nats_url:
        return settings.nats_url
    return ensure_embedded_server(settings.workspace, sync_interval=settings.sync_interval)
