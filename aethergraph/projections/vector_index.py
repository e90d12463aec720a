"""The vector index: every run's ``rag.*`` events folded into DuckDB, searched exactly.

Each host keeps its own index (an in-memory DuckDB database, opened on first
use) and implements the core's
:class:`~aethergraph.core.journal.vector_port.VectorIndexPort` with it:

* ``rag.corpus_added`` adds a row to ``rag_corpora`` (the first addition of
  a name wins);
* ``rag.upserted`` loads its chunk blob from the artifact store
  (``chunks_ref``), deletes the corpus's earlier chunks of the same
  documents and inserts the new ones into ``rag_chunks_<dim>``, whose
  ``vec`` column is a ``FLOAT[<dim>]`` array;
* a search is exact: ``array_cosine_similarity`` of every chunk of the
  corpus (that passes the filters) with the query, best ``k`` first.

Events are folded in stream order, from the feed of
the event log's reads of every run's ``rag.*`` events. Before every search (and corpus lookup)
the index reads the stream's last sequence and folds everything stored up
to it, so an upsert committed on any host before the search began is
searched (read-your-writes). An event whose blob cannot be loaded (an
artifact store this host does not share) is skipped with a warning naming
the fix. A new process rebuilds its index from the stream on its first
search.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from aethergraph.bus.event_log import JetStreamEventLog, StoredRecord
from aethergraph.bus.topology import RAG_EVENTS
from aethergraph.core.errors import ArtifactNotFoundError, RagError
from aethergraph.core.journal.vector_port import (
    ChunkBatch,
    CorpusInfo,
    RagConfig,
    VectorHit,
    decode_chunk_batch,
    unpack_vector,
)
from aethergraph.core.wire.events import RagCorpusAdded, RagUpserted

if TYPE_CHECKING:
    import duckdb

    from aethergraph.core.journal.service_ports import BlobStore

__all__ = ["VectorIndex"]

log = logging.getLogger("aethergraph.rag")

_COLUMNS = ("doc_id", "title", "source")
_BLOB_CONCURRENCY = 8
_CORPORA_DDL = """
CREATE TABLE IF NOT EXISTS rag_corpora (
    corpus VARCHAR PRIMARY KEY, embed_profile VARCHAR, meta JSON, dim INTEGER, embed_model VARCHAR,
    chunk_count BIGINT DEFAULT 0, doc_count BIGINT DEFAULT 0
)"""


def _chunks_table(dim: int) -> str:
    return f"rag_chunks_{int(dim)}"


class VectorIndex:
    """A host's vector index; see the module docstring."""

    def __init__(self, event_log: JetStreamEventLog, blobs: BlobStore, config: RagConfig) -> None:
        self._event_log = event_log
        self._blobs = blobs
        self._config = config
        self._con: duckdb.DuckDBPyConnection | None = None
        self._dims: set[int] = set()
        self._cursor = 0  # the stream sequence everything up to which is folded
        self._folded: set[tuple[str, int]] = set()  # (run_id, seq) of the events folded
        self._writers: dict[tuple[str, str], tuple[str, int]] = {}  # (corpus, doc_id) -> the (run_id, seq) upserting it
        self._lock = asyncio.Lock()

    @property
    def config(self) -> RagConfig:
        return self._config

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            import duckdb

            self._con = duckdb.connect(":memory:")
            self._con.execute(_CORPORA_DDL)
        return self._con

    async def catch_up(self) -> None:
        async with self._lock:
            if self._con is None:
                await asyncio.to_thread(self._connection)
            last = await self._event_log.last_stream_seq()
            if last <= self._cursor:
                return
            async for batch in self._event_log.stored_matching(RAG_EVENTS, after=self._cursor):
                await self._fold(batch)
            self._cursor = max(self._cursor, last)

    async def _fold(self, batch: list[StoredRecord]) -> None:
        fresh = [m for m in batch if (m.event.run_id, m.event.seq) not in self._folded]
        for start in range(0, len(fresh), _BLOB_CONCURRENCY):
            group = fresh[start : start + _BLOB_CONCURRENCY]
            loaded = await asyncio.gather(*(self._load(message) for message in group))
            await asyncio.to_thread(self._apply, group, loaded)
            for message in group:
                self._folded.add((message.event.run_id, message.event.seq))
                self._cursor = max(self._cursor, message.stream_seq)

    async def _load(self, message: StoredRecord) -> ChunkBatch | None:
        event = message.event
        if not isinstance(event, RagUpserted):
            return None
        sha = self._blobs.digest_of(event.chunks_ref)
        try:
            if sha is None:
                raise ArtifactNotFoundError(f"{event.chunks_ref!r} is not a URI of this artifact store")
            return decode_chunk_batch(await self._blobs.get_bytes(sha))
        except (ArtifactNotFoundError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning(
                "rag.upserted of corpus %r (run %s, seq %d) skipped: its chunks %s cannot be loaded here (%s). "
                "Hosts that search each other's corpora must share the artifact store "
                "(AETHERGRAPH_ARTIFACT_STORE=object_store)",
                event.corpus,
                event.run_id,
                event.seq,
                event.chunks_ref,
                exc,
            )
            return None

    def _apply(self, messages: list[StoredRecord], loaded: list[ChunkBatch | None]) -> None:
        con = self._connection()
        for message, batch in zip(messages, loaded, strict=True):
            event = message.event
            if isinstance(event, RagCorpusAdded):
                con.execute(
                    "INSERT INTO rag_corpora VALUES (?, ?, ?, NULL, '', 0, 0) ON CONFLICT (corpus) DO UPDATE SET "
                    "embed_profile = excluded.embed_profile, meta = excluded.meta WHERE rag_corpora.embed_profile = ''",
                    [event.corpus, event.embed_profile, msgspec.json.encode(event.meta).decode()],
                )
            elif isinstance(event, RagUpserted) and batch is not None:
                self._apply_upsert(con, event, batch)

    def _apply_upsert(self, con: duckdb.DuckDBPyConnection, event: RagUpserted, batch: ChunkBatch) -> None:
        con.execute(
            "INSERT INTO rag_corpora VALUES (?, '', '{}', NULL, '', 0, 0) ON CONFLICT DO NOTHING", [event.corpus]
        )
        row = con.execute("SELECT dim FROM rag_corpora WHERE corpus = ?", [event.corpus]).fetchone()
        known_dim = row[0] if row else None
        if batch.chunks and known_dim is not None and known_dim != batch.dim:
            log.warning(
                "rag.upserted of corpus %r (run %s, seq %d) skipped: %d-dimensional vectors in a %d-dimensional corpus",
                event.corpus,
                event.run_id,
                event.seq,
                batch.dim,
                known_dim,
            )
            return
        batch = self._newer_only(event, batch)
        for dim in self._dims:
            con.execute(
                f"DELETE FROM {_chunks_table(dim)} WHERE corpus = ? AND doc_id IN (SELECT unnest(?))",
                [event.corpus, batch.doc_ids],
            )
        if batch.chunks:
            con.execute(
                "UPDATE rag_corpora SET dim = ?, embed_model = ? WHERE corpus = ?",
                [batch.dim, batch.embed_model, event.corpus],
            )
            self._insert(con, event.corpus, batch)
        for dim in self._dims:
            con.execute(
                f"UPDATE rag_corpora SET chunk_count = c.n, doc_count = c.d FROM (SELECT count(*) AS n, "
                f"count(DISTINCT doc_id) AS d FROM {_chunks_table(dim)} WHERE corpus = ?) AS c "
                "WHERE corpus = ? AND dim = ?",
                [event.corpus, event.corpus, dim],
            )

    def _newer_only(self, event: RagUpserted, batch: ChunkBatch) -> ChunkBatch:
        """``batch`` without the documents a later upsert of the same run has already replaced.

        Events are folded in stream order, and a run's events are stored in journal order except
        when its writer republished one after a broker fault: then an earlier upsert of the run can
        arrive after a later one, and must not bring back the chunks the later one replaced.
        """
        stale = set()
        for doc_id in batch.doc_ids:
            writer = self._writers.get((event.corpus, doc_id))
            if writer is not None and writer[0] == event.run_id and writer[1] > event.seq:
                stale.add(doc_id)
            else:
                self._writers[(event.corpus, doc_id)] = (event.run_id, event.seq)
        if not stale:
            return batch
        return msgspec.structs.replace(
            batch,
            doc_ids=[d for d in batch.doc_ids if d not in stale],
            chunks=[c for c in batch.chunks if c.doc_id not in stale],
        )

    def _insert(self, con: duckdb.DuckDBPyConnection, corpus: str, batch: ChunkBatch) -> None:
        table = self._ensure_table(con, batch.dim)
        chunks = batch.chunks
        # Vectors go in as JSON text cast in SQL: converting Python floats one by one is several times slower.
        con.execute(
            f"INSERT INTO {table} SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), "
            f"unnest(?)::JSON, unnest(?)::FLOAT[{batch.dim}]",
            [
                corpus,
                [c.doc_id for c in chunks],
                [c.chunk_no for c in chunks],
                [c.title for c in chunks],
                [c.source for c in chunks],
                [c.text for c in chunks],
                [msgspec.json.encode(c.metadata).decode() for c in chunks],
                [msgspec.json.encode(unpack_vector(c.vector)).decode() for c in chunks],
            ],
        )

    def _ensure_table(self, con: duckdb.DuckDBPyConnection, dim: int) -> str:
        table = _chunks_table(dim)
        if dim not in self._dims:
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (corpus VARCHAR, doc_id VARCHAR, chunk_no INTEGER, "
                f"title VARCHAR, source VARCHAR, text VARCHAR, metadata JSON, vec FLOAT[{int(dim)}])"
            )
            self._dims.add(dim)
        return table

    async def corpus(self, corpus: str) -> CorpusInfo | None:
        await self.catch_up()
        found = await asyncio.to_thread(self._corpora, corpus)
        return found[0] if found else None

    async def corpora(self) -> list[CorpusInfo]:
        await self.catch_up()
        return await asyncio.to_thread(self._corpora, None)

    def _corpora(self, corpus: str | None) -> list[CorpusInfo]:
        con = self._connection().cursor()
        try:
            where = "WHERE corpus = ?" if corpus is not None else ""
            rows = con.execute(
                "SELECT corpus, embed_profile, meta, dim, embed_model, chunk_count, doc_count "
                f"FROM rag_corpora {where} ORDER BY corpus",
                [corpus] if corpus is not None else [],
            ).fetchall()
            return [
                CorpusInfo(
                    corpus=name,
                    embed_profile=profile,
                    meta=msgspec.json.decode(meta) if meta else {},
                    dim=dim or 0,
                    embed_model=model,
                    chunk_count=chunks,
                    doc_count=docs,
                )
                for name, profile, meta, dim, model, chunks, docs in rows
            ]
        finally:
            con.close()

    async def search(
        self, corpus: str, vector: list[float], k: int, filters: dict[str, Any] | None = None
    ) -> list[VectorHit]:
        await self.catch_up()
        return await asyncio.to_thread(self._search, corpus, vector, k, filters or {})

    def _search(self, corpus: str, vector: list[float], k: int, filters: dict[str, Any]) -> list[VectorHit]:
        con = self._connection().cursor()
        try:
            row = con.execute("SELECT dim FROM rag_corpora WHERE corpus = ?", [corpus]).fetchone()
            dim = row[0] if row else None
            if dim is None or dim not in self._dims:
                return []
            if len(vector) != dim:
                raise RagError(
                    f"the query vector has {len(vector)} dimensions but corpus {corpus!r} holds {dim}-dimensional "
                    "vectors: search with the corpus's embedding profile",
                    corpus=corpus,
                )
            clauses, params = _filter_sql(filters)
            rows = con.execute(
                f"SELECT doc_id, chunk_no, text, title, source, metadata, "
                f"array_cosine_similarity(vec, ?::VARCHAR::FLOAT[{dim}]) AS score FROM {_chunks_table(dim)} "
                f"WHERE corpus = ?{clauses} ORDER BY score DESC NULLS LAST, doc_id, chunk_no LIMIT ?",
                # the query as JSON text: binding a list of Python floats costs more than parsing it
                [msgspec.json.encode(vector).decode(), corpus, *params, int(k)],
            ).fetchall()
        finally:
            con.close()
        return [
            VectorHit(
                corpus=corpus,
                doc_id=doc_id,
                chunk_no=chunk_no,
                text=text,
                score=float(score) if score is not None else 0.0,
                title=title,
                source=source,
                metadata=msgspec.json.decode(metadata) if metadata else {},
            )
            for doc_id, chunk_no, text, title, source, metadata, score in rows
        ]

    async def close(self) -> None:
        async with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None


def _filter_sql(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQL conditions keeping chunks whose column or metadata key equals the value (any of a list's values)."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, wanted in filters.items():
        values = list(wanted) if isinstance(wanted, (list, tuple)) else [wanted]
        if not values:
            clauses.append(" AND false")
            continue
        marks = ", ".join("?" for _ in values)
        if key in _COLUMNS:
            clauses.append(f" AND {key} IN ({marks})")
            params.extend(str(value) for value in values)
            continue
        if not isinstance(key, str) or not key or '"' in key or "\\" in key:
            raise RagError(f"invalid filter key {key!r}: use doc_id, title, source or a metadata key without quotes")
        clauses.append(f" AND CAST(json_extract(metadata, ?) AS VARCHAR) IN ({marks})")
        params.append(f'$."{key}"')
        params.extend(msgspec.json.encode(value).decode() for value in values)
    return "".join(clauses), params
