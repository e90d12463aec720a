"""Graphs and tools by name, so that a worker can continue any run of a graph it has imported.

``@graph_fn`` and ``@tool`` register what they decorate. A name registered
again (a module reloaded, a test redefining a graph) points at the newer
definition.
"""

from __future__ import annotations

from .errors import GraphNotFoundError
from .spec import CallableSpec

__all__ = ["must_get_graph", "register_graph", "registered_graphs"]

_graphs: dict[str, CallableSpec] = {}


def register_graph(spec: CallableSpec) -> None:
    _graphs[spec.name] = spec


def registered_graphs() -> dict[str, CallableSpec]:
    """A snapshot of every registered graph and tool, by name."""
    return dict(_graphs)


def must_get_graph(name: str, *, run_id: str | None = None) -> CallableSpec:
    """The graph or tool registered as ``name``, or an error naming what is registered and how to register it."""
    spec = _graphs.get(name)
    if spec is None:
        known = sorted(_graphs)
        raise GraphNotFoundError(
            f"no graph or tool named {name!r} is registered in this process "
            f"(registered: {known or 'none'}); import the module that defines it, "
            "e.g. `aethergraph worker my_package.graphs`",
            run_id=run_id,
        )
    return spec
