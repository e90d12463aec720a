"""``@tool`` and ``@graph_fn``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, overload

from .executor import call_graph, call_tool_detached, call_tool_detached_async, call_tool_in_run
from .graphify import current_build
from .registry import RegisteredCallable
from .scope import current_scope
from .spec import CallableSpec, build_spec, check_declared_inputs

__all__ = ["GraphFunction", "Tool", "graph_fn", "tool"]


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


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(*, name: str | None = None, outputs: Sequence[str] | None = None) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    outputs: Sequence[str] | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a tool: ``@tool`` or ``@tool(name="analyze", outputs=["val"])``.

    Applied to a :class:`~aethergraph.DualStageTool` subclass (the original
    AetherGraph's spelling), ``name`` and ``outputs`` set the class's and the
    decorator returns the tool, an instance of the class.
    """

    def decorate(target: Callable[..., Any]) -> Tool:
        if isinstance(target, type):
            from .dual_stage import DualStageTool

            if issubclass(target, DualStageTool):
                return target.as_tool(name=name, outputs=outputs)
        return Tool(build_spec(target, kind="tool", name=name, outputs=outputs))

    return decorate(fn) if fn is not None else decorate


@overload
def graph_fn(fn: Callable[..., Any], /) -> GraphFunction: ...
@overload
def graph_fn(
    *, name: str | None = None, inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None
) -> Callable[[Callable[..., Any]], GraphFunction]: ...
def graph_fn(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
) -> GraphFunction | Callable[[Callable[..., Any]], GraphFunction]:
    """Make an ``async def`` a reactive graph: ``@graph_fn(name="demo", outputs=[...])``.

    ``inputs=[...]`` (optional, as the original AetherGraph spelled it) is
    checked against the signature when the decorator is applied; ``outputs``
    against the returned dict when the run ends (:class:`OutputError`).
    """

    def decorate(target: Callable[..., Any]) -> GraphFunction:
        spec = build_spec(target, kind="graph_fn", name=name, outputs=outputs)
        check_declared_inputs(spec, inputs)
        return GraphFunction(spec)

    return decorate(fn) if fn is not None else decorate
