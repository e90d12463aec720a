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
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .codec import digest, normalise_value
from .errors import NonDeterminismError, RunSuspended, SerializationError, error_type_name
from .events import ServiceCalled, ServiceFailed, ServiceReturned
from .replay import rebuild_error
from .scope import RunScope, cursor
from .service_base import JournalMode, accessed_context, call_context

if TYPE_CHECKING:
    from .context import NodeContext

__all__ = ["call_journaled"]

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


async def _spill(scope: RunScope, raw: bytes) -> str:
    """Store an oversized encoded value as a blob; its URI goes into the event instead."""
    blobs = scope.env.service_backends.blobs
    sha = hashlib.sha256(raw).hexdigest()
    if not await blobs.has(sha):
        await blobs.put_bytes(sha, raw)
    return blobs.uri(sha)


async def _unspill(scope: RunScope, ref: str) -> Any:
    blobs = scope.env.service_backends.blobs
    sha = blobs.digest_of(ref)
    if sha is None:
        raise SerializationError(f"the journal references {ref!r}, which is not a URI of this artifact store")
    return _decode(await blobs.get_bytes(sha))


async def _recorded_result(scope: RunScope, outcome: ServiceReturned) -> Any:
    if outcome.result_ref:
        return await _unspill(scope, outcome.result_ref)
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
            args_ref = await _spill(scope, raw_args)
        else:
            event_args, event_kwargs = _decode(raw_args)
    journal = scope.journal
    called_seq: int | None = None
    replay = scope.replaying()
    if replay is not None:
        try:
            step = replay.take_service(service, method, args_digest, ctx.node_id)
        except NonDeterminismError as exc:
            scope.divergence = exc
            raise
        if step is not None:
            outcome = step.outcome
            if isinstance(outcome, ServiceFailed) and mode == "full":
                cursor.set(outcome.seq)
                raise rebuild_error(outcome)
            if isinstance(outcome, (ServiceReturned, ServiceFailed)):
                cursor.set(outcome.seq)
                if mode == "full" and isinstance(outcome, ServiceReturned):
                    return await _recorded_result(scope, outcome)
                return await _call_in_context(ctx, fn, args, kwargs)  # digest mode: called again
            called_seq = step.opening.seq
            scope.going_live()  # recorded as called, never finished: it is called again
    if called_seq is None:
        called_seq, _ = journal.append(
            ServiceCalled,
            parent=cursor.get() or None,
            node_id=ctx.node_id,
            service=service,
            method=method,
            args=event_args,
            kwargs=event_kwargs,
            args_digest=args_digest,
            args_ref=args_ref,
        )
    started = time.perf_counter_ns()
    outer_cursor = cursor.set(called_seq)
    try:
        try:
            result = await _call_in_context(ctx, fn, args, kwargs)
        finally:
            cursor.reset(outer_cursor)
        value, result_ref = await _journal_value(scope, service, method, result, mode, inline_limit)
    except Exception as exc:
        seq, committed = journal.append(
            ServiceFailed,
            parent=called_seq,
            node_id=ctx.node_id,
            service=service,
            method=method,
            error_type=error_type_name(exc),
            message=str(exc),
            duration_us=(time.perf_counter_ns() - started) // 1000,
        )
        await committed
        cursor.set(seq)
        raise
    seq, committed = journal.append(
        ServiceReturned,
        parent=called_seq,
        node_id=ctx.node_id,
        service=service,
        method=method,
        result=None if result_ref else value,
        result_ref=result_ref,
        duration_us=(time.perf_counter_ns() - started) // 1000,
    )
    await committed
    cursor.set(seq)
    if scope.suspend_after_each_step:
        raise RunSuspended(scope.run_id, "always-suspend test mode")
    return result if mode == "digest" else value


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
        return value, await _spill(scope, raw)
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
