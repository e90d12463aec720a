"""Testing helpers: replay recorded journals against the current code, offline.

    from aethergraph.testing import replay
    result = replay("tests/histories/analyze_signal.jsonl", analyze_signal)

See docs/testing.md.
"""

from __future__ import annotations

from .offline_log import MemoryEventLog
from .replayer import ReplayResult, load_journal, replay, replay_async

__all__ = ["MemoryEventLog", "ReplayResult", "load_journal", "replay", "replay_async"]
