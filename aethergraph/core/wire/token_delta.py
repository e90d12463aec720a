"""The payload of a streamed token delta on ``ag.stream.<run_id>.<node_id>`` (never journaled).

A model call streamed by ``context.llm()`` publishes each piece of text as it
arrives, as one JSON object per message: ``run_id``, ``node_id``, ``call_seq``
(the ``seq`` of the call's ``llm.called`` event), ``index`` (the delta's number
in its call, from 0), ``text``, ``done`` (true on the call's last delta, whose
text is empty) and ``attempt`` (a call retried after a dropped stream streams
again from the start under the next attempt number).
Deltas are best effort: a client that subscribes late, or loses its
connection, misses some; the complete response is in the journal
(``llm.returned``). See docs/events.md, "Token stream".
"""

from __future__ import annotations

import msgspec

__all__ = ["TokenDelta", "decode_token_delta", "encode_token_delta"]


class TokenDelta(msgspec.Struct, frozen=True, kw_only=True):
    """One streamed piece of a model call's response."""

    run_id: str
    node_id: str
    call_seq: int
    index: int
    text: str
    done: bool = False
    attempt: int = 1


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TokenDelta)


def encode_token_delta(delta: TokenDelta) -> bytes:
    return _encoder.encode(delta)


def decode_token_delta(payload: bytes) -> TokenDelta:
    """The delta in ``payload``; raises ``msgspec.ValidationError``/``DecodeError`` if it is not one."""
    return _decoder.decode(payload)
