"""``context.mcp(name)``: an MCP server's tools and resources, each call a journaled step.

Every call is a service call of service ``mcp.<name>`` (``service.called``,
then ``service.returned`` with the complete result, or ``service.failed``):
replay returns the recorded result without touching the server, and a
result too large for an event goes to the artifact store by reference. The
server itself is reached through the run environment's
:class:`~aethergraph.core.journal.mcp_port.McpPort`, only when a call runs
live.

``tool(name)`` and ``tools()`` give the server's tools as
:class:`~aethergraph.core.context.llm_tools.ChatTool` objects, built from a
journaled ``list_tools()``, so they can be handed to
``context.llm().chat(tools=[...])``; the model's calls of them are journaled
``call()`` steps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aethergraph.core.context.service_calls import call_journaled
from aethergraph.core.errors import McpConfigError, McpToolError

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext
    from aethergraph.core.journal.mcp_port import McpSession

__all__ = ["McpClient", "McpTool"]

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


class McpClient:
    """The MCP server configured as ``name``, as seen from one node of a run."""

    __slots__ = ("_ctx", "_listing", "name")

    def __init__(self, ctx: NodeContext, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise McpConfigError(f"context.mcp() needs a server name, got {name!r}", server=str(name))
        self._ctx = ctx
        self.name = name
        self._listing: list[dict[str, Any]] | None = None

    @property
    def _service(self) -> str:
        return f"mcp.{self.name}"

    def _session(self) -> McpSession:
        port = self._ctx._scope.env.mcp
        if port is None:
            raise McpConfigError(
                f"context.mcp({self.name!r}) cannot reach MCP servers in this process (its run environment has "
                "no MCP connections; a ProcessHost provides them, offline replay does not)",
                server=self.name,
            )
        return port.session(self.name)

    async def _journaled(self, method: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await call_journaled(self._ctx, self._service, method, fn, args, {})

    async def list_tools(self) -> list[dict[str, Any]]:
        """The server's tools (``name``, ``description``, ``inputSchema``, ...), journaled."""
        listing: list[dict[str, Any]] = await self._journaled("list_tools", self._list_tools)
        self._listing = listing
        return listing

    async def call(self, tool: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call ``tool`` with ``params``; the result's ``content`` blocks and ``structuredContent``, journaled.

        A tool that reports an error raises :class:`~aethergraph.errors.McpToolError`
        (journaled as the step's failure, raised again on replay).
        """
        result: dict[str, Any] = await self._journaled("call", self._call, str(tool), dict(params or {}))
        return result

    async def list_resources(self) -> list[dict[str, Any]]:
        """The server's resources (``uri``, ``name``, ``mimeType``, ...), journaled."""
        resources: list[dict[str, Any]] = await self._journaled("list_resources", self._list_resources)
        return resources

    async def read_resource(self, uri: str) -> list[dict[str, Any]]:
        """The resource's contents (items with ``uri``, ``mimeType``, ``text`` or base64 ``blob``), journaled."""
        contents: list[dict[str, Any]] = await self._journaled("read_resource", self._read_resource, str(uri))
        return contents

    async def tools(self) -> list[McpTool]:
        """Every tool of the server as a ChatTool for ``context.llm().chat(tools=...)``.

        Uses this client's latest ``list_tools()`` listing, or journals one.
        """
        listing = self._listing if self._listing is not None else await self.list_tools()
        return [self._chat_tool(entry) for entry in listing]

    async def tool(self, name: str) -> McpTool:
        """The server's tool ``name`` as a ChatTool (from this client's listing, journaled once)."""
        listing = self._listing if self._listing is not None else await self.list_tools()
        for entry in listing:
            if entry.get("name") == name:
                return self._chat_tool(entry)
        names = ", ".join(str(entry.get("name")) for entry in listing) or "none"
        raise McpToolError(
            f"MCP server {self.name!r} has no tool {name!r} (its tools: {names})", server=self.name, tool=name
        )

    def _chat_tool(self, entry: dict[str, Any]) -> McpTool:
        schema = entry.get("inputSchema")
        return McpTool(
            client=self,
            name=str(entry.get("name", "")),
            description=str(entry.get("description") or entry.get("title") or ""),
            parameters=dict(schema) if isinstance(schema, dict) else dict(_EMPTY_SCHEMA),
        )

    # The live calls, run inside the journaled step (never on replay).
    async def _list_tools(self) -> list[dict[str, Any]]:
        return await self._session().list_tools()

    async def _call(self, tool: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self._session().call_tool(tool, params)

    async def _list_resources(self) -> list[dict[str, Any]]:
        return await self._session().list_resources()

    async def _read_resource(self, uri: str) -> list[dict[str, Any]]:
        return await self._session().read_resource(uri)

    def __repr__(self) -> str:
        return f"McpClient({self.name!r}, node={self._ctx.node_id!r})"


@dataclass(frozen=True, slots=True)
class McpTool:
    """One MCP tool as a :class:`~aethergraph.core.context.llm_tools.ChatTool`; ``invoke`` is a journaled call."""

    client: McpClient
    name: str
    description: str
    parameters: dict[str, Any]

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        return await self.client.call(self.name, arguments)
