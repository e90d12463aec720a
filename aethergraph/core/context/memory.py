"""``context.memory()``: a run's memory, recorded as ``memory.recorded`` events in its journal.

Writes are journal events (a step on replay, like a channel message). Reads
come from the run's own journal, which the run already holds in memory: the
entries a replay loaded plus those recorded since. They need no query and no
round trip, and see every entry the moment it is recorded, which the DuckDB
projection (folded asynchronously, possibly by another process) cannot
promise. Reads are journaled service calls (service ``memory``), so a replay
returns what the first execution read. Memory across runs is in the
``memories`` projection table (SQL: ``aethergraph.query``).

Search is by embedding when the process has an embedding profile configured
(``settings.rag.embed_profile`` names a profile with an ``embed_model``, and
the process has model endpoints): the query and each entry's text, kind,
name and tags are embedded (in batches) and entries are ranked by cosine
similarity, ties broken by recency. Otherwise it is lexical: words
(lowercased ``\\w+`` tokens) of the query matched against each entry's text,
kind, name and tags, rarer words weighing more (an idf weight), ties broken
by recency. Either way the search is a journaled call, so a replay returns
the recorded entries without embedding again.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from aethergraph.core.context.embedding import cosine, embed_texts
from aethergraph.core.context.service_calls import call_journaled
from aethergraph.core.journal.scope import RunScope
from aethergraph.core.journal.step import StepKey, append_opening, replayed_opening
from aethergraph.core.wire.codec import normalise_value
from aethergraph.core.wire.events import MemoryRecorded

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = ["MemoryEntry", "MemoryService"]

_WORD = re.compile(r"\w+")
_MAX_TEXT = 16 * 1024


class MemoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded entry: its ``seq`` in the run's journal, the node that recorded it, and what it holds."""

    kind: str
    data: Any = None
    name: str = ""
    tags: list[str] = []
    text: str = ""
    seq: int = 0
    node_id: str = ""
    ts: int = 0


def _entry(event: MemoryRecorded) -> MemoryEntry:
    return MemoryEntry(
        kind=event.kind,
        data=event.data,
        name=event.name,
        tags=list(event.tags),
        text=event.text,
        seq=event.seq,
        node_id=event.node_id or "",
        ts=event.ts,
    )


def _text_of(data: Any) -> str:
    if isinstance(data, str):
        return data
    return msgspec.json.encode(data).decode()


def _searchable(entry: MemoryRecorded) -> str:
    return f"{entry.text} {entry.kind} {entry.name} {' '.join(entry.tags)}"


def _words(entry: MemoryRecorded) -> Counter[str]:
    return Counter(_WORD.findall(_searchable(entry).lower()))


def _embed_profile(scope: RunScope) -> str | None:
    """The embedding profile memory search uses here, or None (lexical search)."""
    vectors = scope.env.vectors
    if vectors is None or scope.env.models is None:
        return None
    return vectors.config.memory_embed_profile


def _kinds(kinds: str | Iterable[str] | None) -> set[str] | None:
    if kinds is None:
        return None
    return {kinds} if isinstance(kinds, str) else {str(kind) for kind in kinds}


def _entries(found: Any) -> list[MemoryEntry]:
    return msgspec.convert(found, list[MemoryEntry])


def memory_log(scope: RunScope) -> list[MemoryRecorded]:
    """The run's entries so far: those in its journal when it was loaded, then those recorded here."""
    if scope.memory_log is None:
        scope.memory_log = list(scope.replay.memories) if scope.replay is not None else []
    return scope.memory_log


class MemoryService:
    """``context.memory()`` for one node; see the module docstring."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx

    def _call(self, method: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Awaitable[Any]:
        return call_journaled(self._ctx, "memory", method, fn, args, {})

    async def record(
        self, kind: str, data: Any = None, *, tags: Sequence[str] = (), name: str = "", text: str | None = None
    ) -> MemoryEntry:
        """Record an entry; ``text`` (default: ``data`` as text) is what :meth:`search` matches."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"a memory entry needs a kind (a non-empty string), got {kind!r}")
        ctx = self._ctx
        scope = ctx._scope
        if scope.divergence is not None:
            raise scope.divergence
        value, _ = normalise_value(data, what=f"memory().record({kind!r}) in node {ctx.node_id}")
        tag_list = [str(tag) for tag in tags]
        searchable = (text if text is not None else _text_of(value))[:_MAX_TEXT]
        described = f"a {kind!r} memory record (node {ctx.node_id})"
        key = StepKey(MemoryRecorded, ctx.node_id, described, names={"kind": kind})
        recorded = replayed_opening(scope, key)
        if isinstance(recorded, MemoryRecorded):
            return _entry(recorded)
        log = memory_log(scope)
        event, committed = append_opening(scope, key, data=value, name=str(name), tags=tag_list, text=searchable)
        await committed
        assert isinstance(event, MemoryRecorded)
        log.append(event)
        return _entry(event)

    async def recent(self, kinds: str | Iterable[str] | None = None, limit: int = 20) -> list[MemoryEntry]:
        """The latest ``limit`` entries (of ``kinds``, if given), oldest first."""
        wanted = _kinds(kinds)
        return _entries(await self._call("recent", self._recent, sorted(wanted) if wanted else None, int(limit)))

    async def _recent(self, kinds: list[str] | None, limit: int) -> list[MemoryEntry]:
        wanted = set(kinds) if kinds else None
        matching = [e for e in memory_log(self._ctx._scope) if wanted is None or e.kind in wanted]
        return [_entry(e) for e in matching[-limit:]] if limit > 0 else []

    async def last_by_name(self, name: str, kind: str | None = None) -> MemoryEntry | None:
        """The latest entry recorded with ``name`` (and ``kind``, if given), else ``None``."""
        found = await self._call("last_by_name", self._last_by_name, str(name), kind)
        return None if found is None else msgspec.convert(found, MemoryEntry)

    async def _last_by_name(self, name: str, kind: str | None) -> MemoryEntry | None:
        for event in reversed(memory_log(self._ctx._scope)):
            if event.name == name and (kind is None or event.kind == kind):
                return _entry(event)
        return None

    async def search(
        self, query: str, *, kinds: str | Iterable[str] | None = None, limit: int = 10
    ) -> list[MemoryEntry]:
        """Entries matching words of ``query``, best first (lexical; see the module docstring)."""
        wanted = _kinds(kinds)
        found = await self._call("search", self._search, str(query), sorted(wanted) if wanted else None, int(limit))
        return _entries(found)

    async def _search(self, query: str, kinds: list[str] | None, limit: int) -> list[MemoryEntry]:
        terms = set(_WORD.findall(query.lower()))
        wanted = set(kinds) if kinds else None
        scope = self._ctx._scope
        entries = [e for e in memory_log(scope) if wanted is None or e.kind in wanted]
        if not terms or not entries:
            return []
        profile = _embed_profile(scope)
        if profile is not None:
            return await self._semantic(scope, profile, query, entries, limit)
        counted = [(e, _words(e)) for e in entries]
        frequency = Counter(term for _, words in counted for term in terms if term in words)
        weight = {term: math.log(1 + len(entries) / frequency[term]) for term in frequency}
        scored = [
            (sum(weight[t] * (1 + math.log(words[t])) for t in terms if t in words), e.seq, e) for e, words in counted
        ]
        best = sorted((item for item in scored if item[0] > 0), key=lambda item: (-item[0], -item[1]))
        return [_entry(e) for _, _, e in best[:limit]]

    async def _semantic(
        self, scope: RunScope, profile: str, query: str, entries: list[MemoryRecorded], limit: int
    ) -> list[MemoryEntry]:
        texts = [query, *(_searchable(e) for e in entries)]
        embedded = await embed_texts(scope, profile, texts, idempotency_key=self._ctx.idempotency_key())
        wanted = embedded.vectors[0]
        scored = [(cosine(wanted, vector), e.seq, e) for e, vector in zip(entries, embedded.vectors[1:], strict=True)]
        best = sorted((item for item in scored if item[0] > 0), key=lambda item: (-item[0], -item[1]))
        return [_entry(e) for _, _, e in best[:limit]]

    # --- chat history --------------------------------------------------------------------

    async def record_chat(self, role: str, text: str, *, tags: Sequence[str] = ()) -> MemoryEntry:
        """Record one chat message (``role``: ``"user"``, ``"assistant"``, ...) as a ``chat`` entry."""
        return await self.record("chat", {"role": str(role), "text": str(text)}, tags=tags, name=str(role), text=text)

    async def chat_history(self, limit: int = 50) -> list[dict[str, str]]:
        """The latest ``limit`` chat messages as ``{"role": ..., "text": ...}``, oldest first."""
        return [
            {"role": str(entry.data.get("role", "")), "text": str(entry.data.get("text", ""))}
            for entry in await self.recent("chat", limit)
            if isinstance(entry.data, dict)
        ]
