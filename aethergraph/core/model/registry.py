"""Graphs and tools by name, so that a worker can continue any run of a graph it has imported.

``@graph_fn`` and ``@tool`` register what they decorate. A name registered
again (a module reloaded, a test redefining a graph) points at the newer
definition.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

from aethergraph.core.errors import GraphNotFoundError
from aethergraph.core.model.spec import CallableSpec

__all__ = ["RegisteredCallable", "must_get_graph", "register_graph", "registered_graphs"]

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
            graph_id=name,
            run_id=run_id,
        )
    return spec


class RegisteredCallable:
    """What the decorators return: it carries its spec, looks like the function, and is registered by name."""

    __aethergraph_spec__: CallableSpec

    def _register(self, spec: CallableSpec, fn: Callable[..., Any]) -> None:
        self.__aethergraph_spec__ = spec
        functools.update_wrapper(cast("Callable[..., Any]", self), fn)  # every subclass defines __call__
        register_graph(spec)

    @property
    def spec(self) -> CallableSpec:
        return self.__aethergraph_spec__

    @property
    def name(self) -> str:
        return self.__aethergraph_spec__.name
