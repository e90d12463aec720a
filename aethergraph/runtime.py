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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aethergraph.bus.connection import BusConnection, connect_bus
from aethergraph.bus.embedded import EmbeddedServer, ensure_embedded_server
from aethergraph.bus.event_log import JetStreamEventLog
from aethergraph.core.environment import set_environment_provider
from aethergraph.core.errors import GraphNotFoundError
from aethergraph.core.executor import execute_run
from aethergraph.core.ids import new_worker_id
from aethergraph.core.settings import Settings, load_settings
from aethergraph.core.spec import CallableSpec

__all__ = [
    "Runtime",
    "close_runtime",
    "get_runtime",
    "load_target",
    "run",
    "run_async",
    "start_server",
]


@dataclass(eq=False, kw_only=True)
class Runtime:
    """A process's connection to the bus and the event log on it."""

    settings: Settings
    bus: BusConnection
    event_log: JetStreamEventLog
    worker_id: str

    @classmethod
    async def open(cls, settings: Settings | None = None) -> Runtime:
        settings = settings or load_settings()
        worker_id = settings.worker_id or new_worker_id()
        bus = await connect_bus(settings, client_name=f"aethergraph:{worker_id}")
        event_log = JetStreamEventLog(bus.nc, bus.js, max_event_bytes=settings.max_event_bytes)
        await event_log.start()
        return cls(settings=settings, bus=bus, event_log=event_log, worker_id=worker_id)

    @property
    def always_suspend(self) -> bool:
        return self.settings.always_suspend

    async def close(self) -> None:
        await self.event_log.close()
        await self.bus.close()


_runtimes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Runtime] = weakref.WeakKeyDictionary()
_opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def get_runtime(settings: Settings | None = None) -> Runtime:
    """The runtime of the running event loop, opened on first use."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(loop)
    if runtime is not None:
        return runtime
    lock = _opening.setdefault(loop, asyncio.Lock())
    async with lock:
        runtime = _runtimes.get(loop)
        if runtime is None:
            runtime = await Runtime.open(settings)
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


def _import_reference(reference: str) -> object:
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise GraphNotFoundError(
            f"{reference!r} is not a graph reference; write MODULE:GRAPH, e.g. "
            "examples.demo:analyze_numbers or examples/demo.py:analyze_numbers"
        )
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name).resolve()
            if not path.is_file():
                raise GraphNotFoundError(f"no Python file at {path} (from {reference!r})")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise GraphNotFoundError(f"cannot import {path} (from {reference!r})")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphNotFoundError(f"cannot import module {module_name!r} for {reference!r}: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        names = sorted(
            name for name, value in vars(module).items() if getattr(value, "__aethergraph_spec__", None) is not None
        )
        raise GraphNotFoundError(
            f"module {module_name!r} has no attribute {attribute!r}; graphs and tools there: {names or 'none'}"
        ) from None


async def run_async(
    target: object, inputs: Mapping[str, Any] | None = None, *, run_id: str | None = None
) -> dict[str, Any]:
    """Run a graph_fn or tool as a journaled run and return its outputs."""
    spec = load_target(target)
    bound = spec.bind((), dict(inputs or {}))
    return await execute_run(spec, bound, run_id=run_id, env=await get_runtime())


def run(target: object, inputs: Mapping[str, Any] | None = None, *, run_id: str | None = None) -> dict[str, Any]:
    """Synchronous :func:`run_async` for scripts; opens and closes its own event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "aethergraph.run() was called inside a running event loop; use `await aethergraph.run_async(...)`"
        )

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
