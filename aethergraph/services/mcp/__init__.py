"""MCP servers for ``context.mcp(name)``, on the ``mcp`` SDK (the ``aethergraph[mcp]`` extra).

The SDK is imported on a server's first use, never by ``import aethergraph``.
"""

from __future__ import annotations

from .connections import McpConnections
from .servers import McpServerSpec, register_mcp_server, unregister_mcp_server
from .session import McpServerSession

__all__ = ["McpConnections", "McpServerSession", "McpServerSpec", "register_mcp_server", "unregister_mcp_server"]
