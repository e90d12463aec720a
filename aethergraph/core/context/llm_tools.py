"""What ``context.llm().chat(tools=[...])`` accepts as a tool, and how a tool is described to the model.

A tool is an AetherGraph ``@tool`` (its JSON Schema comes from its
signature; calling it is a journaled tool step) or any object satisfying
:class:`ChatTool` (an MCP tool from ``context.mcp(name).tool(...)``, or your
own), whose ``invoke`` journals itself.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["ChatTool", "arguments_schema", "chat_tools", "tool_schemas"]


@runtime_checkable
class ChatTool(Protocol):
    """A tool the model may call: its name, what it does, its arguments' JSON Schema, and how to call it."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON Schema of the arguments object (``{"type": "object", "properties": ...}``)."""
        ...

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Call the tool with the model's arguments; the result is sent back to the model as JSON text."""
        ...


class _DecoratedTool:
    """A ``@tool`` (or ``@graph_fn``) as a :class:`ChatTool`: calling it is the journaled tool step (or child run)."""

    __slots__ = ("_callable", "description", "name", "parameters")

    def __init__(self, fn: Any, spec: Any) -> None:
        self._callable = fn
        self.name: str = spec.name
        self.description: str = _summary(spec.fn)
        self.parameters: dict[str, Any] = arguments_schema(spec)

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        return await self._callable(**arguments)


def _summary(fn: Any) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def arguments_schema(spec: Any) -> dict[str, Any]:
    """The JSON Schema of a decorated function's arguments (its context parameter left out)."""
    import pydantic

    try:
        hints = typing.get_type_hints(spec.fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: describe those arguments as any value
        hints = {}
    fields: dict[str, Any] = {}
    for name, parameter in spec.signature.parameters.items():
        if name == spec.context_param or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[name] = (hints.get(name, Any), default)
    model = pydantic.create_model(f"{spec.name}_arguments", **fields)
    schema: dict[str, Any] = model.model_json_schema()
    schema.pop("title", None)
    return schema


def chat_tools(tools: Sequence[Any]) -> dict[str, ChatTool]:
    """The tools handed to ``chat(tools=...)`` by name; refuses what cannot be a journaled tool."""
    found: dict[str, ChatTool] = {}
    for tool in tools:
        spec = getattr(tool, "__aethergraph_spec__", None)
        chat_tool: ChatTool
        if spec is not None and spec.kind in ("tool", "graph_fn"):
            chat_tool = _DecoratedTool(tool, spec)
        elif isinstance(tool, ChatTool):
            chat_tool = tool
        else:
            raise TypeError(
                f"chat(tools=[...]) got {tool!r}, which is not a tool: decorate the function with @tool (so each "
                "call is a journaled step), pass an MCP tool from context.mcp(name).tool(...), or an object "
                "with name, description, parameters and async invoke(arguments)"
            )
        if chat_tool.name in found:
            raise ValueError(f"chat(tools=[...]) got two tools named {chat_tool.name!r}; tool names must differ")
        found[chat_tool.name] = chat_tool
    return found


def tool_schemas(tools: Mapping[str, ChatTool]) -> list[dict[str, Any]]:
    """The ``tools`` field of a chat request."""
    return [
        {
            "type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
        }
        for tool in tools.values()
    ]
