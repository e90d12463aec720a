"""``context.kv()``: a key-value store shared by every host, with every call journaled.

Values are JSON-compatible and stored encoded (msgspec JSON). Every method is
a journaled service call (``service.called`` / ``service.returned`` with
service ``kv``), so a replayed run reads the values it read the first time
and does not write twice. TTLs are seconds (rounded up to whole seconds, at
least one).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from aethergraph.core.context.service_calls import call_journaled
from aethergraph.core.errors import KeyConflictError, SerializationError
from aethergraph.core.journal.service_ports import KeyValueStore

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = ["KeyValueService"]

Ttl = float | _dt.timedelta | None
_encode = msgspec.json.encode
_decode = msgspec.json.decode
# Optimistic read-modify-write loops give up after this many conflicts in a row.
_MAX_ATTEMPTS = 64


def _seconds(ttl: Ttl) -> float | None:
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, _dt.timedelta) else float(ttl)
    if seconds <= 0:
        raise ValueError(f"a kv ttl must be positive (seconds or a timedelta), got {ttl!r}")
    return seconds


def _key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"kv keys are non-empty strings, got {key!r}")
    return key


def _value_bytes(key: str, value: Any) -> bytes:
    try:
        return _encode(value)
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise SerializationError(
            f"the value for kv key {key!r} cannot be stored: {exc}; store JSON-compatible data "
            "(save large or binary data with context.artifacts() and store its URI)"
        ) from exc


class KeyValueService:
    """``context.kv()`` for one node; see the module docstring."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx

    def _store(self) -> KeyValueStore:
        return self._ctx._scope.env.service_backends.kv

    def _call(self, method: str, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return call_journaled(self._ctx, "kv", method, fn, args, kwargs)

    # --- reads ---------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, else ``default``."""
        return await self._call("get", self._get, _key(key), default)

    async def _get(self, key: str, default: Any) -> Any:
        entry = await self._store().get(key)
        return default if entry is None else _decode(entry.value)

    async def get_entry(self, key: str) -> dict[str, Any] | None:
        """``{"value": ..., "revision": n}`` for ``key`` (``None`` if absent).

        The revision is what ``set(..., expected_revision=)`` compares with.
        """
        return await self._call("get_entry", self._get_entry, _key(key))  # type: ignore[no-any-return]

    async def _get_entry(self, key: str) -> dict[str, Any] | None:
        entry = await self._store().get(key)
        return None if entry is None else {"value": _decode(entry.value), "revision": entry.revision}

    async def mget(self, keys: Iterable[str]) -> list[Any]:
        """The values of ``keys`` in order (``None`` where absent)."""
        return await self._call("mget", self._mget, [_key(k) for k in keys])  # type: ignore[no-any-return]

    async def _mget(self, keys: list[str]) -> list[Any]:
        store = self._store()
        values: list[Any] = []
        for key in keys:
            entry = await store.get(key)
            values.append(None if entry is None else _decode(entry.value))
        return values

    async def scan_prefix(self, prefix: str = "") -> dict[str, Any]:
        """Every key starting with ``prefix`` and its value, sorted by key."""
        return await self._call("scan_prefix", self._scan_prefix, str(prefix))  # type: ignore[no-any-return]

    async def _scan_prefix(self, prefix: str) -> dict[str, Any]:
        return {entry.key: _decode(entry.value) for entry in await self._store().entries(prefix)}

    # --- writes ----------------------------------------------------------------------

    async def set(self, key: str, value: Any, *, ttl: Ttl = None, expected_revision: int | None = None) -> int:
        """Store ``value``; returns the new revision.

        ``ttl`` (seconds or a timedelta) makes the key expire. With
        ``expected_revision`` the write happens only if the key is at that
        revision (``0``: only if it does not exist), else
        :class:`~aethergraph.errors.KeyConflictError`.
        """
        key = _key(key)
        _value_bytes(key, value)  # refuse unencodable values before anything is journaled
        return await self._call(  # type: ignore[no-any-return]
            "set", self._set, key, value, ttl=_seconds(ttl), expected_revision=expected_revision
        )

    async def _set(self, key: str, value: Any, *, ttl: float | None, expected_revision: int | None) -> int:
        return await self._store().put(key, _value_bytes(key, value), ttl_s=ttl, expected_revision=expected_revision)

    async def mset(self, values: Mapping[str, Any], *, ttl: Ttl = None) -> dict[str, int]:
        """Store several keys (each write on its own, not atomically); returns each key's revision."""
        items = {_key(k): v for k, v in values.items()}
        for key, value in items.items():
            _value_bytes(key, value)
        return await self._call("mset", self._mset, items, ttl=_seconds(ttl))  # type: ignore[no-any-return]

    async def _mset(self, values: dict[str, Any], *, ttl: float | None) -> dict[str, int]:
        store = self._store()
        return {key: await store.put(key, _value_bytes(key, value), ttl_s=ttl) for key, value in values.items()}

    async def delete(self, key: str) -> bool:
        """Delete ``key``; False if it did not exist."""
        return await self._call("delete", self._delete, _key(key))  # type: ignore[no-any-return]

    async def _delete(self, key: str) -> bool:
        return await self._store().delete(key)

    async def incr(self, key: str, n: int = 1, *, ttl: Ttl = None) -> int:
        """Add ``n`` to the integer under ``key`` (absent: 0) atomically across hosts; returns the new value."""
        if not isinstance(n, int) or isinstance(n, bool):
            raise ValueError(f"kv incr adds an int, got {n!r}")
        return await self._call("incr", self._incr, _key(key), n, ttl=_seconds(ttl))  # type: ignore[no-any-return]

    async def _incr(self, key: str, n: int, *, ttl: float | None) -> int:
        async def update(current: Any) -> int:
            if current is None:
                return n
            if not isinstance(current, int) or isinstance(current, bool):
                raise ValueError(f"kv key {key!r} holds {current!r}, not an integer; incr needs an integer")
            return current + n

        result: int = await self._update(key, update, ttl)
        return result

    async def list_append_unique(self, key: str, items: Iterable[Any], *, ttl: Ttl = None) -> list[Any]:
        """Append the ``items`` not in the list under ``key`` yet (atomically across hosts); returns the list."""
        values = list(items)
        _value_bytes(key, values)
        return await self._call(  # type: ignore[no-any-return]
            "list_append_unique", self._append_unique, _key(key), values, ttl=_seconds(ttl)
        )

    async def _append_unique(self, key: str, items: list[Any], *, ttl: float | None) -> list[Any]:
        async def update(current: Any) -> list[Any]:
            if current is None:
                current = []
            if not isinstance(current, list):
                raise ValueError(f"kv key {key!r} holds {current!r}, not a list; list_append_unique needs a list")
            seen = {_encode(item) for item in current}
            merged = list(current)
            for item in items:
                encoded = _encode(item)
                if encoded not in seen:
                    seen.add(encoded)
                    merged.append(item)
            return merged

        result: list[Any] = await self._update(key, update, ttl)
        return result

    async def _update(self, key: str, change: Callable[[Any], Awaitable[Any]], ttl: float | None) -> Any:
        """Read-modify-write with optimistic concurrency: retry when another writer got there first."""
        store = self._store()
        for _ in range(_MAX_ATTEMPTS):
            entry = await store.get(key)
            new = await change(None if entry is None else _decode(entry.value))
            try:
                await store.put(
                    key, _value_bytes(key, new), ttl_s=ttl, expected_revision=0 if entry is None else entry.revision
                )
            except KeyConflictError:
                continue
            return new
        raise KeyConflictError(
            f"kv key {key!r} changed under {_MAX_ATTEMPTS} attempts in a row to update it; "
            "too many writers contend for this one key",
            key=key,
        )
