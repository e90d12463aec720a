"""Placeholders that a ``@graphify`` body passes around while it records a graph.

Inside the body nothing runs: an input is an :class:`InputRef`, a tool call
returns a :class:`NodeHandle`, and ``handle.y`` / ``handle["y"]`` are
:class:`OutputRef` s. Passing a reference as a tool argument (also nested in
dicts and lists) makes a dependency. Anything that needs the concrete value
(``len()``, ``if``, arithmetic, formatting) is refused with
:class:`GraphBuildError`, because the value exists only when the graph runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from aethergraph.core.errors import GraphBuildError

__all__ = ["GraphRef", "InputRef", "NodeHandle", "OutputRef", "PathKey", "find_refs", "resolve_refs", "ref_json"]

PathKey = str | int


class GraphRef:
    """A reference to a value that exists only at run time (an input, or a node's outputs)."""

    __slots__ = ("_build", "_path")

    def __init__(self, build: object, path: tuple[PathKey, ...]) -> None:
        self._build = build
        self._path = path

    @property
    def path(self) -> tuple[PathKey, ...]:
        return self._path

    def describe(self) -> str:
        raise NotImplementedError

    def _with_path(self, path: tuple[PathKey, ...]) -> GraphRef:
        raise NotImplementedError

    def __getitem__(self, key: PathKey) -> GraphRef:
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise GraphBuildError(
                f"{self.describe()}[{key!r}]: only str keys and int indexes can select part of a reference"
            )
        return self._with_path((*self._path, key))

    def _refuse(self, what: str) -> NoReturn:
        raise GraphBuildError(
            f"{self.describe()} is a placeholder while the graph is built, so {what} cannot use it: "
            "its value exists only when the graph runs. Pass it as an argument to a tool and compute there "
            "(use _condition=ref to run a node only when a value is true)"
        )

    def __bool__(self) -> bool:
        self._refuse("truth testing (if / and / or / not)")

    def __len__(self) -> int:
        self._refuse("len()")

    def __iter__(self) -> NoReturn:
        self._refuse("iteration (for, unpacking, list())")

    def __contains__(self, item: object) -> bool:
        self._refuse("`in`")

    def __int__(self) -> int:
        self._refuse("int()")

    def __float__(self) -> float:
        self._refuse("float()")

    def __index__(self) -> int:
        self._refuse("indexing with it")

    def __str__(self) -> str:
        self._refuse("str() / string formatting")

    def __format__(self, spec: str) -> str:
        self._refuse("an f-string or format()")

    def __eq__(self, other: object) -> bool:
        self._refuse("== comparison")

    def __ne__(self, other: object) -> bool:
        self._refuse("!= comparison")

    def __lt__(self, other: object) -> bool:
        self._refuse("< comparison")

    def __le__(self, other: object) -> bool:
        self._refuse("<= comparison")

    def __gt__(self, other: object) -> bool:
        self._refuse("> comparison")

    def __ge__(self, other: object) -> bool:
        self._refuse(">= comparison")

    def __add__(self, other: object) -> Any:
        self._refuse("arithmetic (+)")

    __radd__ = __add__

    def __sub__(self, other: object) -> Any:
        self._refuse("arithmetic (-)")

    __rsub__ = __sub__

    def __mul__(self, other: object) -> Any:
        self._refuse("arithmetic (*)")

    __rmul__ = __mul__

    def __truediv__(self, other: object) -> Any:
        self._refuse("arithmetic (/)")

    __rtruediv__ = __truediv__

    def __neg__(self) -> Any:
        self._refuse("arithmetic (unary -)")

    def __call__(self, *args: object, **kwargs: object) -> Any:
        self._refuse("a call")

    __hash__ = object.__hash__


class InputRef(GraphRef):
    """A graph input (or a part of it)."""

    __slots__ = ("name",)

    def __init__(self, build: object, name: str, path: tuple[PathKey, ...] = ()) -> None:
        super().__init__(build, path)
        self.name = name

    def describe(self) -> str:
        return f"input {self.name!r}" + "".join(f"[{key!r}]" for key in self._path)

    def _with_path(self, path: tuple[PathKey, ...]) -> GraphRef:
        return InputRef(self._build, self.name, path)

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


class OutputRef(GraphRef):
    """A node's outputs (``path == ()``) or one output (``("y",)``), possibly a part of it."""

    __slots__ = ("node_id",)

    def __init__(self, build: object, node_id: str, path: tuple[PathKey, ...] = ()) -> None:
        super().__init__(build, path)
        self.node_id = node_id

    def describe(self) -> str:
        return f"output {self.node_id}" + "".join(f"[{key!r}]" for key in self._path)

    def _with_path(self, path: tuple[PathKey, ...]) -> GraphRef:
        return OutputRef(self._build, self.node_id, path)

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


class NodeHandle(OutputRef):
    """What a tool call returns inside a ``@graphify`` body: ``handle.y`` is a reference to output ``y``."""

    __slots__ = ("_outputs", "tool")

    def __init__(self, build: object, node_id: str, tool: str, outputs: Sequence[str]) -> None:
        super().__init__(build, node_id)
        self.tool = tool
        self._outputs = tuple(outputs)

    def _check_output(self, key: str) -> None:
        if self._outputs and key not in self._outputs:
            raise GraphBuildError(
                f"node {self.node_id} (tool {self.tool!r}) has no output {key!r}; its outputs are "
                f"{list(self._outputs)}",
                node_id=self.node_id,
            )

    def __getattr__(self, name: str) -> OutputRef:
        if name.startswith("_"):
            raise AttributeError(name)
        self._check_output(name)
        return OutputRef(self._build, self.node_id, (name,))

    def __getitem__(self, key: PathKey) -> GraphRef:
        if isinstance(key, str):
            self._check_output(key)
        return super().__getitem__(key)

    def describe(self) -> str:
        return f"node {self.node_id} (tool {self.tool!r})"

    def __repr__(self) -> str:
        return f"<node {self.node_id} outputs={list(self._outputs)}>"


def find_refs(value: object) -> list[GraphRef]:
    """Every reference inside ``value`` (nested in dicts, lists and tuples)."""
    found: list[GraphRef] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, GraphRef):
            found.append(item)
        elif isinstance(item, Mapping):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
    return found


def ref_json(value: object) -> Any:
    """``value`` with references written as ``{"$input": ...}`` / ``{"$node": ...}`` markers (for digests and docs)."""
    if isinstance(value, InputRef):
        return {"$input": value.name, "path": list(value.path)}
    if isinstance(value, OutputRef):
        return {"$node": value.node_id, "path": list(value.path)}
    if isinstance(value, Mapping):
        return {str(key): ref_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [ref_json(item) for item in value]
    return value


def _select(value: Any, path: tuple[PathKey, ...], what: str) -> Any:
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            raise KeyError(f"{what}: no item {key!r} in {type(value).__name__} value") from None
    return value


def resolve_refs(value: object, inputs: Mapping[str, Any], outputs: Mapping[str, Mapping[str, Any]]) -> Any:
    """``value`` with every reference replaced by its run-time value.

    ``outputs`` maps node id to that node's outputs; a node missing from it
    (skipped) resolves to ``None``.
    """
    if isinstance(value, InputRef):
        return _select(inputs.get(value.name), value.path, value.describe())
    if isinstance(value, OutputRef):
        produced = outputs.get(value.node_id)
        if produced is None:
            return None
        return _select(produced, value.path, value.describe())
    if isinstance(value, Mapping):
        return {key: resolve_refs(item, inputs, outputs) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_refs(item, inputs, outputs) for item in value]
    if isinstance(value, tuple):
        return [resolve_refs(item, inputs, outputs) for item in value]
    return value
