"""Per-run state and the context variables that locate the current run and node."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aethergraph.core.errors import HistoryEnded, NonDeterminismError
from aethergraph.core.journal.ports import RunEnvironment
from aethergraph.core.journal.replay import ReplayCursor
from aethergraph.core.journal.run_journal import RunJournal
from aethergraph.core.wire.events import Event, MemoryRecorded

__all__ = ["RunScope", "current_scope", "cursor", "run_scope_var"]


@dataclass(eq=False, kw_only=True)
class RunScope:
    """State of one run in the process executing it."""

    run_id: str
    graph_id: str
    # The top-level run of this tree of nested runs (this run's own id at the top).
    root_run_id: str
    journal: RunJournal
    env: RunEnvironment
    node_counters: dict[str, int] = field(default_factory=dict)
    failed_nodes: dict[int, str] = field(default_factory=dict)
    replay: ReplayCursor | None = None
    divergence: NonDeterminismError | None = None
    # Latest manual checkpoint per (node id, key): journaled ones, then this execution's.
    checkpoints: dict[tuple[str | None, str], Any] = field(default_factory=dict)
    # Test mode: suspend after every live step and continue by replay.
    suspend_after_each_step: bool = False
    # The journal read when this writer claimed the run (empty for a new run).
    history: Sequence[Event] = ()
    # Static graphs: the cap on nodes running at once, as recorded in run.started.
    max_concurrency: int | None = None
    # Why this writer claimed the run (None: it started the run).
    claim_reason: str | None = None
    # The run's memory entries (context.memory()), from the journal and this execution; built on first use.
    memory_log: list[MemoryRecorded] | None = None
    # Tokens the run's model calls spent, as journaled (recorded calls count again as replay passes them).
    llm_tokens: int = 0

    # Offline replay (aethergraph.testing.replay): stop where the recorded history ends instead of going live.
    offline: bool = False
    # Builds the NodeContext of a node of this run (given by the executor that created the scope).
    make_context: Callable[[RunScope, str], Any] | None = None

    def node_context(self, node_id: str) -> Any:
        """The ``NodeContext`` of ``node_id`` in this run."""
        if self.make_context is None:
            raise RuntimeError(f"run {self.run_id}'s scope was created without a context factory")
        return self.make_context(self, node_id)

    def replaying(self) -> ReplayCursor | None:
        """The replay cursor while recorded steps remain, else ``None`` (the step about to be taken goes live).

        Offline, a step beyond the recorded history raises :class:`HistoryEnded` instead.
        """
        replay = self.replay
        if replay is not None and replay.active:
            return replay
        if self.offline:
            self.going_live()
        return None

    def going_live(self) -> None:
        """Called before a step executes live: offline replay ends here (nothing is executed)."""
        if self.offline:
            raise HistoryEnded(self.run_id)

    def next_node_id(self, tool_name: str) -> str:
        """Deterministic node ids in call order: ``<tool>_<n>`` counting from 1."""
        count = self.node_counters.get(tool_name, 0) + 1
        self.node_counters[tool_name] = count
        return f"{tool_name}_{count}"


run_scope_var: ContextVar[RunScope | None] = ContextVar("aethergraph_run", default=None)
# The latest event this line of execution has observed: the causal parent of its next step.
cursor: ContextVar[int] = ContextVar("aethergraph_cursor", default=0)


def current_scope() -> RunScope | None:
    return run_scope_var.get()
