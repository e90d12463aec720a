"""``context.rag()``: corpora, upserts as events with their chunks in the artifact store, exact search in
each host's DuckDB index (read-your-writes across hosts), replay without embedding, bad input.

The model endpoint is ``aethergraph.testing.FakeOpenAI`` (real HTTP on loopback), reached through each
runtime's own model port; its embeddings are a deterministic hashed bag of words (texts sharing words are near).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import chain_of, fake_default_model, run_python, subprocess_env
from test_rag_chunking import make_pdf

from aethergraph import graph_fn
from aethergraph.bus.event_log import StoredRecord
from aethergraph.core.journal.vector_port import (
    ChunkBatch,
    ChunkRecord,
    RagConfig,
    decode_chunk_batch,
    pack_vector,
)
from aethergraph.core.run.executor import execute_run
from aethergraph.core.settings import load_settings
from aethergraph.core.wire import events as ev
from aethergraph.errors import RagError, TokenBudgetExceeded
from aethergraph.host.process import ProcessHost, _rag_config
from aethergraph.projections.vector_index import VectorIndex
from aethergraph.testing import FakeOpenAI, Reply, replay_async
from aethergraph.testing.fake_openai_wire import embed_text

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


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAI]:
    with fake_default_model() as server:
        yield server


@pytest.fixture
def model(fake_server: FakeOpenAI) -> FakeOpenAI:
    fake_server.reset()
    return fake_server


def embed_requests(model: FakeOpenAI) -> list[int]:
    """How many texts each embedding request carried, in order."""
    return [len(call.body["input"]) for call in model.calls if call.kind == "embeddings"]


@graph_fn(name="rag_planted", outputs=["v"])
async def rag_planted(corpus: str, *, context: Any) -> dict[str, Any]:
    rag = context.rag()
    added = await rag.add_corpus(corpus, meta={"owner": "maintenance"})
    docs = [{"text": text, "doc_id": f"filler-{i}", "title": f"Memo {i}"} for i, text in enumerate(FILLER)]
    docs.insert(3, {"text": PLANTED, "doc_id": "turbines", "title": "Turbine manual", "metadata": {"dept": "ops"}})
    upserted = await rag.upsert_docs(corpus, docs)
    hits = await rag.search(corpus, "when should a titanium turbine blade be replaced?", k=3)
    return {"v": {"added": added, "upserted": upserted, "hits": hits}}


async def test_planted_document_comes_first(runtime: ProcessHost, model: FakeOpenAI) -> None:
    corpus = corpus_name("planted")
    run_id = "rag" + os.urandom(5).hex()
    v = (await execute_run(rag_planted.spec, {"corpus": corpus}, run_id=run_id, env=runtime.env))["v"]
    assert v["added"] == {"corpus": corpus, "embed_profile": "default", "meta": {"owner": "maintenance"}}
    assert v["upserted"]["chunk_count"] == 9 and v["upserted"]["dim"] == model.embedding_dim
    assert v["upserted"]["embed_model"] == "fake-embedding" and v["upserted"]["input_tokens"] > 0
    assert [d["doc_id"] for d in v["upserted"]["docs"]][3] == "turbines"
    first = v["hits"][0]
    assert first["doc_id"] == "turbines" and first["title"] == "Turbine manual" and first["text"] == PLANTED
    assert first["metadata"] == {"dept": "ops"} and first["chunk_no"] == 0
    assert first["score"] > v["hits"][1]["score"]
    assert embed_requests(model) == [9, 1]  # one batch for the upsert, one for the query
    assert all(call.headers.get("idempotency-key", "").startswith(run_id) for call in model.calls)

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
    assert batch.corpus == corpus and batch.dim == model.embedding_dim and len(batch.chunks) == 9
    assert len(batch.chunks[3].vector) == 4 * model.embedding_dim and batch.chunks[3].metadata == {"dept": "ops"}


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


async def test_metadata_and_field_filters(runtime: ProcessHost, model: FakeOpenAI) -> None:
    v = (await execute_run(rag_filters.spec, {"corpus": corpus_name("filters")}, env=runtime.env))["v"]
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
    from_file = await rag.upsert_docs(corpus, Path(path))
    again = await rag.upsert_docs(corpus, Path(path))  # the same file again: replaced, not doubled
    pages = await rag.search(corpus, "bearing monthly", k=10, filters={"page": 1})
    return {"v": [before, after_old, after_new, from_file, again, pages]}


async def test_reupsert_replaces_a_documents_chunks(runtime: ProcessHost, model: FakeOpenAI, tmp_path: Path) -> None:
    corpus = corpus_name("reupsert")
    pdf = make_pdf(tmp_path / "pump.pdf", ["Pump manual\nCheck the bearing monthly", "Turbine page"])
    before, after_old, after_new, from_file, again, pages = (
        await execute_run(rag_reupsert.spec, {"corpus": corpus, "path": str(pdf)}, env=runtime.env)
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


SEARCH_ELSEWHERE = """
import asyncio, json, sys
import aethergraph
from aethergraph import graph_fn

@graph_fn(name="rag_elsewhere", outputs=["v"])
async def rag_elsewhere(corpus, *, context):
    return {"v": await context.rag().search(corpus, "titanium turbine blade erosion", k=1)}

async def main():
    try:
        print(json.dumps((await aethergraph.run_async(rag_elsewhere, {"corpus": sys.argv[1]}))["v"]))
    finally:
        await aethergraph.close_runtime()

asyncio.run(main())
"""


async def test_another_process_searches_this_ones_upsert(
    runtime: ProcessHost, model: FakeOpenAI, tmp_path: Path
) -> None:
    """Read-your-writes across hosts: a new OS process (own workspace, same bus) folds the upsert and finds it."""
    corpus = corpus_name("hosts")
    await execute_run(rag_planted.spec, {"corpus": corpus}, env=runtime.env)
    env = subprocess_env(
        AETHERGRAPH_WORKSPACE=str(tmp_path / "other"),
        AETHERGRAPH_LLM__DEFAULT__BASE_URL=model.base_url,
        AETHERGRAPH_LLM__DEFAULT__API_KEY=model.api_key,
        AETHERGRAPH_LLM__DEFAULT__MODEL="fake-model",
        AETHERGRAPH_LLM__DEFAULT__EMBED_MODEL="fake-embedding",
    )
    hits = run_python(SEARCH_ELSEWHERE, corpus, env=env)
    assert [(hit["doc_id"], hit["title"]) for hit in hits] == [("turbines", "Turbine manual")]
    # and a second host in this process sees it as well, with the corpus's metadata
    async with await ProcessHost.open(load_settings(workspace=tmp_path / "third")) as third:
        info = await third.vectors.corpus(corpus)
        assert info is not None and info.meta == {"owner": "maintenance"} and info.chunk_count == 9


async def test_replay_under_always_suspend_embeds_nothing_new(
    suspending_runtime: ProcessHost, model: FakeOpenAI
) -> None:
    corpus = corpus_name("suspend")
    v = (await execute_run(rag_planted.spec, {"corpus": corpus}, env=suspending_runtime.env))["v"]
    assert v["hits"][0]["doc_id"] == "turbines"
    # the body re-ran from the start after every step; the upsert and the query were embedded once each
    assert embed_requests(model) == [9, 1]


@graph_fn(name="rag_bad", outputs=["v"])
async def rag_bad(corpus: str, case: str, path: str, *, context: Any) -> dict[str, Any]:
    rag = context.rag()
    if case == "search_unknown":
        await rag.search(corpus, "anything")
    elif case == "upsert_unknown":
        await rag.upsert_docs(corpus, ["text"])
    elif case == "missing_file":
        await rag.add_corpus(corpus)
        await rag.upsert_docs(corpus, [Path(path)])
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
    runtime: ProcessHost, model: FakeOpenAI, tmp_path: Path, case: str, expected: str
) -> None:
    inputs = {"corpus": corpus_name("bad"), "case": case, "path": str(tmp_path / "gone.md")}
    with pytest.raises(RagError) as caught:
        await execute_run(rag_bad.spec, inputs, env=runtime.env)
    assert expected in str(caught.value)
    if case == "missing_file":
        assert "gone.md" in str(caught.value)
    assert embed_requests(model) == []


@graph_fn(name="memory_semantic", outputs=["v"])
async def memory_semantic(*, context: Any) -> dict[str, Any]:
    mem = context.memory()
    await mem.record("fact", "the pump in hall B runs hot")
    await mem.record("fact", "lunch is served at noon")
    await mem.record("fact", "hall B pump bearing replaced")
    return {"v": [e.text for e in await mem.search("pump bearing", limit=5)]}


def index_with(runtime: ProcessHost, config: RagConfig) -> VectorIndex:
    return VectorIndex(runtime.event_log, runtime.service_backends.blobs, config)


async def test_memory_search_embeds_when_a_profile_is_configured(runtime: ProcessHost, model: FakeOpenAI) -> None:
    assert runtime.vectors.config.memory_embed_profile is None  # no embed_model in the test settings
    index = index_with(runtime, RagConfig(memory_embed_profile="default"))
    try:
        env = dataclasses.replace(runtime.env, vectors=index)
        hits = (await execute_run(memory_semantic.spec, {}, env=env))["v"]
    finally:
        await index.close()
    # ranked by cosine similarity of the fake's hashed embeddings; an entry sharing no word scores 0 and is left out
    assert hits[0] == "hall B pump bearing replaced" and "lunch is served at noon" not in hits
    assert embed_requests(model) == [4]  # the query and the three entries, in one request
    # without a configured profile the same search is lexical: no embedding
    model.reset()
    lexical = (await execute_run(memory_semantic.spec, {}, env=runtime.env))["v"]
    assert lexical == ["hall B pump bearing replaced", "the pump in hall B runs hot"]
    assert embed_requests(model) == []


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
    runtime: ProcessHost, suspending_runtime: ProcessHost, model: FakeOpenAI, suspending: bool
) -> None:
    host = suspending_runtime if suspending else runtime
    model.script(Reply.text("Replace it when erosion exceeds two millimetres [1]."))
    run_id = "rag" + os.urandom(5).hex()
    v = (await execute_run(rag_answer.spec, {"corpus": corpus_name("answer")}, run_id=run_id, env=host.env))["v"]
    assert v["answer"] == "Replace it when erosion exceeds two millimetres [1]."
    [cited] = v["citations"]
    assert cited["index"] == 1 and cited["doc_id"] == "turbines" and cited["title"] == "Turbine manual"
    assert v["usage"]["input_tokens"] > 0
    # one model turn with the numbered passages, however often the body was replayed
    [chat] = [call for call in model.calls if call.kind == "chat"]
    prompt = chat.body["messages"][-1]["content"]
    assert prompt.startswith("Context:\n[1] Turbine manual\n") and "[3] " in prompt and "[4] " not in prompt
    assert embed_requests(model) == [9, 1]
    chain = await chain_of(host, run_id)
    assert sum(isinstance(e, ev.LlmCalled) for e in chain) == 1


def stored_upsert(run_id: str, seq: int, corpus: str, doc_id: str, text: str) -> tuple[StoredRecord, ChunkBatch]:
    event = ev.RagUpserted(
        run_id=run_id, seq=seq, ts=0, worker="w", corpus=corpus, chunks_ref="unused", chunk_count=1, dim=64
    )
    chunk = ChunkRecord(doc_id=doc_id, chunk_no=0, text=text, vector=pack_vector(embed_text(text, 64)))
    batch = ChunkBatch(corpus=corpus, embed_model="fake-embedding", dim=64, doc_ids=[doc_id], chunks=[chunk])
    return StoredRecord(stream_seq=seq, event=event), batch


async def test_the_fold_keeps_a_runs_later_upsert_when_an_earlier_one_is_stored_after_it(
    runtime: ProcessHost,
) -> None:
    """A writer republishing after a broker fault can store a run's events out of order: the later upsert wins."""
    index = index_with(runtime, RagConfig())
    try:
        later, later_batch = stored_upsert("runa", 7, "order", "x", "beta wording")
        earlier, earlier_batch = stored_upsert("runa", 5, "order", "x", "alpha wording")
        other, other_batch = stored_upsert("runb", 3, "order", "y", "gamma wording")
        index._apply([later, earlier, other], [later_batch, earlier_batch, other_batch])
        hits = index._search("order", embed_text("wording", 64), 5, {})
        assert sorted((hit.doc_id, hit.text) for hit in hits) == [("x", "beta wording"), ("y", "gamma wording")]
        with pytest.raises(RagError, match="invalid filter key"):
            index._search("order", embed_text("wording", 64), 5, {'bad"key': 1})
    finally:
        await index.close()


async def test_offline_replay_of_a_rag_run_needs_no_index_and_no_model(runtime: ProcessHost, model: FakeOpenAI) -> None:
    run_id = "rag" + os.urandom(5).hex()
    outputs = await execute_run(rag_planted.spec, {"corpus": corpus_name("offline")}, run_id=run_id, env=runtime.env)
    events = await chain_of(runtime, run_id)
    model.reset()
    result = await replay_async(events, rag_planted)
    assert result.outcome == "completed" and result.outputs == outputs
    assert result.steps_replayed == 3 and model.calls == []  # add_corpus, upsert_docs, search


@pytest.fixture
async def tight_budget_runtime(_aethergraph_environment: None) -> AsyncIterator[ProcessHost]:
    from aethergraph.core.settings import LLMSettings, load_settings

    rt = await ProcessHost.open(load_settings(llm=LLMSettings(token_budget=20)))
    try:
        yield rt
    finally:
        await rt.close()


@graph_fn(name="rag_spender", outputs=["v"])
async def rag_spender(corpus: str, *, context: Any) -> dict[str, Any]:
    rag = context.rag()
    await rag.add_corpus(corpus)
    await rag.upsert_docs(corpus, [" ".join(f"word{i}" for i in range(40))])  # 40 tokens: over the budget of 20
    await rag.upsert_docs(corpus, ["never embedded"])
    return {"v": "unreachable"}


async def test_embedding_tokens_count_against_the_token_budget(
    tight_budget_runtime: ProcessHost, model: FakeOpenAI
) -> None:
    run_id = f"ragb{os.urandom(5).hex()}"
    with pytest.raises(TokenBudgetExceeded) as info:
        await execute_run(rag_spender.spec, {"corpus": corpus_name("budget")}, env=tight_budget_runtime.env,
                          run_id=run_id)  # fmt: skip
    assert info.value.budget == 20 and info.value.spent >= 40
    assert embed_requests(model) == [1]  # the second upsert embedded nothing
    [upserted] = [e for e in await chain_of(tight_budget_runtime, run_id) if isinstance(e, ev.RagUpserted)]
    assert upserted.input_tokens >= 40
