"""``context.rag()``: corpora, upserts as events with their chunks in the artifact store, exact search in
each host's DuckDB index (read-your-writes across hosts), replay without embedding, bad input.

The model port of these runs is the deterministic hashed-bag-of-words embedder of
``benchmarks/hash_model.py`` (texts sharing words are near).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import chain_of
from test_rag_chunking import make_pdf

from aethergraph import graph_fn
from aethergraph.core.journal.ports import RunEnvironment
from aethergraph.core.journal.vector_port import RagConfig, decode_chunk_batch
from aethergraph.core.run.executor import execute_run
from aethergraph.core.settings import load_settings
from aethergraph.core.wire import events as ev
from aethergraph.errors import RagError
from aethergraph.host.process import ProcessHost, _rag_config
from benchmarks.hash_model import HashModels

FILLER = [
    "The quarterly report covers revenue growth in the northern region.",
    "Our cafeteria menu changes every Monday with seasonal vegetables.",
    "Parking permits are renewed at the front desk each January.",
    "The marketing team prefers short slogans and bright colours.",
    "Server racks in room 4 are cooled by the new chiller.",
    "Holiday schedules are posted on the intranet calendar.",
    "Printer cartridges are stored in the supply closet.",
    "The soccer league meets on Thursday evenings after work.",
]
PLANTED = "Turbine blade inspection: replace the titanium blade when erosion exceeds two millimetres."


def corpus_name(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def env_with(runtime: ProcessHost, models: HashModels, **changes: Any) -> RunEnvironment:
    return dataclasses.replace(runtime.env, models=models, **changes)  # type: ignore[arg-type]


@graph_fn(name="rag_planted", outputs=["v"])
async def rag_planted(corpus: str, *, context: Any) -> dict[str, Any]:
    rag = context.rag()
    added = await rag.add_corpus(corpus, meta={"owner": "maintenance"})
    docs = [{"text": text, "doc_id": f"filler-{i}", "title": f"Memo {i}"} for i, text in enumerate(FILLER)]
    docs.insert(3, {"text": PLANTED, "doc_id": "turbines", "title": "Turbine manual", "metadata": {"dept": "ops"}})
    upserted = await rag.upsert_docs(corpus, docs)
    hits = await rag.search(corpus, "when should a titanium turbine blade be replaced?", k=3)
    return {"v": {"added": added, "upserted": upserted, "hits": hits}}


async def test_planted_document_comes_first(runtime: ProcessHost) -> None:
    models = HashModels()
    corpus = corpus_name("planted")
    run_id = "rag" + os.urandom(5).hex()
    v = (await execute_run(rag_planted.spec, {"corpus": corpus}, run_id=run_id, env=env_with(runtime, models)))["v"]
    assert v["added"] == {"corpus": corpus, "embed_profile": "default", "meta": {"owner": "maintenance"}}
    assert v["upserted"]["chunk_count"] == 9 and v["upserted"]["dim"] == 256
    assert v["upserted"]["embed_model"] == "hash-embed" and v["upserted"]["input_tokens"] > 0
    assert [d["doc_id"] for d in v["upserted"]["docs"]][3] == "turbines"
    first = v["hits"][0]
    assert first["doc_id"] == "turbines" and first["title"] == "Turbine manual" and first["text"] == PLANTED
    assert first["metadata"] == {"dept": "ops"} and first["chunk_no"] == 0
    assert first["score"] > v["hits"][1]["score"]
    assert models.endpoint_.requests == [9, 1]  # one batch for the upsert, one for the query

    # the journal: corpus_added and upserted as one-event steps, the search as a rag service call
    chain = await chain_of(runtime, run_id)
    upserted = next(e for e in chain if isinstance(e, ev.RagUpserted))
    assert any(isinstance(e, ev.RagCorpusAdded) and e.corpus == corpus for e in chain)
    assert any(isinstance(e, ev.ServiceCalled) and e.service == "rag" and e.method == "search" for e in chain)
    # the chunks, their metadata and vectors are one blob in the artifact store
    blobs = runtime.service_backends.blobs
    sha = blobs.digest_of(upserted.chunks_ref)
    assert sha is not None
    batch = decode_chunk_batch(await blobs.get_bytes(sha))
    assert batch.corpus == corpus and batch.dim == 256 and len(batch.chunks) == 9
    assert len(batch.chunks[3].vector) == 4 * 256 and batch.chunks[3].metadata == {"dept": "ops"}


@graph_fn(name="rag_filters", outputs=["v"])
async def rag_filters(corpus: str, *, context: Any) -> dict[str, Any]:
    rag = context.rag()
    await rag.add_corpus(corpus)
    await rag.upsert_docs(
        corpus,
        [
            {"text": "pump maintenance schedule for hall A", "doc_id": "a", "metadata": {"hall": "A", "year": 2024}},
            {"text": "pump maintenance schedule for hall B", "doc_id": "b", "metadata": {"hall": "B", "year": 2025}},
            {"text": "pump maintenance schedule for hall C", "doc_id": "c", "metadata": {"hall": "C", "year": 2025}},
        ],
    )
    query = "pump maintenance schedule"
    return {
        "v": {
            "all": [h["doc_id"] for h in await rag.search(corpus, query, k=10)],
            "hall_b": [h["doc_id"] for h in await rag.search(corpus, query, filters={"hall": "B"})],
            "year": sorted(h["doc_id"] for h in await rag.search(corpus, query, filters={"year": 2025})),
            "any_of": sorted(h["doc_id"] for h in await rag.search(corpus, query, filters={"hall": ["A", "C"]})),
            "by_id": [h["doc_id"] for h in await rag.search(corpus, query, filters={"doc_id": "c"})],
            "both": [h["doc_id"] for h in await rag.search(corpus, query, filters={"year": 2025, "hall": "C"})],
            "none": await rag.search(corpus, query, filters={"hall": "Z"}),
            "k": len(await rag.search(corpus, query, k=2)),
        }
    }


async def test_metadata_and_field_filters(runtime: ProcessHost) -> None:
    v = (await execute_run(rag_filters.spec, {"corpus": corpus_name("filters")}, env=env_with(runtime, HashModels())))[
        "v"
    ]
    assert sorted(v["all"]) == ["a", "b", "c"]
    assert v["hall_b"] == ["b"] and v["year"] == ["b", "c"] and v["any_of"] == ["a", "c"]
    assert v["by_id"] == ["c"] and v["both"] == ["c"] and v["none"] == [] and v["k"] == 2


@graph_fn(name="rag_reupsert", outputs=["v"])
async def rag_reupsert(corpus: str, path: str, *, context: Any) -> dict[str, Any]:
    rag = context.rag()
    await rag.add_corpus(corpus)
    await rag.upsert_docs(corpus, [{"text": "the old wording about copper pipes", "doc_id": "pipes"}, "a bystander"])
    before = await rag.search(corpus, "copper pipes", k=5)
    await rag.upsert_docs(corpus, [{"text": "new wording about steel valves", "doc_id": "pipes", "title": "v2"}])
    after_old = await rag.search(corpus, "copper pipes", k=5)
    after_new = await rag.search(corpus, "steel valves", k=5)
    from pathlib import Path as _Path

    from_file = await rag.upsert_docs(corpus, _Path(path))
    again = await rag.upsert_docs(corpus, _Path(path))  # the same file again: replaced, not doubled
    pages = await rag.search(corpus, "bearing monthly", k=10, filters={"page": 1})
    return {"v": [before, after_old, after_new, from_file, again, pages]}


async def test_reupsert_replaces_a_documents_chunks(runtime: ProcessHost, tmp_path: Path) -> None:
    corpus = corpus_name("reupsert")
    pdf = make_pdf(tmp_path / "pump.pdf", ["Pump manual\nCheck the bearing monthly", "Turbine page"])
    env = env_with(runtime, HashModels())
    before, after_old, after_new, from_file, again, pages = (
        await execute_run(rag_reupsert.spec, {"corpus": corpus, "path": str(pdf)}, env=env)
    )["v"]
    assert before[0]["doc_id"] == "pipes" and "copper" in before[0]["text"]
    assert all("copper" not in hit["text"] for hit in after_old)
    assert after_new[0]["doc_id"] == "pipes" and after_new[0]["title"] == "v2"
    assert [hit["doc_id"] for hit in after_new].count("pipes") == 1
    assert from_file["docs"] == [{"doc_id": str(pdf), "title": "pump.pdf", "source": str(pdf), "chunks": 2}]
    assert again["docs"] == from_file["docs"]
    assert [(hit["doc_id"], hit["metadata"]) for hit in pages] == [(str(pdf), {"page": 1})]
    info = await runtime.vectors.corpus(corpus)
    assert info is not None and info.doc_count == 3 and info.chunk_count == 4


async def test_a_second_host_searches_the_first_hosts_upsert(runtime: ProcessHost, tmp_path: Path) -> None:
    """Read-your-writes across hosts: another ProcessHost (own workspace, same bus) folds the upsert first."""
    corpus = corpus_name("hosts")
    models = HashModels()
    async with await ProcessHost.open(load_settings(workspace=tmp_path / "other")) as other:
        # the other host has folded the stream so far (its index is current before the upsert)
        assert await other.vectors.corpus(corpus) is None
        await execute_run(rag_planted.spec, {"corpus": corpus}, env=env_with(runtime, models))

        @graph_fn(name="rag_elsewhere", outputs=["v"])
        async def rag_elsewhere(corpus: str, *, context: Any) -> dict[str, Any]:
            return {"v": await context.rag().search(corpus, "titanium turbine blade erosion", k=1)}

        hits = (await execute_run(rag_elsewhere.spec, {"corpus": corpus}, env=env_with(other, models)))["v"]
        assert [hit["doc_id"] for hit in hits] == ["turbines"]
        info = await other.vectors.corpus(corpus)
        assert info is not None and info.meta == {"owner": "maintenance"} and info.chunk_count == 9


async def test_replay_under_always_suspend_embeds_nothing_new(suspending_runtime: ProcessHost) -> None:
    models = HashModels()
    corpus = corpus_name("suspend")
    v = (await execute_run(rag_planted.spec, {"corpus": corpus}, env=env_with(suspending_runtime, models)))["v"]
    assert v["hits"][0]["doc_id"] == "turbines"
    # the body re-ran from the start after every step; the upsert and the query were embedded once each
    assert models.endpoint_.requests == [9, 1]


@graph_fn(name="rag_bad", outputs=["v"])
async def rag_bad(corpus: str, case: str, path: str, *, context: Any) -> dict[str, Any]:
    rag = context.rag()
    if case == "search_unknown":
        await rag.search(corpus, "anything")
    elif case == "upsert_unknown":
        await rag.upsert_docs(corpus, ["text"])
    elif case == "missing_file":
        await rag.add_corpus(corpus)
        from pathlib import Path as _Path

        await rag.upsert_docs(corpus, [_Path(path)])
    elif case == "bad_doc":
        await rag.add_corpus(corpus)
        await rag.upsert_docs(corpus, [{"body": "no text key"}])
    elif case == "bad_name":
        await rag.add_corpus("no spaces allowed")
    elif case == "other_profile":
        await rag.add_corpus(corpus)
        await rag.add_corpus(corpus, embed_profile="other")
    return {"v": None}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("search_unknown", "add_corpus"),
        ("upsert_unknown", "add_corpus"),
        ("missing_file", "no such file"),
        ("bad_doc", "exactly one of 'text' or 'path'"),
        ("bad_name", "invalid corpus name"),
        ("other_profile", "embedding profile 'default'"),
    ],
)
async def test_bad_inputs_raise_rag_errors_that_say_what_to_do(
    runtime: ProcessHost, tmp_path: Path, case: str, expected: str
) -> None:
    corpus = corpus_name("bad")
    models = HashModels()
    inputs = {"corpus": corpus, "case": case, "path": str(tmp_path / "gone.md")}
    with pytest.raises(RagError) as caught:
        await execute_run(rag_bad.spec, inputs, env=env_with(runtime, models))
    assert expected in str(caught.value)
    if case == "missing_file":
        assert "gone.md" in str(caught.value)
    assert models.endpoint_.texts_embedded == 0


@graph_fn(name="memory_semantic", outputs=["v"])
async def memory_semantic(*, context: Any) -> dict[str, Any]:
    mem = context.memory()
    await mem.record("fact", "the pump in hall B runs hot")
    await mem.record("fact", "lunch is served at noon")
    await mem.record("fact", "hall B pump bearing replaced")
    return {"v": [e.text for e in await mem.search("pump bearing", limit=5)]}


async def test_memory_search_embeds_when_a_profile_is_configured(runtime: ProcessHost) -> None:
    models = HashModels()
    assert runtime.vectors.config.memory_embed_profile is None  # no embed_model in the test settings
    index = _with_config(runtime, RagConfig(memory_embed_profile="default"))
    try:
        hits = (await execute_run(memory_semantic.spec, {}, env=env_with(runtime, models, vectors=index)))["v"]
    finally:
        await index.close()
    assert hits == ["hall B pump bearing replaced", "the pump in hall B runs hot"]
    assert models.endpoint_.requests == [4]  # the query and the three entries, in one request
    # without a configured profile the same search is lexical: no embedding
    lexical = HashModels()
    assert (await execute_run(memory_semantic.spec, {}, env=env_with(runtime, lexical)))["v"] == hits
    assert lexical.endpoint_.requests == []


def _with_config(runtime: ProcessHost, config: RagConfig) -> Any:
    from aethergraph.bus.rag_feed import RagFeed
    from aethergraph.projections.vector_index import VectorIndex

    return VectorIndex(RagFeed(runtime.bus), runtime.service_backends.blobs, config)


def test_memory_embedding_profile_comes_from_settings() -> None:
    plain = load_settings()
    assert _rag_config(plain).memory_embed_profile is None
    configured = load_settings(llm={"default": {"embed_model": "text-embedding-3-small"}}, rag={"chunk_chars": 500})
    config = _rag_config(configured)
    assert config.memory_embed_profile == "default" and config.chunk_chars == 500
    named = load_settings(llm={"profiles": {"emb": {"embed_model": "e5"}}}, rag={"embed_profile": "emb"})
    assert _rag_config(named).memory_embed_profile == "emb"


@graph_fn(name="rag_answer", outputs=["v"])
async def rag_answer(corpus: str, *, context: Any) -> dict[str, Any]:
    rag = context.rag()
    await rag.add_corpus(corpus)
    docs = [{"text": text, "doc_id": f"filler-{i}"} for i, text in enumerate(FILLER)]
    await rag.upsert_docs(corpus, [*docs, {"text": PLANTED, "doc_id": "turbines", "title": "Turbine manual"}])
    return {"v": await rag.answer(corpus, "When is a titanium turbine blade replaced?", k=3)}


@pytest.mark.parametrize("suspending", [False, True], ids=["live", "always_suspend"])
async def test_answer_cites_the_passages_it_used(
    runtime: ProcessHost, suspending_runtime: ProcessHost, suspending: bool
) -> None:
    models = HashModels()
    host = suspending_runtime if suspending else runtime
    run_id = "rag" + os.urandom(5).hex()
    v = (
        await execute_run(rag_answer.spec, {"corpus": corpus_name("answer")}, run_id=run_id, env=env_with(host, models))
    )["v"]
    assert (
        v["answer"] == "Turbine blade inspection: replace the titanium blade when erosion exceeds two millimetres. [1]"
    )
    [cited] = v["citations"]
    assert cited["index"] == 1 and cited["doc_id"] == "turbines" and cited["title"] == "Turbine manual"
    assert v["usage"]["input_tokens"] > 0
    # one model turn with the numbered passages, however often the body was replayed
    [request] = models.endpoint_.chats
    prompt = request.messages[-1]["content"]
    assert prompt.startswith("Context:\n[1] Turbine manual\n") and "[3] " in prompt and "[4] " not in prompt
    assert models.endpoint_.requests == [9, 1]
    chain = await chain_of(host, run_id)
    assert sum(isinstance(e, ev.LlmCalled) for e in chain) == 1


def _upsert(run_id: str, seq: int, corpus: str, doc_id: str, text: str) -> tuple[Any, Any]:
    from aethergraph.bus.rag_feed import RagMessage
    from aethergraph.core.journal.vector_port import ChunkBatch, ChunkRecord, pack_vector
    from benchmarks.hash_model import hashed_vector

    event = ev.RagUpserted(
        run_id=run_id, seq=seq, ts=0, worker="w", corpus=corpus, chunks_ref="unused", chunk_count=1, dim=256
    )
    chunk = ChunkRecord(doc_id=doc_id, chunk_no=0, text=text, vector=pack_vector(hashed_vector(text, 256)))
    batch = ChunkBatch(corpus=corpus, embed_model="hash-embed", dim=256, doc_ids=[doc_id], chunks=[chunk])
    return RagMessage(stream_seq=seq, event=event), batch


async def test_the_fold_keeps_a_runs_later_upsert_when_an_earlier_one_is_stored_after_it(
    runtime: ProcessHost,
) -> None:
    """A writer republishing after a broker fault can store a run's events out of order: the later upsert wins."""
    from benchmarks.hash_model import hashed_vector

    index = _with_config(runtime, RagConfig())
    try:
        later, later_batch = _upsert("runa", 7, "order", "x", "beta wording")
        earlier, earlier_batch = _upsert("runa", 5, "order", "x", "alpha wording")
        other, other_batch = _upsert("runb", 3, "order", "y", "gamma wording")
        index._apply([later, earlier, other], [later_batch, earlier_batch, other_batch])
        hits = index._search("order", hashed_vector("wording", 256), 5, {})
        assert sorted((hit.doc_id, hit.text) for hit in hits) == [("x", "beta wording"), ("y", "gamma wording")]
        with pytest.raises(RagError, match="invalid filter key"):
            index._search("order", hashed_vector("wording", 256), 5, {'bad"key': 1})
    finally:
        await index.close()
