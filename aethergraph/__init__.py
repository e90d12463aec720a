"""AetherGraph: every agent is a graph, every step an event on NATS JetStream.

The public surface is this module's ``__all__``; everything under
``aethergraph.core``, ``aethergraph.bus`` and friends is implementation.
"""

from __future__ import annotations

from aethergraph.core import errors
from aethergraph.core.context import NodeContext
from aethergraph.core.decorators import GraphFunction, Tool, graph_fn, tool
from aethergraph.core.errors import AetherGraphError
from aethergraph.core.settings import Settings
from aethergraph.runtime import close_runtime, get_runtime, run, run_async, start_server

__all__ = [
    "AetherGraphError",
    "GraphFunction",
    "NodeContext",
    "Settings",
    "Tool",
    "close_runtime",
    "errors",
    "get_runtime",
    "graph_fn",
    "run",
    "run_async",
    "start_server",
    "tool",
]

__version__ = "0.1.0"
