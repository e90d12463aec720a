"""A deterministic in-process embedding model (embeddings only): a hashed bag of words, L2-normalised.

Texts that share words are near; texts with no word in common are orthogonal.
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

from aethergraph.core.journal.model_port import EmbedReply, TokenUsage

_WORD = re.compile(r"\w+")


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


@dataclass
class HashModels:
    """A ``ModelPort`` whose every profile is one :class:`HashEmbedEndpoint`."""

    endpoint_: HashEmbedEndpoint = field(default_factory=HashEmbedEndpoint)
    profiles: list[str] = field(default_factory=list)
    token_budget: int | None = None

    def endpoint(self, profile: str) -> HashEmbedEndpoint:
        self.profiles.append(profile)
        return self.endpoint_
