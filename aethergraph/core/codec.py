"""Encoding of events and journaled values (msgspec JSON on the wire)."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from .errors import SerializationError
from .events import AnyEvent, Event

__all__ = ["decode_event", "digest", "encode_event", "normalise_value"]

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_value_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes | memoryview) -> AnyEvent:
    """Decode one event strictly; raises ``msgspec.DecodeError`` on bad input."""
    return _event_decoder.decode(data)


def normalise_value(value: Any, *, what: str) -> tuple[Any, bytes]:
    """Return ``value`` as it will read back from the journal, and its encoding.

    Live execution hands user code the same value that replay will hand it
    (tuples become lists, and so on), so a run behaves the same either way.
    ``what`` names the producer (``"tool 'analyze'"``) for the error message.
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
    return _value_decoder.decode(raw), raw


def digest(raw: bytes) -> str:
    """Short stable digest of encoded arguments, used to detect divergent replays."""
    return hashlib.blake2b(raw, digest_size=12).hexdigest()
