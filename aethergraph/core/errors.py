"""Exceptions of AetherGraph.

Every error the runtime raises derives from :class:`AetherGraphError` and carries
structured fields (run id, node id, sequence) so that callers and log processors
can act on them without parsing messages. Control-flow signals derive from
:class:`BaseException` so that ``except Exception`` in user code cannot swallow
them.
"""

from __future__ import annotations

import contextlib
import traceback as tb
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = [
    "AetherGraphError",
    "ArtifactNotFoundError",
    "BusUnavailableError",
    "DecorationError",
    "EventRejectedError",
    "EventTooLargeError",
    "GraphBuildError",
    "GraphInputError",
    "GraphMismatchError",
    "GraphNotFoundError",
    "HistoryEnded",
    "KeyConflictError",
    "LLMConfigError",
    "LLMEndpointError",
    "LLMError",
    "LLMResponseError",
    "McpConfigError",
    "McpError",
    "McpServerError",
    "McpToolError",
    "NonDeterminismError",
    "NotInRunError",
    "NotRetryableError",
    "OutputError",
    "ProjectionError",
    "ProjectionLockedError",
    "RagError",
    "ReplayedError",
    "ResumeRejectedError",
    "RunBusyError",
    "RunCancelledError",
    "RunExistsError",
    "RunFailedError",
    "RunNotFoundError",
    "RunSuspended",
    "SerializationError",
    "ServiceNameError",
    "StaleWriterError",
    "TokenBudgetExceeded",
    "TopologyMismatchError",
    "UnknownServiceError",
    "WaitExpiredError",
    "WorkspaceError",
]


class AetherGraphError(Exception):
    """Root of every error raised by AetherGraph."""

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        node_id: str | None = None,
        seq: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.run_id = run_id
        self.node_id = node_id
        self.seq = seq

    def __str__(self) -> str:
        where = [
            f"{name}={value}"
            for name, value in (("run", self.run_id), ("node", self.node_id), ("seq", self.seq))
            if value is not None
        ]
        return f"{self.message} [{' '.join(where)}]" if where else self.message


class DecorationError(AetherGraphError, TypeError):
    """A ``@tool`` or ``@graph_fn`` was applied to something it cannot describe."""


class OutputError(AetherGraphError, ValueError):
    """A tool or graph returned outputs that do not match its declared ``outputs``."""


class SerializationError(AetherGraphError, TypeError):
    """A value that must be journaled cannot be encoded."""


class EventTooLargeError(AetherGraphError, ValueError):
    """An event is larger than the configured ``max_event_bytes``."""


class NotInRunError(AetherGraphError, RuntimeError):
    """An operation that needs a running graph was used outside one."""


class BusUnavailableError(AetherGraphError, ConnectionError):
    """The NATS server cannot be reached or does not have JetStream enabled."""


class TopologyMismatchError(BusUnavailableError):
    """A stream or bucket exists on the server with a configuration other than the settings ask for.

    ``differences`` holds ``(stream, field, existing, wanted)`` tuples. Nothing is changed
    silently: ``aethergraph nats --migrate`` shows the differences and applies them.
    """

    def __init__(self, message: str, *, differences: tuple[tuple[str, str, object, object], ...]) -> None:
        super().__init__(message)
        self.differences = differences

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(stream for stream, *_ in self.differences))


class WorkspaceError(AetherGraphError, OSError):
    """The workspace folder or the embedded server in it cannot be used."""


class EventRejectedError(AetherGraphError):
    """JetStream refused to store an event."""


class StaleWriterError(EventRejectedError):
    """Another writer appended to this run's journal first; this writer is fenced out."""


class RunExistsError(StaleWriterError):
    """A run was started under an id that an existing run already has (``--run-id``, ``run_id=``).

    Nothing was written. A :class:`StaleWriterError` (the start was fenced out
    by the existing run's ``run.started``), so code catching that keeps working.
    """


class GraphBuildError(AetherGraphError, ValueError):
    """A ``@graphify`` body describes a graph that cannot run (cycle, duplicate id, unknown reference, ...)."""


class GraphInputError(AetherGraphError, TypeError):
    """A run was submitted with inputs its graph does not accept (missing, unknown)."""


class GraphNotFoundError(AetherGraphError, LookupError):
    """A ``module:attribute`` reference, or a registered name (``graph_id``), does not name a graph or tool here."""

    def __init__(self, message: str, *, graph_id: str | None = None, run_id: str | None = None) -> None:
        super().__init__(message, run_id=run_id)
        self.graph_id = graph_id


class RunNotFoundError(AetherGraphError, LookupError):
    """No journal exists for the run id on this bus."""


class RunFailedError(AetherGraphError):
    """A run ended in failure; ``error_type`` and ``message`` describe the cause."""

    def __init__(self, message: str, *, run_id: str, error_type: str, node_id: str | None = None) -> None:
        super().__init__(message, run_id=run_id, node_id=node_id)
        self.error_type = error_type


class RunCancelledError(RunFailedError):
    """The run was cancelled (``aethergraph cancel``, ``handle.cancel()``) before it could finish."""

    def __init__(self, message: str, *, run_id: str, node_id: str | None = None) -> None:
        super().__init__(message, run_id=run_id, error_type="Cancelled", node_id=node_id)


class NotRetryableError(AetherGraphError, ValueError):
    """``retry`` was asked of a run that cannot continue from its failed nodes (``status`` says why)."""

    def __init__(self, message: str, *, run_id: str, status: str) -> None:
        super().__init__(message, run_id=run_id)
        self.status = status


class GraphMismatchError(AetherGraphError, ValueError):
    """A run was continued with another graph than the one it is a run of (``recorded_graph``)."""

    def __init__(self, message: str, *, run_id: str, recorded_graph: str, graph: str) -> None:
        super().__init__(message, run_id=run_id)
        self.recorded_graph = recorded_graph
        self.graph = graph


class RunBusyError(AetherGraphError):
    """A run kept changing while it was being ended from outside (cancel, fail); try again."""


class NonDeterminismError(AetherGraphError):
    """A replayed run asked for a different step than its journal recorded.

    ``recorded`` and ``attempted`` describe the two steps; the run is failed
    with this reason and nothing is executed twice.
    """

    def __init__(self, message: str, *, run_id: str, seq: int, recorded: str, attempted: str) -> None:
        super().__init__(message, run_id=run_id, seq=seq)
        self.recorded = recorded
        self.attempted = attempted


class ReplayedError(AetherGraphError):
    """A step failed when it first ran; replay raises the recorded failure again.

    Used when the original exception type cannot be rebuilt from its name and
    message; ``error_type`` is the original type's qualified name.
    """

    def __init__(self, message: str, *, error_type: str, run_id: str | None = None, node_id: str | None = None) -> None:
        super().__init__(f"{error_type}: {message}", run_id=run_id, node_id=node_id)
        self.error_type = error_type
        self.original_message = message


class WaitExpiredError(AetherGraphError, TimeoutError):
    """A wait's deadline passed before anyone answered it (``wait_id`` names it)."""

    def __init__(self, message: str, *, run_id: str, wait_id: str, node_id: str | None = None) -> None:
        super().__init__(message, run_id=run_id, node_id=node_id)
        self.wait_id = wait_id


class ResumeRejectedError(AetherGraphError, ValueError):
    """A resume command was refused; the wait stays open and nothing changed.

    ``reason`` is a short machine-readable code (``unknown_run``,
    ``wait_closed``, ``unknown_wait``, ``ambiguous_wait``, ``invalid_payload``,
    ``run_ended``, ``malformed``). ``open_waits`` lists the open waits of the
    run's tree when the command named none of them unambiguously: one mapping
    per wait with ``wait_id`` (as the command may name it: ``w4``, or
    ``<nested_run_id>/w4`` for a nested run's), ``run_id`` (the run holding
    it), ``node_id`` (for a nested run's wait: the node of its parent run that
    holds the nested run, e.g. the static graph's dual-stage node), ``kind``
    and ``prompt``.
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None,
        reason: str,
        wait_id: str | None = None,
        open_waits: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(message, run_id=run_id)
        self.reason = reason
        self.wait_id = wait_id
        self.open_waits = tuple(open_waits)


class ProjectionError(AetherGraphError):
    """The projection store could not be opened, written or queried (bad SQL lands here)."""


class ProjectionLockedError(ProjectionError):
    """Another process holds the projection store's DuckDB file (one writer per file)."""


class UnknownServiceError(AetherGraphError, AttributeError):
    """``context.<name>()`` names no registered context service; ``registered`` lists the names that exist."""

    def __init__(self, message: str, *, service: str = "", registered: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.service = service
        self.registered = registered


class ServiceNameError(AetherGraphError, ValueError):
    """A context service cannot be registered under this name (a built-in, or not an identifier)."""

    def __init__(self, message: str, *, service: str = "") -> None:
        super().__init__(message)
        self.service = service


class KeyConflictError(AetherGraphError):
    """``context.kv().set(..., expected_revision=n)`` found the key at another revision.

    ``key``, ``expected`` and ``actual`` (``0``: the key does not exist) say
    what was found; read the key again and retry.
    """

    def __init__(self, message: str, *, key: str = "", expected: int = 0, actual: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.expected = expected
        self.actual = actual


class ArtifactNotFoundError(AetherGraphError, LookupError):
    """No artifact with this URI or id is in the artifact store."""

    def __init__(self, message: str, *, ref: str = "") -> None:
        super().__init__(message)
        self.ref = ref


class LLMError(AetherGraphError):
    """A model call of ``context.llm(profile)`` failed; ``profile`` names the profile."""

    def __init__(self, message: str, *, profile: str = "", **where: Any) -> None:
        super().__init__(message, **where)
        self.profile = profile


class LLMConfigError(LLMError, ValueError):
    """A profile is missing or incomplete (no model, no API key, ...); the message names the setting to set."""


class LLMEndpointError(LLMError, ConnectionError):
    """The endpoint could not answer: unreachable, or an HTTP error (after retrying transient ones).

    ``status`` is the HTTP status (None if no answer came); ``attempts`` counts the attempts made.
    """

    def __init__(self, message: str, *, profile: str = "", status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message, profile=profile)
        self.status = status
        self.attempts = attempts


class LLMResponseError(LLMError, ValueError):
    """The model answered, but not as asked: invalid JSON, output failing its schema or ``response_model``,
    or a tool loop that did not finish within ``max_tool_rounds``. ``text`` holds the model's answer."""

    def __init__(self, message: str, *, profile: str = "", text: str = "") -> None:
        super().__init__(message, profile=profile)
        self.text = text


class TokenBudgetExceeded(LLMError):
    """The run has spent its token budget (``AETHERGRAPH_LLM__TOKEN_BUDGET``); ``budget`` and ``spent`` say how far."""

    def __init__(self, message: str, *, profile: str = "", budget: int = 0, spent: int = 0) -> None:
        super().__init__(message, profile=profile)
        self.budget = budget
        self.spent = spent


class McpError(AetherGraphError):
    """A call of ``context.mcp(server)`` failed; ``server`` names the MCP server."""

    def __init__(self, message: str, *, server: str = "", **where: Any) -> None:
        super().__init__(message, **where)
        self.server = server


class McpConfigError(McpError, ValueError):
    """No MCP server is configured under this name, or its configuration is incomplete."""


class McpServerError(McpError, ConnectionError):
    """The MCP server could not be started or reached, or it died during the call."""


class McpToolError(McpError):
    """The MCP server ran the tool and reported an error (``isError``); ``tool`` names it."""

    def __init__(self, message: str, *, server: str = "", tool: str = "") -> None:
        super().__init__(message, server=server)
        self.tool = tool


class RagError(AetherGraphError, ValueError):
    """A ``context.rag()`` call was given something it cannot use (an unknown corpus, an unreadable file, ...)."""

    def __init__(self, message: str, *, corpus: str = "") -> None:
        super().__init__(message)
        self.corpus = corpus


class RunSuspended(BaseException):
    """Control-flow signal: the run releases its coroutine and continues later by replay.

    Derives from ``BaseException`` so ``except Exception`` in user code cannot
    swallow it. ``wait_id`` is set when the run waits for an answer (in run
    ``wait_run_id``, the run itself or a nested run); without it the
    suspension is the always-suspend test mode's, continued at once.
    """

    def __init__(
        self,
        run_id: str,
        reason: str,
        *,
        wait_id: str | None = None,
        wait_run_id: str | None = None,
        kind: str = "",
        prompt: str = "",
    ) -> None:
        super().__init__(f"run {run_id} suspended: {reason}")
        self.run_id = run_id
        self.reason = reason
        self.wait_id = wait_id
        self.wait_run_id = wait_run_id or run_id
        self.kind = kind
        self.prompt = prompt


class HistoryEnded(BaseException):
    """Control-flow signal of offline replay: the code reached the end of the recorded history.

    Raised where the next step would execute live; ``aethergraph.testing.replay``
    catches it (every recorded step matched).
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id}: the recorded history ends here")
        self.run_id = run_id


PUBLIC_ERRORS_MODULE = "aethergraph.errors"
"""The stable name journals give AetherGraph's own errors (``aethergraph.errors.WaitExpiredError``)."""

# Where journals written before the public names named AetherGraph's errors; read as the public module.
ERROR_MODULE_ALIASES: Mapping[str, str] = {"aethergraph.core.errors": PUBLIC_ERRORS_MODULE}


def error_type_name(exc: BaseException) -> str:
    """How a journal names an exception's type: ``ValueError``; ``aethergraph.errors.X`` for AetherGraph's
    own errors (whichever module defines them); ``module.Class`` for anything else."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    if cls.__module__ == __name__ and cls.__qualname__ in __all__:
        return f"{PUBLIC_ERRORS_MODULE}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def public_error_class(error_type: str) -> type[BaseException] | None:
    """The AetherGraph error class a journal's ``error_type`` names, under its public or an older name."""
    module, _, name = error_type.rpartition(".")
    if ERROR_MODULE_ALIASES.get(module, module) != PUBLIC_ERRORS_MODULE or name not in __all__:
        return None
    found = globals().get(name)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


TRACEBACK_MAX_CHARS: Final = 8192
"""The most of a failure's traceback a journal keeps: the end (innermost frames and the exception line) is kept."""

_JOURNALED = "__aethergraph_traceback__"


def keep_traceback(exc: BaseException, text: str) -> BaseException:
    """Attach a traceback read from a journal to ``exc`` (an error rebuilt on replay, or a run's failure)."""
    if text:
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exc, _JOURNALED, text)
    return exc


def failure_fields(exc: BaseException) -> dict[str, Any]:
    """How a failure is journaled (``tool.failed``, ``service.failed``, ``run.failed``): type, message, traceback."""
    return {
        "error_type": error_type_name(exc),
        "message": exc.message if isinstance(exc, EventTooLargeError) else str(exc),
        "traceback": failure_traceback(exc),
    }


def failure_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as a journal records it: the one it was rebuilt with, else formatted, at most
    :data:`TRACEBACK_MAX_CHARS` characters (the end is kept)."""
    text = getattr(exc, _JOURNALED, None)
    if not isinstance(text, str) or not text:
        try:
            text = "".join(tb.format_exception(exc))
        except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure itself
            text = f"{error_type_name(exc)} (its traceback could not be formatted)"
    if len(text) > TRACEBACK_MAX_CHARS:
        cut = len(text) - TRACEBACK_MAX_CHARS
        text = f"[{cut:,} characters of the traceback cut]\n" + text[-TRACEBACK_MAX_CHARS:]
    return text


CANCEL_REQUESTED = "aethergraph: cancel requested"
"""The message a run's task is cancelled with when someone asked to cancel the run.

A run whose task is cancelled without it (the process is shutting down, its
event loop tearing down its tasks) is not cancelled for good: nothing is
journaled, and the run is handed over to a worker.
"""


def cancel_was_requested(exc: BaseException) -> bool:
    """Whether ``exc`` (a ``CancelledError``) comes from a requested cancel rather than a shutdown."""
    return bool(exc.args) and exc.args[0] == CANCEL_REQUESTED
