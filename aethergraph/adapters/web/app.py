"""The ASGI app: the JSON API under ``/api``, the bearer-token check, and the run viewer's files at ``/``."""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from aethergraph import __version__

from . import api_more, api_runs
from .state import WebState

__all__ = ["STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

_MISSING_VIEWER = """<!doctype html>
<html><head><meta charset="utf-8"><title>AetherGraph</title></head>
<body><h1>AetherGraph server</h1>
<p>The run viewer's assets are missing from this installation ({folder} has no index.html).
The JSON API works: see <a href="/docs">/docs</a> (OpenAPI: <a href="/openapi.json">/openapi.json</a>).</p>
</body></html>
"""


class BearerToken:
    """Every ``/api`` request must carry ``Authorization: Bearer <token>`` (401 otherwise)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/api" or path.startswith("/api/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await _unauthorized(send)
                return
        await self.app(scope, receive, send)


async def _unauthorized(send: Send) -> None:
    body = b'{"detail":"this server needs Authorization: Bearer <AETHERGRAPH_API_TOKEN>"}'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="aethergraph"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(state: WebState, *, static_dir: Path = STATIC_DIR) -> FastAPI:
    """The app over ``state``: a bus subscriber reading projections and following runs; it holds no state of its own."""
    app = FastAPI(
        title="AetherGraph",
        version=__version__,
        description="Runs, waits, graphs and events of an AetherGraph bus (docs/server.md).",
    )
    app.state.web = state
    app.include_router(api_runs.router)
    app.include_router(api_runs.events_router)
    app.include_router(api_more.router)
    if (static_dir / "index.html").is_file():
        app.mount("/", StaticFiles(directory=static_dir, html=True), name="viewer")
    else:
        page = _MISSING_VIEWER.format(folder=static_dir)

        @app.get("/", include_in_schema=False)
        async def missing_viewer() -> HTMLResponse:
            return HTMLResponse(page)

    if state.token:
        app.add_middleware(BearerToken, token=state.token)
    return app
