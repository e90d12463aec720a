"""Content-addressed blobs in a JetStream Object Store (``AG_ARTIFACTS``): artifacts every host can load.

Objects are named by their sha256 (hex); a pinned artifact also has an empty
object ``pins/<sha256>``. URIs are ``nats-os://AG_ARTIFACTS/<sha256>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, ObjectMeta, ObjectMetaOptions, StorageType
from nats.js.object_store import ObjectStore

from aethergraph.core.context.local_blobs import digest_in_ref
from aethergraph.core.errors import ArtifactNotFoundError

# aiofiles (and what it pulls in, ~30 ms) is imported in the functions that touch files.
from .dispatch import delivery_position
from .failover import retry_while_leaderless
from .migration import check_bucket_replicas
from .topology import ARTIFACTS_BUCKET

__all__ = ["ARTIFACTS_BUCKET", "JetStreamBlobStore"]

_PINS = "pins/"


class JetStreamBlobStore:
    """The core's :class:`~aethergraph.core.journal.service_ports.BlobStore` on a JetStream Object Store bucket."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        cache_dir: Path,
        replicas: int = 1,
        retry_s: float = 30.0,
        chunk_bytes: int = 256 * 1024,
        bucket: str = ARTIFACTS_BUCKET,
    ) -> None:
        self._js = js
        self._cache_dir = cache_dir
        self._replicas = replicas
        self._retry_s = retry_s
        self._chunk_bytes = chunk_bytes
        self._bucket_name = bucket
        self._store: ObjectStore | None = None
        self._opening: asyncio.Lock | None = None

    async def bucket(self) -> ObjectStore:
        """The bucket, created on first use (idempotently: every process may try)."""
        if self._store is not None:
            return self._store
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._store is None:
                try:
                    found = await self._js.object_store(self._bucket_name)
                    info = await self._js.stream_info(f"OBJ_{self._bucket_name}")
                    check_bucket_replicas(f"OBJ_{self._bucket_name}", info.config.num_replicas, self._replicas)
                    self._store = found
                except nats.js.errors.BucketNotFoundError:
                    self._store = await self._js.create_object_store(
                        self._bucket_name,
                        storage=StorageType.FILE,
                        replicas=self._replicas,
                        description="AetherGraph artifacts, named by sha256",
                    )
        return self._store

    def uri(self, sha256: str) -> str:
        return f"nats-os://{self._bucket_name}/{sha256}"

    def digest_of(self, ref: str) -> str | None:
        return digest_in_ref(ref)

    async def has(self, sha256: str) -> bool:
        store = await self.bucket()
        try:
            await retry_while_leaderless(lambda: store.get_info(sha256), retry_s=self._retry_s)
        except nats.js.errors.ObjectNotFoundError:
            return False
        return True

    def _meta(self, name: str) -> ObjectMeta:
        return ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=self._chunk_bytes))

    async def put_bytes(self, sha256: str, data: bytes) -> None:
        store = await self.bucket()
        # Content-addressed, so repeating a put that a leader election interrupted is safe.
        await retry_while_leaderless(lambda: store.put(sha256, data, meta=self._meta(sha256)), retry_s=self._retry_s)

    async def put_file(self, sha256: str, path: Path) -> None:
        import aiofiles

        async with aiofiles.open(path, "rb") as source:
            data = await source.read()
        await self.put_bytes(sha256, data)

    async def get_bytes(self, sha256: str) -> bytes:
        """The object's chunks through one ordered consumer, collected in order and checked against the name.

        (nats-py's ``ObjectStore.get`` concatenates bytes chunk by chunk and
        reads through an iterator, several times slower on large objects.)
        """
        store = await self.bucket()
        try:
            info = await retry_while_leaderless(lambda: store.get_info(sha256), retry_s=self._retry_s)
        except nats.js.errors.ObjectNotFoundError:
            raise ArtifactNotFoundError(
                f"artifact {sha256} is not in the object store {self._bucket_name}", ref=sha256
            ) from None
        if not info.size:
            return b""
        chunks: list[bytes] = []
        done = asyncio.Event()

        async def deliver(msg: Msg) -> None:
            chunks.append(msg.data)
            if delivery_position(msg)[1] == 0:
                done.set()

        sub = await self._js.subscribe(
            f"$O.{self._bucket_name}.C.{info.nuid}",
            stream=f"OBJ_{self._bucket_name}",
            cb=deliver,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=5.0,
        )
        try:
            await done.wait()
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        data = b"".join(chunks)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ArtifactNotFoundError(
                f"artifact {sha256} in the object store {self._bucket_name} is damaged (its content has another "
                "sha256); save it again",
                ref=sha256,
            )
        return data

    async def get_file(self, sha256: str, dest: Path | None) -> Path:
        import aiofiles

        target = dest or self._cache_dir / sha256
        if dest is None and target.exists():
            return target  # content-addressed: a cached copy never goes stale
        data = await self.get_bytes(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{id(data)}.tmp")
        async with aiofiles.open(temporary, "wb") as out:
            await out.write(data)
        temporary.replace(target)
        return target

    async def pin(self, sha256: str) -> None:
        store = await self.bucket()
        await retry_while_leaderless(lambda: store.put(_PINS + sha256, io.BytesIO(b"")), retry_s=self._retry_s)

    async def pinned(self) -> set[str]:
        store = await self.bucket()
        try:
            infos = await store.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:
            return set()
        return {info.name[len(_PINS) :] for info in infos if info.name and info.name.startswith(_PINS)}
