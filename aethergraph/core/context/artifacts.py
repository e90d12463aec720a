"""``context.artifacts()``: content-addressed artifacts (sha256), with lineage.

A save stores the content under its sha256 (the same content always gets the
same URI and is stored once) and commits an ``artifact.saved`` event naming
the producing run, node and tool. On replay a save is matched against its
recorded event (same content) and returns the recorded artifact without
writing. Loads need no journaling: content behind a URI never changes.
``list``, ``search``, ``best`` and ``pin`` are journaled service calls
(service ``artifacts``), so a replay sees what the first execution saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import msgspec

from aethergraph.core.context.local_blobs import CHUNK_BYTES
from aethergraph.core.context.service_calls import call_journaled
from aethergraph.core.errors import ArtifactNotFoundError
from aethergraph.core.ids import ROOT_NODE
from aethergraph.core.journal.service_ports import BlobStore
from aethergraph.core.journal.step import StepKey, append_opening, replayed_opening, suspend_point

# aiofiles (and what it pulls in, ~30 ms) is imported in the functions that touch files.
from aethergraph.core.wire.codec import normalise_value
from aethergraph.core.wire.events import ArtifactSaved

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = ["Artifact", "ArtifactService"]

Scope = Literal["run", "all"]
ArtifactList: TypeAlias = "list[Artifact]"


class Artifact(msgspec.Struct, frozen=True, kw_only=True):
    """A saved artifact: ``id`` is the content's sha256, ``uri`` where it is stored."""

    id: str
    uri: str
    kind: str = ""
    name: str = ""
    mime: str = ""
    size: int = 0
    labels: dict[str, Any] = {}
    run_id: str = ""
    node_id: str = ""
    tool: str = ""
    pinned: bool = False


def _from_event(event: ArtifactSaved, *, pinned: bool = False) -> Artifact:
    return Artifact(
        id=event.artifact_id,
        uri=event.uri,
        kind=event.kind,
        name=event.name,
        mime=event.mime,
        size=event.size,
        labels=dict(event.labels),
        run_id=event.run_id,
        node_id=event.node_id or "",
        tool=event.tool,
        pinned=pinned,
    )


def _labels_match(have: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    return all(key in have and have[key] == value for key, value in want.items())


def _metric(artifact: Artifact, metric: str) -> float | None:
    value = artifact.labels.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


async def _file_digest(path: Path) -> tuple[str, int]:
    import aiofiles

    sha = hashlib.sha256()
    size = 0
    async with aiofiles.open(path, "rb") as source:
        while chunk := await source.read(CHUNK_BYTES):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


class ArtifactService:
    """``context.artifacts()`` for one node; see the module docstring."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx

    def _blobs(self) -> BlobStore:
        return self._ctx._scope.env.service_backends.blobs

    def _call(self, method: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return call_journaled(self._ctx, "artifacts", method, fn, args, kwargs)

    # --- saving ----------------------------------------------------------------------

    async def save_bytes(
        self,
        data: bytes,
        *,
        kind: str = "",
        name: str = "",
        mime: str = "application/octet-stream",
        labels: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Save raw bytes; returns the :class:`Artifact` (same content, same ``id`` and ``uri``)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"save_bytes takes bytes, got {type(data).__name__}; use save_text or save_json")
        content = bytes(data)
        sha = hashlib.sha256(content).hexdigest()

        async def store(blobs: BlobStore) -> None:
            await blobs.put_bytes(sha, content)

        return await self._save(sha, len(content), store, kind=kind, name=name, mime=mime, labels=labels)

    async def save_text(
        self, text: str, *, kind: str = "", name: str = "", labels: Mapping[str, Any] | None = None
    ) -> Artifact:
        """Save text (UTF-8)."""
        return await self.save_bytes(
            str(text).encode(), kind=kind, name=name, mime="text/plain; charset=utf-8", labels=labels
        )

    async def save_json(
        self, value: Any, *, kind: str = "", name: str = "", labels: Mapping[str, Any] | None = None
    ) -> Artifact:
        """Save a JSON-compatible value (keys sorted, so equal values give the same artifact)."""
        normalised, _ = normalise_value(value, what=f"artifacts().save_json in node {self._ctx.node_id}")
        data = msgspec.json.encode(normalised, order="sorted")
        return await self.save_bytes(data, kind=kind, name=name, mime="application/json", labels=labels)

    async def save_file(
        self,
        path: str | Path,
        *,
        kind: str = "",
        name: str = "",
        mime: str | None = None,
        labels: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Save a local file's content (``name`` defaults to the file name, ``mime`` is guessed from it)."""
        source = Path(path)
        try:
            sha, size = await _file_digest(source)
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"save_file: no file at {source}") from None

        async def store(blobs: BlobStore) -> None:
            await blobs.put_file(sha, source)

        if not mime:
            import mimetypes  # its table loads on first use (12 ms), not at every process's import

            mime = mimetypes.guess_type(source.name)[0]
        guessed = mime or "application/octet-stream"
        return await self._save(sha, size, store, kind=kind, name=name or source.name, mime=guessed, labels=labels)

    async def save(
        self,
        path: str | Path,
        *,
        kind: str = "",
        labels: Mapping[str, Any] | None = None,
        name: str = "",
        mime: str | None = None,
    ) -> Artifact:
        """Save a local file (the original AetherGraph's ``save(path, kind=..., labels=...)``): :meth:`save_file`."""
        if not isinstance(path, (str, Path)):
            raise TypeError(
                f"artifacts().save takes the path of a local file, got {type(path).__name__}; "
                "use save_json for values, save_text for text and save_bytes for bytes"
            )
        return await self.save_file(path, kind=kind, name=name, mime=mime, labels=labels)

    async def _save(
        self,
        sha: str,
        size: int,
        store: Callable[[BlobStore], Awaitable[None]],
        *,
        kind: str,
        name: str,
        mime: str,
        labels: Mapping[str, Any] | None,
    ) -> Artifact:
        ctx = self._ctx
        scope = ctx._scope
        if scope.divergence is not None:
            raise scope.divergence
        label_values, _ = normalise_value(dict(labels or {}), what=f"the labels of an artifact saved by {ctx.node_id}")
        node_id = ctx.node_id
        key = StepKey(
            ArtifactSaved,
            node_id,
            f"an artifact save (node {node_id}, content {sha[:16]}...)",
            compared={"artifact_id": sha},
        )
        recorded = replayed_opening(scope, key)
        if isinstance(recorded, ArtifactSaved):
            return _from_event(recorded)
        blobs = self._blobs()
        if not await blobs.has(sha):
            await store(blobs)
        event, committed = append_opening(
            scope,
            key,
            uri=blobs.uri(sha),
            kind=str(kind),
            name=str(name),
            mime=mime,
            size=size,
            labels=label_values,
            tool="" if node_id == ROOT_NODE else node_id.rsplit("_", 1)[0],
        )
        await committed
        suspend_point(scope)
        assert isinstance(event, ArtifactSaved)
        return _from_event(event)

    # --- loading (content behind an id never changes: not journaled) -------------------

    def _digest(self, ref: str | Artifact) -> str:
        text = ref.id if isinstance(ref, Artifact) else str(ref)
        sha = self._blobs().digest_of(text)
        if sha is None:
            raise ArtifactNotFoundError(
                f"{text!r} is neither an artifact URI nor an artifact id (a sha256 in hex)", ref=text
            )
        return sha

    async def load_bytes(self, ref: str | Artifact) -> bytes:
        """The content of an artifact, by URI, id or :class:`Artifact`."""
        return await self._blobs().get_bytes(self._digest(ref))

    async def load_text(self, ref: str | Artifact) -> str:
        return (await self.load_bytes(ref)).decode()

    async def load_json(self, ref: str | Artifact) -> Any:
        return msgspec.json.decode(await self.load_bytes(ref))

    async def load_file(self, ref: str | Artifact, dest: str | Path | None = None) -> str:
        """A local path holding the artifact's content: ``dest`` if given, else the store's own or cached copy."""
        path = await self._blobs().get_file(self._digest(ref), Path(dest) if dest is not None else None)
        return str(path)

    # --- finding (journaled) ----------------------------------------------------------------

    async def list(self, *, scope: Scope = "run", kind: str | None = None) -> ArtifactList:
        """Artifacts saved by this run (``scope="run"``) or by any run on the bus (``"all"``), oldest first."""
        found = await self._call("list", self._find, scope, kind, None)
        return msgspec.convert(found, list[Artifact])

    async def search(
        self, kind: str | None = None, labels: Mapping[str, Any] | None = None, *, scope: Scope = "all"
    ) -> ArtifactList:
        """Artifacts of ``kind`` whose labels include every ``labels`` item, oldest first."""
        found = await self._call("search", self._find, scope, kind, dict(labels or {}))
        return msgspec.convert(found, list[Artifact])

    async def best(
        self,
        kind: str,
        metric: str,
        mode: Literal["max", "min"] = "max",
        *,
        labels: Mapping[str, Any] | None = None,
        scope: Scope = "all",
    ) -> Artifact | None:
        """The artifact of ``kind`` whose numeric label ``metric`` is highest (``mode="max"``) or lowest."""
        if mode not in ("max", "min"):
            raise ValueError(f"best(mode=...) is 'max' or 'min', got {mode!r}")
        found = await self._call("best", self._best, kind, metric, mode, dict(labels or {}), scope)
        return None if found is None else msgspec.convert(found, Artifact)

    async def pin(self, ref: str | Artifact) -> Artifact:
        """Mark an artifact as kept (cleanups leave pinned artifacts alone); returns it with ``pinned=True``."""
        sha = self._digest(ref)
        found = await self._call("pin", self._pin, sha)
        return msgspec.convert(found, Artifact)

    async def _find(self, scope: Scope, kind: str | None, labels: dict[str, Any] | None) -> ArtifactList:
        if scope not in ("run", "all"):
            raise ValueError(f"artifact scope is 'run' or 'all', got {scope!r}")
        backends = self._ctx._scope.env.service_backends
        events = await backends.catalog.saved(self._ctx.run_id if scope == "run" else None)
        pinned = await backends.blobs.pinned()
        latest: dict[str, ArtifactSaved] = {}
        for event in events:
            latest.pop(event.artifact_id, None)  # re-saved: keep its latest metadata, in its latest place
            latest[event.artifact_id] = event
        return [
            _from_event(event, pinned=event.artifact_id in pinned)
            for event in latest.values()
            if (kind is None or event.kind == kind) and (not labels or _labels_match(event.labels, labels))
        ]

    async def _best(self, kind: str, metric: str, mode: str, labels: dict[str, Any], scope: Scope) -> Artifact | None:
        scored = [
            (value, artifact)
            for artifact in await self._find(scope, kind, labels)
            if (value := _metric(artifact, metric)) is not None
        ]
        if not scored:
            return None
        pick = max if mode == "max" else min
        return pick(scored, key=lambda pair: pair[0])[1]

    async def _pin(self, sha: str) -> Artifact:
        backends = self._ctx._scope.env.service_backends
        if not await backends.blobs.has(sha):
            raise ArtifactNotFoundError(f"cannot pin artifact {sha}: it is not in the artifact store", ref=sha)
        await backends.blobs.pin(sha)
        saved = [event for event in await backends.catalog.saved() if event.artifact_id == sha]
        if saved:
            return _from_event(saved[-1], pinned=True)
        return Artifact(id=sha, uri=backends.blobs.uri(sha), pinned=True)
