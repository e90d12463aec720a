"""Content-addressed blobs in local files (aiofiles): the artifact store of the embedded default.

Layout under the root (``<workspace>/artifacts``): ``sha256/<first two hex>/<sha256>``
holds the content, written to a temporary name and renamed into place, so a
reader never sees a partial file and saving the same content twice writes it
once. ``pins/<sha256>`` marks a pinned artifact. URIs are ``file://`` URIs of
the content files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# aiofiles (and what it pulls in, ~30 ms) is imported in the functions that touch files.
from aethergraph.core.errors import ArtifactNotFoundError

__all__ = ["CHUNK_BYTES", "LocalBlobStore", "digest_in_ref"]

CHUNK_BYTES = 1024 * 1024
_SHA256 = re.compile(r"(?:^|/)([0-9a-f]{64})$")


def digest_in_ref(ref: str) -> str | None:
    """The sha256 a reference names: a bare sha256, or any artifact URI ending in one."""
    match = _SHA256.search(ref.strip())
    return match.group(1) if match else None


class LocalBlobStore:
    """The core's :class:`~aethergraph.core.journal.service_ports.BlobStore` in a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def uri(self, sha256: str) -> str:
        return self.path(sha256).as_uri()

    def digest_of(self, ref: str) -> str | None:
        return digest_in_ref(ref)

    async def has(self, sha256: str) -> bool:
        import aiofiles
        import aiofiles.os

        return await aiofiles.os.path.exists(self.path(sha256))

    async def _install(self, sha256: str, write_to: Path) -> None:
        os.replace(write_to, self.path(sha256))

    def _temporary(self, sha256: str) -> Path:
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.with_name(f".{sha256}.{os.getpid()}.{os.urandom(4).hex()}.tmp")

    async def put_bytes(self, sha256: str, data: bytes) -> None:
        import aiofiles

        temporary = self._temporary(sha256)
        async with aiofiles.open(temporary, "wb") as out:
            await out.write(data)
        await self._install(sha256, temporary)

    async def put_file(self, sha256: str, path: Path) -> None:
        import aiofiles

        temporary = self._temporary(sha256)
        async with aiofiles.open(path, "rb") as source, aiofiles.open(temporary, "wb") as out:
            while chunk := await source.read(CHUNK_BYTES):
                await out.write(chunk)
        await self._install(sha256, temporary)

    def _missing(self, sha256: str) -> ArtifactNotFoundError:
        return ArtifactNotFoundError(
            f"artifact {sha256} is not in the local artifact store {self.root}; artifacts saved on another host "
            "are only visible here with AETHERGRAPH_ARTIFACT_STORE=object_store (JetStream Object Store)",
            ref=sha256,
        )

    async def get_bytes(self, sha256: str) -> bytes:
        import aiofiles

        try:
            async with aiofiles.open(self.path(sha256), "rb") as source:
                return await source.read()
        except FileNotFoundError:
            raise self._missing(sha256) from None

    async def get_file(self, sha256: str, dest: Path | None) -> Path:
        import aiofiles

        stored = self.path(sha256)
        if not await self.has(sha256):
            raise self._missing(sha256)
        if dest is None:
            return stored
        dest.parent.mkdir(parents=True, exist_ok=True)
        async with aiofiles.open(stored, "rb") as source, aiofiles.open(dest, "wb") as out:
            while chunk := await source.read(CHUNK_BYTES):
                await out.write(chunk)
        return dest

    async def pin(self, sha256: str) -> None:
        import aiofiles

        pins = self.root / "pins"
        pins.mkdir(parents=True, exist_ok=True)
        async with aiofiles.open(pins / sha256, "wb"):
            pass

    async def pinned(self) -> set[str]:
        import aiofiles
        import aiofiles.os

        try:
            return set(await aiofiles.os.listdir(self.root / "pins"))
        except FileNotFoundError:
            return set()
