"""What the decorators make: :class:`Tool` and :class:`GraphFunction`, callables that run as journaled steps."""

from __future__ import annotations

from typing import Any

from aethergraph.core.api.graphify import current_build
from aethergraph.core.journal.scope import current_scope
from aethergraph.core.model.registry import RegisteredCallable
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.executor import call_graph, call_tool_detached, call_tool_detached_async, call_tool_in_run

__all__ = ["GraphFunction", "Tool"]


class Tool(RegisteredCallable):
    """A function made into a tool.

    Inside a run, ``await my_tool(...)`` is a journaled step returning the
    outputs dict. Outside any run the function executes at once: a sync tool
    returns its outputs dict, an async tool returns an awaitable of it.
    """

    def __init__(self, spec: CallableSpec) -> None:
        self._register(spec, spec.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        spec = self.__aethergraph_spec__
        build = current_build()
        if build is not None:
            return build.add(spec, args, kwargs)
        scope = current_scope()
        if scope is not None:
            return call_tool_in_run(scope, spec, args, kwargs)
        if spec.is_async:
            return call_tool_detached_async(spec, args, kwargs)
        return call_tool_detached(spec, args, kwargs)

    def __repr__(self) -> str:
        return f"<tool {self.name!r} outputs={list(self.spec.outputs)}>"


class GraphFunction(RegisteredCallable):
    """An ``async def`` made into a reactive graph: ``await g(**inputs)`` runs it as a journaled run."""

    def __init__(self, spec: CallableSpec) -> None:
        self._register(spec, spec.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``await g(...)`` runs the graph; inside a ``@graphify`` body the call records a node instead."""
        build = current_build()
        if build is not None:
            return build.add(self.__aethergraph_spec__, args, kwargs)
        return self._run(args, kwargs)

    async def _run(self, args: Any, kwargs: Any) -> dict[str, Any]:
        return await call_graph(self.__aethergraph_spec__, args, kwargs)

    def __repr__(self) -> str:
        return f"<graph_fn {self.name!r} outputs={list(self.spec.outputs)}>"
