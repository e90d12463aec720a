"""The errors AetherGraph raises: ``from aethergraph.errors import RunFailedError, WaitExpiredError``.

Every error derives from :class:`AetherGraphError` and carries ``run_id``,
``node_id`` and ``seq`` where they apply. The classes are defined in
``aethergraph.core.errors``; this module is their public import path.
"""

from __future__ import annotations

from aethergraph.core.errors import *  # noqa: F403 - every error class, under its public name
from aethergraph.core.errors import __all__ as __all__
