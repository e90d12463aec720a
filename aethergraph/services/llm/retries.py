"""Retrying one model call: which failures are transient, how long to wait, and how errors are named.

The ``openai`` SDK's own retries are turned off (``max_retries=0``) so that
retries do not multiply; this module retries 408, 409, 429 and 5xx answers
and lost connections, waiting what the endpoint's ``retry-after`` (or
``retry-after-ms``) asks, else an exponential backoff with jitter. Whatever
fails for good becomes an :mod:`aethergraph.errors` class whose message
names the profile and the fix, with any API key masked out.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aethergraph.core.errors import LLMConfigError, LLMEndpointError, LLMError

__all__ = ["RETRIABLE_STATUSES", "call_with_retries", "mask_secrets", "retry_delay_s"]

T = TypeVar("T")

RETRIABLE_STATUSES = frozenset({408, 409, 429})
_MAX_WAIT_S = 60.0
_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}")


def mask_secrets(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` and anything shaped like an API key replaced by ``***``."""
    if secret:
        text = text.replace(secret, "***")
    return _KEYLIKE.sub("***", text)


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _is_transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    status = _status(exc)
    return status is not None and (status in RETRIABLE_STATUSES or status >= 500)


def retry_delay_s(exc: BaseException, attempt: int, backoff_s: float) -> float:
    """How long to wait before attempt ``attempt + 1``: the endpoint's ``retry-after``, else backoff with jitter."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            try:
                return min(max(float(millis) / 1000, 0.0), _MAX_WAIT_S)
            except ValueError:
                pass
        after = headers.get("retry-after")
        if after is not None:
            try:
                return min(max(float(after), 0.0), _MAX_WAIT_S)
            except ValueError:
                parsed = email.utils.parsedate_to_datetime(after) if after else None
                if parsed is not None:
                    return min(max(parsed.timestamp() - time.time(), 0.0), _MAX_WAIT_S)
    base: float = backoff_s * (2 ** (attempt - 1))
    return float(min(base * random.uniform(0.5, 1.5), _MAX_WAIT_S))


def _describe_failure(exc: BaseException, profile: str, base_url: str, env_prefix: str) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return f"the endpoint {base_url} of profile {profile!r} did not answer in time (raise {env_prefix}TIMEOUT_S)"
    if isinstance(exc, openai.APIConnectionError):
        return (
            f"cannot reach the endpoint {base_url} of profile {profile!r} ({exc.__cause__ or exc}); "
            f"check that it is running, or set {env_prefix}BASE_URL"
        )
    status = _status(exc)
    detail = getattr(exc, "message", None) or str(exc)
    hint = {
        401: f"the endpoint refused the API key: set {env_prefix}API_KEY (or {env_prefix}API_KEY_ENV)",
        403: f"the API key of profile {profile!r} is not allowed this call",
        404: f"check the model name ({env_prefix}MODEL) and the base URL ({env_prefix}BASE_URL)",
    }.get(status or 0, "")
    text = f"the endpoint {base_url} of profile {profile!r} answered HTTP {status}: {detail}"
    return f"{text}; {hint}" if hint else text


async def call_with_retries(
    attempt_call: Callable[[int], Awaitable[T]],
    *,
    profile: str,
    base_url: str,
    env_prefix: str,
    max_retries: int,
    backoff_s: float,
    secret: str | None,
) -> tuple[T, int]:
    """``attempt_call(attempt)`` until it succeeds or fails for good; returns its result and the attempts made."""
    import openai

    attempt = 1
    while True:
        try:
            return await attempt_call(attempt), attempt
        except LLMError:
            raise
        except openai.OpenAIError as exc:
            if _is_transient(exc) and attempt <= max_retries:
                await asyncio.sleep(retry_delay_s(exc, attempt, backoff_s))
                attempt += 1
                continue
            message = mask_secrets(_describe_failure(exc, profile, base_url, env_prefix), secret)
            if attempt > 1:
                message += f" (after {attempt} attempts)"
            if _status(exc) == 401:
                raise LLMConfigError(message, profile=profile) from None
            raise LLMEndpointError(message, profile=profile, status=_status(exc), attempts=attempt) from None


def usage_numbers(usage: Any) -> tuple[int, int, int, int]:
    """(input, output, cached, reasoning) tokens of an OpenAI ``usage`` object (zeros where absent)."""
    if usage is None:
        return 0, 0, 0, 0
    prompt = getattr(usage, "prompt_tokens", None) or 0
    completion = getattr(usage, "completion_tokens", None) or 0
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    cached = getattr(prompt_details, "cached_tokens", None) or 0
    reasoning = getattr(completion_details, "reasoning_tokens", None) or 0
    return int(prompt), int(completion), int(cached), int(reasoning)
