"""``@graphify``: record a static graph by running its body once with placeholders.

.. code-block:: python

    @graphify(name="report", inputs=["xs"], outputs=["total"])
    def report(xs):
        cleaned = clean(xs=xs)                       # a node; nothing runs yet
        total = add_all(values=cleaned.values)       # depends on `cleaned`
        return {"total": total.sum}

    graph = report.build()                           # a checked TaskGraph
    outputs = await report(xs=[1, 2, 3])             # run it through the scheduler

Inside the body a tool call adds a node and returns a
:class:`~aethergraph.core.model.graph_refs.NodeHandle`. Control keywords on the call:
``_after`` (nodes to wait for without using their outputs: handles, node ids
or aliases), ``_id`` (the node id instead of ``<tool>_<n>``), ``_alias`` (a
second name), ``_condition`` (a reference or bool: false skips the node and
everything that depends on it), ``_timeout`` (seconds per attempt) and
``_retry`` (a :class:`~aethergraph.core.model.task_graph.RetryPolicy`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, overload

from aethergraph.core.errors import DecorationError, GraphBuildError, SerializationError
from aethergraph.core.model.graph_refs import GraphRef, InputRef, NodeHandle, OutputRef, find_refs, ref_json
from aethergraph.core.model.registry import RegisteredCallable
from aethergraph.core.model.spec import _NAME, CallableSpec, _check_outputs
from aethergraph.core.model.task_graph import GraphInput, RetryPolicy, TaskGraph, TaskNode
from aethergraph.core.run.executor import call_graph
from aethergraph.core.wire.codec import normalise_value

__all__ = ["GraphBuild", "TaskGraphBuilder", "current_build", "graphify"]

_NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
_CONTROL = ("_after", "_id", "_alias", "_condition", "_timeout", "_retry")

_build_var: ContextVar[GraphBuild | None] = ContextVar("aethergraph_build", default=None)


def current_build() -> GraphBuild | None:
    """The graph being recorded by a ``@graphify`` body on this line of execution, if any."""
    return _build_var.get()


@dataclass(kw_only=True)
class _Recorded:
    node_id: str
    spec: CallableSpec
    args: dict[str, Any]
    after: list[object]
    condition: GraphRef | bool | None
    alias: str | None
    timeout_s: float | None
    retry: RetryPolicy | None


class GraphBuild:
    """The nodes a ``@graphify`` body has added so far."""

    def __init__(self, name: str, *, retry: RetryPolicy | None, timeout_s: float | None) -> None:
        self.name = name
        self._nodes: dict[str, _Recorded] = {}
        self._counters: dict[str, int] = {}
        self._aliases: dict[str, str] = {}
        self._retry = retry
        self._timeout_s = timeout_s

    def _where(self, node_id: str) -> str:
        return f"graph {self.name!r}, node {node_id}"

    def _check_ref(self, ref: GraphRef, node_id: str) -> None:
        if ref._build is not self:
            raise GraphBuildError(
                f"{self._where(node_id)}: {ref.describe()} comes from another graph's build; "
                "a graph can only use its own inputs and the nodes its own body added",
                node_id=node_id,
            )

    def add(self, spec: CallableSpec, args: Sequence[Any], kwargs: Mapping[str, Any]) -> NodeHandle:
        """Record a call of ``spec`` as a node and return its handle."""
        call_kwargs = {key: value for key, value in kwargs.items() if key not in _CONTROL}
        control = {key: value for key, value in kwargs.items() if key in _CONTROL}
        node_id = self._node_id(spec, control.get("_id"))
        try:
            bound = spec.bind(args, call_kwargs)
        except TypeError as exc:
            raise GraphBuildError(f"{self._where(node_id)}: {exc}", node_id=node_id) from None
        for ref in find_refs(bound):
            self._check_ref(ref, node_id)
        try:
            normalise_value(ref_json(bound), what=f"the arguments of {self._where(node_id)}")
        except SerializationError as exc:
            raise GraphBuildError(exc.message, node_id=node_id) from None
        condition = control.get("_condition")
        if condition is not None and not isinstance(condition, (GraphRef, bool)):
            raise GraphBuildError(
                f"{self._where(node_id)}: _condition must be a reference (e.g. check.ok) or a bool, "
                f"got {type(condition).__name__}",
                node_id=node_id,
            )
        if isinstance(condition, GraphRef):
            self._check_ref(condition, node_id)
        after = control.get("_after")
        after_items: list[object] = (
            [] if after is None else list(after) if isinstance(after, (list, tuple)) else [after]
        )
        for item in after_items:
            if isinstance(item, GraphRef):
                self._check_ref(item, node_id)
                if not isinstance(item, OutputRef):
                    raise GraphBuildError(
                        f"{self._where(node_id)}: _after takes nodes (handles, ids or aliases), not {item.describe()}",
                        node_id=node_id,
                    )
            elif not isinstance(item, str):
                raise GraphBuildError(
                    f"{self._where(node_id)}: _after items must be node handles, node ids or aliases; "
                    f"got {type(item).__name__}",
                    node_id=node_id,
                )
        alias = control.get("_alias")
        if alias is not None:
            if not isinstance(alias, str) or not _NODE_ID.match(alias):
                raise GraphBuildError(f"{self._where(node_id)}: _alias {alias!r} is not a valid name", node_id=node_id)
            if alias in self._aliases or alias in self._nodes:
                raise GraphBuildError(
                    f"{self._where(node_id)}: _alias {alias!r} is already used; aliases and ids must be unique",
                    node_id=node_id,
                )
            self._aliases[alias] = node_id
        timeout = control.get("_timeout", self._timeout_s)
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise GraphBuildError(
                f"{self._where(node_id)}: _timeout must be seconds > 0, got {timeout!r}", node_id=node_id
            )
        retry = control.get("_retry", self._retry)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise GraphBuildError(
                f"{self._where(node_id)}: _retry must be a RetryPolicy(attempts=..., backoff_s=...)", node_id=node_id
            )
        self._nodes[node_id] = _Recorded(
            node_id=node_id,
            spec=spec,
            args=bound,
            after=after_items,
            condition=condition,
            alias=alias,
            timeout_s=float(timeout) if timeout is not None else None,
            retry=retry,
        )
        return NodeHandle(self, node_id, spec.name, spec.outputs)

    def _node_id(self, spec: CallableSpec, given: object) -> str:
        if given is None:
            count = self._counters.get(spec.name, 0) + 1
            self._counters[spec.name] = count
            node_id = f"{spec.name}_{count}"
            while node_id in self._nodes or node_id in self._aliases:
                count += 1
                self._counters[spec.name] = count
                node_id = f"{spec.name}_{count}"
            return node_id
        if not isinstance(given, str) or not _NODE_ID.match(given) or given == "root":
            raise GraphBuildError(
                f"graph {self.name!r}: _id {given!r} is not a valid node id; use 1-64 characters from letters, "
                "digits, '_' and '-', starting with a letter or '_' (and not 'root')"
            )
        if given in self._nodes or given in self._aliases:
            raise GraphBuildError(
                f"graph {self.name!r}: two nodes have the id {given!r}; give each node its own _id",
                node_id=given,
            )
        return given

    def _resolve_after(self, item: object, node_id: str) -> str:
        if isinstance(item, OutputRef):
            return item.node_id
        assert isinstance(item, str)
        if item in self._nodes:
            return item
        if item in self._aliases:
            return self._aliases[item]
        known = sorted([*self._nodes, *self._aliases])
        raise GraphBuildError(
            f"{self._where(node_id)}: _after={item!r} names no node; nodes and aliases: {known}", node_id=node_id
        )

    def finish(
        self, result: object, *, inputs: tuple[GraphInput, ...], outputs: tuple[str, ...], max_concurrency: int | None
    ) -> TaskGraph:
        nodes: dict[str, TaskNode] = {}
        for recorded in self._nodes.values():
            node_id = recorded.node_id
            dependencies: list[str] = []
            refs = find_refs(recorded.args)
            if isinstance(recorded.condition, GraphRef):
                refs.append(recorded.condition)
            for ref in refs:
                if isinstance(ref, OutputRef):
                    dependencies.append(ref.node_id)
            after = [self._resolve_after(item, node_id) for item in recorded.after]
            dependencies.extend(after)
            if node_id in dependencies:
                raise GraphBuildError(f"{self._where(node_id)}: a node cannot depend on itself", node_id=node_id)
            nodes[node_id] = TaskNode(
                node_id=node_id,
                tool=recorded.spec.name,
                kind=recorded.spec.kind,
                args=recorded.args,
                dependencies=tuple(dict.fromkeys(dependencies)),
                after=tuple(dict.fromkeys(after)),
                condition=recorded.condition,
                alias=recorded.alias,
                timeout_s=recorded.timeout_s,
                retry=recorded.retry,
            )
        return TaskGraph.create(
            name=self.name,
            inputs=inputs,
            outputs=self._outputs(result, outputs),
            nodes=nodes,
            max_concurrency=max_concurrency,
        )

    def _outputs(self, result: object, declared: tuple[str, ...]) -> dict[str, Any]:
        where = f"graph {self.name!r}"
        if isinstance(result, NodeHandle) and declared:
            mapped: dict[str, Any] = {name: result[name] for name in declared}
        elif isinstance(result, Mapping):
            mapped = {}
            for key, value in result.items():
                if not isinstance(key, str):
                    raise GraphBuildError(f"{where}: output names must be strings, got {key!r}")
                mapped[key] = value
        elif result is None and not declared:
            mapped = {}
        elif len(declared) == 1:
            mapped = {declared[0]: result}
        else:
            raise GraphBuildError(
                f"{where}: the body must return a dict of outputs (names to references or values); "
                f"got {type(result).__name__}"
            )
        missing = [name for name in declared if name not in mapped]
        if missing:
            raise GraphBuildError(
                f"{where}: the body does not return declared output(s) {missing}; returned {sorted(mapped)}"
            )
        for ref in find_refs(mapped):
            self._check_ref(ref, "outputs")
        try:
            normalise_value(ref_json(mapped), what=f"the outputs of {where}")
        except SerializationError as exc:
            raise GraphBuildError(exc.message) from None
        return mapped


class TaskGraphBuilder(RegisteredCallable):
    """What ``@graphify`` returns: ``.build()`` gives the TaskGraph; ``await g(**inputs)`` runs it."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        inputs: tuple[GraphInput, ...],
        outputs: tuple[str, ...],
        max_concurrency: int | None,
        retry: RetryPolicy | None,
        timeout_s: float | None,
    ) -> None:
        self._fn = fn
        self._inputs = inputs
        self._max_concurrency = max_concurrency
        self._retry = retry
        self._timeout_s = timeout_s
        self._graph: TaskGraph | None = None
        params = [
            inspect.Parameter(
                item.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if item.required else item.default,
            )
            for item in inputs
        ]
        spec = CallableSpec(
            kind="static",
            name=name,
            fn=fn,
            outputs=outputs,
            is_async=True,
            context_param=None,
            signature=inspect.Signature(params),
            plan=self.build,
        )
        self._register(spec, fn)

    def build(self) -> TaskGraph:
        """Run the body with placeholders (once) and return the checked :class:`TaskGraph`."""
        if self._graph is not None:
            return self._graph
        if current_build() is not None:
            raise GraphBuildError(
                f"graph {self.name!r} was built inside another graph's body; call it as a node instead "
                f"(`{self.name}(...)` records it as one node that runs it as a nested run)"
            )
        build = GraphBuild(self.name, retry=self._retry, timeout_s=self._timeout_s)
        token = _build_var.set(build)
        try:
            result = self._fn(**{item.name: InputRef(build, item.name) for item in self._inputs})
        finally:
            _build_var.reset(token)
        if inspect.isawaitable(result):
            raise GraphBuildError(
                f"graph {self.name!r}: the body returned an awaitable; a @graphify body is a plain def"
            )
        self._graph = build.finish(
            result, inputs=self._inputs, outputs=self.spec.outputs, max_concurrency=self._max_concurrency
        )
        return self._graph

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """In a ``@graphify`` body: a node running this graph as a nested run. Elsewhere: run it (awaitable)."""
        spec = self.__aethergraph_spec__
        build = current_build()
        if build is not None:
            return build.add(spec, args, kwargs)
        return self._run(args, kwargs)

    async def _run(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return await call_graph(self.__aethergraph_spec__, args, kwargs)

    def __repr__(self) -> str:
        return f"<graphify {self.name!r} outputs={list(self.spec.outputs)}>"


def _inputs(fn: Callable[..., Any], inputs: object, where: str) -> tuple[GraphInput, ...]:
    signature = inspect.signature(fn)
    params = signature.parameters
    if inputs is None:
        names = [name for name, param in params.items() if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)]
    elif isinstance(inputs, str) or not isinstance(inputs, (list, tuple)):
        raise DecorationError(f"{where}: inputs must be a list of names, e.g. inputs=['x', 'y']")
    else:
        names = list(inputs)
    result = []
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise DecorationError(f"{where}: input name {name!r} is not a Python identifier")
        param = params.get(name)
        if param is None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise DecorationError(
                f"{where}: input {name!r} is not a parameter of {fn.__name__}(); "
                f"add it: def {fn.__name__}({', '.join(names)}): ..."
            )
        if param is not None and param.kind is param.POSITIONAL_ONLY:
            raise DecorationError(f"{where}: input {name!r} is positional-only; remove the '/'")
        default = param.default if param is not None else inspect.Parameter.empty
        has_default = default is not inspect.Parameter.empty
        result.append(GraphInput(name=name, required=not has_default, default=default if has_default else None))
    for name, param in params.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if name not in names and param.default is inspect.Parameter.empty:
            raise DecorationError(
                f"{where}: parameter {name!r} of {fn.__name__}() is not among inputs {names}; "
                "declare it in inputs= or give it a default"
            )
    return tuple(result)


@overload
def graphify(fn: Callable[..., Any], /) -> TaskGraphBuilder: ...
@overload
def graphify(
    *,
    name: str | None = None,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    max_concurrency: int | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[..., Any]], TaskGraphBuilder]: ...
def graphify(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    max_concurrency: int | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
) -> TaskGraphBuilder | Callable[[Callable[..., Any]], TaskGraphBuilder]:
    """Make a plain ``def`` a static graph: ``@graphify(name="g", inputs=["x"], outputs=["y"])``.

    ``max_concurrency`` caps the nodes of one run executing at once; ``retry``
    and ``timeout`` are defaults for every node (``_retry=`` / ``_timeout=``
    on a call override them).
    """

    def decorate(target: Callable[..., Any]) -> TaskGraphBuilder:
        resolved = name if name is not None else getattr(target, "__name__", None)
        if getattr(target, "__aethergraph_spec__", None) is not None:
            raise DecorationError("@graphify was applied to something that is already a tool or graph")
        if not callable(target) or isinstance(target, type):
            raise DecorationError(f"@graphify decorates a plain `def` function; got {target!r}")
        if not isinstance(resolved, str) or not _NAME.match(resolved):
            raise DecorationError(f"@graphify: name {resolved!r} is not valid; pass name='my_graph'")
        where = f"@graphify(name={resolved!r})"
        if inspect.iscoroutinefunction(target) or inspect.isgeneratorfunction(target):
            raise DecorationError(
                f"{where}: the body must be a plain `def` (it runs once, at build time, to record the graph); "
                "for a graph whose code runs at run time use @graph_fn"
            )
        if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise DecorationError(f"{where}: max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if timeout is not None and timeout <= 0:
            raise DecorationError(f"{where}: timeout must be seconds > 0, got {timeout!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise DecorationError(f"{where}: retry must be a RetryPolicy(attempts=..., backoff_s=...)")
        return TaskGraphBuilder(
            target,
            name=resolved,
            inputs=_inputs(target, inputs, where),
            outputs=_check_outputs(outputs, where),
            max_concurrency=max_concurrency,
            retry=retry,
            timeout_s=float(timeout) if timeout is not None else None,
        )

    if fn is not None:
        return decorate(fn)
    return decorate
