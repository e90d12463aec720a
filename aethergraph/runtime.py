"""The public facade and its composition: one :class:`~aethergraph.host.process.ProcessHost` per event loop.

A NATS connection belongs to the loop that opened it, so each event loop has
its own host, opened on first use from
:class:`~aethergraph.core.settings.Settings` (:func:`get_runtime`) and closed
by :func:`close_runtime`. The functions here are what users call; each asks
the loop's host to do it. ``await my_graph(...)`` outside any run reaches the
same host through the one launcher installed into core below.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from typing import Any

from aethergraph.bus.commands import ResumeOutcome
from aethergraph.bus.embedded import EmbeddedServer, ensure_embedded_server
from aethergraph.core.context.waits import interrupt_inline_answers
from aethergraph.core.errors import ResumeRejectedError
from aethergraph.core.ids import check_run_id, new_run_id
from aethergraph.core.journal.run_control import bind_run_inputs
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.environment import install_top_level_launcher
from aethergraph.core.run.resume import resolve_resume
from aethergraph.core.settings import Settings, load_settings
from aethergraph.host.loader import import_module, import_modules, load_target
from aethergraph.host.process import ProcessHost
from aethergraph.host.resume_client import await_resume_outcome
from aethergraph.host.runs import RunHandle
from aethergraph.host.worker import Worker

__all__ = [
    "cancel",
    "close_runtime",
    "get_run",
    "get_runtime",
    "import_modules",
    "load_target",
    "query",
    "query_async",
    "resume",
    "retry",
    "run",
    "run_async",
    "serve_projector",
    "serve_worker",
    "start_run",
    "start_server",
    "submit",
]

_hosts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProcessHost] = weakref.WeakKeyDictionary()
_opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def get_runtime(settings: Settings | None = None, *, inline_answers: bool | None = None) -> ProcessHost:
    """The host of the running event loop, opened on first use."""
    loop = asyncio.get_running_loop()
    host = _hosts.get(loop)
    if host is not None:
        return host
    lock = _opening.setdefault(loop, asyncio.Lock())
    async with lock:
        host = _hosts.get(loop)
        if host is None:
            host = await ProcessHost.open(settings, inline_answers=inline_answers)
            _hosts[loop] = host
    return host


async def close_runtime() -> None:
    """Close the running loop's host, if one is open (its events are all committed)."""
    host = _hosts.pop(asyncio.get_running_loop(), None)
    if host is not None:
        await host.close()


async def _run_top_level(spec: CallableSpec, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return await (await get_runtime()).runs.run_top_level(spec, inputs)


install_top_level_launcher(_run_top_level)


async def start_run(
    target: object,
    inputs: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    max_concurrency: int | None = None,
) -> RunHandle:
    """Start a graph_fn, static graph or tool as a journaled run in this process; returns its handle.

    Returns once ``run.started`` is committed: from then on the run exists on
    the bus (``status()`` finds it) and completes somewhere. This process
    drives it; if the process ends first, a worker takes the run over (at
    once when the process shuts down, after the lease when it is killed).
    Raises :class:`~aethergraph.errors.RunExistsError` (a ``StaleWriterError``)
    if ``run_id`` is taken. ``max_concurrency`` caps how many nodes of a static graph's run
    execute at once (over the graph's own ``max_concurrency``).
    """
    spec = load_target(target)
    bound = bind_run_inputs(spec, inputs)
    if max_concurrency is not None and (spec.kind != "static" or max_concurrency < 1):
        raise ValueError("max_concurrency applies to static graphs (@graphify) and must be >= 1")
    host = await get_runtime()
    run_id = check_run_id(run_id) if run_id is not None else new_run_id()
    return await host.runs.start(spec, bound, run_id, max_concurrency=max_concurrency)


async def submit(
    target: object,
    inputs: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    max_concurrency: int | None = None,
) -> RunHandle:
    """Put a run of a graph_fn, static graph or tool on the run queue; a worker serving the graph runs it.

    Returns once the run is journaled (``run.started``, queued) and on the
    queue: the caller may exit at once. The run's status is ``queued`` until
    a worker (``aethergraph worker MODULE``) that serves the graph claims it;
    that worker runs it from the start. Raises
    :class:`~aethergraph.errors.RunExistsError` (a ``StaleWriterError``) if ``run_id`` is taken.
    """
    spec = load_target(target)
    bound = bind_run_inputs(spec, inputs)
    if max_concurrency is not None and (spec.kind != "static" or max_concurrency < 1):
        raise ValueError("max_concurrency applies to static graphs (@graphify) and must be >= 1")
    host = await get_runtime()
    return await host.runs.submit(spec, bound, check_run_id(run_id) if run_id else new_run_id(), max_concurrency)


async def cancel(run_id: str, reason: str = "") -> str:
    """Cancel a run wherever it runs (its nodes and nested runs too); returns its status afterwards."""
    return await (await get_runtime()).runs.cancel_run(check_run_id(run_id), reason)


async def retry(run_id: str) -> RunHandle:
    """Continue a failed static run from its failed nodes, in this process; completed nodes are not run again."""
    return await (await get_runtime()).runs.retry(run_id)


async def get_run(run_id: str) -> RunHandle:
    """A handle to any run on the bus, whichever process started it."""
    return (await get_runtime()).runs.handle(check_run_id(run_id))


async def run_async(
    target: object,
    inputs: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    max_concurrency: int | None = None,
) -> dict[str, Any]:
    """Run a graph_fn or tool as a journaled run and return its outputs (start + result).

    If the run waits for an answer it is not read inline, this keeps waiting
    until a worker has continued the run to its end.
    """
    handle = await start_run(target, inputs, run_id=run_id, max_concurrency=max_concurrency)
    return await handle.result()


async def resume(
    run_id: str,
    payload: Any = None,
    wait_id: str | None = None,
    *,
    wait: bool = True,
    timeout: float = 10.0,  # noqa: ASYNC109 - public API
) -> ResumeOutcome | None:
    """Answer a wait of a run or of a run nested under it: publish a resume command to ``ag.cmd.resume.<run_id>``.

    The resume is checked against the journals of the run's tree first
    (``wait_id`` may be ``w4`` or ``<nested_run_id>/w4``), so a wrong wait id,
    a closed wait or a payload failing the wait's schema raises
    :class:`~aethergraph.errors.ResumeRejectedError` at once and publishes
    nothing. With ``wait`` (the default), returns the outcome: ``accepted``
    (with the process that continues the run), or ``queued`` with the reason
    when nothing has taken the command yet: ``no_process`` when no live
    process serves the run's graph (the message names the fix), ``no_answer``
    when none answered within ``timeout`` seconds. The command stays in the
    stream either way, and is applied when a process that serves the graph
    takes it. Without ``wait``, returns ``None`` once the command is stored.
    """
    host = await get_runtime()
    # Name the wait that was checked (anywhere in the run's tree), so the answer can never land on a later one.
    wait_id = (await resolve_resume(host.env, check_run_id(run_id), wait_id, payload)).ref
    if not wait:
        await host.commands.publish_resume(run_id, wait_id=wait_id, payload=payload)
        return None
    async with host.commands.outcomes(run_id) as outcomes:
        command_seq = await host.commands.publish_resume(run_id, wait_id=wait_id, payload=payload)
        outcome = await await_resume_outcome(host.env, host.leases, outcomes, run_id, command_seq, timeout)
    if outcome.status == "rejected":
        raise ResumeRejectedError(outcome.message, run_id=run_id, reason=outcome.reason, wait_id=outcome.wait_id)
    return outcome


async def serve_worker(*modules: str, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None) -> None:
    """Import ``modules`` (their graphs register themselves) and serve as a worker until ``stop`` is set.

    ``ready`` is set once the worker takes commands and has adopted the runs of dead processes.
    """
    for module in modules:
        import_module(module)
    host = await get_runtime(inline_answers=False)
    await host.nodes.ensure_node_executor()
    worker = Worker(host.driver, host.commands, ready=ready)
    serving = asyncio.create_task(worker.serve(), name="aethergraph-worker")
    try:
        await (serving if stop is None else stop.wait())
    finally:
        worker.stop()
        await serving


async def query_async(sql: str, params: list[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run SQL on the projections (tables ``runs``, ``nodes``, ``tool_calls``, ``waits``, ``edges``, ...).

    Asked of the workspace's projector when one runs (``aethergraph
    projector`` or :func:`serve_projector`), so the answer reflects live data;
    otherwise this process folds the stream into the workspace's store first.
    Rows come back as dicts keyed by column name. See docs/lineage.md.
    """
    result = await (await get_runtime()).projections().query(sql, params)
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
    host = await get_runtime()
    from aethergraph.projections.client import serve_projections  # DuckDB loads here, not at import

    await serve_projections(host.bus, host.settings, stop or asyncio.Event())


def _refuse_running_loop(what: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} was called inside a running event loop; use `{instead}`")


def run(
    target: object,
    inputs: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    max_concurrency: int | None = None,
) -> dict[str, Any]:
    """Synchronous :func:`run_async` for scripts (same options); opens and closes its own event loop.

    Interrupted (Ctrl-C) while the run asks a question on the console, the
    run is left waiting with the question open, to be answered later.
    """
    _refuse_running_loop("aethergraph.run()", "await aethergraph.run_async(...)")

    async def _main() -> dict[str, Any]:
        try:
            return await run_async(target, inputs, run_id=run_id, max_concurrency=max_concurrency)
        except asyncio.CancelledError:
            interrupt_inline_answers()  # a question still open on the console: leave the run waiting
            raise
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
