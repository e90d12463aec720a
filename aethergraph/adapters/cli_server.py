"""``aethergraph serve`` (the HTTP API and run viewer) and ``aethergraph dev`` (bus, worker, projector and server)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from rich.markup import escape

from aethergraph.bus.embedded import running_server, stop_embedded_server
from aethergraph.core.errors import AetherGraphError
from aethergraph.runtime import start_server as start_bus

from .cli_common import EXIT_USAGE, app, drive, err_console, settings_or_exit
from .web.serving import BindRefusedError, ServeOptions, serve_http, server_token

__all__ = ["dev_command", "serve_command"]

_HOST_HELP = "address to bind; anything but 127.0.0.1/::1/localhost needs AETHERGRAPH_API_TOKEN"
_PORT_HELP = "port to listen on (0: any free port; the URL printed names it)"


def _announce(what: str) -> Callable[[str], None]:
    def ready(url: str) -> None:
        sys.stdout.write(f"{what} at {url}\n")
        sys.stdout.flush()
        # The URL alone on stdout (for scripts); the rest for people, on stderr, without repeating it.
        err_console.print(f"the API's OpenAPI page: {url}docs; Ctrl-C to stop", soft_wrap=True)

    return ready


def _run(options: ServeOptions) -> None:
    try:
        server_token(options)
    except BindRefusedError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_http(options, stop)

    drive(go)


@app.command("serve")
def serve_command(
    modules: Annotated[
        list[str] | None, typer.Argument(help="modules (pkg.module or path/file.py) whose graphs POST /api/runs starts")
    ] = None,
    host: Annotated[str, typer.Option("--host", help=_HOST_HELP)] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help=_PORT_HELP)] = 8080,
    require_token: Annotated[
        bool, typer.Option("--require-token", help="require AETHERGRAPH_API_TOKEN on loopback too")
    ] = False,
    projector: Annotated[
        bool, typer.Option("--projector/--no-projector", help="own the projection store here when no projector runs")
    ] = True,
) -> None:
    """Serve the HTTP API (docs/server.md) and the run viewer until Ctrl-C.

    The server is a bus subscriber: lists come from the projections (it runs the workspace's
    projector itself unless one runs already), runs and live events from the stream. Submitted runs
    are queued for a worker serving their graph (`aethergraph worker MODULE`, or use `aethergraph dev`).
    """
    settings = settings_or_exit()
    _run(
        ServeOptions(
            host=host,
            port=port,
            modules=tuple(modules or ()),
            projector=projector,
            require_token=require_token,
            settings=settings,
            on_ready=_announce("AetherGraph server"),
        )
    )


@app.command("dev")
def dev_command(
    modules: Annotated[list[str], typer.Argument(help="modules (pkg.module or path/file.py) whose graphs to serve")],
    host: Annotated[str, typer.Option("--host", help=_HOST_HELP)] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help=_PORT_HELP)] = 8080,
) -> None:
    """One command for development: the embedded NATS (started or reused), a worker serving MODULES, the
    projector and the HTTP server with the run viewer; prints the URL. Ctrl-C stops what it started."""
    settings = settings_or_exit()
    started_bus = settings.nats_url is None and running_server(settings.workspace) is None
    try:
        bus = start_bus(settings)
    except AetherGraphError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    where = bus if isinstance(bus, str) else f"{bus.url} (embedded, {'started' if started_bus else 'reused'})"
    err_console.print(f"bus: {where}", soft_wrap=True)
    try:
        _run(
            ServeOptions(
                host=host,
                port=port,
                modules=tuple(modules),
                worker=True,
                settings=settings,
                on_ready=_announce("AetherGraph dev server"),
            )
        )
    finally:
        if started_bus:
            stop_embedded_server(settings.workspace)
            err_console.print("stopped the embedded NATS server this command started")
