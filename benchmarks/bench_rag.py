"""17. RAG: upserting 10,000 chunks, folding them into a fresh host's index, exact search p50/p99."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from typing import Any

from aethergraph import Settings, graph_fn
from aethergraph.core.context.rag import DOCS_PER_EVENT
from aethergraph.core.run.executor import execute_run
from aethergraph.host.process import ProcessHost, _rag_config
from aethergraph.projections.vector_index import VectorIndex
from aethergraph.testing.fake_openai_wire import embed_text

from .harness import DEFAULT_SYNC, BenchContext, Figure, isolated_server, latency_figure, value_figure
from .hash_model import HashEmbedEndpoint, HashModels

NAME = "rag"
TITLE = "17. RAG"
DIM = 256
SEARCHES = 200
K = 10

_VOCABULARY = [f"w{i}" for i in range(5000)]
_samples: dict[str, list[int]] = {}


def _docs(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` one-chunk documents of 30 words from a 5,000-word vocabulary (about 200 characters each)."""
    rng = random.Random(seed)
    return [
        {"text": " ".join(rng.choices(_VOCABULARY, k=30)), "doc_id": f"d{i}", "metadata": {"shard": i % 10}}
        for i in range(n)
    ]


@graph_fn(name="bench_rag_upsert", outputs=["chunks"])
async def bench_rag_upsert(corpus: str, n: int, seed: int, *, context: Any) -> dict[str, int]:
    rag = context.rag()
    await rag.add_corpus(corpus)
    docs = _docs(n, seed)
    started = time.perf_counter_ns()
    summary = await rag.upsert_docs(corpus, docs)
    _samples.setdefault("upsert", []).append(time.perf_counter_ns() - started)
    return {"chunks": summary["chunk_count"]}


@graph_fn(name="bench_rag_search", outputs=["n"])
async def bench_rag_search(corpus: str, queries: list[str], *, context: Any) -> dict[str, int]:
    rag = context.rag()
    for query in queries:
        started = time.perf_counter_ns()
        await rag.search(corpus, query, k=K)
        _samples.setdefault("journaled", []).append(time.perf_counter_ns() - started)
    return {"n": len(queries)}


async def _index_searches(index: VectorIndex, corpus: str, queries: list[str]) -> list[int]:
    samples = []
    for query in queries:
        vector = embed_text(query, DIM)
        started = time.perf_counter_ns()
        hits = await index.search(corpus, vector, K)
        samples.append(time.perf_counter_ns() - started)
        assert len(hits) == K
    return samples


async def _measure(ctx: BenchContext) -> tuple[list[Figure], dict[str, Any]]:
    chunks = ctx.pick(10_000, 2_000)
    repeats = ctx.pick(3, 1)
    upserts: list[float] = []
    folds: list[float] = []
    index_blocks: list[list[int]] = []
    journaled_blocks: list[list[int]] = []
    with isolated_server(DEFAULT_SYNC) as (server, workspace):
        settings = Settings(nats_url=server.url, workspace=workspace, sync_interval=DEFAULT_SYNC)
        async with await ProcessHost.open(settings) as host:
            env = dataclasses.replace(host.env, models=HashModels(endpoint_=HashEmbedEndpoint(dim=DIM)))
            for repeat in range(repeats):
                corpus = f"bench-{repeat}-{os.urandom(3).hex()}"
                ctx.say(f"repeat {repeat + 1}/{repeats}: upsert {chunks:,} chunks into {corpus}")
                _samples.clear()
                outputs = await execute_run(
                    bench_rag_upsert.spec, {"corpus": corpus, "n": chunks, "seed": repeat}, env=env
                )
                assert outputs["chunks"] == chunks
                upserts.append(chunks / (_samples["upsert"][0] / 1e9))
                # a fresh index, as a new host has: it folds every rag event on the stream on its first search
                fresh = VectorIndex(host.event_log, host.service_backends.blobs, _rag_config(settings))
                try:
                    started = time.perf_counter()
                    await fresh.catch_up()
                    folds.append((repeat + 1) * chunks / (time.perf_counter() - started))
                    queries = [" ".join(random.Random(i).choices(_VOCABULARY, k=8)) for i in range(SEARCHES)]
                    ctx.say(f"{SEARCHES} exact searches (k={K}) on the index, then {SEARCHES} journaled in a run")
                    index_blocks.append(await _index_searches(fresh, corpus, queries))
                finally:
                    await fresh.close()
                await execute_run(bench_rag_search.spec, {"corpus": corpus, "queries": queries}, env=env)
                journaled_blocks.append(list(_samples["journaled"]))
    figures = [
        value_figure(
            NAME,
            "upsert",
            f"`upsert_docs` of {chunks:,} one-chunk documents (chunk, embed, blob, "
            f"{-(-chunks // DOCS_PER_EVENT)} committed events)",
            upserts,
            unit="chunks/s",
            per_repeat_n=chunks,
            better="higher",
            sync_interval=DEFAULT_SYNC,
        ),
        value_figure(
            NAME,
            "fold",
            "a fresh host's index folding every upsert on the stream (blob load + DuckDB insert)",
            folds,
            unit="chunks/s",
            per_repeat_n=chunks,
            better="higher",
            sync_interval=None,
        ),
        latency_figure(
            NAME,
            "index_search",
            f"exact search over {chunks:,} chunks (k={K}, {DIM} dims, incl. the catch-up check)",
            index_blocks,
            sync_interval=None,
        ),
        latency_figure(
            NAME,
            "journaled_search",
            f"`await context.rag().search(corpus, q, k={K})` in a graph_fn (embed, search, commit)",
            journaled_blocks,
            sync_interval=DEFAULT_SYNC,
        ),
    ]
    return figures, {"chunks": chunks}


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    figures, facts = asyncio.run(_measure(ctx))
    notes = [
        f"{facts['chunks']:,} documents of 30 words drawn from a 5,000-word vocabulary, one chunk each, embedded "
        f"by an in-process hashed bag-of-words model ({DIM} dimensions: FakeOpenAI's embedding without HTTP, "
        "`benchmarks/hash_model.py`), so the "
        "figures are the runtime's and the index's, not a model server's. An upsert of more than 500 documents "
        "is journaled as one `rag.upserted` per 500 (each referencing one chunk blob in the artifact store, here "
        "local files on the embedded server).",
        "Search is exact: DuckDB's `array_cosine_similarity` over every chunk of the corpus (`FLOAT[256]` "
        "arrays, in-memory database), best k first. Each search first asks the stream's last sequence (one "
        "JetStream API round trip) so it sees every upsert committed anywhere before it (read-your-writes). "
        "The journaled search adds embedding the query and committing `service.called`/`service.returned`.",
        "The fold figure is what a new host pays on its first search: every `rag.upserted` on the stream is read "
        "by direct gets, its blob loaded, and its vectors inserted (passed to DuckDB as JSON text and cast, several "
        "times faster than Python float lists).",
    ]
    return figures, notes
