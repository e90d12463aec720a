"""OpenAI's JSON shapes, built from a :class:`Reply`: completions, stream chunks, embeddings, models.

Also the default responder (an echo of the last user message) and the
deterministic embedding (a hashed bag of lowercase words, L2-normalised).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .fake_openai_replies import Reply, ToolCall, Usage

__all__ = [
    "ChatAnswer",
    "completion_body",
    "echo_responder",
    "embed_text",
    "embeddings_body",
    "models_body",
    "stream_chunks",
]

_WORD = re.compile(r"\w+")
_TEXT_PIECE = re.compile(r"\S+\s*|\s+")
_ARGUMENT_PIECE = 8  # characters of a tool call's arguments per streamed delta


class ChatAnswer:
    """One chat reply about to be sent: the reply, the ids it carries and its usage."""

    def __init__(self, reply: Reply, request: dict[str, Any], seq: int) -> None:
        self.reply = reply
        self.model = str(request.get("model", ""))
        self.id = f"chatcmpl-fake-{seq}"
        self.created = int(time.time())
        self.calls = [(call.id or f"call_fake_{seq}_{i}", call) for i, call in enumerate(reply.tool_calls)]
        self.usage = reply.usage or Usage(_prompt_words(request), _reply_words(reply))


def _words(text: str) -> int:
    return len(_WORD.findall(text))


def message_text(message: Any) -> str:
    """The text of one chat message: its string content, or its text parts joined."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _prompt_words(request: dict[str, Any]) -> int:
    messages = request.get("messages")
    return _words(" ".join(message_text(m) for m in messages)) if isinstance(messages, list) else 0


def _reply_words(reply: Reply) -> int:
    return _words(reply.content or "") + sum(_words(call.arguments_json()) for call in reply.tool_calls)


def echo_responder(request: dict[str, Any]) -> Reply:
    """The default responder: ``"echo: <text of the last user message>"``."""
    messages = request.get("messages")
    messages = messages if isinstance(messages, list) else []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return Reply.text(f"echo: {message_text(users[-1]) if users else ''}")


def _tool_call_wire(call_id: str, call: ToolCall) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json()}}


def completion_body(answer: ChatAnswer) -> dict[str, Any]:
    """A non-streamed ``chat.completion``."""
    reply = answer.reply
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if answer.calls:
        message["tool_calls"] = [_tool_call_wire(call_id, call) for call_id, call in answer.calls]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.effective_finish_reason}
    return {
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [choice],
        "usage": answer.usage.wire(),
        "system_fingerprint": None,
    }


def stream_chunks(answer: ChatAnswer, *, include_usage: bool) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer, in order.

    A first chunk with the role, the text one word per delta, each tool call
    (its id and name, then its arguments in pieces), a chunk with the finish
    reason, and with ``include_usage`` a last chunk with no choices and the usage.
    """

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        body: dict[str, Any] = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        return body

    reply = answer.reply
    yield chunk({"role": "assistant", "content": "" if reply.content is not None else None})
    for piece in _TEXT_PIECE.findall(reply.content or ""):
        yield chunk({"content": piece})
    for index, (call_id, call) in enumerate(answer.calls):
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        yield chunk({"tool_calls": [head]})
        arguments = call.arguments_json()
        for start in range(0, len(arguments), _ARGUMENT_PIECE):
            piece = arguments[start : start + _ARGUMENT_PIECE]
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, reply.effective_finish_reason)
    if include_usage:
        last = chunk({})
        last["choices"] = []
        last["usage"] = answer.usage.wire()
        yield last


def embed_text(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text``: its lowercase words hashed (with a sign) into ``dim`` buckets.

    Texts sharing words have a positive dot product; a text with no word
    embeds as the first unit vector.
    """
    vector = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        bits = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
        vector[bits % dim] += -1.0 if bits >> 63 else 1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:
        return [1.0] + [0.0] * (dim - 1)
    return [x / norm for x in vector]


def embeddings_body(texts: Sequence[str], *, model: str, dim: int, encoding: str) -> dict[str, Any]:
    """``/v1/embeddings``' answer; ``encoding`` ``"base64"`` packs float32 little-endian as the SDK expects."""
    data = []
    for index, text in enumerate(texts):
        vector = embed_text(text, dim)
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(_words(text) for text in texts)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def models_body(models: Sequence[str]) -> dict[str, Any]:
    """``/v1/models``' answer."""
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": "aethergraph-fake"} for name in models],
    }
