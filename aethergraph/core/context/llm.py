"""``context.llm(profile)``: chat, structured output, tool loops, streaming and embeddings, each call journaled.

    text, usage = await context.llm().chat("Summarise: ...")
    plan, usage = await context.llm("fast").chat(messages, response_model=Plan)
    text, usage = await context.llm().chat(messages, tools=[search_docs], max_tool_rounds=4)
    text, usage = await context.llm().chat_stream(messages, on_delta=print)
    vectors = await context.llm().embed(["a", "b"])

Every model turn is one journaled step (:mod:`.llm_call`); in a tool loop
every tool call is its own step too (a ``@tool`` is a tool step, an MCP tool
a service call). See docs/agents.md.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from aethergraph.core.context.llm_call import CallOutcome, journaled_model_call, publish_delta
from aethergraph.core.context.llm_tools import ChatTool, chat_tools, tool_schemas
from aethergraph.core.errors import (
    AetherGraphError,
    BusUnavailableError,
    EventRejectedError,
    LLMResponseError,
    NonDeterminismError,
    ReplayedError,
    TokenBudgetExceeded,
    error_type_name,
)
from aethergraph.core.journal.model_port import ModelEndpoint, ModelRequest, TokenUsage
from aethergraph.core.journal.scope import cursor

if TYPE_CHECKING:
    from aethergraph.core.context.node_context import NodeContext

__all__ = ["LLMClient"]

Messages = str | Sequence[dict[str, Any]]
_TEXT_LIMIT = 2000


def _messages(messages: Messages, system: str | None) -> list[dict[str, Any]]:
    listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
    if system is not None:
        listed.insert(0, {"role": "system", "content": system})
    if not listed:
        raise ValueError("chat() needs at least one message, e.g. chat('Hello') or chat([{'role': 'user', ...}])")
    return listed


def _usage_dict(usage: TokenUsage, rounds: int) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "total_tokens": usage.total,
        "rounds": rounds,
    }


def _add(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    return TokenUsage(
        a.input_tokens + b.input_tokens,
        a.output_tokens + b.output_tokens,
        a.cached_tokens + b.cached_tokens,
        a.reasoning_tokens + b.reasoning_tokens,
    )


class _OutputSpec:
    """What the answer must be: text, any JSON, JSON matching a schema, or a pydantic model."""

    def __init__(
        self, output_format: Literal["text", "json"], json_schema: dict[str, Any] | None, response_model: Any
    ) -> None:
        if response_model is not None:
            json_schema = response_model.model_json_schema()
            output_format = "json"
        elif json_schema is not None:
            output_format = "json"
        self.format = output_format
        self.schema = json_schema
        self.model = response_model

    def params(self) -> dict[str, Any]:
        if self.format == "text":
            return {}
        if self.schema is None:
            return {"response_format": {"type": "json_object"}}
        name = getattr(self.model, "__name__", "answer")
        return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": self.schema}}}

    def check(self, profile: str) -> Callable[[CallOutcome], None] | None:
        if self.format == "text":
            return None
        return lambda outcome: self.parse(profile, outcome.response.get("content") or "")

    def parse(self, profile: str, text: str) -> Any:
        if self.format == "text":
            return text
        shown = text if len(text) <= _TEXT_LIMIT else text[:_TEXT_LIMIT] + "..."
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise LLMResponseError(
                f"the model of profile {profile!r} was asked for JSON and answered text that is not JSON "
                f"({exc}): {shown!r}; ask for JSON in the prompt too, or use a model that supports "
                "response_format",
                profile=profile,
                text=text,
            ) from None
        if self.model is not None:
            import pydantic

            try:
                return self.model.model_validate(value)
            except pydantic.ValidationError as exc:
                raise LLMResponseError(
                    f"the answer of the model of profile {profile!r} does not fit {self.model.__name__}: "
                    f"{exc.error_count()} error(s): {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}; answer: "
                    f"{shown!r}",
                    profile=profile,
                    text=text,
                ) from None
        if self.schema is not None:
            import jsonschema

            try:
                jsonschema.validate(value, self.schema)
            except jsonschema.ValidationError as exc:
                raise LLMResponseError(
                    f"the answer of the model of profile {profile!r} does not match its json_schema: "
                    f"{exc.message}; answer: {shown!r}",
                    profile=profile,
                    text=text,
                ) from None
        return value


class LLMClient:
    """The model calls of one node through one profile (``context.llm(profile)``)."""

    __slots__ = ("_ctx", "profile")

    def __init__(self, ctx: NodeContext, profile: str = "default") -> None:
        self._ctx = ctx
        self.profile = profile.strip().lower() or "default"

    async def chat(
        self,
        messages: Messages,
        *,
        system: str | None = None,
        tools: Sequence[Any] | None = None,
        max_tool_rounds: int = 8,
        output_format: Literal["text", "json"] = "text",
        json_schema: dict[str, Any] | None = None,
        response_model: Any = None,
        **params: Any,
    ) -> tuple[Any, dict[str, int]]:
        """One answer from the model: ``(text, usage)``; the parsed JSON or model instance when asked for one.

        With ``tools`` the model may call them: each round journals the model
        turn and each tool call, until the model answers without calling a
        tool (at most ``max_tool_rounds`` rounds of tool calls). Other keyword
        arguments (``temperature``, ``max_tokens``, ``model``, ...) go to the
        endpoint as they are.
        """
        return await self._converse(
            _messages(messages, system),
            tools or (),
            max_tool_rounds,
            _OutputSpec(output_format, json_schema, response_model),
            params,
            None,
        )

    async def chat_stream(
        self,
        messages: Messages,
        *,
        on_delta: Callable[[str], Any] | None = None,
        system: str | None = None,
        tools: Sequence[Any] | None = None,
        max_tool_rounds: int = 8,
        **params: Any,
    ) -> tuple[str, dict[str, int]]:
        """Like :meth:`chat`, streaming the answer: ``on_delta`` gets each piece of text as it arrives.

        The pieces also go out on ``ag.stream.<run_id>.<node_id>``. The journal
        records the complete answer; a replay returns it without streaming
        (``on_delta`` is not called again).
        """
        text, usage = await self._converse(
            _messages(messages, system),
            tools or (),
            max_tool_rounds,
            _OutputSpec("text", None, None),
            params,
            on_delta or (lambda _text: None),
        )
        return str(text), usage

    async def stream(self, messages: Messages, *, system: str | None = None, **params: Any) -> AsyncIterator[str]:
        """The answer's text piece by piece, as an async iterator (a replay yields the recorded answer whole)."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def produce() -> tuple[str, int]:
            try:
                text, _ = await self.chat_stream(messages, on_delta=queue.put_nowait, system=system, **params)
                return text, cursor.get()
            finally:
                queue.put_nowait(None)

        task = asyncio.ensure_future(produce())
        delivered = False
        try:
            while (piece := await queue.get()) is not None:
                delivered = True
                yield piece
            text, seq = await task
        finally:
            if not task.done():
                task.cancel()
        cursor.set(seq)  # the step's outcome, as if the call had run in this task
        if not delivered and text:
            yield text

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One embedding vector per text (the profile's ``embed_model``), journaled as one call."""
        listed = [str(text) for text in texts]
        if not listed:
            return []

        async def call(endpoint: ModelEndpoint, idempotency_key: str, _seq: int) -> CallOutcome:
            reply = await endpoint.embed(listed, idempotency_key=idempotency_key)
            if len(reply.vectors) != len(listed):
                raise LLMResponseError(
                    f"the endpoint of profile {self.profile!r} returned {len(reply.vectors)} embeddings for "
                    f"{len(listed)} texts",
                    profile=self.profile,
                )
            return CallOutcome(reply.vectors, reply.usage, "", reply.model, reply.attempts)

        outcome = await journaled_model_call(self._ctx, self.profile, "embed", {"input": listed}, call)
        return [list(vector) for vector in outcome.response]

    async def _converse(
        self,
        messages: list[dict[str, Any]],
        tools: Sequence[Any],
        max_tool_rounds: int,
        output: _OutputSpec,
        params: dict[str, Any],
        on_delta: Callable[[str], Any] | None,
    ) -> tuple[Any, dict[str, int]]:
        available = chat_tools(tools)
        schemas = tool_schemas(available)
        request_params = {**params, **output.params()}
        usage = TokenUsage()
        rounds = 0
        while True:
            outcome = await self._turn(messages, schemas, request_params, on_delta, output)
            usage = _add(usage, outcome.usage)
            message = outcome.response
            calls = message.get("tool_calls") or []
            if not calls:
                return output.parse(self.profile, message.get("content") or ""), _usage_dict(usage, rounds + 1)
            if rounds >= max_tool_rounds:
                raise LLMResponseError(
                    f"the model of profile {self.profile!r} still calls tools after {max_tool_rounds} rounds "
                    "(max_tool_rounds); raise max_tool_rounds or tell the model when to stop",
                    profile=self.profile,
                    text=str(message.get("content") or ""),
                )
            rounds += 1
            messages = [*messages, message]
            for tool_call in calls:
                messages.append(await _run_tool_call(available, tool_call))

    async def _turn(
        self,
        messages: list[dict[str, Any]],
        schemas: list[dict[str, Any]],
        params: dict[str, Any],
        on_delta: Callable[[str], Any] | None,
        output: _OutputSpec,
    ) -> CallOutcome:
        request: dict[str, Any] = {"messages": messages, **params}
        if schemas:
            request["tools"] = schemas
        scope = self._ctx._scope
        node_id = self._ctx.node_id

        async def call(endpoint: ModelEndpoint, idempotency_key: str, call_seq: int) -> CallOutcome:
            model_request = ModelRequest(messages, schemas, params, idempotency_key)
            if on_delta is None:
                reply = await endpoint.chat(model_request)
            else:
                index = 0

                def sink(text: str, attempt: int) -> None:
                    nonlocal index
                    publish_delta(scope, node_id, call_seq, index, text, attempt=attempt, done=False)
                    index += 1
                    on_delta(text)

                reply = await endpoint.chat(model_request, on_delta=sink)
                publish_delta(scope, node_id, call_seq, index, "", attempt=reply.attempts, done=True)
            return CallOutcome(reply.message, reply.usage, reply.finish_reason, reply.model, reply.attempts)

        return await journaled_model_call(
            self._ctx,
            self.profile,
            "chat",
            request,
            call,
            streamed=on_delta is not None,
            check=output.check(self.profile),
        )

    def __repr__(self) -> str:
        return f"LLMClient(profile={self.profile!r}, node_id={self._ctx.node_id!r})"


# Failures the model must not be asked to work around: they stop the run (or the budget does).
_STOPS_THE_RUN = (NonDeterminismError, EventRejectedError, BusUnavailableError, TokenBudgetExceeded)


def _error_text(exc: Exception) -> str:
    """A tool's failure as the model reads it: the same text live and when the failure is replayed."""
    if isinstance(exc, ReplayedError):
        return f"{exc.error_type}: {exc.original_message}"
    message = exc.message if isinstance(exc, AetherGraphError) else str(exc)
    return f"{error_type_name(exc)}: {message}"


async def _run_tool_call(tools: dict[str, ChatTool], tool_call: dict[str, Any]) -> dict[str, Any]:
    """Call the tool the model asked for; its result (or what went wrong) is the tool message sent back."""
    function = tool_call.get("function") or {}
    name = str(function.get("name") or "")
    reply = {"role": "tool", "tool_call_id": tool_call.get("id") or "", "content": ""}
    tool = tools.get(name)
    if tool is None:
        reply["content"] = json.dumps({"error": f"no tool named {name!r}; the tools are {sorted(tools)}"})
        return reply
    try:
        arguments = json.loads(function.get("arguments") or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("the arguments must be a JSON object")
    except ValueError as exc:
        reply["content"] = json.dumps({"error": f"the arguments of {name!r} are not a JSON object: {exc}"})
        return reply
    try:
        result = await tool.invoke(arguments)
    except _STOPS_THE_RUN:
        raise
    except Exception as exc:  # noqa: BLE001 - the model is told, and may correct its call
        reply["content"] = json.dumps({"error": _error_text(exc)})
        return reply
    reply["content"] = result if isinstance(result, str) else json.dumps(result, default=str)
    return reply
