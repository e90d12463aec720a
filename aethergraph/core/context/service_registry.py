"""Context services by name: registering, reaching them from a ``NodeContext``, starting and closing them.

``register_context_service("trainer", Trainer())`` makes ``context.trainer()``
return that instance in every node of every run of this process.
Registering the instance wraps its public async methods (instance attributes
included, so ``self.incr = self.critical()(self.incr)`` in ``__init__`` is
wrapped too) so that each call made inside a run is journaled
(:func:`~aethergraph.core.context.service_calls.call_journaled`); outside a run the
methods behave exactly as written. Registering again under a name swaps the
implementation. Built-in names (``kv``, ``artifacts``, ``memory``,
``channel``, ...) cannot be taken.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from aethergraph.core.context.service_base import Service, accessed_context, journal_mode
from aethergraph.core.context.service_calls import call_journaled
from aethergraph.core.errors import ServiceNameError, UnknownServiceError
from aethergraph.core.ids import ROOT_NODE
from aethergraph.core.journal.scope import current_scope

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = [
    "BUILTIN_SERVICES",
    "close_services",
    "get_context_service",
    "register_context_service",
    "reserve_context_names",
    "registered_services",
    "service_accessor",
    "start_services",
    "unregister_context_service",
]

log = logging.getLogger("aethergraph.services")

# Names the runtime provides on every NodeContext.
BUILTIN_SERVICES = frozenset(
    {"artifacts", "channel", "kv", "llm", "logger", "mcp", "memory", "rag", "runs", "viz", "wait"}
)
# Attributes of a Service that are its machinery, never journaled as calls.
_MACHINERY = frozenset({"ctx", "critical", "run_blocking", "start", "close"})
_WRAPPED = "__aethergraph_service_method__"

_services: dict[str, object] = {}
# NodeContext's own attributes (reserve_context_names, called where NodeContext is defined).
_context_names: set[str] = set()
_started: dict[int, object] = {}
_starting: dict[int, asyncio.Task[None]] = {}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ServiceNameError(
            f"cannot register a context service as {name!r}: the name must be a Python identifier "
            "not starting with '_' (it becomes context.<name>())",
            service=str(name),
        )
    if name in BUILTIN_SERVICES or name in _context_names:
        raise ServiceNameError(
            f"cannot register a context service as {name!r}: context.{name}() is built into AetherGraph. "
            f"Choose another name (e.g. {name}_mirror) for a service that wraps or mirrors it",
            service=name,
        )
    return name


def reserve_context_names(names: Iterable[str]) -> None:
    """Names that NodeContext defines itself: no service may take them."""
    _context_names.update(names)


def register_context_service(name: str, service: object) -> None:
    """Make ``service`` available as ``context.<name>()`` in every node; a second registration swaps it."""
    _check_name(name)
    if service is None or isinstance(service, type):
        raise ServiceNameError(
            f"register_context_service({name!r}, ...) needs a service instance, got {service!r}; "
            f"write register_context_service({name!r}, MyService())",
            service=name,
        )
    _instrument(name, service)
    previous = _services.get(name)
    _services[name] = service
    if previous is not None and previous is not service:
        log.debug("context service %r swapped: %r -> %r", name, previous, service)


def unregister_context_service(name: str) -> object | None:
    """Remove the service registered as ``name`` (it is closed with the others if it was started)."""
    return _services.pop(name, None)


def registered_services() -> dict[str, object]:
    """A snapshot of the registered services by name."""
    return dict(_services)


def get_context_service(name: str) -> object:
    service = _services.get(name)
    if service is None:
        known = sorted(_services)
        raise UnknownServiceError(
            f"context.{name}() names no registered context service (registered: "
            f"{', '.join(known) or 'none'}; built in: {', '.join(sorted(BUILTIN_SERVICES))}). "
            f"Register one with register_context_service({name!r}, MyService())",
            service=name,
            registered=tuple(known),
        )
    return service


def _public_async_methods(service: object) -> dict[str, Callable[..., Awaitable[Any]]]:
    """Public coroutine methods of ``service`` (class methods and callables set on the instance)."""
    found: dict[str, Callable[..., Awaitable[Any]]] = {}
    for name in dir(type(service)):
        if name.startswith("_") or name in _MACHINERY:
            continue
        static = inspect.getattr_static(type(service), name)
        if isinstance(static, (staticmethod, classmethod)):
            continue
        if inspect.iscoroutinefunction(static):
            found[name] = getattr(service, name)
    for name, value in getattr(service, "__dict__", {}).items():
        if not name.startswith("_") and name not in _MACHINERY and callable(value):
            original = getattr(value, _WRAPPED, value)
            if inspect.iscoroutinefunction(original):
                found[name] = value
    return found


def _instrument(name: str, service: object) -> None:
    """Replace each public async method by a journaling wrapper set on the instance."""
    for method, bound in _public_async_methods(service).items():
        original = getattr(bound, _WRAPPED, bound)
        mode = journal_mode(original)
        if mode == "off":
            continue
        wrapper = _journaling_wrapper(name, method, original, mode, service)
        try:
            setattr(service, method, wrapper)
        except AttributeError as exc:
            raise ServiceNameError(
                f"cannot register {type(service).__name__} as {name!r}: its method {method!r} cannot be "
                "wrapped for journaling (the object has no __dict__); derive it from "
                "aethergraph.services.runtime.base.Service",
                service=name,
            ) from exc


def _journaling_wrapper(
    name: str, method: str, original: Callable[..., Awaitable[Any]], mode: Any, service: object
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def journaled(*args: Any, **kwargs: Any) -> Any:
        ctx = _calling_context()
        if ctx is None:  # outside any run: just the method
            return await original(*args, **kwargs)
        await _ensure_started(service)

        return await call_journaled(ctx, name, method, original, args, kwargs, mode)

    setattr(journaled, _WRAPPED, original)
    return journaled


def _calling_context() -> NodeContext | None:
    """The NodeContext a service call belongs to: the accessor's, if it is of the running run."""
    scope = current_scope()
    if scope is None:
        return None
    ctx = accessed_context.get()
    if ctx is not None and ctx._scope is scope:
        return ctx
    return scope.node_context(ROOT_NODE)  # type: ignore[no-any-return]


def service_accessor(ctx: NodeContext, name: str) -> Callable[..., Any]:
    """What ``context.<name>`` is: called bare it returns the service; with arguments it calls it."""
    service = get_context_service(name)

    def accessor(*args: Any, **kwargs: Any) -> Any:
        accessed_context.set(ctx)
        if not args and not kwargs:
            return service
        return _call_service(ctx, name, service, args, kwargs)

    accessor.__name__ = name
    accessor.__doc__ = f"The context service {name!r} ({type(service).__name__})."
    return accessor


def _call_service(
    ctx: NodeContext, name: str, service: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Coroutine[Any, Any, Any]:
    call = vars(type(service)).get("__call__") or next(
        (vars(base)["__call__"] for base in type(service).__mro__ if "__call__" in vars(base)), None
    )
    if call is None or not inspect.iscoroutinefunction(call):
        raise TypeError(
            f"context.{name}(...) was given arguments, but {type(service).__name__} defines no "
            f"'async def __call__'; call one of its methods: context.{name}().<method>(...)"
        )

    async def invoke() -> Any:
        await _ensure_started(service)

        bound = functools.partial(call, service)
        return await call_journaled(ctx, name, "__call__", bound, args, kwargs, journal_mode(call))

    return invoke()


def _has_hook(service: object, hook: str) -> bool:
    method = getattr(type(service), hook, None)
    if method is None or not inspect.iscoroutinefunction(method):
        return False
    return not (isinstance(service, Service) and method is getattr(Service, hook))


async def _ensure_started(service: object) -> None:
    """Call the service's ``start()`` once before its first use in this process (concurrent callers wait)."""
    key = id(service)
    if key in _started:
        return
    if not _has_hook(service, "start"):
        _started[key] = service  # in use: closed with the others
        return
    task = _starting.get(key)
    if task is None or task.get_loop() is not asyncio.get_running_loop():
        task = _starting[key] = asyncio.ensure_future(_start(service))
    await asyncio.shield(task)


async def _start(service: object) -> None:
    try:
        await service.start()  # type: ignore[attr-defined]
        _started[id(service)] = service
    finally:
        _starting.pop(id(service), None)


async def start_services() -> None:
    """Start every registered service that has not been started (the runtime calls this when it opens)."""
    for service in list(_services.values()):
        await _ensure_started(service)


async def close_services() -> None:
    """Close every started service, newest first (the runtime calls this when it closes)."""
    while _started:
        _, service = _started.popitem()
        if _has_hook(service, "close"):
            try:
                await service.close()  # type: ignore[attr-defined]
            except Exception:  # one failing close must not keep the others open
                log.exception("closing context service %r failed", service)
