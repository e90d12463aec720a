"""A small MCP server for the tests (and the pattern users copy for their own fakes).

Run as a script it serves stdio: ``python tests/procs/mcp_server.py CALLS_FILE``.
Every tool call and resource read appends one line to ``CALLS_FILE`` (and
each start a line ``started <pid>``), so a test counts how often the server
really did the work. ``build_server`` gives
the same server for an in-process or streamable-HTTP test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def build_server(calls_file: str | None = None) -> MCPServer:
    server = MCPServer("aethergraph-test-server", log_level="ERROR")

    def note(what: str) -> None:
        if calls_file:
            with Path(calls_file).open("a", encoding="utf-8") as out:
                out.write(what + "\n")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        note(f"add {a} {b}")
        return a + b

    @server.tool(description="Echo the text back.")
    def echo(text: str) -> str:
        note(f"echo {text}")
        return text

    @server.tool(description="Return a text of n characters.")
    def big(n: int) -> str:
        note(f"big {n}")
        return "x" * n

    @server.tool(description="Fail with the given reason (a tool error).")
    def refuse(reason: str) -> str:
        note(f"refuse {reason}")
        raise ToolError(reason)

    @server.tool(description="Answer after the given number of seconds.")
    async def slow(seconds: float) -> str:
        note(f"slow {seconds}")
        await anyio.sleep(seconds)
        return "done"

    @server.tool(description="The server process dies during the call.")
    def crash() -> str:
        note("crash")
        os._exit(3)

    @server.resource("notes://readme", name="readme", description="The readme note.", mime_type="text/plain")
    def readme() -> str:
        note("read notes://readme")
        return "hello from the readme"

    return server


if __name__ == "__main__":
    calls = sys.argv[1] if len(sys.argv) > 1 else None
    if calls:
        with Path(calls).open("a", encoding="utf-8") as out:
            out.write(f"started {os.getpid()}\n")
    build_server(calls).run("stdio")
