"""Journaled service calls: ``service.called``, the method, then ``service.returned`` or ``service.failed``.

Inside a run every public async method call on a context service is a step
of the run, like a tool call: ``service.called`` is appended (pipelined), the
method runs, and its outcome is committed before the caller gets the result,
which is the value as it reads back from the journal. On replay the recorded
result is returned (or the recorded failure raised again) and the service is
not called. A call recorded without outcome (in flight when its worker
stopped) runs again under the same ``service.called``.

Arguments and results larger than the backends' ``inline_limit`` are stored
as content-addressed blobs and the event carries their URI (``args_ref``,
``result_ref``), so events stay under ``max_event_bytes``. Calls made while
another journaled service call runs (a service calling itself or another
service) are part of the outer call and are not journaled separately.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from aethergraph.core.context.service_base import JournalMode, accessed_context, call_context
from aethergraph.core.errors import SerializationError
from aethergraph.core.journal.replay import Outcome
from aethergraph.core.journal.scope import RunScope
from aethergraph.core.journal.step import StepKey, run_call
from aethergraph.core.wire.codec import digest, normalise_value
from aethergraph.core.wire.events import ServiceCalled, ServiceFailed, ServiceReturned

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = ["call_journaled", "load_spilled", "spill_bytes"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode


def _encode_args(service: str, method: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    try:
        return _encode([list(args), dict(kwargs)])
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise SerializationError(
            f"the arguments of service call {service}.{method}() cannot be journaled: {exc}. Pass JSON-compatible "
            f"values (save large or binary data with context.artifacts() and pass its URI), or mark {method} "
            "with @journal_by_digest (recorded by digest, called again on replay) or @not_journaled"
        ) from exc


def _digest_of_unencodable(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    return digest(repr((list(args), sorted(kwargs.items()))).encode())


async def spill_bytes(scope: RunScope, raw: bytes) -> str:
    """Store an oversized encoded value as a blob; its URI goes into the event instead (content-addressed)."""
    blobs = scope.env.service_backends.blobs
    sha = hashlib.sha256(raw).hexdigest()
    if not await blobs.has(sha):
        await blobs.put_bytes(sha, raw)
    return blobs.uri(sha)


async def load_spilled(scope: RunScope, ref: str) -> Any:
    """The value a journal stored by reference (:func:`spill_bytes`), decoded."""
    blobs = scope.env.service_backends.blobs
    sha = blobs.digest_of(ref)
    if sha is None:
        raise SerializationError(f"the journal references {ref!r}, which is not a URI of this artifact store")
    return _decode(await blobs.get_bytes(sha))


async def _recorded_result(scope: RunScope, outcome: ServiceReturned) -> Any:
    if outcome.result_ref:
        return await load_spilled(scope, outcome.result_ref)
    return outcome.result


async def call_journaled(
    ctx: NodeContext,
    service: str,
    method: str,
    fn: Callable[..., Awaitable[Any]],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    mode: JournalMode = "full",
) -> Any:
    """Call ``fn(*args, **kwargs)`` (a method of context service ``service``) as a journaled step of ctx's run."""
    if call_context.get() is not None:  # inside another journaled service call: part of that call
        return await fn(*args, **kwargs)
    if mode == "off":
        access_token = accessed_context.set(ctx)
        try:
            return await fn(*args, **kwargs)
        finally:
            accessed_context.reset(access_token)
    scope = ctx._scope
    if scope.divergence is not None:
        raise scope.divergence
    inline_limit = scope.env.service_backends.inline_limit
    if mode == "digest":
        try:
            args_digest = digest(_encode_args(service, method, args, kwargs))
        except SerializationError:
            args_digest = _digest_of_unencodable(args, kwargs)
        event_args: list[Any] = []
        event_kwargs: dict[str, Any] = {}
        args_ref: str | None = None
    else:
        raw_args = _encode_args(service, method, args, kwargs)
        args_digest = digest(raw_args)
        args_ref = None
        if len(raw_args) > inline_limit:
            event_args, event_kwargs = [], {}
            args_ref = await spill_bytes(scope, raw_args)
        else:
            event_args, event_kwargs = _decode(raw_args)
    key = StepKey(
        ServiceCalled,
        ctx.node_id,
        f"service call {service}.{method}() (node {ctx.node_id}, arguments digest {args_digest})",
        names={"service": service, "method": method},
        compared={"args_digest": args_digest},
    )

    async def journaled(result: Any) -> tuple[dict[str, Any], Any]:
        value, result_ref = await _journal_value(scope, service, method, result, mode, inline_limit)
        fields = {"result": None if result_ref else value, "result_ref": result_ref}
        return fields, result if mode == "digest" else value

    async def recorded(outcome: Outcome) -> Any:
        if mode == "full" and isinstance(outcome, ServiceReturned):
            return await _recorded_result(scope, outcome)
        return await _call_in_context(ctx, fn, args, kwargs)  # digest mode: called again

    return await run_call(
        scope,
        key,
        opening_fields={"args": event_args, "kwargs": event_kwargs, "args_ref": args_ref},
        execute=lambda: _call_in_context(ctx, fn, args, kwargs),
        returned=(ServiceReturned, journaled),
        failed=ServiceFailed,
        on_recorded=recorded,
        raise_recorded_failure=mode == "full",
    )


async def _journal_value(
    scope: RunScope, service: str, method: str, result: Any, mode: JournalMode, inline_limit: int
) -> tuple[Any, str | None]:
    """The result as journaled (and as handed to the caller in full mode), or its URI if it is too large."""
    if mode == "digest":
        try:
            return {"digest": digest(_encode(result)), "type": type(result).__name__}, None
        except (TypeError, msgspec.EncodeError, OverflowError):
            return {"digest": None, "type": type(result).__name__}, None
    try:
        value, raw = normalise_value(result, what=f"service call {service}.{method}()")
    except SerializationError as exc:
        raise SerializationError(
            f"{exc.message} Or mark {method} with @journal_by_digest (recorded by digest, called again on replay)"
        ) from exc.__cause__
    if len(raw) > inline_limit:
        return value, await spill_bytes(scope, raw)
    return value, None


async def _call_in_context(
    ctx: NodeContext, fn: Callable[..., Awaitable[Any]], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Any:
    """Run the method with ``Service.ctx()`` answering ``ctx``; accessors used inside do not leak out."""
    call_token = call_context.set(ctx)
    access_token = accessed_context.set(ctx)
    try:
        return await fn(*args, **kwargs)
    finally:
        accessed_context.reset(access_token)
        call_context.reset(call_token)
