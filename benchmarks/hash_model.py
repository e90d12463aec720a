"""A deterministic in-process model: embeddings are a hashed bag of words, L2-normalised; chat is extractive.

Texts that share words are near; texts with no word in common are orthogonal.
A chat turn answers from numbered context passages (``[1] ...``) in the last
user message: the passage sharing the most words with the question, quoted
with its number, e.g. ``"Replace the blade. [2]"``.
The RAG benchmark uses it to measure the runtime and the index without an
HTTP model in the way, and ``tests/test_rag.py`` uses it as the model port
(``RunEnvironment.models``) of its runs. It counts every request and text.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from aethergraph.core.journal.model_port import DeltaSink, EmbedReply, ModelReply, ModelRequest, TokenUsage

_WORD = re.compile(r"\w+")
_PASSAGE = re.compile(r"^\[(\d+)\][^\n]*\n(.*?)(?=\n\n\[\d+\]|\n\nQuestion:|\Z)", re.M | re.S)


def hashed_vector(text: str, dim: int) -> list[float]:
    vector = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
        vector[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


@dataclass
class HashEmbedEndpoint:
    profile: str = "default"
    dim: int = 256
    model: str = "hash-chat"
    embed_model: str = "hash-embed"
    requests: list[int] = field(default_factory=list)  # texts per embed request, in order
    chats: list[ModelRequest] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # the idempotency key of each request

    @property
    def texts_embedded(self) -> int:
        return sum(self.requests)

    async def embed(self, texts: Sequence[str], *, idempotency_key: str = "") -> EmbedReply:
        self.requests.append(len(texts))
        self.keys.append(idempotency_key)
        tokens = sum(len(_WORD.findall(text)) for text in texts)
        return EmbedReply(
            vectors=[hashed_vector(text, self.dim) for text in texts],
            usage=TokenUsage(input_tokens=tokens),
            model=self.embed_model,
        )

    async def chat(self, request: ModelRequest, *, on_delta: DeltaSink | None = None) -> ModelReply:
        self.chats.append(request)
        prompt = str(request.messages[-1].get("content", ""))
        question = set(_WORD.findall(prompt.rpartition("Question:")[2].lower()))
        passages = [(int(n), text.strip()) for n, text in _PASSAGE.findall(prompt)]
        if passages:
            number, text = max(passages, key=lambda p: (len(question & set(_WORD.findall(p[1].lower()))), -p[0]))
            answer = f"{text.split('. ')[0].rstrip('.')}. [{number}]"
        else:
            answer = "I do not know."
        if on_delta is not None:
            on_delta(answer)
        words = len(_WORD.findall(prompt))
        return ModelReply(
            message={"role": "assistant", "content": answer},
            finish_reason="stop",
            usage=TokenUsage(input_tokens=words, output_tokens=len(_WORD.findall(answer))),
            model=self.model,
        )


@dataclass
class HashModels:
    """A ``ModelPort`` whose every profile is one :class:`HashEmbedEndpoint`."""

    endpoint_: HashEmbedEndpoint = field(default_factory=HashEmbedEndpoint)
    profiles: list[str] = field(default_factory=list)
    token_budget: int | None = None

    def endpoint(self, profile: str) -> HashEmbedEndpoint:
        self.profiles.append(profile)
        return self.endpoint_
