"""``McpConnections``: the process's :class:`~aethergraph.core.journal.mcp_port.McpPort`.

One session per server name, opened on first use and kept for the runs
that follow; a server registered again with other parameters gets a new
session. ``close()`` (called by ``ProcessHost.close()``) stops them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aethergraph.core.settings import McpServerSettings

from .servers import configured_names, resolve_server
from .session import McpServerSession

__all__ = ["McpConnections"]


class McpConnections:
    """The MCP servers of settings and of ``register_mcp_server``, by name."""

    def __init__(self, servers: Mapping[str, McpServerSettings]) -> None:
        self._servers = dict(servers)
        self._sessions: dict[str, McpServerSession] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def session(self, name: str) -> McpServerSession:
        spec = resolve_server(name, self._servers)
        current = self._sessions.get(name)
        if current is not None and current.spec.same_as(spec):
            return current
        if current is not None:  # registered again with other parameters: the old server is stopped
            closing = asyncio.get_running_loop().create_task(current.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        fresh = self._sessions[name] = McpServerSession(spec)
        return fresh

    def configured(self) -> list[str]:
        return configured_names(self._servers)

    async def close(self) -> None:
        """Close every session (a stdio server is stopped); a later call opens a new one."""
        closing = [session.close() for session in self._sessions.values()]
        await asyncio.gather(*closing, *self._closing, return_exceptions=True)
