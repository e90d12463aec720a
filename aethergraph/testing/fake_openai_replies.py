"""What the fake OpenAI-compatible server answers, and its record of each request.

Pure data (no HTTP here): :class:`Reply` scripts one answer of
``/v1/chat/completions`` (text, tool calls, JSON, or an injected failure),
:class:`ToolCall` one function call in it, :class:`Usage` its token counts,
and :class:`RecordedCall` is one request as the server saw and answered it.
:mod:`aethergraph.testing.fake_openai` serves them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CallKind", "RecordedCall", "Reply", "ToolCall", "Usage"]

CallKind = Literal["chat", "embeddings", "models", "other"]
"""What a request asked for: ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``, or anything else."""

# OpenAI's error ``type`` and ``code`` for the statuses a test injects, and a message like the real one.
_FAILURES: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (injected by the fake server)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    408: ("timeout", None, "Request timed out (injected by the fake server)."),
    409: ("conflict", None, "Conflicting request (injected by the fake server)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected by the fake server)."),
    500: ("server_error", None, "The server had an error processing your request (injected by the fake server)."),
    502: ("server_error", None, "Bad gateway (injected by the fake server)."),
    503: ("server_error", None, "The engine is currently overloaded (injected by the fake server)."),
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    fallback = ("server_error" if status >= 500 else "invalid_request_error", None, "")
    kind, code, default = _FAILURES.get(status, fallback)
    return {"error": {"message": message or default or f"HTTP {status}", "type": kind, "param": None, "code": code}}


@dataclass(frozen=True)
class Usage:
    """Token counts a reply reports (``usage`` of the response, and the last chunk of a stream)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        counts = (self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.reasoning_tokens)
        if min(counts) < 0:
            raise ValueError(f"token counts cannot be negative: {self}")

    def wire(self) -> dict[str, Any]:
        """The ``usage`` object of OpenAI's chat completion."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asks for: ``name`` and its ``arguments`` (sent as a JSON string).

    ``id`` unset: the server gives ``call_fake_<request number>_<index>``,
    the same for the same sequence of requests.
    """

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments as the model sends them: a JSON document in a string."""
        return json.dumps(dict(self.arguments), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Reply:
    """One scripted answer of ``/v1/chat/completions``; build it with the class methods.

    ``finish_reason`` unset means ``"stop"``, or ``"tool_calls"`` when the
    reply calls tools. ``usage`` unset counts words: the request's message
    text as prompt tokens and the reply's text and arguments as completion
    tokens. ``stream_delay`` (seconds) is slept between the chunks of a
    streamed answer, so a test can act (kill a worker) mid-stream.
    A failure (``status`` other than 200) answers that status with OpenAI's
    error JSON and, when ``retry_after`` is set, a ``retry-after`` header.
    """

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    stream_delay: float = 0.0
    status: int = 200
    retry_after: float | None = None
    error_message: str | None = None

    def __post_init__(self) -> None:
        if self.status != 200 and not 400 <= self.status <= 599:
            raise ValueError(f"a reply's status is 200 or a failure in 400..599, not {self.status}")
        if self.status == 200 and self.content is None and not self.tool_calls:
            raise ValueError("a successful reply needs content or tool calls: use Reply.text/tool_call/json")
        if self.stream_delay < 0 or (self.retry_after is not None and self.retry_after < 0):
            raise ValueError("stream_delay and retry_after are seconds, not negative")

    @property
    def is_failure(self) -> bool:
        """Whether this reply answers an error status instead of a completion."""
        return self.status != 200

    @property
    def effective_finish_reason(self) -> str:
        """``finish_reason`` as answered: the one given, else ``"tool_calls"`` or ``"stop"``."""
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    @classmethod
    def text(
        cls, content: str, *, finish_reason: str | None = None, usage: Usage | None = None, stream_delay: float = 0.0
    ) -> Reply:
        """The assistant answers ``content`` (streamed word by word when the request streams)."""
        return cls(content=content, finish_reason=finish_reason, usage=usage, stream_delay=stream_delay)

    @classmethod
    def json(
        cls, document: Any, *, finish_reason: str | None = None, usage: Usage | None = None, stream_delay: float = 0.0
    ) -> Reply:
        """The assistant answers ``document`` serialized as JSON text (for ``output_format="json"``)."""
        return cls.text(json.dumps(document), finish_reason=finish_reason, usage=usage, stream_delay=stream_delay)

    @classmethod
    def tool_call(
        cls,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        content: str | None = None,
        usage: Usage | None = None,
        stream_delay: float = 0.0,
    ) -> Reply:
        """The assistant calls one tool ``name`` with ``arguments`` (finish reason ``"tool_calls"``)."""
        call = ToolCall(name, dict(arguments or {}), id)
        return cls(content=content, tool_calls=(call,), usage=usage, stream_delay=stream_delay)

    @classmethod
    def parallel_tool_calls(
        cls, *calls: ToolCall, content: str | None = None, usage: Usage | None = None, stream_delay: float = 0.0
    ) -> Reply:
        """The assistant calls several tools in one turn, in the order given."""
        if not calls:
            raise ValueError("parallel_tool_calls needs at least one ToolCall")
        return cls(content=content, tool_calls=tuple(calls), usage=usage, stream_delay=stream_delay)

    @classmethod
    def failure(cls, status: int, *, retry_after: float | None = None, message: str | None = None) -> Reply:
        """Answer ``status`` (429, 500, 503, 408, ...) with OpenAI's error JSON, and ``retry-after`` if given."""
        if not 400 <= status <= 599:
            raise ValueError(f"a failure's status is in 400..599, not {status}")
        return cls(status=status, retry_after=retry_after, error_message=message)


@dataclass(frozen=True)
class RecordedCall:
    """One request the fake server received, and how it answered.

    ``headers`` has lower-case names (``authorization``, ``idempotency-key``,
    ...); ``body`` is the parsed JSON body (``None`` for none or invalid
    JSON). ``status`` is the status answered (0 while being answered).
    ``completed`` says the answer went out whole: a plain answer as soon as
    it is answered, a stream once its ``data: [DONE]`` line was sent (a
    client killed mid-stream leaves it False). ``reply`` is the scripted or
    default reply that answered a chat request.
    """

    seq: int
    kind: CallKind
    method: str
    path: str
    body: Any
    headers: Mapping[str, str]
    status: int
    completed: bool = False
    reply: Reply | None = None

    @property
    def idempotency_key(self) -> str | None:
        """The request's ``Idempotency-Key`` header, if it sent one."""
        return self.headers.get("idempotency-key")

    @property
    def authorization(self) -> str | None:
        """The request's ``Authorization`` header, if it sent one."""
        return self.headers.get("authorization")

    @property
    def stream(self) -> bool:
        """Whether the request asked for a streamed answer (``"stream": true``)."""
        return isinstance(self.body, dict) and self.body.get("stream") is True
