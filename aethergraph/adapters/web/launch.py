"""``aethergraph.start_server``: the bus, and with ``http=True`` the HTTP server too (loaded only then)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aethergraph.bus.embedded import EmbeddedServer
from aethergraph.core.settings import Settings
from aethergraph.runtime import start_server as start_bus

if TYPE_CHECKING:
    from .serving import HttpServer

__all__ = ["start_server"]


def start_server(
    settings: Settings | None = None,
    *,
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 8080,
    modules: tuple[str, ...] | list[str] = (),
    worker: bool = False,
) -> EmbeddedServer | str | HttpServer:
    """Make sure the bus is up: start or reuse the embedded server, or name the configured URL.

    Returns the :class:`EmbeddedServer` on the embedded default, else the configured URL. With
    ``http=True``, also starts the HTTP API and run viewer (docs/server.md) on ``host:port``
    (``port=0``: any free port) in a background thread, serving the graphs of ``modules`` (and
    running a worker for them with ``worker=True``), and returns an :class:`HttpServer` instead:
    ``.url``, ``.bus`` (what the call returns without ``http``) and ``.stop()``. Binding beyond
    127.0.0.1 needs ``AETHERGRAPH_API_TOKEN``.
    """
    bus = start_bus(settings)
    if not http:
        return bus
    from .serving import HttpServer, ServeOptions, server_token  # FastAPI and uvicorn load here

    options = ServeOptions(host=host, port=port, modules=tuple(modules), worker=worker, settings=settings)
    server_token(options)  # refused before any thread starts
    return HttpServer(bus, options).start(timeout_s=60)
