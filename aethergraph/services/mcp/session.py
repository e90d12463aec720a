"""One MCP server's session on the ``mcp`` SDK: opened on first use, reopened after the server died.

The SDK's client is a stack of anyio context managers (the transport's task
group, the session's) that must be entered and exited by one task. Each
connection therefore has an owner task that opens the client, hands it
over, and holds it open until the session is closed or found dead; callers
send their requests on the open client from their own tasks (a request is
a write and a wait for its answer, no task group of its own).

The SDK is imported here only, on first use, so ``import aethergraph`` does
not import it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aethergraph.core.errors import McpError, McpServerError, McpToolError

from .servers import McpServerSpec, env_prefix

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["McpServerSession"]

log = logging.getLogger("aethergraph.mcp")

T = TypeVar("T")
_MAX_PAGES = 1000  # a server whose listing never ends cannot hang a run
_START_GRACE_S = 5.0  # on top of timeout_s for starting a server and the handshake


def _sdk_missing(spec: McpServerSpec, exc: ImportError) -> McpServerError:
    return McpServerError(
        f"context.mcp({spec.name!r}) needs the mcp SDK, which is not installed ({exc}). "
        "Install it with: pip install 'aethergraph[mcp]'",
        server=spec.name,
    )


def _stdio(spec: McpServerSpec) -> Any:
    from mcp import StdioServerParameters, stdio_client

    assert spec.command is not None
    params = StdioServerParameters(command=spec.command, args=list(spec.args), env=dict(spec.env) or None, cwd=spec.cwd)
    return stdio_client(params)


class _WatchedTransport:
    """A transport whose end of input (the server exited, or closed its side) is reported to ``on_eof``.

    So a server that died between calls is restarted by the next call
    instead of failing it: that request was never sent.
    """

    def __init__(self, inner: Any, on_eof: Callable[[], None]) -> None:
        self._inner = inner
        self._on_eof = on_eof

    async def __aenter__(self) -> tuple[Any, Any]:
        read, write = await self._inner.__aenter__()
        return _WatchedRead(read, self._on_eof), write

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._inner.__aexit__(*exc_info)


class _WatchedRead:
    def __init__(self, inner: Any, on_eof: Callable[[], None]) -> None:
        self._inner = inner
        self._on_eof = on_eof

    def __getattr__(self, name: str) -> Any:  # receive, aclose, last_context, ...
        return getattr(self._inner, name)

    def __aiter__(self) -> _WatchedRead:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._on_eof()
            raise

    async def __aenter__(self) -> _WatchedRead:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._inner.__aexit__(*exc_info)


def _jsonable(model: Any) -> dict[str, Any]:
    """A result of the SDK as plain JSON in the protocol's spelling, without transport metadata."""
    data: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    for noise in ("_meta", "resultType", "ttlMs", "cacheScope", "nextCursor"):
        data.pop(noise, None)
    return data


class McpServerSession:
    """Implements :class:`~aethergraph.core.journal.mcp_port.McpSession` for one configured server."""

    def __init__(self, spec: McpServerSpec) -> None:
        self.spec = spec
        self._client: Client | None = None
        self._owner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self.connections = 0  # how many times the server was connected (started) by this session

    @property
    def server(self) -> str:
        return self.spec.name

    @property
    def connected(self) -> bool:
        """Whether a connection is open (the next call uses it rather than starting the server)."""
        return self._client is not None

    # -- the requests ---------------------------------------------------------------------------------

    async def list_tools(self) -> list[dict[str, Any]]:
        return await self._paged("list tools", "tools", lambda client, cursor: client.list_tools(cursor=cursor))

    async def list_resources(self) -> list[dict[str, Any]]:
        return await self._paged(
            "list resources", "resources", lambda client, cursor: client.list_resources(cursor=cursor)
        )

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self._request(f"call tool {tool!r}", lambda client: client.call_tool(tool, arguments), tool=tool)
        data = _jsonable(result)
        if data.pop("isError", False):
            texts = [block.get("text", "") for block in data.get("content", []) if block.get("type") == "text"]
            raise McpToolError(
                f"MCP tool {tool!r} of server {self.spec.name!r} reported an error: {' '.join(texts) or 'no message'}",
                server=self.spec.name,
                tool=tool,
            )
        return data

    async def read_resource(self, uri: str) -> list[dict[str, Any]]:
        result = await self._request(f"read resource {uri!r}", lambda client: client.read_resource(uri))
        contents: list[dict[str, Any]] = _jsonable(result).get("contents", [])
        return contents

    async def _paged(
        self, what: str, key: str, fetch: Callable[[Client, str | None], Awaitable[Any]]
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await self._request(what, lambda client, at=cursor: fetch(client, at))  # type: ignore[misc]
            items.extend(_jsonable(item) for item in getattr(page, key))
            cursor = page.next_cursor
            if not cursor:
                return items
        raise McpServerError(
            f"MCP server {self.spec.name!r} ({self.spec.where()}) kept paging its {key} past {_MAX_PAGES} pages",
            server=self.spec.name,
        )

    async def _request(self, what: str, send: Callable[[Client], Awaitable[T]], *, tool: str = "") -> T:
        """Send one request on the open connection; a lost connection is McpServerError and the next call reconnects."""
        client = await self._connected()
        try:
            return await send(client)
        except Exception as exc:
            failure = self._failure(client, what, exc, tool)
            if failure is exc:
                raise
            raise failure from exc

    def _failure(self, client: Client, what: str, exc: Exception, tool: str) -> Exception:
        """The error a failed request raises; forgets the connection if it is lost."""
        import anyio
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        spec = self.spec
        code = exc.code if isinstance(exc, MCPError) else None
        if code == REQUEST_TIMEOUT or isinstance(exc, TimeoutError):
            return McpServerError(
                f"MCP server {spec.name!r} ({spec.where()}) did not answer {what} within {spec.timeout_s:g} s "
                f"(raise the server's timeout: {env_prefix(spec.name)}TIMEOUT_S or "
                "register_mcp_server(timeout_s=...))",
                server=spec.name,
            )
        lost = (OSError, EOFError, anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)
        if code == CONNECTION_CLOSED or isinstance(exc, lost):
            self._forget(client)
            return McpServerError(
                f"MCP server {spec.name!r} ({spec.where()}) closed the connection during {what}: it died or "
                "stopped. The next call starts (or reaches) it again; if it keeps dying, look at the server's "
                "own output (its stderr)",
                server=spec.name,
            )
        if isinstance(exc, MCPError):
            if tool:
                return McpToolError(f"MCP server {spec.name!r} refused to {what}: {exc}", server=spec.name, tool=tool)
            return McpError(f"MCP server {spec.name!r} refused to {what}: {exc}", server=spec.name)
        return exc

    # -- the connection ---------------------------------------------------------------------------------

    async def _connected(self) -> Client:
        """The open client, connecting (starting the server) first if there is none."""
        if self._client is not None:
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is not None:
                return self._client
            await self.close()  # the owner of a dead connection, if any
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[Client] = loop.create_future()
            stop = asyncio.Event()
            self._stop = stop
            self._owner = asyncio.create_task(self._own(ready, stop), name=f"aethergraph mcp server {self.spec.name}")
            try:
                client = await asyncio.wait_for(asyncio.shield(ready), self.spec.timeout_s + _START_GRACE_S)
            except TimeoutError:
                await self.close()
                raise McpServerError(
                    f"MCP server {self.spec.name!r} ({self.spec.where()}) did not complete the MCP handshake within "
                    f"{self.spec.timeout_s + _START_GRACE_S:g} s: check that it is an MCP server speaking "
                    "the protocol on its stdout (or at its URL)",
                    server=self.spec.name,
                ) from None
            except McpServerError:
                await self.close()
                raise
            self._client = client
            self.connections += 1
            return client

    async def _own(self, ready: asyncio.Future[Client], stop: asyncio.Event) -> None:
        """The owner task: enter the client, hand it over, hold it open until ``stop``, exit it."""
        spec = self.spec

        def lost() -> None:  # this connection's server is gone: the next call reconnects
            if self._stop is stop:
                self._client = None
            stop.set()

        try:
            try:
                from mcp import Client
            except ImportError as exc:
                raise _sdk_missing(spec, exc) from exc
            options: dict[str, Any] = {"cache": None, "read_timeout_seconds": spec.timeout_s}
            if spec.url is not None:
                from mcp.client.streamable_http import streamable_http_client
                from mcp.shared._httpx_utils import create_mcp_http_client

                async with create_mcp_http_client(headers=dict(spec.headers)) as http:
                    transport = _WatchedTransport(streamable_http_client(spec.url, http_client=http), lost)
                    async with Client(transport, **options) as client:
                        _settle(ready, client)
                        await stop.wait()
            else:
                target = _WatchedTransport(_stdio(spec), lost) if spec.command is not None else spec.server
                async with Client(target, **options) as client:
                    _settle(ready, client)
                    await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(self._unreachable(exc))
                ready.exception()  # retrieved: a caller that gave up waiting leaves no warning behind
            elif not isinstance(exc, asyncio.CancelledError):
                log.debug("MCP server %r: its connection ended: %r", spec.name, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _unreachable(self, exc: BaseException) -> McpServerError:
        spec = self.spec
        if isinstance(exc, McpServerError):
            return exc
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, FileNotFoundError) and spec.command is not None:
            hint = (
                f"the command {spec.command!r} was not found: give its full path or put it on PATH "
                f"({env_prefix(spec.name)}COMMAND or register_mcp_server(command=...))"
            )
        else:
            hint = (
                f"{type(leaf).__name__}: {leaf}. Check that the server starts and speaks MCP "
                "(run its command by hand, or open its URL)"
            )
        return McpServerError(
            f"could not start or reach MCP server {spec.name!r} ({spec.where()}): {hint}", server=spec.name
        )

    def _forget(self, client: Client) -> None:
        """The connection of ``client`` is dead: the next call opens a new one (its owner is stopped then)."""
        if self._client is client:
            self._client = None
            if self._stop is not None:
                self._stop.set()

    async def close(self) -> None:
        """Close the connection (stopping a stdio server), if one is open."""
        owner, stop = self._owner, self._stop
        self._client = None
        self._owner = self._stop = None
        if stop is not None:
            stop.set()
        if owner is not None and not owner.done():
            try:
                await asyncio.wait_for(asyncio.shield(owner), self.spec.timeout_s + _START_GRACE_S)
            except TimeoutError:
                owner.cancel()
                log.warning("MCP server %r did not close within its timeout; its connection was cancelled", self.server)
            except BaseException:
                if not owner.done():
                    raise


def _settle(ready: asyncio.Future[Any], client: Any) -> None:
    if not ready.done():
        ready.set_result(client)
