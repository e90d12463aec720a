"""Checking a run's inputs against its graph function's annotations (pydantic), before the run starts.

``x: int`` given ``"abc"`` fails at start with a :class:`GraphInputError`
naming the input and the expected type, instead of a ``TypeError`` steps
later. A value pydantic accepts is passed on in its JSON form after
validation (``"3"`` for ``x: int`` becomes ``3``; a ``Path`` stays a string),
which is what the journal records and what a replay hands the function.
Parameters without an annotation (or annotated ``Any``) are not checked.
"""

from __future__ import annotations

import inspect
import typing
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from aethergraph.core.errors import GraphInputError
from aethergraph.core.model.spec import CallableSpec

__all__ = ["check_input_types"]

if typing.TYPE_CHECKING:
    from pydantic import TypeAdapter

_adapters: weakref.WeakKeyDictionary[Callable[..., Any], dict[str, tuple[TypeAdapter[Any], str]]] = (
    weakref.WeakKeyDictionary()
)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    from pydantic import ConfigDict, TypeAdapter
    from pydantic.errors import PydanticUserError

    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except PydanticUserError:  # a type that carries its own config (a BaseModel, a TypedDict with one)
        try:
            return TypeAdapter(annotation)
        except Exception:  # noqa: BLE001 - a type pydantic cannot check is not checked
            return None
    except Exception:  # noqa: BLE001
        return None


def _adapters_of(spec: CallableSpec) -> dict[str, tuple[TypeAdapter[Any], str]]:
    cached = _adapters.get(spec.fn)
    if cached is not None:
        return cached
    try:
        hints = typing.get_type_hints(spec.fn, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable string annotations: check what is resolved
        hints = {
            name: param.annotation
            for name, param in spec.signature.parameters.items()
            if not isinstance(param.annotation, str)
        }
    found: dict[str, tuple[TypeAdapter[Any], str]] = {}
    for name, param in spec.signature.parameters.items():
        if param.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        annotation = hints.get(name, inspect.Parameter.empty)
        if annotation is inspect.Parameter.empty or annotation is Any:
            continue
        adapter = _adapter(annotation)
        if adapter is not None:
            found[name] = (adapter, _type_name(annotation))
    _adapters[spec.fn] = found
    return found


def check_input_types(spec: CallableSpec, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` (bound by name) checked against ``spec``'s annotations; raises :class:`GraphInputError`.

    The error names every input that fails, its expected type and what was given.
    """
    if spec.kind == "static":
        return dict(inputs)
    adapters = _adapters_of(spec)
    if not adapters:
        return dict(inputs)
    from pydantic import ValidationError

    checked = dict(inputs)
    problems: list[str] = []
    for name, (adapter, type_name) in adapters.items():
        if name not in checked:
            continue
        value = checked[name]
        try:
            checked[name] = adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else None
            reason = str(exc) if first is None else first["msg"]
            if first is not None and first["loc"]:
                reason += " at " + "".join(f"[{part!r}]" for part in first["loc"])
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:59] + "…"
            problems.append(f"input {name!r} must be {type_name}, got {shown} ({reason})")
    if problems:
        raise GraphInputError(f"{spec.label} cannot start: " + "; ".join(problems))
    return checked
