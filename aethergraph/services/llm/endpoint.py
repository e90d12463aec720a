"""One profile's endpoint on the official ``openai`` SDK: chat turns (streamed or not) and embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aethergraph.core.errors import LLMConfigError
from aethergraph.core.journal.model_port import DeltaSink, EmbedReply, ModelReply, ModelRequest, TokenUsage

from .retries import call_with_retries, usage_numbers

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["OpenAIEndpoint"]


class OpenAIEndpoint:
    """Satisfies :class:`~aethergraph.core.journal.model_port.ModelEndpoint` for one profile."""

    def __init__(
        self,
        *,
        profile: str,
        client: AsyncOpenAI,
        model: str,
        embed_model: str,
        base_url: str,
        env_prefix: str,
        max_retries: int,
        backoff_s: float,
        secret: str | None,
        defaults: dict[str, Any],
    ) -> None:
        self._profile = profile
        self._client = client
        self._model = model
        self._embed_model = embed_model
        self._base_url = base_url
        self._env_prefix = env_prefix
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._secret = secret
        self._defaults = defaults

    @property
    def profile(self) -> str:
        return self._profile

    @property
    def model(self) -> str:
        return self._model

    @property
    def embed_model(self) -> str:
        return self._embed_model

    async def _retrying(self, attempt_call: Any) -> tuple[Any, int]:
        return await call_with_retries(
            attempt_call,
            profile=self._profile,
            base_url=self._base_url,
            env_prefix=self._env_prefix,
            max_retries=self._max_retries,
            backoff_s=self._backoff_s,
            secret=self._secret,
        )

    def _body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {**self._defaults, **request.params}
        body.setdefault("model", self._model)
        body["messages"] = request.messages
        if request.tools:
            body["tools"] = request.tools
        return body

    @staticmethod
    def _headers(request: ModelRequest) -> dict[str, str]:
        return {"Idempotency-Key": request.idempotency_key} if request.idempotency_key else {}

    async def chat(self, request: ModelRequest, *, on_delta: DeltaSink | None = None) -> ModelReply:
        if not self._model and "model" not in request.params:
            raise LLMConfigError(
                f"model profile {self._profile!r} has an embedding model only: set {self._env_prefix}MODEL for "
                "chat, or pass model=... to the call",
                profile=self._profile,
            )
        body = self._body(request)
        headers = self._headers(request)
        if on_delta is None:

            async def once(_attempt: int) -> Any:
                return await self._client.chat.completions.create(**body, extra_headers=headers)

            completion, attempts = await self._retrying(once)
            choice = completion.choices[0]
            message = _message_dict(choice.message.content, choice.message.tool_calls)
            return ModelReply(
                message=message,
                finish_reason=str(choice.finish_reason or ""),
                usage=TokenUsage(*usage_numbers(completion.usage)),
                model=str(completion.model or body["model"]),
                attempts=attempts,
            )

        async def streamed(attempt: int) -> ModelReply:
            return await self._stream_once(body, headers, on_delta, attempt)

        reply, attempts = await self._retrying(streamed)
        return ModelReply(reply.message, reply.finish_reason, reply.usage, reply.model, attempts)

    async def _stream_once(
        self, body: dict[str, Any], headers: dict[str, str], on_delta: DeltaSink, attempt: int
    ) -> ModelReply:
        stream = await self._client.chat.completions.create(
            **body, stream=True, stream_options={"include_usage": True}, extra_headers=headers
        )
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish_reason = ""
        usage: Any = None
        model = str(body["model"])
        async for chunk in stream:
            model = str(chunk.model or model)
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    text.append(delta.content)
                    on_delta(delta.content, attempt)
                for call in delta.tool_calls or ():
                    _merge_tool_call_delta(calls, call)
                if choice.finish_reason:
                    finish_reason = str(choice.finish_reason)
        tool_calls = [calls[index] for index in sorted(calls)]
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return ModelReply(message, finish_reason, TokenUsage(*usage_numbers(usage)), model)

    async def embed(self, texts: Sequence[str], *, idempotency_key: str = "") -> EmbedReply:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}

        async def once(_attempt: int) -> Any:
            return await self._client.embeddings.create(
                model=self._embed_model, input=list(texts), extra_headers=headers
            )

        response, attempts = await self._retrying(once)
        ordered = sorted(response.data, key=lambda item: item.index)
        vectors = [list(map(float, item.embedding)) for item in ordered]
        return EmbedReply(
            vectors=vectors,
            usage=TokenUsage(*usage_numbers(response.usage)),
            model=str(response.model or self._embed_model),
            attempts=attempts,
        )


def _message_dict(content: str | None, tool_calls: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments or ""},
            }
            for call in tool_calls
        ]
    return message


def _merge_tool_call_delta(calls: dict[int, dict[str, Any]], delta: Any) -> None:
    """Fold one streamed piece of a tool call into the call being assembled at its index."""
    call = calls.setdefault(delta.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.id:
        call["id"] = delta.id
    function = delta.function
    if function is not None:
        if function.name:
            call["function"]["name"] += function.name
        if function.arguments:
            call["function"]["arguments"] += function.arguments
