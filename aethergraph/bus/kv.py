"""``context.kv()`` on a JetStream KV bucket (``AG_KV``), shared by every host on the bus.

Keys are any strings: characters outside ``[A-Za-z0-9_/-]`` are escaped as
``=XX`` (UTF-8 bytes in hex), so every key is one subject token and the
escaping keeps prefixes (``scan_prefix`` compares escaped keys). Writes with
a TTL carry a per-message TTL (``Nats-TTL``, whole seconds); conditional
writes carry ``Nats-Expected-Last-Subject-Sequence``, the key's revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header, StorageType
from nats.js.kv import KeyValue

from aethergraph.core.errors import KeyConflictError
from aethergraph.core.journal.service_ports import KeyValueEntry

from .failover import retry_while_leaderless
from .migration import check_bucket_replicas
from .topology import KV_BUCKET

__all__ = ["KV_BUCKET", "JetStreamKeyValueStore", "decode_key", "encode_key"]

_PLAIN = re.compile(r"[A-Za-z0-9_/-]")
_WRONG_LAST_SEQUENCE = (10071, 10164)


def encode_key(key: str) -> str:
    """The bucket key for ``key`` (escaping is per character, so prefixes stay prefixes)."""
    if not key:
        raise ValueError("a kv key cannot be empty")
    return "".join(ch if _PLAIN.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode()) for ch in key)


def decode_key(encoded: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "=":
            raw.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += encoded[i].encode()
            i += 1
    return raw.decode()


def ttl_seconds(ttl_s: float | None) -> int | None:
    """JetStream per-message TTLs are whole seconds: round up, at least one."""
    return None if ttl_s is None else max(1, math.ceil(ttl_s))


class JetStreamKeyValueStore:
    """The core's :class:`~aethergraph.core.journal.service_ports.KeyValueStore` on a JetStream KV bucket."""

    def __init__(
        self, js: JetStreamContext, *, replicas: int = 1, bucket: str = KV_BUCKET, retry_s: float = 30.0
    ) -> None:
        self._js = js
        self._replicas = replicas
        self._retry_s = retry_s  # how long reads and unconditional writes ride out a leaderless bucket
        self._bucket_name = bucket
        self._kv: KeyValue | None = None
        self._opening: asyncio.Lock | None = None

    async def bucket(self) -> KeyValue:
        """The bucket, created on first use (idempotently: every process may try)."""
        if self._kv is not None:
            return self._kv
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._kv is None:
                try:
                    found = await self._js.key_value(self._bucket_name)
                    info = await self._js.stream_info(f"KV_{self._bucket_name}")
                    check_bucket_replicas(f"KV_{self._bucket_name}", info.config.num_replicas, self._replicas)
                    self._kv = found
                except nats.js.errors.BucketNotFoundError:
                    self._kv = await self._js.create_key_value(
                        bucket=self._bucket_name,
                        history=1,
                        replicas=self._replicas,
                        storage=StorageType.FILE,
                        direct=True,
                        description="AetherGraph context.kv(): values shared by every host",
                    )
        return self._kv

    async def get(self, key: str) -> KeyValueEntry | None:
        kv = await self.bucket()
        try:
            entry = await retry_while_leaderless(
                lambda: kv.get(encode_key(key), validate_keys=False), retry_s=self._retry_s
            )
        except nats.js.errors.KeyNotFoundError:
            return None
        return KeyValueEntry(key=key, value=entry.value or b"", revision=entry.revision or 0)

    async def put(
        self, key: str, value: bytes, *, ttl_s: float | None = None, expected_revision: int | None = None
    ) -> int:
        kv = await self.bucket()
        subject = f"$KV.{self._bucket_name}.{encode_key(key)}"
        ttl = ttl_seconds(ttl_s)
        if expected_revision == 0:
            try:
                return int(await kv.create(encode_key(key), value, validate_keys=False, msg_ttl=ttl))
            except nats.js.errors.KeyWrongLastSequenceError:
                raise await self._conflict(key, 0) from None
        headers: dict[str, str] | None = None
        if expected_revision is not None:
            headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(expected_revision)}
        try:
            if headers is None:  # an unconditional write: repeating it while a leader is elected is harmless
                ack = await retry_while_leaderless(
                    lambda: self._js.publish(subject, value, msg_ttl=ttl), retry_s=self._retry_s
                )
            else:
                ack = await self._js.publish(subject, value, headers=headers, msg_ttl=ttl)
        except nats.js.errors.APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE and expected_revision is not None:
                raise await self._conflict(key, expected_revision) from None
            raise
        return int(ack.seq)

    async def _conflict(self, key: str, expected: int) -> KeyConflictError:
        current = await self.get(key)
        actual = current.revision if current is not None else 0
        return KeyConflictError(
            f"kv key {key!r} is at revision {actual or 'none (absent)'}, not the expected {expected or 'absent'}; "
            "read it again (context.kv().get_entry) and retry with its revision",
            key=key,
            expected=expected,
            actual=actual,
        )

    async def delete(self, key: str) -> bool:
        existed = await self.get(key) is not None
        if existed:
            kv = await self.bucket()
            await kv.delete(encode_key(key), validate_keys=False)
        return existed

    async def entries(self, prefix: str) -> list[KeyValueEntry]:
        """Every live key starting with ``prefix`` (as of the call), with its value and revision.

        Read with a pull consumer delivering each key's latest message: the
        consumer's pending count at creation says how many to expect, so a
        scan never ends early. (nats-py's KV watcher may announce that it
        caught up before it delivered what was already stored.)
        """
        await self.bucket()
        wanted = encode_key(prefix) if prefix else ""
        subject_prefix = f"$KV.{self._bucket_name}."
        sub = await self._js.pull_subscribe(
            f"{subject_prefix}>",
            stream=f"KV_{self._bucket_name}",
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=5.0,
                mem_storage=True,
            ),
        )
        found: list[KeyValueEntry] = []
        try:
            expected = (await sub.consumer_info()).num_pending or 0
            received = 0
            more = expected > 0
            while more:
                for msg in await sub.fetch(min(max(expected - received, 1), 512), timeout=10.0):
                    received += 1
                    more = received < expected or (msg.metadata.num_pending or 0) > 0
                    key = msg.subject[len(subject_prefix) :]
                    operation = (msg.headers or {}).get("KV-Operation")
                    if key.startswith(wanted) and operation not in ("DEL", "PURGE"):
                        meta = msg.metadata
                        found.append(KeyValueEntry(key=decode_key(key), value=msg.data, revision=meta.sequence.stream))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        found.sort(key=lambda e: e.key)
        return found
