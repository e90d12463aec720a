"""AetherGraph: every agent is a graph, every step an event on NATS JetStream.

The public surface is this module's ``__all__``; everything under
``aethergraph.core``, ``aethergraph.bus`` and friends is implementation.
"""

from __future__ import annotations

from aethergraph import errors
from aethergraph.adapters.web.launch import start_server
from aethergraph.core.api.callables import GraphFunction, Tool
from aethergraph.core.api.decorators import graph_fn, tool
from aethergraph.core.api.dual_stage import DualStageTool
from aethergraph.core.api.graphify import TaskGraphBuilder, graphify
from aethergraph.core.context.artifacts import Artifact
from aethergraph.core.context.memory import MemoryEntry
from aethergraph.core.context.node_context import NodeContext
from aethergraph.core.context.service_base import Service, journal_by_digest, not_journaled
from aethergraph.core.context.service_registry import register_context_service
from aethergraph.core.context.waits import Wait
from aethergraph.core.errors import AetherGraphError
from aethergraph.core.journal.run_control import RunManager
from aethergraph.core.model.task_graph import RetryPolicy, TaskGraph
from aethergraph.core.settings import Settings
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
