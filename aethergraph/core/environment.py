"""How core finds the process's runtime without importing it.

The composition root (``aethergraph.runtime``) installs a provider at import;
core asks it for a :class:`RunEnvironment` when a run starts outside any run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .errors import NotInRunError
from .ports import RunEnvironment

__all__ = ["get_environment", "set_environment_provider"]

_provider: Callable[[], Awaitable[RunEnvironment]] | None = None


def set_environment_provider(provider: Callable[[], Awaitable[RunEnvironment]]) -> None:
    global _provider
    _provider = provider


async def get_environment() -> RunEnvironment:
    if _provider is None:
        raise NotInRunError(
            "no AetherGraph runtime is installed; import aethergraph (not only aethergraph.core) before running graphs"
        )
    return await _provider()
