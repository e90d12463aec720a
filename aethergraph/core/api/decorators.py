"""``@tool`` and ``@graph_fn``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, overload

from aethergraph.core.api.callables import GraphFunction, Tool
from aethergraph.core.api.dual_stage import DualStageTool
from aethergraph.core.model.spec import build_spec, check_declared_inputs

__all__ = ["graph_fn", "tool"]


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
        if isinstance(target, type) and issubclass(target, DualStageTool):
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
