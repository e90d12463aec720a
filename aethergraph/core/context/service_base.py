"""``Service``: the base class of custom context services, and the journaling opt-outs.

A context service is a long-lived object registered under a name
(``register_context_service("trainer", Trainer())``) and reached from any node
as ``context.trainer()``. Its public async methods are journaled: see
:mod:`aethergraph.core.context.service_calls`.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from aethergraph.core.errors import NotInRunError

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = [
    "JOURNAL_MODE_ATTR",
    "JournalMode",
    "Service",
    "accessed_context",
    "call_context",
    "journal_by_digest",
    "journal_mode",
    "not_journaled",
]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

JournalMode = Literal["full", "digest", "off"]
JOURNAL_MODE_ATTR = "__aethergraph_journal__"

# The NodeContext of the journaled service call running in this task (set for the call's duration).
call_context: ContextVar[NodeContext | None] = ContextVar("aethergraph_service_call", default=None)
# The NodeContext whose accessor (``context.trainer()``) last handed out a service in this task.
accessed_context: ContextVar[NodeContext | None] = ContextVar("aethergraph_service_access", default=None)


def not_journaled(fn: F) -> F:
    """Mark a service method as not journaled: no events, and replay calls it again.

    For calls whose result does not steer the graph (a pure cache read, a
    metrics push): they cost no round trip to the bus.
    """
    setattr(fn, JOURNAL_MODE_ATTR, "off")
    return fn


def journal_by_digest(fn: F) -> F:
    """Mark a service method as journaled by digest: events record that the call happened, with
    digests of its arguments and result instead of the values, and replay calls it again.

    For methods whose arguments or results cannot be encoded (live handles,
    open files) or must not be stored (secrets).
    """
    setattr(fn, JOURNAL_MODE_ATTR, "digest")
    return fn


def journal_mode(fn: object) -> JournalMode:
    mode = getattr(fn, JOURNAL_MODE_ATTR, "full")
    if mode == "digest":
        return "digest"
    return "off" if mode == "off" else "full"


class Service:
    """Base class for context services: the current context, a service-wide mutex, thread offload.

    Subclasses need not call ``super().__init__()``; everything here is set up
    lazily. ``start()`` and ``close()`` are called by the runtime when it opens
    and closes (and ``start()`` at the latest before the service's first call).
    """

    def __init__(self) -> None:
        self._aethergraph_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def ctx(self) -> NodeContext:
        """The NodeContext of the node calling this service right now (its run, graph and node ids)."""
        context = call_context.get() or accessed_context.get()
        if context is None:
            raise NotInRunError(
                f"{type(self).__name__}.ctx() was called outside a run; call the service through "
                "`context.<name>()` inside a graph_fn or tool"
            )
        return context

    def _service_lock(self) -> asyncio.Lock:
        locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] | None = self.__dict__.get(
            "_aethergraph_locks"
        )
        if locks is None:
            locks = self.__dict__["_aethergraph_locks"] = weakref.WeakKeyDictionary()
        loop = asyncio.get_running_loop()
        lock = locks.get(loop)
        if lock is None:
            lock = locks[loop] = asyncio.Lock()
        return lock

    def critical(self) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """A decorator running an async method under this service's one mutex (not re-entrant).

        ``self.incr = self.critical()(self.incr)`` in ``__init__`` makes every
        call of ``incr`` on this instance run alone.
        """

        def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            @functools.wraps(fn)
            async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                async with self._service_lock():
                    return await fn(*args, **kwargs)

            return guarded

        return decorate

    async def run_blocking(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run a blocking or CPU-heavy function in a worker thread and await its result."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def start(self) -> None:
        """Open clients, pools, ... (called once before use; override as needed)."""

    async def close(self) -> None:
        """Release what :meth:`start` opened (called when the runtime closes)."""
