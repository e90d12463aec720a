"""A fake OpenAI-compatible server on loopback, for testing agents offline (docs/testing.md).

    from aethergraph.testing import FakeOpenAI, Reply

    with FakeOpenAI() as fake:
        fake.script(Reply.tool_call("get_weather", {"city": "Paris"}), Reply.text("Sunny."))
        client = openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key)
        ...
        assert fake.call_count("chat") == 2

Real HTTP (Starlette on uvicorn) on 127.0.0.1, served by a thread with its
own event loop, so workers in other processes reach the same instance and
the test process reads what they did. Serves ``POST /v1/chat/completions``
(plain, or ``stream: true`` as server-sent events), ``POST /v1/embeddings``
and ``GET /v1/models``; every request needs ``Authorization: Bearer <api_key>``.

Standalone, for trying a client by hand (answers with the default responder):

    python -m aethergraph.testing.fake_openai --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, NamedTuple

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .fake_openai_replies import CallKind, RecordedCall, Reply, error_body
from .fake_openai_wire import ChatAnswer, completion_body, echo_responder, embeddings_body, models_body, stream_chunks

__all__ = ["FakeOpenAI", "Responder", "main"]

Responder = Callable[[dict[str, Any]], Reply | str]
"""Answers a chat request (its JSON body) when no scripted reply is left; a ``str`` is a text reply."""

_PATHS: dict[str, tuple[CallKind, str]] = {
    "/v1/chat/completions": ("chat", "POST"),
    "/v1/embeddings": ("embeddings", "POST"),
    "/v1/models": ("models", "GET"),
}
_START_GUARD_S = 30.0  # hang guard: the server thread normally starts in milliseconds


class _Ticket(NamedTuple):
    generation: int
    position: int
    seq: int


def _error(status: int, message: str | None = None, *, retry_after: float | None = None) -> JSONResponse:
    headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


class FakeOpenAI:
    """An OpenAI-compatible server on ``127.0.0.1`` answering scripted replies; a context manager (sync or async).

    ``api_key`` (default: a random ``sk-fake-...``) is the key every request
    must send, or it gets 401. ``port`` 0 picks a free port. ``responder``
    answers a chat request when the script is empty (default: an echo of the
    last user message, ``"echo: <text>"``); it runs on the server's thread.
    ``embedding_dim`` is the length of the embeddings (a request's
    ``dimensions`` overrides it); ``models`` is what ``/v1/models`` lists
    (any model name is accepted).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        port: int = 0,
        responder: Responder | None = None,
        embedding_dim: int = 64,
        models: Sequence[str] = ("fake-model", "fake-embedding"),
    ) -> None:
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be at least 1, not {embedding_dim}")
        self.api_key = api_key or f"sk-fake-{secrets.token_hex(12)}"
        self.responder: Responder = responder or echo_responder
        self.embedding_dim = embedding_dim
        self.models = tuple(models)
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._log: list[RecordedCall] = []
        self._generation = 0
        self._seq = 0
        self._scripts: dict[CallKind, deque[Reply]] = {"chat": deque(), "embeddings": deque()}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        """Bind the port and serve from a background thread; returns once the server accepts requests."""
        if self._thread is not None:
            raise RuntimeError("this FakeOpenAI is already serving; create another for a second server")
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
        # without it every answer (headers, then body) waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._requested_port))
        except OSError as exc:
            sock.close()
            raise OSError(f"the fake OpenAI server cannot bind 127.0.0.1:{self._requested_port}: {exc}") from exc
        self._port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "DELETE"])])
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + _START_GUARD_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake OpenAI server did not start: see the uvicorn.error log above")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        """Stop serving (open streams get a moment to finish) and free the port."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(_START_GUARD_S)
        if thread.is_alive():
            server.force_exit = True
            thread.join(_START_GUARD_S)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeOpenAI:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def port(self) -> int:
        """The port served on (the one picked when constructed with port 0)."""
        if self._port is None:
            raise RuntimeError("the fake OpenAI server is not started: use `with FakeOpenAI() as fake:`")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: the ``base_url`` of an OpenAI client."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- the script --------------------------------------------------------------------------------

    def script(self, *replies: Reply | str) -> None:
        """Queue chat replies, answered in order (a ``str`` is ``Reply.text``).

        Each valid chat request with the key consumes one; a 401 or a 400
        (no ``messages``, no ``model``) consumes none.
        """
        queued = [Reply.text(r) if isinstance(r, str) else r for r in replies]
        with self._lock:
            self._scripts["chat"].extend(queued)

    def script_embeddings(self, *failures: Reply) -> None:
        """Queue failures for the next embedding requests (embeddings themselves are computed, never scripted)."""
        if not all(reply.is_failure for reply in failures):
            raise ValueError("script only Reply.failure(...) for embeddings: their vectors are computed from the text")
        with self._lock:
            self._scripts["embeddings"].extend(failures)

    def pending(self, kind: CallKind = "chat") -> int:
        """How many scripted replies of ``kind`` are not consumed yet."""
        with self._lock:
            return len(self._scripts.get(kind, ()))

    # -- the request log ---------------------------------------------------------------------------

    @property
    def calls(self) -> list[RecordedCall]:
        """Every request received since start (or the last :meth:`reset`), in arrival order (a copy)."""
        with self._lock:
            return list(self._log)

    def call_count(self, kind: CallKind, *, all_attempts: bool = False) -> int:
        """How many ``kind`` requests were answered with status 200.

        A streamed answer counts once its 200 went out, whether or not the
        client read it to the end (``RecordedCall.completed`` tells). With
        ``all_attempts`` every ``kind`` request counts, whatever its answer
        (a 401, an injected failure, a request being answered).
        """
        with self._lock:
            return sum(1 for c in self._log if c.kind == kind and (all_attempts or c.status == 200))

    def reset(self) -> None:
        """Forget the request log and the unconsumed script; request numbering starts again at 1."""
        with self._lock:
            self._log.clear()
            self._generation += 1
            self._seq = 0
            for queue in self._scripts.values():
                queue.clear()

    def _record(self, request: Request, kind: CallKind, body: Any) -> _Ticket:
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            self._seq += 1
            call = RecordedCall(self._seq, kind, request.method, request.url.path, body, headers, status=0)
            self._log.append(call)
            return _Ticket(self._generation, len(self._log) - 1, self._seq)

    def _settle(self, ticket: _Ticket, **changes: Any) -> None:
        with self._lock:
            if ticket.generation == self._generation:
                self._log[ticket.position] = replace(self._log[ticket.position], **changes)

    def _next_scripted(self, kind: CallKind) -> Reply | None:
        with self._lock:
            queue = self._scripts.get(kind)
            return queue.popleft() if queue else None

    # -- serving (on the server's thread) ----------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        kind, method = _PATHS.get(request.url.path, ("other", ""))
        ticket = self._record(request, kind, body)
        reply: Reply | None = None
        streaming = False
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            response: Response = _error(401, "Incorrect API key provided: send `Authorization: Bearer <api_key>`.")
        elif kind == "other":
            response = _error(404, f"Unknown request URL: {request.method} {request.url.path}.")
        elif request.method != method:
            response = _error(405, f"{request.url.path} answers {method} only, not {request.method}.")
        elif kind == "models":
            response = JSONResponse(models_body(self.models))
        elif kind == "embeddings":
            response = self._embeddings(body)
        else:
            response, reply, streaming = self._chat(body, ticket)
        self._settle(ticket, status=response.status_code, reply=reply, completed=not streaming)
        return response

    def _embeddings(self, body: Any) -> Response:
        if not isinstance(body, dict) or "input" not in body:
            return _error(400, "POST /v1/embeddings needs a JSON body with `input` (a string or a list of strings).")
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "`input` must be a string or a non-empty list of strings (token arrays are not faked).")
        dim = body.get("dimensions", self.embedding_dim)
        if not isinstance(dim, int) or dim < 1:
            return _error(400, f"`dimensions` must be a positive integer, not {dim!r}.")
        failure = self._next_scripted("embeddings")
        if failure is not None:
            return _error(failure.status, failure.error_message, retry_after=failure.retry_after)
        encoding = str(body.get("encoding_format") or "float")
        model = str(body.get("model", ""))
        return JSONResponse(embeddings_body(texts, model=model, dim=dim, encoding=encoding))

    def _chat(self, body: Any, ticket: _Ticket) -> tuple[Response, Reply | None, bool]:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            message = "POST /v1/chat/completions needs a JSON body with a non-empty `messages` list."
            return _error(400, message), None, False
        if not isinstance(body.get("model"), str):
            return _error(400, "You must provide a model parameter."), None, False
        reply = self._next_scripted("chat")
        if reply is None:
            try:
                answered = self.responder(body)
            except Exception as exc:  # noqa: BLE001 - the client gets the responder's error as a 500
                return _error(500, f"the fake server's responder raised {type(exc).__name__}: {exc}"), None, False
            reply = Reply.text(answered) if isinstance(answered, str) else answered
        if reply.is_failure:
            return _error(reply.status, reply.error_message, retry_after=reply.retry_after), reply, False
        answer = ChatAnswer(reply, body, ticket.seq)
        if body.get("stream") is not True:
            return JSONResponse(completion_body(answer)), reply, False
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = self._stream(answer, include_usage, ticket)
        return StreamingResponse(events, media_type="text/event-stream"), reply, True

    async def _stream(self, answer: ChatAnswer, include_usage: bool, ticket: _Ticket) -> AsyncIterator[str]:
        delay = answer.reply.stream_delay
        for index, chunk in enumerate(stream_chunks(answer, include_usage=include_usage)):
            if index and delay:
                await asyncio.sleep(delay)
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
        # Reached only when the client took [DONE]: a disconnect cancels this generator first.
        self._settle(ticket, completed=True)

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"FakeOpenAI({where}, {len(self.calls)} calls)"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m aethergraph.testing.fake_openai``: serve until Ctrl-C, answering with the echo responder."""
    description = "Serve a fake OpenAI-compatible API on 127.0.0.1 until Ctrl-C, answering with the echo responder."
    parser = argparse.ArgumentParser(prog="python -m aethergraph.testing.fake_openai", description=description)
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--api-key", default=None, help="the key clients must send (default: a random sk-fake-...)")
    parser.add_argument("--embedding-dim", type=int, default=64, help="length of the embeddings")
    args = parser.parse_args(argv)
    with FakeOpenAI(port=args.port, api_key=args.api_key, embedding_dim=args.embedding_dim) as fake:
        print(f"base_url: {fake.base_url}")
        print(f"api_key:  {fake.api_key}")
        print(f"export AETHERGRAPH_LLM__DEFAULT__BASE_URL={fake.base_url}")
        print(f"export AETHERGRAPH_LLM__DEFAULT__API_KEY={fake.api_key}")
        print("serving until Ctrl-C", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
