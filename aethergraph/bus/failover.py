"""Retrying an idempotent JetStream write while a stream's leader is being (re-)elected.

On a cluster, a write to a stream whose leader was just lost times out or is answered
"no responders" (503) until a follower takes over, usually within seconds. Only writes that
are safe to repeat go through here (content-addressed Object Store puts, for instance).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

__all__ = ["LEADERLESS_ERRORS", "retry_while_leaderless"]

T = TypeVar("T")

LEADERLESS_ERRORS = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
)


async def retry_while_leaderless(attempt: Callable[[], Awaitable[T]], *, retry_s: float) -> T:
    """``attempt()``, repeated with backoff for up to ``retry_s`` while it fails as a leaderless stream does."""
    deadline = time.monotonic() + retry_s
    pause = 0.1
    while True:
        try:
            return await attempt()
        except LEADERLESS_ERRORS:
            if time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)
