"""Testing helpers: replay recorded journals offline, and a fake OpenAI-compatible server.

    from aethergraph.testing import replay
    result = replay("tests/histories/analyze_signal.jsonl", analyze_signal)

    from aethergraph.testing import FakeOpenAI, Reply
    with FakeOpenAI() as fake:
        fake.script(Reply.text("hello"))

The fake server's names are imported on first use, so importing this package
does not import Starlette or uvicorn (the ``[test]`` extra). See docs/testing.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .offline_log import MemoryEventLog
from .replayer import ReplayResult, load_journal, replay, replay_async

if TYPE_CHECKING:
    from .fake_openai import FakeOpenAI, Responder
    from .fake_openai_replies import RecordedCall, Reply, ToolCall, Usage

__all__ = [
    "FakeOpenAI",
    "MemoryEventLog",
    "RecordedCall",
    "Reply",
    "ReplayResult",
    "Responder",
    "ToolCall",
    "Usage",
    "load_journal",
    "replay",
    "replay_async",
]

_LAZY = {
    "FakeOpenAI": ".fake_openai",
    "Responder": ".fake_openai",
    "RecordedCall": ".fake_openai_replies",
    "Reply": ".fake_openai_replies",
    "ToolCall": ".fake_openai_replies",
    "Usage": ".fake_openai_replies",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        imported = importlib.import_module(module, __name__)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"aethergraph.testing.{name} needs {exc.name}, which is not installed: pip install 'aethergraph[test]' "
            "(or starlette and uvicorn)",
            name=exc.name,
        ) from exc
    value = getattr(imported, name)
    globals()[name] = value
    return value
