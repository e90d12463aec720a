"""The public surface, pinned: a name added to or dropped from these exports is a deliberate change here.

Also the stable names journals give errors: ``aethergraph.errors.X`` whichever
module defines X, and journals written under the older internal module path
still rebuild the same classes.
"""

from __future__ import annotations

import importlib

import pytest

import aethergraph
from aethergraph.core import errors as core_errors
from aethergraph.core.journal.replay import rebuild_error
from aethergraph.core.wire.events import ToolFailed

PUBLIC_MODULES: dict[str, list[str]] = {
    "aethergraph": [
        "AetherGraphError", "Artifact", "DualStageTool", "GraphFunction", "LLMClient", "MemoryEntry", "NodeContext",
        "RetryPolicy", "RunHandle", "RunManager", "Service", "Settings", "TaskGraph", "TaskGraphBuilder",
        "Tool", "Wait", "cancel", "close_runtime", "errors", "get_run", "get_runtime", "graph_fn",
        "graphify", "journal_by_digest", "not_journaled", "query", "query_async", "register_context_service",
        "register_llm_client", "register_mcp_server", "resume", "retry", "run", "run_async", "serve_projector",
        "serve_worker", "start_run", "start_server", "submit", "tool",
    ],
    "aethergraph.errors": [
        "AetherGraphError", "ArtifactNotFoundError", "BusUnavailableError", "DecorationError",
        "EventRejectedError", "EventTooLargeError", "GraphBuildError", "GraphInputError", "GraphMismatchError",
        "GraphNotFoundError", "HistoryEnded", "KeyConflictError", "LLMConfigError", "LLMEndpointError", "LLMError",
        "LLMResponseError", "McpConfigError", "McpError", "McpServerError", "McpToolError", "NonDeterminismError",
        "NotInRunError", "NotRetryableError", "OutputError", "ProjectionError", "ProjectionLockedError", "ReplayedError",
        "RagError", "ResumeRejectedError", "RunBusyError", "RunCancelledError", "RunExistsError", "RunFailedError",
        "RunNotFoundError", "RunSuspended", "SerializationError", "ServiceNameError", "StaleWriterError",
        "TokenBudgetExceeded", "TopologyMismatchError", "UnknownServiceError", "WaitExpiredError", "WorkspaceError",
    ],
    "aethergraph.testing": [
        "FakeOpenAI", "MemoryEventLog", "RecordedCall", "Reply", "ReplayResult", "Responder", "ToolCall", "Usage",
        "load_journal", "replay", "replay_async",
    ],
}  # fmt: skip


@pytest.mark.parametrize("module_name", sorted(PUBLIC_MODULES))
def test_public_exports_are_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(PUBLIC_MODULES[module_name])
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing


def test_every_error_class_has_its_public_name() -> None:
    from aethergraph import errors

    assert sorted(errors.__all__) == sorted(core_errors.__all__)
    for name in errors.__all__:
        assert getattr(errors, name) is getattr(core_errors, name)


def _failure(error_type: str, message: str) -> ToolFailed:
    return ToolFailed(
        run_id="r1",
        seq=3,
        ts=0,
        worker="w",
        parent=2,
        node_id="n_1",
        epoch=1,
        tool="t",
        error_type=error_type,
        message=message,
    )


@pytest.mark.parametrize(
    "recorded_as", ["aethergraph.errors.WaitExpiredError", "aethergraph.core.errors.WaitExpiredError"]
)
def test_journaled_error_names_are_stable_and_old_names_still_rebuild(recorded_as: str) -> None:
    """Errors are journaled as ``aethergraph.errors.X``; the name older journals used maps to the same class."""
    error = core_errors.NonDeterminismError("x", run_id="r", seq=1, recorded="a", attempted="b")
    assert core_errors.error_type_name(error) == "aethergraph.errors.NonDeterminismError"
    assert core_errors.error_type_name(ValueError("v")) == "ValueError"
    rebuilt = rebuild_error(_failure("aethergraph.errors.NotInRunError", "outside any run"))
    assert type(rebuilt) is core_errors.NotInRunError and str(rebuilt) == "outside any run"
    old = rebuild_error(_failure(recorded_as.replace("WaitExpiredError", "NotInRunError"), "outside any run"))
    assert type(old) is core_errors.NotInRunError
    # A class whose constructor needs more than a message comes back as ReplayedError naming it.
    expired = rebuild_error(_failure(recorded_as, "too late"))
    assert isinstance(expired, core_errors.ReplayedError) and expired.error_type == recorded_as


def test_control_flow_signals_are_not_exceptions() -> None:
    for signal in (core_errors.RunSuspended, core_errors.HistoryEnded):
        assert issubclass(signal, BaseException) and not issubclass(signal, Exception)


def test_distinct_classes_replace_string_codes() -> None:
    assert issubclass(core_errors.RunCancelledError, core_errors.RunFailedError)
    for cls in (core_errors.NotRetryableError, core_errors.GraphMismatchError, core_errors.RunBusyError):
        assert not issubclass(cls, core_errors.RunFailedError)
    assert aethergraph.errors is importlib.import_module("aethergraph.errors")  # the package attribute
