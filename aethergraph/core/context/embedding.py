"""Embedding texts through the run environment's model port, in batches (``context.rag()``, ``memory().search``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from aethergraph.core.context.llm_call import check_token_budget
from aethergraph.core.errors import RagError
from aethergraph.core.journal.scope import RunScope

__all__ = ["EMBED_BATCH", "Embedded", "cosine", "embed_texts"]

# Texts per embedding request (OpenAI accepts up to 2,048 inputs; smaller requests retry cheaper).
EMBED_BATCH = 256


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: list[list[float]]
    input_tokens: int
    model: str

    @property
    def dim(self) -> int:
        return len(self.vectors[0]) if self.vectors else 0


async def embed_texts(scope: RunScope, profile: str, texts: Sequence[str], *, idempotency_key: str) -> Embedded:
    """Embed ``texts`` with ``profile``'s endpoint, :data:`EMBED_BATCH` per request; every vector of one length."""
    models = scope.env.models
    if models is None:
        raise RagError(
            "this process has no model endpoints, so it cannot embed text: run it under a runtime "
            "(aethergraph.run / a worker) with an LLM profile configured (AETHERGRAPH_LLM__DEFAULT__BASE_URL, "
            "AETHERGRAPH_LLM__DEFAULT__EMBED_MODEL)"
        )
    endpoint = models.endpoint(profile)
    vectors: list[list[float]] = []
    tokens = 0
    model = endpoint.embed_model
    for start in range(0, len(texts), EMBED_BATCH):
        batch = texts[start : start + EMBED_BATCH]
        check_token_budget(scope, profile)  # embedding tokens count against the run's budget too
        reply = await endpoint.embed(batch, idempotency_key=f"{idempotency_key}:{start // EMBED_BATCH}")
        scope.llm_tokens += reply.usage.total
        if len(reply.vectors) != len(batch):
            raise RagError(
                f"the embedding endpoint of profile {profile!r} returned {len(reply.vectors)} vectors "
                f"for {len(batch)} texts; check that its embed_model is an embedding model"
            )
        vectors.extend(reply.vectors)
        tokens += reply.usage.input_tokens
        model = reply.model or model
    dims = {len(vector) for vector in vectors}
    if len(dims) > 1 or 0 in dims:
        raise RagError(f"the embedding endpoint of profile {profile!r} returned vectors of lengths {sorted(dims)}")
    return Embedded(vectors=vectors, input_tokens=tokens, model=model)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors of one length (0 when either is all zeros)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
