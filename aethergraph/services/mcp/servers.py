"""Which MCP servers exist: those in settings, and those registered in code.

Settings name servers with environment variables
(``AETHERGRAPH_MCP__SERVERS__<NAME>__COMMAND`` / ``__ARGS`` / ``__URL`` ...,
see :class:`~aethergraph.core.settings.McpServerSettings`);
:func:`register_mcp_server` adds (or replaces) one in code, for every host
of this process. A server registered in code wins over a configured one of
the same name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aethergraph.core.errors import McpConfigError
from aethergraph.core.settings import McpServerSettings

__all__ = [
    "McpServerSpec",
    "configured_names",
    "env_prefix",
    "register_mcp_server",
    "resolve_server",
    "unregister_mcp_server",
]


def env_prefix(name: str) -> str:
    """The environment variables' prefix of server ``name``: ``AETHERGRAPH_MCP__SERVERS__<NAME>__``."""
    return "AETHERGRAPH_MCP__SERVERS__" + "".join(ch if ch.isalnum() else "_" for ch in name).upper() + "__"


@dataclass(frozen=True, eq=False)
class McpServerSpec:
    """How to reach one server: a stdio command, a streamable-HTTP URL, or an in-process server object."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    # An ``mcp.server.mcpserver.MCPServer`` (or low-level ``Server``) served in this process.
    server: Any = None

    def where(self) -> str:
        """The server's command, URL or object, for error messages (never env values or headers: secrets)."""
        if self.command is not None:
            return "command: " + " ".join([self.command, *self.args])
        if self.url is not None:
            return f"url: {self.url}"
        return f"in-process server {type(self.server).__name__}"

    def same_as(self, other: McpServerSpec) -> bool:
        """Whether ``other`` reaches the same server the same way (a session of one serves the other)."""
        mine = (self.command, self.args, dict(self.env), self.cwd, self.url, dict(self.headers), self.timeout_s)
        theirs = (
            other.command,
            other.args,
            dict(other.env),
            other.cwd,
            other.url,
            dict(other.headers),
            other.timeout_s,
        )
        return mine == theirs and self.server is other.server


_registered: dict[str, McpServerSpec] = {}


def register_mcp_server(
    name: str,
    *,
    command: str | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    url: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    server: Any = None,
) -> None:
    """Make ``context.mcp(name)`` reach this server in every run of this process.

    Give exactly one of ``command`` (a stdio server started on first use,
    with ``args``, extra ``env`` and ``cwd``), ``url`` (a streamable-HTTP
    endpoint, sent ``headers``) or ``server`` (an ``MCPServer`` object of the
    ``mcp`` SDK served in this process: the fake server of a test).
    ``timeout_s`` bounds each request. Registering a name again replaces it;
    a session already open to the old server is closed on its next use.
    """
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise McpConfigError(
            f"cannot register an MCP server as {name!r}: use letters, digits, '_' or '-' (it becomes "
            "context.mcp(name) and the service name mcp.<name> in the journal)",
            server=str(name),
        )
    given = [what for what, value in (("command", command), ("url", url), ("server", server)) if value is not None]
    if len(given) != 1:
        raise McpConfigError(
            f"register_mcp_server({name!r}) needs exactly one of command= (stdio), url= (streamable HTTP) or "
            f"server= (an in-process MCPServer); got {', '.join(given) or 'none'}",
            server=name,
        )
    if not timeout_s > 0:
        raise McpConfigError(f"register_mcp_server({name!r}): timeout_s must be positive, got {timeout_s}", server=name)
    _registered[name] = McpServerSpec(
        name=name,
        command=command,
        args=tuple(str(arg) for arg in args),
        env=dict(env or {}),
        cwd=Path(cwd) if cwd is not None else None,
        url=url,
        headers=dict(headers or {}),
        timeout_s=float(timeout_s),
        server=server,
    )


def unregister_mcp_server(name: str) -> None:
    """Forget a server registered in code (a configured one of the same name applies again)."""
    _registered.pop(name, None)


def _from_settings(name: str, config: McpServerSettings) -> McpServerSpec:
    return McpServerSpec(
        name=name,
        command=config.command,
        args=tuple(config.args),
        env=dict(config.env),
        cwd=config.cwd,
        url=config.url,
        headers=dict(config.headers),
        timeout_s=config.timeout_s,
    )


def configured_names(servers: Mapping[str, McpServerSettings]) -> list[str]:
    return sorted({*servers, *_registered})


def resolve_server(name: str, servers: Mapping[str, McpServerSettings]) -> McpServerSpec:
    """The server called ``name`` (registered in code, else in settings, whose keys are lower case)."""
    spec = _registered.get(name)
    if spec is not None:
        return spec
    config = servers.get(name) or servers.get(name.lower())
    if config is not None:
        return _from_settings(name, config)
    known = ", ".join(configured_names(servers)) or "none"
    prefix = env_prefix(name)
    raise McpConfigError(
        f"no MCP server is configured as {name!r} (configured here: {known}). Configure it with "
        f"{prefix}COMMAND (and {prefix}ARGS, a JSON list) for a stdio server or "
        f"{prefix}URL for a streamable-HTTP one, or in code with "
        f"aethergraph.register_mcp_server({name!r}, command=..., args=[...]) / url=...",
        server=name,
    )
