"""The port ``context.llm()`` calls models through, and the side channel its tokens stream on.

``core`` journals model calls; it does not speak HTTP. A :class:`ModelPort`
resolves a profile name to a :class:`ModelEndpoint` (implemented on the
official ``openai`` SDK in :mod:`aethergraph.services.llm`), and a
:class:`TokenStream` publishes streamed deltas where clients can watch them
(never journaled, never replayed). The composition root hands both to runs
through the run environment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "EmbedReply",
    "DeltaSink",
    "ModelEndpoint",
    "ModelPort",
    "ModelReply",
    "ModelRequest",
    "TokenStream",
    "TokenUsage",
]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens as the endpoint reported them (0 where it reported nothing)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model turn: OpenAI chat ``messages``, function ``tools`` (their JSON schemas) and parameters.

    ``params`` holds the request's other fields (``temperature``,
    ``max_tokens``, ``response_format``, ...), passed to the endpoint as they are.
    """

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class ModelReply:
    """The complete answer of one model turn: the assistant ``message`` (``content``, ``tool_calls``)."""

    message: dict[str, Any]
    finish_reason: str
    usage: TokenUsage
    model: str
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class EmbedReply:
    vectors: list[list[float]]
    usage: TokenUsage
    model: str
    attempts: int = 1


DeltaSink = Callable[[str, int], None]
"""Receives each streamed piece of the answer's text as it arrives, with the attempt it belongs to
(a retried call streams again from the start, under the next attempt number)."""


class ModelEndpoint(Protocol):
    """A profile's endpoint: retries transient failures itself, raises :mod:`aethergraph.errors` classes."""

    @property
    def profile(self) -> str: ...

    @property
    def model(self) -> str:
        """The chat model of this profile."""
        ...

    @property
    def embed_model(self) -> str: ...

    async def chat(self, request: ModelRequest, *, on_delta: DeltaSink | None = None) -> ModelReply:
        """One model turn; with ``on_delta`` the answer is streamed and each text piece handed to it."""
        ...

    async def embed(self, texts: Sequence[str], *, idempotency_key: str = "") -> EmbedReply: ...


class ModelPort(Protocol):
    def endpoint(self, profile: str) -> ModelEndpoint:
        """The endpoint of ``profile``; raises :class:`~aethergraph.errors.LLMConfigError` naming the fix."""
        ...

    @property
    def token_budget(self) -> int | None:
        """Tokens one run may spend on model calls (None: no limit)."""
        ...


class TokenStream(Protocol):
    def publish(self, run_id: str, node_id: str, payload: bytes) -> None:
        """Publish a streamed delta on ``ag.stream.<run_id>.<node_id>`` (best effort, not stored)."""
        ...
