"""The one call core makes upward: ``await my_graph(...)`` outside any run.

Inside a run, everything core needs from the hosting process arrives with the
run (``RunScope.env``, a :class:`~aethergraph.core.journal.ports.RunEnvironment`).
A graph awaited outside any run has no run yet: core hands it to the
*top-level launcher*, which the composition root (``aethergraph.runtime``)
installs once, and which runs it as a new top-level run on the process's host.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aethergraph.core.errors import NotInRunError

if TYPE_CHECKING:
    from aethergraph.core.model.spec import CallableSpec

__all__ = ["TopLevelLauncher", "install_top_level_launcher", "launch_top_level"]

TopLevelLauncher = Callable[["CallableSpec", Mapping[str, Any]], Awaitable[dict[str, Any]]]
"""Runs a graph as a new top-level run of this process and returns its outputs."""

_launcher: TopLevelLauncher | None = None


def install_top_level_launcher(launcher: TopLevelLauncher) -> None:
    """Called by the composition root only."""
    global _launcher
    _launcher = launcher


async def launch_top_level(spec: CallableSpec, inputs: Mapping[str, Any]) -> dict[str, Any]:
    if _launcher is None:
        raise NotInRunError(
            f"{spec.label} was awaited outside any run, and no AetherGraph host is installed to run it; "
            "import aethergraph (not only aethergraph.core) first, or use aethergraph.run(...)"
        )
    return await _launcher(spec, inputs)
