"""What ``context.llm().chat(tools=[...])`` accepts as a tool, and how a tool is described to the model.

A tool is an AetherGraph ``@tool`` (its JSON Schema comes from its
signature; calling it is a journaled tool step) or any object satisfying
:class:`ChatTool` (an MCP tool from ``context.mcp(name).tool(...)``, or your
own), whose ``invoke`` journals itself.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["ChatTool"]


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
