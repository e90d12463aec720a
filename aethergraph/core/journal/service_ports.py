"""The ports that context services need (implemented in ``bus`` and here in ``core`` for local files).

``core`` never imports nats: ``context.kv()`` talks to a :class:`KeyValueStore`,
``context.artifacts()`` to a :class:`BlobStore` and an :class:`ArtifactCatalog`.
The composition root hands them to runs through the run environment's
``service_backends``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aethergraph.core.wire.events import ArtifactSaved

__all__ = [
    "ArtifactCatalog",
    "BlobStore",
    "KeyValueEntry",
    "KeyValueStore",
    "ServiceBackends",
]


@dataclass(frozen=True, slots=True)
class KeyValueEntry:
    key: str
    value: bytes
    revision: int


class KeyValueStore(Protocol):
    """A key-value store shared by every host (JetStream KV)."""

    async def get(self, key: str) -> KeyValueEntry | None: ...

    async def put(
        self, key: str, value: bytes, *, ttl_s: float | None = None, expected_revision: int | None = None
    ) -> int:
        """Store ``value`` and return its revision.

        ``expected_revision`` makes the write conditional: ``0`` means the key
        must not exist; otherwise the key's current revision. A mismatch
        raises :class:`~aethergraph.errors.KeyConflictError`.
        """
        ...

    async def delete(self, key: str) -> bool:
        """Delete the key; False if it did not exist."""
        ...

    async def entries(self, prefix: str) -> list[KeyValueEntry]:
        """Every live entry whose key starts with ``prefix``, sorted by key."""
        ...


class BlobStore(Protocol):
    """Content-addressed bytes: stored under their sha256 (hex), immutable once stored."""

    def uri(self, sha256: str) -> str:
        """The URI of the content with this digest in this store."""
        ...

    def digest_of(self, ref: str) -> str | None:
        """The sha256 named by a URI of this store (or a bare sha256); ``None`` if ``ref`` is neither."""
        ...

    async def has(self, sha256: str) -> bool: ...

    async def put_bytes(self, sha256: str, data: bytes) -> None: ...

    async def put_file(self, sha256: str, path: Path) -> None: ...

    async def get_bytes(self, sha256: str) -> bytes:
        """The content; raises :class:`~aethergraph.errors.ArtifactNotFoundError` if it is not stored."""
        ...

    async def get_file(self, sha256: str, dest: Path | None) -> Path:
        """A local file holding the content (``dest`` if given)."""
        ...

    async def pin(self, sha256: str) -> None: ...

    async def pinned(self) -> set[str]: ...


class ArtifactCatalog(Protocol):
    """The ``artifact.saved`` events on the bus: what every host has saved."""

    async def saved(self, run_id: str | None = None) -> list[ArtifactSaved]:
        """Every ``artifact.saved`` event (of one run, if given), in stream order."""
        ...


class ServiceBackends(Protocol):
    @property
    def kv(self) -> KeyValueStore: ...

    @property
    def blobs(self) -> BlobStore: ...

    @property
    def catalog(self) -> ArtifactCatalog: ...

    @property
    def inline_limit(self) -> int:
        """Largest encoded service argument or result kept inside an event; larger ones go to ``blobs``."""
        ...
