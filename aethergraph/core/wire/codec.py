"""Encoding of events and journaled values (msgspec JSON on the wire)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import hashlib
import uuid
from typing import Any

import msgspec

from aethergraph.core.errors import SerializationError
from aethergraph.core.wire.events import AnyEvent, Event

__all__ = ["decode_event", "digest", "encode_event", "normalise_value"]

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_value_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | memoryview) -> AnyEvent:
    """Decode one event strictly; raises ``msgspec.DecodeError`` on bad input."""
    return _event_decoder.decode(data)


def normalise_value(value: Any, *, what: str, strict: bool = True) -> tuple[Any, bytes]:
    """Return ``value`` as it will read back from the journal, and its encoding.

    Live execution hands user code the same value that replay will hand it
    (tuples become lists, Structs and dataclasses dicts), so a run behaves the
    same either way. ``what`` names the producer (``"tool 'analyze'"``) for
    the error message. ``strict`` refuses values that would read back as
    something else without saying so (datetimes, sets, bytes, UUIDs,
    Decimals) with a :class:`SerializationError` naming where the value is.
    """
    try:
        raw = _encoder.encode(value)
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise SerializationError(
            f"{what} produced a value that cannot be journaled: {exc}. "
            "Return JSON-compatible data (dict, list, str, int, float, bool, None, "
            "msgspec Structs, dataclasses); save large or binary data as an artifact "
            "and return its reference."
        ) from exc
    decoded = _value_decoder.decode(raw)
    # A value that reads back equal holds nothing lossy (a datetime, a set, ... never equals what it becomes),
    # and that comparison runs in C; only values that differ (tuples, Structs, or lossy ones) are walked.
    if strict and decoded != value:
        _refuse_lossy(value, what)
    return decoded, raw


# Types the encoder would turn into another type silently, and what to do instead.
_LOSSY: dict[type, str] = {
    _dt.datetime: "convert it with .isoformat() (and datetime.fromisoformat() where it is read)",
    _dt.date: "convert it with .isoformat() (and date.fromisoformat() where it is read)",
    _dt.time: "convert it with .isoformat() (and time.fromisoformat() where it is read)",
    _dt.timedelta: "convert it to seconds with .total_seconds()",
    set: "convert it to a list, e.g. sorted(value)",
    frozenset: "convert it to a list, e.g. sorted(value)",
    bytes: "save it with context.artifacts().save_bytes() and pass the artifact's uri (or decode it to text)",
    bytearray: "save it with context.artifacts().save_bytes() and pass the artifact's uri (or decode it to text)",
    memoryview: "save it with context.artifacts().save_bytes() and pass the artifact's uri",
    uuid.UUID: "convert it with str()",
    decimal.Decimal: "convert it with str() or float()",
}
_PLAIN_SET = frozenset({str, int, float, bool, type(None)})


def _refuse_lossy(value: Any, what: str, path: str = "") -> None:
    """Raise :class:`SerializationError` if ``value`` holds a value of a :data:`_LOSSY` type, naming its path."""
    kind = type(value)
    if kind in _PLAIN_SET:
        return
    if kind is dict or isinstance(value, dict):
        if not set(map(type, value.values())) <= _PLAIN_SET:  # the common all-plain case stays in C
            for key, item in value.items():
                if type(item) not in _PLAIN_SET:
                    _refuse_lossy(item, what, f"{path}[{key!r}]")
        return
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        if not set(map(type, value)) <= _PLAIN_SET:
            for index, item in enumerate(value):
                if type(item) not in _PLAIN_SET:
                    _refuse_lossy(item, what, f"{path}[{index}]")
        return
    for lossy, fix in _LOSSY.items():
        if isinstance(value, lossy):
            where = f" at {path}" if path else ""
            raise SerializationError(
                f"{what} produced a {kind.__name__}{where}, which the journal would silently turn into "
                f"{'a list' if isinstance(value, (set, frozenset)) else 'a string'}; {fix}"
            )
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _refuse_lossy(getattr(value, name), what, f"{path}.{name}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            _refuse_lossy(getattr(value, field.name), what, f"{path}.{field.name}")


def digest(raw: bytes) -> str:
    """Short stable digest of encoded arguments, used to detect divergent replays."""
    return hashlib.blake2b(raw, digest_size=12).hexdigest()
