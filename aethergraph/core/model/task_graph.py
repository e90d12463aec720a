"""``TaskGraph``: the concrete DAG a ``@graphify`` body describes, checked and ready to schedule."""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from aethergraph.core.errors import GraphBuildError, GraphInputError
from aethergraph.core.model.graph_refs import GraphRef, InputRef, OutputRef, find_refs, ref_json

__all__ = ["GraphInput", "RetryPolicy", "TaskGraph", "TaskNode"]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often a failed node runs again: ``attempts`` in all, waiting ``backoff_s`` x ``multiplier`` ** n between.

    Off by default (one attempt). ``retry_on`` limits retries to errors whose
    type name (``"TimeoutError"``, ``"mypkg.FlakyError"``) ends with one of
    the given names; empty means every error.
    """

    attempts: int = 1
    backoff_s: float = 1.0
    multiplier: float = 2.0
    max_backoff_s: float = 60.0
    retry_on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise GraphBuildError(f"RetryPolicy.attempts must be an int >= 1 (1 = no retry), got {self.attempts!r}")
        if self.backoff_s < 0 or self.multiplier < 1 or self.max_backoff_s < 0:
            raise GraphBuildError("RetryPolicy: backoff_s and max_backoff_s must be >= 0 and multiplier >= 1")

    def delay_s(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt ``failed_attempt`` failed."""
        return float(min(self.max_backoff_s, self.backoff_s * self.multiplier ** (failed_attempt - 1)))

    def retries(self, failed_attempt: int, error_type: str) -> bool:
        if failed_attempt >= self.attempts:
            return False
        if not self.retry_on:
            return True
        name = error_type.rsplit(".", 1)[-1]
        return any(error_type == wanted or name == wanted for wanted in self.retry_on)

    def describe(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "backoff_s": self.backoff_s,
            "multiplier": self.multiplier,
            "max_backoff_s": self.max_backoff_s,
            "retry_on": list(self.retry_on),
        }


@dataclass(frozen=True, kw_only=True)
class TaskNode:
    """One node: a tool (or graph) called with ``args`` (which may hold references) after ``dependencies``."""

    node_id: str
    tool: str
    kind: Literal["tool", "graph_fn", "static"]
    args: Mapping[str, Any]
    dependencies: tuple[str, ...]
    after: tuple[str, ...] = ()
    condition: GraphRef | bool | None = None
    alias: str | None = None
    timeout_s: float | None = None
    retry: RetryPolicy | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "tool": self.tool,
            "kind": self.kind,
            "args": ref_json(self.args),
            "dependencies": list(self.dependencies),
            "after": list(self.after),
            "condition": ref_json(self.condition),
            "alias": self.alias,
            "timeout_s": self.timeout_s,
            "retry": self.retry.describe() if self.retry else None,
        }


@dataclass(frozen=True, kw_only=True)
class GraphInput:
    name: str
    required: bool
    default: Any = None


@dataclass(frozen=True, kw_only=True)
class TaskGraph:
    """A checked DAG: nodes in topological order, its inputs, and its outputs (references or values)."""

    name: str
    inputs: tuple[GraphInput, ...]
    outputs: Mapping[str, Any]
    nodes: Mapping[str, TaskNode]
    order: tuple[str, ...]
    max_concurrency: int | None = None
    _dependents: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    digest: str = ""

    @classmethod
    def create(
        cls,
        *,
        name: str,
        inputs: tuple[GraphInput, ...],
        outputs: Mapping[str, Any],
        nodes: Mapping[str, TaskNode],
        max_concurrency: int | None = None,
    ) -> TaskGraph:
        """Check the nodes (unknown references, cycles) and order them; raises :class:`GraphBuildError`."""
        input_names = {item.name for item in inputs}
        for node in nodes.values():
            for dependency in node.dependencies:
                if dependency not in nodes:
                    raise GraphBuildError(
                        f"graph {name!r}: node {node.node_id} depends on unknown node {dependency!r}; "
                        f"known nodes: {sorted(nodes)}",
                        node_id=node.node_id,
                    )
            for ref in find_refs([node.args, node.condition]):
                if isinstance(ref, InputRef) and ref.name not in input_names:
                    raise GraphBuildError(
                        f"graph {name!r}: node {node.node_id} uses input {ref.name!r}, which the graph does not "
                        f"declare (inputs: {sorted(input_names)})",
                        node_id=node.node_id,
                    )
        for ref in find_refs(dict(outputs)):
            if isinstance(ref, OutputRef) and ref.node_id not in nodes:
                raise GraphBuildError(f"graph {name!r}: an output refers to unknown node {ref.node_id!r}")
        order = _topological_order(name, nodes)
        dependents: dict[str, list[str]] = {node_id: [] for node_id in nodes}
        for node_id in order:
            for dependency in nodes[node_id].dependencies:
                dependents[dependency].append(node_id)
        graph = cls(
            name=name,
            inputs=inputs,
            outputs=MappingProxyType(dict(outputs)),
            nodes=MappingProxyType({node_id: nodes[node_id] for node_id in order}),
            order=order,
            max_concurrency=max_concurrency,
            _dependents=MappingProxyType({key: tuple(value) for key, value in dependents.items()}),
        )
        digest = hashlib.sha256(json.dumps(graph.describe(), sort_keys=True, default=repr).encode()).hexdigest()
        object.__setattr__(graph, "digest", digest[:32])
        return graph

    # --- structure ---------------------------------------------------------------------

    def dependencies(self, node_id: str) -> tuple[str, ...]:
        """The nodes ``node_id`` waits for (data references, ``_after`` and its condition)."""
        return self._node(node_id).dependencies

    def dependents(self, node_id: str) -> tuple[str, ...]:
        """The nodes that wait for ``node_id``."""
        self._node(node_id)
        return self._dependents[node_id]

    def topological_order(self) -> list[str]:
        return list(self.order)

    def roots(self) -> list[str]:
        """Nodes with no dependencies (ready when the run starts)."""
        return [node_id for node_id in self.order if not self.nodes[node_id].dependencies]

    def _node(self, node_id: str) -> TaskNode:
        node = self.nodes.get(node_id)
        if node is None:
            raise KeyError(f"graph {self.name!r} has no node {node_id!r}; nodes: {list(self.nodes)}")
        return node

    def io_signature(self) -> dict[str, Any]:
        """The graph's inputs (required or with their default) and where each output comes from."""
        return {
            "inputs": {
                item.name: {"required": item.required, **({} if item.required else {"default": item.default})}
                for item in self.inputs
            },
            "outputs": {name: ref_json(value) for name, value in self.outputs.items()},
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-compatible description of the whole graph (its digest is computed from this)."""
        return {
            "name": self.name,
            "io": self.io_signature(),
            "nodes": [self.nodes[node_id].describe() for node_id in self.order],
            "max_concurrency": self.max_concurrency,
        }

    def bind_inputs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The run's inputs: ``given`` checked against the graph's inputs, defaults filled in."""
        known = {item.name: item for item in self.inputs}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise GraphInputError(f"graph {self.name!r} has no input(s) {unknown}; its inputs are {sorted(known)}")
        missing = [item.name for item in self.inputs if item.required and item.name not in given]
        if missing:
            raise GraphInputError(
                f"graph {self.name!r} needs input(s) {missing}; pass them, e.g. "
                f"{{{', '.join(repr(name) + ': ...' for name in missing)}}}"
            )
        return {item.name: given.get(item.name, item.default) for item in self.inputs}

    # --- pictures ----------------------------------------------------------------------

    def _label(self, node: TaskNode) -> str:
        return f"{node.alias or node.node_id}\\n{node.tool}" if node.alias else f"{node.node_id}\\n{node.tool}"

    def _picture(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, bool]]]:
        """Boxes ``(key, label, shape)`` and edges ``(source, target, dashed)`` shared by DOT and Mermaid.

        Inputs are ``in:<name>``, outputs ``out:<name>``; an edge is dashed when
        the dependency carries no data (``_after`` or a condition).
        """
        boxes = [(f"in:{item.name}", item.name, "ellipse") for item in self.inputs]
        edges: list[tuple[str, str, bool]] = []
        for node in self.nodes.values():
            boxes.append((node.node_id, self._label(node), "box"))
            refs = find_refs(dict(node.args))
            data = {ref.node_id for ref in refs if isinstance(ref, OutputRef)}
            edges.extend((dependency, node.node_id, dependency not in data) for dependency in node.dependencies)
            for name in sorted({ref.name for ref in refs if isinstance(ref, InputRef)}):
                edges.append((f"in:{name}", node.node_id, False))
        for name, value in self.outputs.items():
            boxes.append((f"out:{name}", name, "ellipse"))
            for ref in find_refs(value):
                source = ref.node_id if isinstance(ref, OutputRef) else f"in:{ref.name}"  # type: ignore[attr-defined]
                edges.append((source, f"out:{name}", False))
        return boxes, edges

    def to_dot(self) -> str:
        """Graphviz DOT: inputs and outputs as ellipses, nodes as boxes, dashed edges for ``_after``/conditions."""
        boxes, edges = self._picture()
        lines = [f'digraph "{self.name}" {{', "  rankdir=LR;", "  node [shape=box];"]
        lines += [
            f'  "{key}" [shape=ellipse, label="{label}"];' if shape == "ellipse" else f'  "{key}" [label="{label}"];'
            for key, label, shape in boxes
        ]
        lines += [f'  "{src}" -> "{dst}"{" [style=dashed]" if dashed else ""};' for src, dst, dashed in edges]
        return "\n".join([*lines, "}"]) + "\n"

    def to_mermaid(self) -> str:
        """A Mermaid ``flowchart``: the same picture as :meth:`to_dot`."""
        boxes, edges = self._picture()

        def key(name: str) -> str:
            return name.replace(":", "_")

        lines = ["flowchart LR"]
        for name, label, shape in boxes:
            text = label.replace("\\n", "<br/>")
            lines.append(f"  {key(name)}([{text}])" if shape == "ellipse" else f'  {key(name)}["{text}"]')
        lines += [f"  {key(src)} {'-.->' if dashed else '-->'} {key(dst)}" for src, dst, dashed in edges]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"<TaskGraph {self.name!r}: {len(self.nodes)} nodes, digest {self.digest}>"


def _topological_order(name: str, nodes: Mapping[str, TaskNode]) -> tuple[str, ...]:
    """Kahn's algorithm, stable in the order nodes were added; a cycle is named node by node."""
    remaining = {node_id: len(set(node.dependencies)) for node_id, node in nodes.items()}
    waiting_on: dict[str, list[str]] = {node_id: [] for node_id in nodes}
    for node_id, node in nodes.items():
        for dependency in set(node.dependencies):
            waiting_on[dependency].append(node_id)
    position = {node_id: index for index, node_id in enumerate(nodes)}
    ready = [(position[node_id], node_id) for node_id in nodes if remaining[node_id] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for dependent in waiting_on[node_id]:
            remaining[dependent] -= 1
            if remaining[dependent] == 0:
                heapq.heappush(ready, (position[dependent], dependent))
    if len(order) < len(nodes):
        cycle = _find_cycle({node_id for node_id in nodes if remaining[node_id] > 0}, nodes)
        raise GraphBuildError(
            f"graph {name!r} has a cycle: {' -> '.join(cycle)}; a node cannot (indirectly) wait for itself. "
            "Remove one of these dependencies (an _after=, or a reference passed as an argument)",
            node_id=cycle[0],
        )
    return tuple(order)


def _find_cycle(stuck: set[str], nodes: Mapping[str, TaskNode]) -> list[str]:
    start = min(stuck)
    path = [start]
    seen = {start: 0}
    current = start
    while True:
        current = next(dep for dep in nodes[current].dependencies if dep in stuck)
        if current in seen:
            return [*path[seen[current] :], current]
        seen[current] = len(path)
        path.append(current)
