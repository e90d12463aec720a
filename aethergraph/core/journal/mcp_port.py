"""The port ``context.mcp(name)`` reaches MCP servers through.

``core`` journals MCP calls; it does not speak the protocol. An
:class:`McpPort` resolves a server name to an :class:`McpSession`
(implemented on the ``mcp`` SDK in :mod:`aethergraph.services.mcp`) whose
methods return plain JSON data in the protocol's own spelling
(``inputSchema``, ``structuredContent``, ``mimeType``, ...), so the journal
records exactly what the server answered. The composition root hands the
port to runs through the run environment; offline replay has none, and
needs none: a recorded call is replayed from the journal.

Errors (from :mod:`aethergraph.errors`): :class:`~aethergraph.errors.McpConfigError`
for a name that is not configured, :class:`~aethergraph.errors.McpServerError`
when the server cannot be started or reached or dies during the call,
:class:`~aethergraph.errors.McpToolError` when the tool reports an error.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["McpPort", "McpSession"]


class McpSession(Protocol):
    """One configured MCP server; connected on first use, reconnected after the server died."""

    @property
    def server(self) -> str:
        """The name the server is configured under."""
        ...

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool of the server (all pages): ``name``, ``description``, ``inputSchema``, ..."""
        ...

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tool's result: ``content`` blocks and ``structuredContent`` (when the tool declares one).

        A result the server marks ``isError`` raises :class:`~aethergraph.errors.McpToolError`.
        """
        ...

    async def list_resources(self) -> list[dict[str, Any]]:
        """Every resource of the server (all pages): ``uri``, ``name``, ``mimeType``, ..."""
        ...

    async def read_resource(self, uri: str) -> list[dict[str, Any]]:
        """The resource's contents: items with ``uri``, ``mimeType`` and ``text`` (or base64 ``blob``)."""
        ...


class McpPort(Protocol):
    def session(self, name: str) -> McpSession:
        """The server configured as ``name``; raises :class:`~aethergraph.errors.McpConfigError` naming the fix.

        Does not connect: the session connects on its first call.
        """
        ...

    def configured(self) -> list[str]:
        """The names of the servers configured in this process, sorted."""
        ...
