"""Dispatching a static run's ready nodes: to this process's executor when it has room, else to the work queue."""

from __future__ import annotations

from typing import Any

from aethergraph.core.errors import (
    EventTooLargeError,
    SerializationError,
)
from aethergraph.core.model.graph_refs import resolve_refs
from aethergraph.core.run.static_state import DONE, StaticRunState
from aethergraph.core.wire.codec import normalise_value
from aethergraph.core.wire.events import (
    NodeFailed,
    NodeReady,
    NodeStarted,
)
from aethergraph.core.wire.node_report import LocalNode, NodeReport

__all__ = ["StaticDispatch"]


class StaticDispatch(StaticRunState):
    """Makes ready nodes run: journals ``node.started`` (here) or ``node.ready`` (the work queue)."""

    def start(self) -> None:
        """Queue what can run now, re-arm retry timers; dispatched nodes stay with their workers."""
        done = {node_id for node_id, state in self.states.items() if state.status in DONE}
        self.done = len(done)
        self.remaining = {
            node_id: sum(1 for dep in node.dependencies if dep not in done)
            for node_id, node in self.graph.nodes.items()
        }
        for node_id in self.graph.order:
            state = self.states[node_id]
            if state.status == "dispatched":
                self.inflight += 1
            elif state.status == "started":
                self.orphans.append(node_id)
            elif state.status == "retrying":
                self._enqueue(node_id, state.attempt + 1)  # its backoff is over by now, or near enough
            elif state.status == "failed":
                self.failed.append(node_id)
            elif state.status == "pending" and not self.remaining[node_id]:
                self._release(node_id)
        self.dispatch_ready()

    def redispatch(self, node_id: str) -> None:
        """Hand a waiting node back to the workers: its wait was answered, its node run continues."""
        state = self.states[node_id]
        if state.status == "waiting":
            state.waiting = None
            self._enqueue(node_id, state.attempt)

    def dispatch_ready(self) -> None:
        """Journal ``node.ready`` for queued nodes, up to the run's concurrency cap."""
        limit = self.limit
        while self.ready and not self.failed:
            if limit and self.inflight >= limit:
                return
            node_id, attempt = self.ready.popleft()
            state = self.states[node_id]
            state.status, state.attempt = "dispatched", attempt
            self.inflight += 1
            self._dispatch(node_id)
        if self.failed:
            for node_id, _ in self.ready:
                self.states[node_id].status = "pending"
            self.ready.clear()

    def _dispatch(self, node_id: str) -> None:
        node = self.graph.nodes[node_id]
        state = self.states[node_id]
        try:
            args, _ = normalise_value(
                resolve_refs(dict(node.args), self.inputs, self.outputs), what=f"the arguments of node {node_id}"
            )
            dispatch: dict[str, Any] = {
                "tool": node.tool,
                "args": args,
                "attempt": state.attempt,
                "root_run_id": self.root_run_id or self.scope.run_id,
                "timeout_s": node.timeout_s,
            }
            # A local node starts before its node.started is stored: the scheduler is its only witness,
            # and whoever continues the run after a crash runs a node.started without outcome again.
            local = (
                self.scope.env.nodes.run_node_here(
                    LocalNode(run_id=self.scope.run_id, node_id=node_id, **dispatch), self.on_local_report
                )
                if self.local_nodes
                else None
            )
            try:
                state.seq = self._append(
                    NodeReady if local is None else NodeStarted,
                    parent=self._parent_of(node_id) or None,
                    node_id=node_id,
                    **dispatch,
                )
            except BaseException:
                if local is not None:
                    local.cancel()  # not started yet (the scheduler has not yielded): the tool never runs
                raise
        except (KeyError, EventTooLargeError, SerializationError) as exc:
            # The node cannot even be handed to a worker: it fails without retry.
            self.inflight -= 1
            message = exc.message if isinstance(exc, (EventTooLargeError, SerializationError)) else str(exc)
            report = NodeReport(
                run_id=self.scope.run_id,
                node_id=node_id,
                attempt=state.attempt,
                status="failed",
                error_type=type(exc).__name__,
                message=message,
            )
            state.status = "failed"
            state.error = (report.error_type, report.message)
            state.seq = self._append(
                NodeFailed,
                parent=state.seq or None,
                node_id=node_id,
                error_type=report.error_type,
                message=report.message,
                attempt=state.attempt,
            )
            self.failed.append(node_id)
            self._skip_dependents(node_id, "upstream_failed")
