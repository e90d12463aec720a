"""One model call as a journaled step: ``llm.called``, the call, then ``llm.returned`` or ``llm.failed``.

The request (messages, tools, parameters; never credentials) is journaled
before the endpoint is called, and the complete response after, so a replay
hands the recorded response back without calling the model, and a crash
after the response was committed never bills the call twice. A call
recorded without outcome (in flight when its process died) is made again
under the same ``llm.called`` and with the same idempotency key.

Streamed tokens go out live on ``ag.stream.<run_id>.<node_id>`` (not stored,
never replayed); the journal records only the complete response. Requests
and responses too large for an event are stored in the artifact store by
reference. The run's token budget is checked before each live call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from aethergraph.core.context.service_calls import load_spilled, spill_bytes
from aethergraph.core.errors import LLMConfigError, LLMError, SerializationError, TokenBudgetExceeded
from aethergraph.core.journal.model_port import ModelEndpoint, TokenUsage
from aethergraph.core.journal.replay import Outcome, rebuild_error
from aethergraph.core.journal.scope import RunScope, cursor
from aethergraph.core.journal.step import StepKey, run_call
from aethergraph.core.wire.codec import digest
from aethergraph.core.wire.events import LlmCalled, LlmFailed, LlmReturned
from aethergraph.core.wire.token_delta import TokenDelta, encode_token_delta

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = ["CallOutcome", "ModelCall", "check_token_budget", "journaled_model_call", "publish_delta"]

Operation = Literal["chat", "embed"]

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What a model call returned: the response document (message or vectors) and its accounting."""

    response: Any
    usage: TokenUsage
    finish_reason: str
    model: str
    attempts: int = 1


ModelCall = Callable[[ModelEndpoint, str, int], Awaitable[CallOutcome]]
"""Makes the call live: given the endpoint, the idempotency key and the ``llm.called`` sequence."""

Check = Callable[[CallOutcome], None]
"""Refuses a response (raises :class:`~aethergraph.errors.LLMResponseError`); it is then the call's failure."""


def _resolve(scope: RunScope, profile: str) -> tuple[ModelEndpoint | None, LLMConfigError | None]:
    port = scope.env.models
    if port is None:
        return None, LLMConfigError(
            f"context.llm({profile!r}) has no model endpoints in this process: model calls need a host opened "
            "by aethergraph (run, start_run, a worker), with the [llm] extra installed "
            "(pip install 'aethergraph[llm]')",
            profile=profile,
        )
    try:
        return port.endpoint(profile), None
    except LLMConfigError as exc:
        return None, exc


def check_token_budget(scope: RunScope, profile: str) -> None:
    """Raise :class:`~aethergraph.errors.TokenBudgetExceeded` if the run has spent its token budget."""
    port = scope.env.models
    budget = port.token_budget if port is not None else None
    if budget is not None and scope.llm_tokens >= budget:
        raise TokenBudgetExceeded(
            f"run {scope.run_id} has spent {scope.llm_tokens} tokens of its budget of {budget} "
            f"(AETHERGRAPH_LLM__TOKEN_BUDGET); the model of profile {profile!r} was not called. Raise the "
            "budget, or retry the run after finding why it spends so much (SELECT * FROM llm_calls)",
            profile=profile,
            budget=budget,
            spent=scope.llm_tokens,
        )


async def _document(scope: RunScope, value: Any, what: str, raw: bytes | None = None) -> tuple[Any, str | None]:
    """``value`` for an event: inline, or the URI of its encoding (``raw``, if made already) when too large."""
    if raw is None:
        try:
            raw = _encode(value)
        except (TypeError, msgspec.EncodeError, OverflowError) as exc:
            raise SerializationError(f"{what} cannot be journaled: {exc}; pass JSON-compatible values") from exc
    if len(raw) > scope.env.service_backends.inline_limit:
        return None, await spill_bytes(scope, raw)
    return value, None


async def journaled_model_call(
    ctx: NodeContext,
    profile: str,
    operation: Operation,
    request: Mapping[str, Any],
    call: ModelCall,
    *,
    streamed: bool = False,
    check: Check | None = None,
) -> CallOutcome:
    """Make ``call`` a journaled step of ctx's run (see the module docstring); returns its outcome."""
    scope = ctx._scope
    try:
        raw_request = _encode(request)
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        raise SerializationError(
            f"the request of context.llm({profile!r}).{operation}() cannot be journaled: {exc}; "
            "pass messages and parameters as JSON-compatible values"
        ) from exc
    request_digest = digest(raw_request)
    node_id = ctx.node_id
    idempotency_key = f"{scope.run_id}:{node_id}:{cursor.get()}"
    key = StepKey(
        LlmCalled,
        node_id,
        lambda: f"a model call llm({profile!r}).{operation}() (node {node_id}, request digest {request_digest})",
        names={"profile": profile, "operation": operation},
        compared={"request_digest": request_digest},
    )
    endpoint, config_error = _resolve(scope, profile)
    model = endpoint.model if endpoint is not None and operation == "chat" else ""
    if endpoint is not None and operation == "embed":
        model = endpoint.embed_model
    inline, request_ref = await _document(scope, request, f"the request of context.llm({profile!r})", raw_request)

    async def execute() -> CallOutcome:
        if config_error is not None:
            raise config_error
        assert endpoint is not None
        check_token_budget(scope, profile)
        return await call(endpoint, idempotency_key, cursor.get())

    async def returned(outcome: CallOutcome) -> tuple[dict[str, Any], CallOutcome]:
        scope.llm_tokens += outcome.usage.total
        if check is not None:
            try:
                check(outcome)
            except LLMError as exc:
                exc.usage = outcome.usage  # type: ignore[attr-defined]  # counted on its llm.failed
                raise
        response, response_ref = await _document(scope, outcome.response, "a model response")
        usage = outcome.usage
        fields = {
            "model": outcome.model,
            "response": response,
            "response_ref": response_ref,
            "finish_reason": outcome.finish_reason,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "attempts": outcome.attempts,
        }
        return fields, outcome

    def failed_extra(exc: BaseException) -> dict[str, Any]:
        usage: TokenUsage = getattr(exc, "usage", TokenUsage())
        return {
            "model": model,
            "attempts": getattr(exc, "attempts", 1),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
        }

    async def recorded(event: Outcome) -> CallOutcome:
        if isinstance(event, LlmFailed):
            scope.llm_tokens += event.input_tokens + event.output_tokens
            raise rebuild_error(event)
        assert isinstance(event, LlmReturned)
        scope.llm_tokens += event.input_tokens + event.output_tokens
        response = await load_spilled(scope, event.response_ref) if event.response_ref else event.response
        usage = TokenUsage(event.input_tokens, event.output_tokens, event.cached_tokens, event.reasoning_tokens)
        return CallOutcome(response, usage, event.finish_reason, event.model, event.attempts)

    result: CallOutcome = await run_call(
        scope,
        key,
        opening_fields={
            "model": model,
            "request": inline,
            "request_ref": request_ref,
            "streamed": streamed,
            "idempotency_key": idempotency_key,
        },
        execute=execute,
        returned=(LlmReturned, returned),
        failed=LlmFailed,
        on_recorded=recorded,
        raise_recorded_failure=False,
        failed_extra=failed_extra,
    )
    return result


def publish_delta(
    scope: RunScope, node_id: str, call_seq: int, index: int, text: str, *, attempt: int, done: bool
) -> None:
    """Send one streamed piece of a model's answer on ``ag.stream.<run_id>.<node_id>`` (if the host streams)."""
    stream = scope.env.token_stream
    if stream is None:
        return
    delta = TokenDelta(
        run_id=scope.run_id, node_id=node_id, call_seq=call_seq, index=index, text=text, done=done, attempt=attempt
    )
    stream.publish(scope.run_id, node_id, encode_token_delta(delta))
