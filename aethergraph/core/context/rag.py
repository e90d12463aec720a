"""``context.rag()``: corpora of chunked, embedded documents, searched by similarity, answered with citations.

Event-sourced like everything else:

* ``add_corpus`` journals ``rag.corpus_added`` (a one-event step);
* ``upsert_docs`` chunks the documents (:mod:`~aethergraph.core.context.chunking`),
  embeds the chunks through the model port (:data:`~aethergraph.core.context.embedding.EMBED_BATCH`
  texts per request), stores chunks, metadata and vectors as ONE blob in the
  artifact store and journals ``rag.upserted`` referencing it (a one-event
  step per :data:`DOCS_PER_EVENT` documents, committed before the call
  returns). A replay returns the recorded outcome without chunking or
  embedding again. Upserting a ``doc_id`` again replaces its chunks;
* every host folds those events into its own vector index (the run
  environment's ``vectors``, DuckDB in :mod:`aethergraph.projections.vector_index`),
  so any host searches any corpus, and sees every upsert committed before
  the search began;
* ``search`` is a journaled call (service ``rag``): it embeds the query,
  asks the index, and the hits are recorded, so a replay returns the same
  hits without embedding or searching;
* ``answer`` is a search and one ``context.llm(profile).chat(...)`` turn
  with the hits as numbered context; it returns the answer and the hits it cites.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aethergraph.core.context.chunking import Chunk, chunk_file, chunk_text
from aethergraph.core.context.embedding import embed_texts
from aethergraph.core.context.service_calls import call_journaled
from aethergraph.core.errors import RagError
from aethergraph.core.journal.scope import RunScope
from aethergraph.core.journal.step import StepKey, append_opening, replayed_opening, suspend_point
from aethergraph.core.journal.vector_port import (
    ChunkBatch,
    ChunkRecord,
    CorpusInfo,
    RagConfig,
    VectorIndexPort,
    encode_chunk_batch,
    pack_vector,
)
from aethergraph.core.wire.codec import digest, normalise_value
from aethergraph.core.wire.events import RagCorpusAdded, RagUpserted

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = ["DOCS_PER_EVENT", "RagService"]

# Documents per rag.upserted event: keeps each event's ``docs`` list far below the event size limit.
DOCS_PER_EVENT = 500
_CORPUS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_DOC_KEYS = frozenset({"text", "path", "doc_id", "title", "metadata", "source"})
_CITED = re.compile(r"\[(\d{1,3})\]")
_ANSWER_SYSTEM = (
    "Answer the question using only the numbered context passages. Cite the passages you use as [1], [2], ... "
    "If the context does not contain the answer, say that you do not know."
)


@dataclass(frozen=True, slots=True)
class _Doc:
    doc_id: str
    title: str
    source: str
    metadata: dict[str, Any]
    chunks: list[Chunk]


def _check_corpus(corpus: object) -> str:
    if not isinstance(corpus, str) or not _CORPUS_NAME.match(corpus):
        raise RagError(
            f"invalid corpus name {corpus!r}: use 1-128 letters, digits, '_', '.', ':' or '-', starting with a "
            "letter or digit"
        )
    return corpus


def _vectors(scope: RunScope) -> VectorIndexPort:
    vectors = scope.env.vectors
    if vectors is None:
        raise RagError(
            "this process has no vector index: context.rag() runs under a runtime connected to the bus "
            "(aethergraph.run / a worker), not in offline replay past the recorded history"
        )
    return vectors


async def _known_corpus(vectors: VectorIndexPort, corpus: str) -> CorpusInfo:
    info = await vectors.corpus(corpus)
    if info is None:
        known = ", ".join(c.corpus for c in await vectors.corpora()) or "none yet"
        raise RagError(
            f"unknown corpus {corpus!r}: create it first with context.rag().add_corpus({corpus!r}) "
            f"(corpora on this bus: {known})",
            corpus=corpus,
        )
    return info


def _doc_from(doc: object, config: RagConfig, where: str) -> _Doc:
    """One document as given (text, path or dict), read and chunked."""
    if isinstance(doc, str):
        doc = {"text": doc}
    elif isinstance(doc, os.PathLike):
        doc = {"path": doc}
    if not isinstance(doc, Mapping):
        raise RagError(
            f"{where}: a document is a text (str), a file path (pathlib.Path) or a dict with 'text' or 'path' "
            f"(and optional 'doc_id', 'title', 'metadata'); got {type(doc).__name__}"
        )
    unknown = sorted(str(key) for key in doc if key not in _DOC_KEYS)
    if unknown or ("text" in doc) == ("path" in doc):
        raise RagError(
            f"{where}: a document dict needs exactly one of 'text' or 'path', and only the keys "
            f"{sorted(_DOC_KEYS)}; got {sorted(str(key) for key in doc)}"
        )
    metadata, _ = normalise_value(dict(doc.get("metadata") or {}), what=f"{where} metadata")
    sizes = {"chunk_chars": config.chunk_chars, "overlap": config.chunk_overlap}
    if "path" in doc:
        path = Path(os.fspath(doc["path"])).expanduser()
        chunks = chunk_file(path, **sizes)
        source = str(path.resolve()) if path.exists() else str(path)
        default_id, default_title = source, path.name
    else:
        text = doc["text"]
        if not isinstance(text, str):
            raise RagError(f"{where}: 'text' must be a str, got {type(text).__name__}")
        chunks = [Chunk(piece) for piece in chunk_text(text, **sizes)]
        default_id, default_title = "text:" + digest(text.encode()), ""
        source = str(doc.get("source") or "")
    return _Doc(
        doc_id=str(doc.get("doc_id") or default_id),
        title=str(doc.get("title") or default_title),
        source=str(doc.get("source") or source),
        metadata=metadata,
        chunks=chunks,
    )


def _summary(event: RagUpserted) -> dict[str, Any]:
    return {
        "corpus": event.corpus,
        "docs": list(event.docs),
        "chunk_count": event.chunk_count,
        "dim": event.dim,
        "embed_model": event.embed_model,
        "input_tokens": event.input_tokens,
        "chunks_ref": event.chunks_ref,
    }


def _merged(corpus: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of an upsert journaled as several events."""
    return {
        "corpus": corpus,
        "docs": [doc for part in parts for doc in part["docs"]],
        "chunk_count": sum(part["chunk_count"] for part in parts),
        "dim": max((part["dim"] for part in parts), default=0),
        "embed_model": next((part["embed_model"] for part in parts if part["embed_model"]), ""),
        "input_tokens": sum(part["input_tokens"] for part in parts),
        "chunks_refs": [part["chunks_ref"] for part in parts],
    }


def _hit_dict(hit: Any) -> dict[str, Any]:
    return {
        "text": hit.text,
        "score": float(hit.score),
        "doc_id": hit.doc_id,
        "title": hit.title,
        "source": hit.source,
        "chunk_no": hit.chunk_no,
        "metadata": hit.metadata,
    }


class RagService:
    """``context.rag()`` for one node; see the module docstring."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx

    def _scope(self) -> RunScope:
        scope = self._ctx._scope
        if scope.divergence is not None:
            raise scope.divergence
        return scope

    async def add_corpus(
        self, corpus: str, *, embed_profile: str | None = None, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create ``corpus`` (its chunks embedded with ``embed_profile``, default ``settings.rag.embed_profile``).

        Adding an existing corpus again with the same profile is harmless; with another profile it is a
        :class:`~aethergraph.errors.RagError` (vectors of two embedding models cannot be compared).
        """
        _check_corpus(corpus)
        scope, node_id = self._scope(), self._ctx.node_id
        key = StepKey(RagCorpusAdded, node_id, f"context.rag().add_corpus({corpus!r})", names={"corpus": corpus})
        recorded = replayed_opening(scope, key)
        if isinstance(recorded, RagCorpusAdded):
            return {"corpus": recorded.corpus, "embed_profile": recorded.embed_profile, "meta": dict(recorded.meta)}
        vectors = _vectors(scope)
        profile = embed_profile or vectors.config.embed_profile
        existing = await vectors.corpus(corpus)
        if existing is not None and existing.embed_profile != profile:
            raise RagError(
                f"corpus {corpus!r} exists with embedding profile {existing.embed_profile!r}, not {profile!r}: "
                "vectors of different embedding models cannot be searched together; use another corpus name",
                corpus=corpus,
            )
        meta_value, _ = normalise_value(dict(meta or {}), what=f"add_corpus({corpus!r}) meta")
        _, committed = append_opening(scope, key, embed_profile=profile, meta=meta_value)
        await committed
        suspend_point(scope)
        return {"corpus": corpus, "embed_profile": profile, "meta": meta_value}

    async def upsert_docs(self, corpus: str, docs: Iterable[Any]) -> dict[str, Any]:
        """Chunk, embed and store ``docs`` in ``corpus``; a document's earlier chunks (same ``doc_id``) are replaced.

        A document is a text, a file path (``pathlib.Path``: ``.txt``, ``.md``, ``.pdf``, ...) or a dict
        with ``text`` or ``path`` and optional ``doc_id`` (default: the text's digest or the file's
        path), ``title``, ``source`` and ``metadata`` (searchable with ``filters``). Returns the
        documents' ids, titles and chunk counts, and the tokens the embeddings took.
        """
        _check_corpus(corpus)
        if isinstance(docs, (str, bytes, os.PathLike, Mapping)):
            docs = [docs]
        given = list(docs)
        if not given:
            raise RagError(f"upsert_docs({corpus!r}) was given no documents", corpus=corpus)
        parts = []
        for start in range(0, len(given), DOCS_PER_EVENT):
            parts.append(await self._upsert_group(corpus, given[start : start + DOCS_PER_EVENT], start))
        return parts[0] if len(parts) == 1 else _merged(corpus, parts)

    async def _upsert_group(self, corpus: str, docs: list[Any], offset: int) -> dict[str, Any]:
        scope, ctx = self._scope(), self._ctx
        key = StepKey(RagUpserted, ctx.node_id, f"context.rag().upsert_docs({corpus!r})", names={"corpus": corpus})
        recorded = replayed_opening(scope, key)
        if isinstance(recorded, RagUpserted):
            scope.llm_tokens += recorded.input_tokens  # spent when it was recorded: counts against the budget
            return _summary(recorded)
        vectors = _vectors(scope)
        info = await _known_corpus(vectors, corpus)
        config = vectors.config
        where = f"upsert_docs({corpus!r})"
        prepared = await asyncio.to_thread(
            lambda: [_doc_from(doc, config, f"{where} document {offset + i}") for i, doc in enumerate(docs)]
        )
        texts = [chunk.text for doc in prepared for chunk in doc.chunks]
        embedded = await embed_texts(scope, info.embed_profile, texts, idempotency_key=ctx.idempotency_key())
        if texts and info.dim and embedded.dim != info.dim:
            raise RagError(
                f"{where}: the embeddings have {embedded.dim} dimensions but the corpus holds {info.dim}-dimensional "
                f"ones ({info.embed_model}); the profile's embed_model changed, so use a new corpus",
                corpus=corpus,
            )
        ref = await self._store(scope, corpus, prepared, embedded.vectors, embedded.model, embedded.dim)
        listed = [
            {"doc_id": doc.doc_id, "title": doc.title[:200], "source": doc.source[:500], "chunks": len(doc.chunks)}
            for doc in prepared
        ]
        event, committed = append_opening(
            scope,
            key,
            docs=listed,
            chunks_ref=ref,
            chunk_count=len(texts),
            dim=embedded.dim,
            embed_model=embedded.model,
            input_tokens=embedded.input_tokens,
        )
        await committed
        suspend_point(scope)
        assert isinstance(event, RagUpserted)
        return _summary(event)

    @staticmethod
    async def _store(
        scope: RunScope, corpus: str, docs: list[_Doc], vectors: list[list[float]], model: str, dim: int
    ) -> str:
        """The chunks, their metadata and vectors as one content-addressed blob; returns its URI."""
        records: list[ChunkRecord] = []
        vector_iter = iter(vectors)
        for doc in docs:
            for number, chunk in enumerate(doc.chunks):
                records.append(
                    ChunkRecord(
                        doc_id=doc.doc_id,
                        chunk_no=number,
                        text=chunk.text,
                        title=doc.title,
                        source=doc.source,
                        metadata={**doc.metadata, **chunk.metadata},
                        vector=pack_vector(next(vector_iter)),
                    )
                )
        batch = ChunkBatch(
            corpus=corpus, embed_model=model, dim=dim, doc_ids=[doc.doc_id for doc in docs], chunks=records
        )
        raw = encode_chunk_batch(batch)
        blobs = scope.env.service_backends.blobs
        sha = hashlib.sha256(raw).hexdigest()
        if not await blobs.has(sha):
            await blobs.put_bytes(sha, raw)
        return blobs.uri(sha)

    async def search(
        self, corpus: str, query: str, k: int = 5, filters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The ``k`` chunks of ``corpus`` most similar to ``query``, best first (exact cosine similarity).

        Each hit is ``{"text", "score", "doc_id", "title", "source", "chunk_no", "metadata"}``.
        ``filters`` keeps chunks whose ``doc_id``/``title``/``source`` or metadata key equals the
        value (any of them, for a list). The search sees every upsert committed before it began,
        on any host; a replay returns the recorded hits.
        """
        _check_corpus(corpus)
        if not isinstance(query, str) or not query.strip():
            raise RagError(f"search({corpus!r}) needs a non-empty query string, got {query!r}", corpus=corpus)
        if not isinstance(k, int) or k < 1:
            raise RagError(f"search({corpus!r}): k must be a positive int, got {k!r}", corpus=corpus)
        wanted, _ = normalise_value(dict(filters or {}), what=f"search({corpus!r}) filters")
        found = await call_journaled(self._ctx, "rag", "search", self._search, (corpus, query, k, wanted), {})
        return list(found)

    async def _search(self, corpus: str, query: str, k: int, filters: dict[str, Any]) -> list[dict[str, Any]]:
        scope = self._ctx._scope
        vectors = _vectors(scope)
        info = await _known_corpus(vectors, corpus)
        if info.chunk_count == 0:
            return []
        embedded = await embed_texts(scope, info.embed_profile, [query], idempotency_key=self._ctx.idempotency_key())
        hits = await vectors.search(corpus, embedded.vectors[0], k, filters or None)
        return [_hit_dict(hit) for hit in hits]

    async def answer(
        self,
        corpus: str,
        question: str,
        k: int = 5,
        *,
        profile: str = "default",
        filters: Mapping[str, Any] | None = None,
        system: str | None = None,
    ) -> dict[str, Any]:
        """Answer ``question`` from the ``k`` best chunks of ``corpus`` with one model turn of ``profile``.

        Returns ``{"answer": text, "citations": [...], "usage": {...}}``: the citations are the hits
        the answer cites as ``[n]`` (all hits if it cites none), each with its number ``index``.
        """
        hits = await self.search(corpus, question, k, filters)
        numbered = "\n\n".join(
            f"[{i}] {hit['title'] or hit['doc_id']}\n{hit['text']}" for i, hit in enumerate(hits, start=1)
        )
        messages = [
            {"role": "system", "content": system or _ANSWER_SYSTEM},
            {"role": "user", "content": f"Context:\n{numbered or '(no passages found)'}\n\nQuestion: {question}"},
        ]
        text, usage = await self._ctx.llm(profile).chat(messages)
        return {"answer": text, "citations": _citations(str(text), hits), "usage": usage}


def _citations(text: str, hits: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    numbered = [{"index": i, **hit} for i, hit in enumerate(hits, start=1)]
    cited = {int(n) for n in _CITED.findall(text)}
    chosen = [hit for hit in numbered if hit["index"] in cited]
    return chosen or numbered
