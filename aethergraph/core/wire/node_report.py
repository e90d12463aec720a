"""``NodeReport``: what a worker tells a static run's scheduler about one node attempt.

Workers do not write a run's journal (its scheduler is the run's only
writer); they publish a report per attempt on the bus, and the scheduler
journals the outcome (``node.completed``, ``node.failed``) from it. A node
whose code waits durably (a ``DualStageTool``) reports ``waiting`` with the
wait it is parked on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

__all__ = ["LocalNode", "NodeReport", "NodeStatus"]

NodeStatus = Literal["completed", "failed", "waiting", "cancelled"]


class NodeReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The outcome of one attempt of node ``node_id`` of run ``run_id``."""

    run_id: str
    node_id: str
    attempt: int
    status: NodeStatus
    outputs: dict[str, Any] = {}
    error_type: str = ""
    message: str = ""
    executor: str = ""
    started_us: int = 0
    duration_us: int = 0
    wait_id: str | None = None
    wait_run_id: str | None = None
    kind: str = ""
    prompt: str = ""
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class LocalNode:
    """A node attempt the run's scheduler hands to its own process's executor (journaled as ``node.started``)."""

    run_id: str
    node_id: str
    tool: str
    args: dict[str, Any]
    attempt: int
    root_run_id: str | None
    timeout_s: float | None
