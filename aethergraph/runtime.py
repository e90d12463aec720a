"""The composition root: wires the JetStream bus into the core for this process.

One :class:`Runtime` per event loop (a NATS connection belongs to the loop
that opened it). ``await my_graph(...)`` uses the loop's runtime, opening it
on first use from :class:`~aethergraph.core.settings.Settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from aethergraph.bus.commands import JetStreamCommands, ResumeOutcome
from aethergraph.bus.connection import BusConnection, connect_bus
from aethergraph.bus.embedded import EmbeddedServer, ensure_embedded_server
from aethergraph.bus.event_log import JetStreamEventLog
from aethergraph.bus.leases import JetStreamLeases
from aethergraph.bus.node_reports import JetStreamNodeReports
from aethergraph.bus.service_backends import JetStreamServiceBackends, open_service_backends
from aethergraph.bus.topology import ALL_CANCELS, run_id_of_command
from aethergraph.core.environment import set_environment_provider
from aethergraph.core.errors import GraphNotFoundError, ResumeRejectedError, RunFailedError, RunNotFoundError
from aethergraph.core.executor import claim_run, drive_run, load_journal, queue_run
from aethergraph.core.ids import QUEUE_OWNER, check_run_id, new_run_id, new_worker_id, token
from aethergraph.core.node_report import LocalNode
from aethergraph.core.ports import LocalReportSink, ParentLink, ReportSink
from aethergraph.core.registry import must_get_graph
from aethergraph.core.resume import journal_state, resolve_resume
from aethergraph.core.run_control import bind_run_inputs, force_cancel
from aethergraph.core.service_registry import close_services, start_services
from aethergraph.core.settings import Settings, load_settings
from aethergraph.core.spec import CallableSpec
from aethergraph.core.waits import interrupt_inline_answers
from aethergraph.engine.node_executor import NodeExecutor
from aethergraph.engine.resume_client import await_resume_outcome
from aethergraph.engine.runs import RunDriver, RunHandle
from aethergraph.engine.worker import Worker

__all__ = [
    "Runtime",
    "cancel",
    "retry",
    "close_runtime",
    "get_run",
    "get_runtime",
    "import_modules",
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
    "submit",
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
    node_reports: JetStreamNodeReports
    service_backends: JetStreamServiceBackends
    driver: RunDriver = field(init=False)
    node_executor: NodeExecutor | None = field(init=False, default=None)
    _cancel_sub: Subscription | None = field(init=False, default=None)
    _executor_lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    _local_report_sinks: dict[str, LocalReportSink] = field(init=False, default_factory=dict)
    # This process's resume intake (a Worker without takeover) while runs it awaits wait for answers.
    _intake: tuple[Worker, asyncio.Task[None]] | None = field(init=False, default=None)
    _intake_users: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.driver = RunDriver(self, self.leases)

    @classmethod
    async def open(cls, settings: Settings | None = None, *, inline_answers: bool | None = None) -> Runtime:
        settings = settings or load_settings()
        worker_id = token(settings.worker_id) if settings.worker_id else new_worker_id()
        bus = await connect_bus(settings, client_name=f"aethergraph:{worker_id}")
        event_log = JetStreamEventLog(
            bus.nc, bus.js, max_event_bytes=settings.max_event_bytes, outage_s=settings.outage_tolerance_s
        )
        await event_log.start()
        bus.events.on_disconnect(event_log.connection_lost)
        leases = JetStreamLeases(bus.nc, bus.js, worker_id, lease_s=settings.lease_s, retry_s=settings.connect_retry_s)
        if inline_answers is None:
            inline_answers = settings.console_input == "always" or (
                settings.console_input == "auto" and sys.stdin is not None and sys.stdin.isatty()
            )
        runtime = cls(
            settings=settings,
            bus=bus,
            event_log=event_log,
            commands=JetStreamCommands(bus.nc, bus.js, max_event_bytes=settings.max_event_bytes),
            leases=leases,
            worker_id=worker_id,
            inline_answers=inline_answers,
            node_reports=JetStreamNodeReports(bus.nc, bus.js, event_log),
            service_backends=open_service_backends(bus.js, settings),
        )
        bus.events.on_disconnect(runtime.node_reports.connection_lost)
        runtime._cancel_sub = await bus.nc.subscribe(ALL_CANCELS, cb=runtime._on_cancel)
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
        task = self.driver.start(spec, inputs, run_id)
        return await RunHandle(run_id, self, task, intake=self.resume_intake).result()

    async def schedule_wait_expiry(self, run_id: str, wait_id: str, deadline_us: int) -> None:
        await self.commands.schedule_expiry(run_id, wait_id, deadline_us)

    # --- static graphs ------------------------------------------------------------------

    async def follow_node_reports(
        self, run_id: str, sink: ReportSink, *, from_start: bool, local: LocalReportSink | None = None
    ) -> Callable[[], Awaitable[None]]:
        # Nodes of this run executed here reach its scheduler at once and are not stored at all when
        # the scheduler journals their outcome (that node.completed is the commit); stored reports are
        # how nodes executed by other processes reach it.
        if local is not None:
            self._local_report_sinks[run_id] = local
        stop_following = await self.node_reports.follow(run_id, sink, from_start=from_start)

        async def stop() -> None:
            if local is not None and self._local_report_sinks.get(run_id) is local:
                del self._local_report_sinks[run_id]
            await stop_following()

        return stop

    async def ensure_node_executor(self) -> None:
        """Execute nodes of static graphs in this process too (started on first use)."""
        if self.node_executor is not None:
            return
        async with self._executor_lock:
            if self.node_executor is None:
                executor = NodeExecutor(
                    self,
                    self.node_reports,
                    capacity=self.settings.node_concurrency,
                    ack_wait_s=self.settings.node_ack_wait_s,
                    local_capacity=self.settings.local_node_concurrency,
                    local_sinks=self._local_report_sinks,
                )
                await executor.start(self.bus.nc, self.bus.js)
                self.bus.events.on_disconnect(executor.connection_lost)
                self.node_executor = executor

    def run_node_here(self, node: LocalNode, sink: LocalReportSink) -> asyncio.Task[None] | None:
        executor = self.node_executor
        return None if executor is None else executor.run_node_here(node, sink)

    # --- run management -------------------------------------------------------------------

    async def spawn_run(self, spec: CallableSpec, inputs: Mapping[str, Any], run_id: str, parent: ParentLink) -> bool:
        if await self.event_log.started_runs([run_id]):
            return False
        self.driver.start(spec, inputs, run_id, parent=parent)
        return True

    async def cancel_run(self, run_id: str, reason: str = "", *, grace_s: float = 5.0) -> str:
        """Cancel a run wherever it runs; returns its status afterwards.

        Every process hears the request on ``ag.cmd.cancel.<run_id>`` and
        cancels what it runs of the run (the driving task journals
        ``run.cancelled``). A waiting run, or one whose driver does not end
        it within ``grace_s``, is cancelled by journaling ``run.cancelled``
        here under a fenced claim.
        """
        state = journal_state(run_id, (await load_journal(self, check_run_id(run_id)))[0])
        if state.started is None:
            raise RunNotFoundError(f"run {run_id} does not exist on this bus", run_id=run_id)
        if state.ended is not None:
            return state.status
        if state.status == "queued":  # nobody drives it: cancel it here, and take it off the queue
            status = await force_cancel(self, run_id, reason)
            await self.leases.release(run_id, worker_id=QUEUE_OWNER)
            return status
        await self.commands.publish_cancel(run_id, reason)
        if state.status != "waiting":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    return await RunHandle(run_id, self).wait_for_status("cancelled", "failed", "succeeded")
        return await force_cancel(self, run_id, reason)

    def _on_cancel_request(self, run_id: str) -> None:
        self.driver.cancel(run_id)
        if self.node_executor is not None:
            self.node_executor.cancel_run(run_id)

    async def _on_cancel(self, msg: Msg) -> None:
        self._on_cancel_request(run_id_of_command(msg.subject))

    async def submit_run(
        self, spec: CallableSpec, inputs: Mapping[str, Any], run_id: str, max_concurrency: int | None = None
    ) -> RunHandle:
        """Journal a queued ``run.started``, then put the run on the run queue (in that order: a worker
        that reads the queue record finds the run). Nothing drives it here."""
        await queue_run(spec, inputs, run_id=run_id, env=self, max_concurrency=max_concurrency)
        await self.leases.enqueue(run_id, spec.name)
        return RunHandle(run_id, self, intake=self.resume_intake)

    async def retry_run(self, run_id: str) -> RunHandle:
        """Continue a failed (or cancelled) static run from its failed nodes; completed nodes keep their outputs."""
        chain, last_stream_seq = await load_journal(self, check_run_id(run_id))
        state = journal_state(run_id, chain)
        if state.started is None:
            raise RunNotFoundError(f"run {run_id} does not exist on this bus", run_id=run_id)
        if state.status not in ("failed", "cancelled"):
            raise RunFailedError(
                f"run {run_id} is {state.status}; only a failed or cancelled run can be retried",
                run_id=run_id,
                error_type="NotRetryable",
            )
        spec = must_get_graph(state.started.graph_id, run_id=run_id)
        if spec.kind != "static":
            raise RunFailedError(
                f"run {run_id} is a run of {spec.label}; only static graphs (@graphify) continue from their "
                "failed nodes. Start a new run of it instead",
                run_id=run_id,
                error_type="NotRetryable",
            )
        started = state.started
        await self.leases.own(run_id, spec.name)
        scope = await claim_run(spec, started, chain, last_stream_seq, self, reason="retry")
        task = self.driver.drive(run_id, functools.partial(drive_run, spec, started.inputs, scope, started.seq))
        return RunHandle(run_id, self, task, intake=self.resume_intake)

    @contextlib.asynccontextmanager
    async def resume_intake(self) -> AsyncIterator[None]:
        """While inside, take resume commands for runs of the graphs loaded here.

        A process awaiting a run that waits thus continues it in place when
        the answer comes, from anywhere. The intake is shared by everyone
        inside and stops when the last one leaves; a worker process takes
        commands anyway.
        """
        self._intake_users += 1
        try:
            if self._intake is None:
                worker = Worker(self.driver, self.commands, takeover=False)
                self._intake = (worker, asyncio.create_task(worker.serve(), name="aethergraph-resume-intake"))
            await self._intake[0].ready.wait()
            yield
        finally:
            self._intake_users -= 1
            if self._intake_users == 0:
                await self._stop_intake()

    async def _stop_intake(self) -> None:
        if self._intake is not None:
            worker, task = self._intake
            self._intake = None
            worker.stop()
            with contextlib.suppress(Exception):
                await task

    async def close(self) -> None:
        """Let the runs this process drives end or suspend, then disconnect."""
        await self._stop_intake()
        await self.driver.drain()
        if self.node_executor is not None:
            await self.node_executor.stop()
        if self._cancel_sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._cancel_sub.unsubscribe()
        await close_services()  # context services' close() hooks
        await self.leases.close()
        await self.node_reports.close()
        await self.event_log.close()
        await self.bus.close()


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


def import_modules(*modules: str) -> None:
    """Import ``pkg.module`` or ``path/to/file.py`` modules so that their graphs and tools register."""
    for module in modules:
        _import_module(module)


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
    runtime = await get_runtime()
    run_id = check_run_id(run_id) if run_id is not None else new_run_id()
    task = await runtime.driver.start_durably(spec, bound, run_id, max_concurrency=max_concurrency)
    return RunHandle(run_id, runtime, task, intake=runtime.resume_intake)


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
    runtime = await get_runtime()
    return await runtime.submit_run(spec, bound, check_run_id(run_id) if run_id else new_run_id(), max_concurrency)


async def cancel(run_id: str, reason: str = "") -> str:
    """Cancel a run wherever it runs (its nodes and nested runs too); returns its status afterwards."""
    return await (await get_runtime()).cancel_run(check_run_id(run_id), reason)


async def retry(run_id: str) -> RunHandle:
    """Continue a failed static run from its failed nodes, in this process; completed nodes are not run again."""
    return await (await get_runtime()).retry_run(run_id)


async def get_run(run_id: str) -> RunHandle:
    """A handle to any run on the bus, whichever process started it."""
    runtime = await get_runtime()
    return RunHandle(check_run_id(run_id), runtime, intake=runtime.resume_intake)


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
    runtime = await get_runtime()
    # Name the wait that was checked (anywhere in the run's tree), so the answer can never land on a later one.
    wait_id = (await resolve_resume(runtime, check_run_id(run_id), wait_id, payload)).ref
    if not wait:
        await runtime.commands.publish_resume(run_id, wait_id=wait_id, payload=payload)
        return None
    async with runtime.commands.outcomes(run_id) as outcomes:
        command_seq = await runtime.commands.publish_resume(run_id, wait_id=wait_id, payload=payload)
        outcome = await await_resume_outcome(runtime, runtime.leases, outcomes, run_id, command_seq, timeout)
    if outcome.status == "rejected":
        raise ResumeRejectedError(outcome.message, run_id=run_id, reason=outcome.reason, wait_id=outcome.wait_id)
    return outcome


async def serve_worker(*modules: str, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None) -> None:
    """Import ``modules`` (their graphs register themselves) and serve as a worker until ``stop`` is set.

    ``ready`` is set once the worker takes commands and has adopted the runs of dead processes.
    """
    for module in modules:
        _import_module(module)
    runtime = await get_runtime(inline_answers=False)
    await runtime.ensure_node_executor()
    worker = Worker(runtime.driver, runtime.commands, ready=ready)
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
    runtime = await get_runtime()
    from aethergraph.engine.queries import ProjectionAccess  # DuckDB loads on the first query, not at import

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
    from aethergraph.engine.queries import serve_projections  # DuckDB loads here, not at import

    await serve_projections(runtime.bus, runtime.settings, stop or asyncio.Event())


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
