"""The port ``context.rag()`` searches through, and the stored form of an upsert's chunks.

``core`` journals retrieval; it holds no index. An upsert stores its chunks,
their metadata and their embeddings as ONE blob in the artifact store
(:class:`ChunkBatch`, msgpack-encoded, referenced by the ``rag.upserted``
event's ``chunks_ref``); every host folds those events into its own index
(DuckDB, :mod:`aethergraph.projections.vector_index`), which implements
:class:`VectorIndexPort`. The composition root hands it to runs as the run
environment's ``vectors``.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

__all__ = [
    "ChunkBatch",
    "ChunkRecord",
    "CorpusInfo",
    "RagConfig",
    "VectorHit",
    "VectorIndexPort",
    "decode_chunk_batch",
    "encode_chunk_batch",
    "pack_vector",
    "unpack_vector",
]


class ChunkRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One chunk of a document: its text, where it comes from, and its embedding (float32, little-endian)."""

    doc_id: str
    chunk_no: int
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = {}
    vector: bytes = b""


class ChunkBatch(msgspec.Struct, frozen=True, kw_only=True):
    """What one ``rag.upserted`` event references: the chunks of its documents (replacing their earlier ones)."""

    corpus: str
    embed_model: str
    dim: int
    doc_ids: list[str]
    chunks: list[ChunkRecord]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ChunkBatch)


def encode_chunk_batch(batch: ChunkBatch) -> bytes:
    return _encoder.encode(batch)


def decode_chunk_batch(data: bytes) -> ChunkBatch:
    return _decoder.decode(data)


def pack_vector(vector: list[float]) -> bytes:
    """A vector as float32 little-endian bytes (half the size of msgpack floats, exact enough for similarity)."""
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def unpack_vector(data: bytes) -> list[float]:
    unpacked = array.array("f")
    unpacked.frombytes(data)
    if sys.byteorder != "little":
        unpacked.byteswap()
    return unpacked.tolist()


@dataclass(frozen=True, slots=True)
class RagConfig:
    """The process's RAG settings (``settings.rag``), as runs see them.

    ``memory_embed_profile`` is the embedding profile ``memory().search``
    uses, or None when that profile has no ``embed_model`` configured (the
    search stays lexical).
    """

    embed_profile: str = "default"
    chunk_chars: int = 1200
    chunk_overlap: int = 150
    memory_embed_profile: str | None = None


@dataclass(frozen=True, slots=True)
class CorpusInfo:
    """A corpus as the index knows it: the embedding profile its chunks use, and what it holds."""

    corpus: str
    embed_profile: str
    meta: dict[str, Any]
    dim: int
    embed_model: str
    chunk_count: int
    doc_count: int


@dataclass(frozen=True, slots=True)
class VectorHit:
    """One search result: a chunk, its similarity to the query (cosine, higher is closer) and its document."""

    corpus: str
    doc_id: str
    chunk_no: int
    text: str
    score: float
    title: str
    source: str
    metadata: dict[str, Any]


class VectorIndexPort(Protocol):
    """The chunks of every corpus, folded from the ``rag.*`` events of every run.

    Read-your-writes: :meth:`search` and :meth:`corpus` first fold every
    ``rag.*`` event stored on the bus when they are called (:meth:`catch_up`),
    so an upsert committed anywhere before the call is visible to it.
    """

    @property
    def config(self) -> RagConfig: ...

    async def catch_up(self) -> None:
        """Fold every ``rag.*`` event the bus has stored up to now."""
        ...

    async def corpus(self, corpus: str) -> CorpusInfo | None:
        """The corpus (after catching up), or None if no run has added it."""
        ...

    async def corpora(self) -> list[CorpusInfo]:
        """Every corpus (after catching up), by name."""
        ...

    async def search(
        self, corpus: str, vector: list[float], k: int, filters: dict[str, Any] | None = None
    ) -> list[VectorHit]:
        """The ``k`` chunks of ``corpus`` closest to ``vector`` (exact search, after catching up), best first.

        ``filters`` keeps chunks whose field (``doc_id``, ``title``, ``source``)
        or metadata key equals the value (any of the values, for a list).
        """
        ...
