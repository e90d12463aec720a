"""Running the HTTP server: the bind rule, the serving coroutine (with a projector and a worker if asked),
and the server :func:`aethergraph.start_server` starts in a thread (:class:`HttpServer`).

The bind rule: without a token the server binds to 127.0.0.1 (or ``::1``,
``localhost``) only. Any other address, even another loopback one, needs
``AETHERGRAPH_API_TOKEN``; with a token set every ``/api`` request must carry
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aethergraph.bus.connection import BusConnection
from aethergraph.bus.embedded import EmbeddedServer
from aethergraph.core.errors import AetherGraphError, ProjectionLockedError
from aethergraph.core.settings import Settings, load_settings
from aethergraph.host.loader import import_modules
from aethergraph.projections.client import serve_projections, store_path
from aethergraph.projections.service import QueryRequest, remote_request, store_id_for
from aethergraph.projections.store import ProjectionStore
from aethergraph.runtime import close_runtime, get_runtime, serve_worker

from .live import LiveHub
from .state import WebState

if TYPE_CHECKING:
    import uvicorn

__all__ = ["LOOPBACK", "BindRefusedError", "HttpServer", "ServeOptions", "check_bind", "serve_http", "server_token"]

log = logging.getLogger("aethergraph.web")

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class BindRefusedError(AetherGraphError):
    """The server may not bind where it was asked to without a token."""


def check_bind(host: str, token: str | None, *, require_token: bool = False) -> str | None:
    """The token the server enforces (None: none), or :class:`BindRefusedError` naming the fix."""
    if token:
        return token
    if host not in LOOPBACK:
        raise BindRefusedError(
            f"refusing to bind the HTTP API to {host}: beyond 127.0.0.1 it needs a token. Set "
            "AETHERGRAPH_API_TOKEN to a long random secret (clients send `Authorization: Bearer <token>`), "
            "or bind to 127.0.0.1 (the default)"
        )
    if require_token:
        raise BindRefusedError("--require-token needs AETHERGRAPH_API_TOKEN: set it to a long random secret")
    return None


@dataclass(kw_only=True)
class ServeOptions:
    """What to serve: where, which graph modules, and whether to run a worker and the projector here too."""

    host: str = "127.0.0.1"
    port: int = 8080
    modules: tuple[str, ...] = ()
    worker: bool = False
    projector: bool = True
    require_token: bool = False
    settings: Settings | None = None
    on_ready: Callable[[str], None] | None = field(default=None, repr=False)


def server_token(options: ServeOptions) -> str | None:
    settings = options.settings or load_settings()
    secret = settings.api_token.get_secret_value() if settings.api_token is not None else None
    return check_bind(options.host, secret, require_token=options.require_token)


async def _own_projections(state: WebState, stop: asyncio.Event, serving: asyncio.Event) -> None:
    """Run the workspace's projector here, unless another process already owns the store (then it is asked).

    ``serving`` is set once queries can be asked: of this projector's store (``state.store``), or of the other
    process's projector.
    """

    def owned(store: ProjectionStore) -> None:
        state.store = store
        serving.set()

    host = state.host
    try:
        await serve_projections(host.bus, host.settings, stop, on_serving=owned, on_progress=state.folded)
    except ProjectionLockedError:
        log.info("another process owns the projection store; the server asks its projector")
    finally:
        state.store = None
        serving.set()


async def _projector_answers(bus: BusConnection, settings: Settings) -> bool:
    """Whether a projector already owns the workspace's store (it answers a status request)."""
    store_id = store_id_for(store_path(settings))
    return await remote_request(bus, store_id, QueryRequest(op="status"), timeout_s=2.0) is not None


async def serve_http(options: ServeOptions, stop: asyncio.Event) -> None:
    """Serve the API (and worker/projector if asked) on this event loop until ``stop`` is set."""
    try:
        import uvicorn  # the server's dependencies load here, not with aethergraph

        from .app import create_app
    except ModuleNotFoundError as exc:
        raise AetherGraphError(
            f"the HTTP server needs FastAPI and uvicorn ({exc.name} is missing): pip install 'aethergraph[server]'"
        ) from None

    token = server_token(options)
    import_modules(*options.modules)
    listener = _listen(options.host, options.port)  # before anything starts: a taken port stops nothing
    host = await get_runtime(options.settings, inline_answers=False)
    state = WebState(host=host, hub=LiveHub(host.event_log, host.bus), token=token)
    background: list[asyncio.Task[None]] = []
    if options.projector and not await _projector_answers(host.bus, host.settings):
        # Queries wait for it: one opening the store in this process meanwhile would race its creation.
        queries_ready = asyncio.Event()
        own = _own_projections(state, stop, queries_ready)
        background.append(asyncio.create_task(own, name="aethergraph-projector"))
        await queries_ready.wait()
    if options.worker:
        background.append(asyncio.create_task(serve_worker(stop=stop), name="aethergraph-worker"))
    app = create_app(state)
    config = uvicorn.Config(
        app, host=options.host, port=options.port, log_level="warning", access_log=False, timeout_graceful_shutdown=3
    )
    server = _quiet_server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]), name="aethergraph-http")
    try:
        while not server.started:
            if serving.done():
                with contextlib.suppress(SystemExit):  # uvicorn's way to say its startup failed (it logged why)
                    await serving
                raise AetherGraphError(f"the HTTP server could not start on {options.host}:{options.port}")
            await asyncio.sleep(0.01)
        if options.on_ready is not None:
            options.on_ready(_url(listener, options.host))
        await stop.wait()
    finally:
        stop.set()
        server.should_exit = True
        await state.hub.close()  # ends every live stream, so the server's shutdown does not wait for them
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await serving
        listener.close()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound here so that a taken port is a plain error naming the fix."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # IPPROTO_TCP named: asyncio then sets TCP_NODELAY on every accepted connection (without it,
        # a keep-alive client's delayed ACK holds each response's second write back by 40 ms).
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(address)
            listener.listen(2048)
        except OSError:
            listener.close()
            raise
        return listener
    except OSError as exc:
        raise AetherGraphError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}: pick another --port (0: any free port)"
        ) from None


def _url(listener: socket.socket, host: str) -> str:
    port = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _quiet_server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn's server without its signal handlers: the caller decides when to stop (Ctrl-C stops everything)."""
    import uvicorn

    class QuietServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return QuietServer(config)


class HttpServer:
    """A running HTTP server started by :func:`start_server` (its own thread and event loop)."""

    def __init__(self, bus: EmbeddedServer | str, options: ServeOptions) -> None:
        self.bus = bus
        self.url = ""
        self._options = options
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="aethergraph-http", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await serve_http(self._options, self._stop)
            finally:
                await close_runtime()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that started the server
            self._failure = exc
        finally:
            self._ready.set()

    def _on_ready(self, url: str) -> None:
        self.url = url
        self._ready.set()

    def start(self, timeout_s: float) -> HttpServer:
        self._options.on_ready = self._on_ready
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise AetherGraphError(f"the HTTP server did not start within {timeout_s:g}s")
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self) -> None:
        """Stop the HTTP server (and the projector or worker it runs); the bus server keeps running."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
