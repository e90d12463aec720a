"""AetherGraph: every agent is a graph, every step an event on NATS JetStream.

The public surface is this module's ``__all__``; everything under
``aethergraph.core``, ``aethergraph.bus`` and friends is implementation.
"""

from __future__ import annotations

from aethergraph import errors
from aethergraph.core.artifacts import Artifact
from aethergraph.core.context import NodeContext
from aethergraph.core.decorators import GraphFunction, Tool, graph_fn, tool
from aethergraph.core.dual_stage import DualStageTool
from aethergraph.core.errors import AetherGraphError
from aethergraph.core.graphify import TaskGraphBuilder, graphify
from aethergraph.core.memory import MemoryEntry
from aethergraph.core.run_control import RunManager
from aethergraph.core.service_base import Service, journal_by_digest, not_journaled
from aethergraph.core.service_registry import register_context_service
from aethergraph.core.settings import Settings
from aethergraph.core.task_graph import RetryPolicy, TaskGraph
from aethergraph.core.waits import Wait
from aethergraph.host.runs import RunHandle
from aethergraph.runtime import (
    cancel,
    close_runtime,
    get_run,
    get_runtime,
    query,
    query_async,
    resume,
    retry,
    run,
    run_async,
    serve_projector,
    serve_worker,
    start_run,
    start_server,
    submit,
)

__all__ = [
    "AetherGraphError",
    "Artifact",
    "DualStageTool",
    "GraphFunction",
    "MemoryEntry",
    "NodeContext",
    "RetryPolicy",
    "RunHandle",
    "RunManager",
    "Service",
    "Settings",
    "TaskGraph",
    "TaskGraphBuilder",
    "Tool",
    "Wait",
    "cancel",
    "close_runtime",
    "errors",
    "get_run",
    "get_runtime",
    "graph_fn",
    "graphify",
    "journal_by_digest",
    "not_journaled",
    "query",
    "query_async",
    "register_context_service",
    "resume",
    "retry",
    "run",
    "run_async",
    "serve_projector",
    "serve_worker",
    "start_run",
    "start_server",
    "submit",
    "tool",
]

__version__ = "0.1.0"
