"""Frozen specs that ``@tool`` and ``@graph_fn`` attach, validated at decoration time."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aethergraph.core.errors import DecorationError, OutputError

if TYPE_CHECKING:
    from aethergraph.core.model.task_graph import TaskGraph

__all__ = ["CallableSpec", "build_spec", "check_declared_inputs", "normalise_outputs"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,127}$")
_OUTPUT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTEXT_NAME = "context"


@dataclass(frozen=True, kw_only=True)
class CallableSpec:
    """What a decorator learned about a function, fixed at decoration time."""

    kind: Literal["tool", "graph_fn", "static"]
    name: str
    fn: Callable[..., Any]
    outputs: tuple[str, ...]
    is_async: bool
    context_param: str | None
    signature: inspect.Signature
    # Static graphs (``@graphify``): builds (once) the TaskGraph the scheduler runs.
    plan: Callable[[], TaskGraph] | None = None
    # Binding on the hot path, precomputed: parameter names in order, how many take a position, and the
    # defaults; None when the signature has ``**kwargs`` (bound by ``inspect`` then).
    fast_binding: tuple[tuple[str, ...], int, dict[str, Any]] | None = None

    @functools.cached_property
    def label(self) -> str:
        """How messages name it: ``tool 'analyze'``, ``graph_fn 'demo'``, ``graph 'wide'``."""
        kind = "graph" if self.kind == "static" else self.kind
        return f"{kind} {self.name!r}"

    @functools.cached_property
    def arguments_label(self) -> str:
        """How messages name its arguments (on the hot path of every call: made once)."""
        return f"the arguments of {self.label}"

    def task_graph(self) -> TaskGraph:
        """The TaskGraph of a static graph (built on first use)."""
        if self.plan is None:
            raise TypeError(f"{self.label} is not a static graph (@graphify)")
        return self.plan()

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Bind a call's arguments by name, leaving out the context parameter."""
        bound = self._bind_fast(args, kwargs)
        return bound if bound is not None else self._bind_slow(args, kwargs)

    def _bind_fast(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The common call (known names, nothing missing or twice) without ``inspect``; None otherwise."""
        if self.fast_binding is None:
            return None
        names, positional, defaults = self.fast_binding
        if len(args) > positional:
            return None
        given = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name in given or (name not in defaults and name not in names):
                if name == self.context_param:
                    continue
                return None  # unknown or given twice: inspect says which
            given[name] = value
        if len(given) + len(defaults) < len(names):
            return None  # possibly missing ones: inspect names them
        try:
            return {name: given[name] if name in given else defaults[name] for name in names}
        except KeyError:
            return None

    def _bind_slow(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        call_kwargs = dict(kwargs)
        if self.context_param is not None:
            call_kwargs.pop(self.context_param, None)
        try:
            bound = self.signature.bind(*args, **call_kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.label}: {exc}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        for name, param in self.signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
                arguments.update(arguments.pop(name))
        return arguments


def _is_context_param(param: inspect.Parameter) -> bool:
    if param.name == _CONTEXT_NAME:
        return True
    annotation = param.annotation
    if isinstance(annotation, str):
        return annotation.strip("'\" ").rsplit(".", 1)[-1] == "NodeContext"
    return getattr(annotation, "__name__", None) == "NodeContext"


def _check_outputs(outputs: object, where: str) -> tuple[str, ...]:
    if outputs is None:
        return ()
    if isinstance(outputs, str):
        raise DecorationError(
            f"{where}: outputs must be a list of names, got the string {outputs!r}; write outputs=[{outputs!r}]"
        )
    if not isinstance(outputs, (list, tuple)):
        raise DecorationError(f"{where}: outputs must be a list of names, got {type(outputs).__name__}")
    names = tuple(outputs)
    for name in names:
        if not isinstance(name, str) or not _OUTPUT.match(name):
            raise DecorationError(
                f"{where}: output name {name!r} is not a Python identifier; use names like 'result' or 'job_id'"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DecorationError(f"{where}: outputs {duplicates} are declared more than once")
    return names


def build_spec(
    fn: object,
    *,
    kind: Literal["tool", "graph_fn"],
    name: str | None,
    outputs: object,
) -> CallableSpec:
    """Validate ``fn`` for ``@tool``/``@graph_fn`` and describe it, or say what to change."""
    decorator = "@tool" if kind == "tool" else "@graph_fn"
    if getattr(fn, "__aethergraph_spec__", None) is not None:
        raise DecorationError(f"{decorator} was applied to something that is already a tool or graph_fn")
    if isinstance(fn, type) or not callable(fn):
        raise DecorationError(
            f"{decorator} decorates functions; got {type(fn).__name__} {fn!r}. Decorate a `def` or `async def` function"
        )
    resolved = name if name is not None else getattr(fn, "__name__", None)
    if not isinstance(resolved, str) or not _NAME.match(resolved):
        raise DecorationError(
            f"{decorator}: name {resolved!r} is not valid; use 1-128 characters from "
            "letters, digits, '_' and '-', starting with a letter or '_' (pass name=...)"
        )
    where = f"{decorator}(name={resolved!r})"
    is_async = inspect.iscoroutinefunction(fn)
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise DecorationError(f"{where}: generators cannot be {kind}s; return a dict of outputs instead")
    if kind == "graph_fn" and not is_async:
        raise DecorationError(
            f"{where}: a graph_fn must be `async def`; change `def {resolved}` to `async def {resolved}`"
        )
    signature = inspect.signature(fn)
    context_param: str | None = None
    kept: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            raise DecorationError(
                f"{where}: *{param.name} cannot be journaled by name; declare the "
                "parameters explicitly (or take a list parameter)"
            )
        if _is_context_param(param):
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise DecorationError(
                    f"{where}: the context parameter {param.name!r} must be keyword-capable; "
                    f"write `*, {param.name}` instead of making it positional-only"
                )
            if context_param is not None:
                raise DecorationError(
                    f"{where}: two parameters ({context_param!r}, {param.name!r}) ask for the NodeContext; keep one"
                )
            context_param = param.name
            continue
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise DecorationError(
                f"{where}: parameter {param.name!r} is positional-only, but inputs are journaled "
                "and passed by name; remove the '/' from the signature"
            )
        kept.append(param)
    return CallableSpec(
        kind=kind,
        name=resolved,
        fn=fn,
        outputs=_check_outputs(outputs, where),
        is_async=is_async,
        context_param=context_param,
        signature=signature.replace(parameters=kept),
        fast_binding=_fast_binding(kept),
    )


def _fast_binding(params: list[inspect.Parameter]) -> tuple[tuple[str, ...], int, dict[str, Any]] | None:
    if any(param.kind is inspect.Parameter.VAR_KEYWORD for param in params):
        return None
    positional = sum(param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for param in params)
    if any(param.kind is inspect.Parameter.KEYWORD_ONLY for param in params[:positional]):
        return None  # keyword-only parameters before positional ones cannot happen; be safe
    defaults = {param.name: param.default for param in params if param.default is not inspect.Parameter.empty}
    return tuple(param.name for param in params), positional, defaults


def check_declared_inputs(spec: CallableSpec, inputs: object) -> None:
    """Check ``@graph_fn(inputs=[...])`` against the function's signature (the original AetherGraph's spelling).

    Every declared input must be a parameter of the function (other than the
    context), and every parameter without a default must be declared.
    """
    if inputs is None:
        return
    where = f"@graph_fn(name={spec.name!r})"
    if isinstance(inputs, str) or not isinstance(inputs, (list, tuple)):
        raise DecorationError(f"{where}: inputs must be a list of parameter names, e.g. inputs=['x'], got {inputs!r}")
    params = spec.signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = [name for name in inputs if name not in params and not takes_any]
    if unknown:
        raise DecorationError(
            f"{where}: inputs {unknown} are not parameters of {spec.fn.__name__}{spec.signature}; "
            f"its parameters are {named}. Add them to the signature or remove them from inputs="
        )
    required = [name for name in named if params[name].default is inspect.Parameter.empty and name not in inputs]
    if required:
        raise DecorationError(
            f"{where}: parameters {required} have no default but are missing from inputs={list(inputs)}; "
            "list every input the graph takes, or give those parameters a default"
        )


def normalise_outputs(spec: CallableSpec, result: object) -> dict[str, Any]:
    """Turn a return value into an outputs dict and check the declared outputs.

    A dict is taken as the outputs; any other value is the single declared
    output (or ``result`` when none is declared). Every declared output must be
    present.
    """
    if isinstance(result, dict):
        outputs: dict[str, Any] = result
        for key in outputs:
            if not isinstance(key, str):
                raise OutputError(
                    f"{spec.label} returned a dict with a non-string key {key!r}; output names are strings"
                )
    elif len(spec.outputs) == 1:
        outputs = {spec.outputs[0]: result}
    elif not spec.outputs:
        outputs = {} if result is None else {"result": result}
    else:
        raise OutputError(
            f"{spec.label} declares outputs {list(spec.outputs)} but returned a "
            f"{type(result).__name__}; return a dict with those keys"
        )
    for key in spec.outputs:
        if key not in outputs:
            raise OutputError(
                f"{spec.label} did not return its declared output {key!r} "
                f"(returned keys: {sorted(outputs)}); return a dict containing {key!r} "
                "or remove it from outputs="
            )
    return outputs
