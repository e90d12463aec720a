"""Finding graphs: importing the modules that define them, and resolving ``"module:attr"`` references."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from aethergraph.core.errors import GraphNotFoundError
from aethergraph.core.model.spec import CallableSpec

__all__ = ["import_module", "import_modules", "load_target"]


def load_target(target: object) -> CallableSpec:
    """The spec of a graph_fn or tool, given as the object or as ``"module:attr"`` / ``"file.py:attr"``."""
    if isinstance(target, str):
        target = _import_reference(target)
    spec = getattr(target, "__aethergraph_spec__", None)
    if not isinstance(spec, CallableSpec):
        raise GraphNotFoundError(
            f"{target!r} is not a graph_fn or tool; decorate it with @graph_fn or @tool, or pass the decorated object"
        )
    return spec


def import_module(module_name: str, *, reference: str | None = None) -> ModuleType:
    """Import ``pkg.module`` or ``path/to/file.py``."""
    what = reference or module_name
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name).resolve()
            if not path.is_file():
                raise GraphNotFoundError(f"no Python file at {path} (from {what!r})")
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))  # as when running the file: its siblings import
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise GraphNotFoundError(f"cannot import {path} (from {what!r})")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            return module
        if "" not in sys.path:
            sys.path.insert(0, "")
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphNotFoundError(f"cannot import module {module_name!r} for {what!r}: {exc}") from exc


def import_modules(*modules: str) -> None:
    """Import ``pkg.module`` or ``path/to/file.py`` modules so that their graphs and tools register."""
    for module in modules:
        import_module(module)


def _import_reference(reference: str) -> object:
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise GraphNotFoundError(
            f"{reference!r} is not a graph reference; write MODULE:GRAPH, e.g. "
            "examples.demo:analyze_numbers or examples/demo.py:analyze_numbers"
        )
    module = import_module(module_name, reference=reference)
    try:
        return getattr(module, attribute)
    except AttributeError:
        names = sorted(
            name for name, value in vars(module).items() if getattr(value, "__aethergraph_spec__", None) is not None
        )
        raise GraphNotFoundError(
            f"module {module_name!r} has no attribute {attribute!r}; graphs and tools there: {names or 'none'}"
        ) from None
