"""An in-process embedding model port for the RAG benchmark: FakeOpenAI's deterministic embedding, without HTTP.

``embed`` returns :func:`aethergraph.testing.fake_openai_wire.embed_text` of
each text (a hashed bag of words, L2-normalised: texts sharing words are
near), the same vectors the fake server answers, so the benchmark measures
the runtime and the index rather than a model server. It counts every
request and text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from aethergraph.core.journal.model_port import EmbedReply, TokenUsage
from aethergraph.testing.fake_openai_wire import embed_text

_WORD = re.compile(r"\w+")


@dataclass
class HashEmbedEndpoint:
    profile: str = "default"
    dim: int = 256
    model: str = "hash-chat"
    embed_model: str = "hash-embed"
    requests: list[int] = field(default_factory=list)  # texts per embed request, in order

    async def embed(self, texts: Sequence[str], *, idempotency_key: str = "") -> EmbedReply:
        self.requests.append(len(texts))
        return EmbedReply(
            vectors=[embed_text(text, self.dim) for text in texts],
            usage=TokenUsage(input_tokens=sum(len(_WORD.findall(text)) for text in texts)),
            model=self.embed_model,
        )


@dataclass
class HashModels:
    """A ``ModelPort`` (embeddings only) whose every profile is one :class:`HashEmbedEndpoint`."""

    endpoint_: HashEmbedEndpoint = field(default_factory=HashEmbedEndpoint)
    token_budget: int | None = None

    def endpoint(self, profile: str) -> HashEmbedEndpoint:
        return self.endpoint_
