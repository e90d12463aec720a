"""``NodeContext``: the per-node control plane handed to graph functions and tools."""

from __future__ import annotations

import datetime as _dt
import os
import uuid as _uuid
from typing import Literal

from .events import ValueRecorded
from .logger import NodeLogger
from .scope import RunScope, cursor

__all__ = ["NodeContext"]


class NodeContext:
    """Scoped access to the run: identity, logging and journaled non-determinism.

    ``run_id``, ``graph_id`` and ``node_id`` identify where the code runs. Values
    that differ from one execution to the next (time, ids, randomness) must be
    taken through ``now()``, ``uuid()`` and ``random()`` so that each is
    journaled and a replay sees the same value.
    """

    __slots__ = ("_logger", "_scope", "node_id")

    def __init__(self, scope: RunScope, node_id: str) -> None:
        self._scope = scope
        self.node_id = node_id
        self._logger: NodeLogger | None = None

    @property
    def run_id(self) -> str:
        return self._scope.run_id

    @property
    def graph_id(self) -> str:
        return self._scope.graph_id

    def logger(self) -> NodeLogger:
        """A logger bound to this run and node; every record is also an event."""
        if self._logger is None:
            self._logger = NodeLogger(self._scope, self.node_id)
        return self._logger

    def _record(self, kind: Literal["now", "uuid", "random"], value: object) -> None:
        seq, _ = self._scope.journal.append(
            ValueRecorded, parent=cursor.get() or None, node_id=self.node_id, kind=kind, value=value
        )
        cursor.set(seq)

    def now(self) -> _dt.datetime:
        """The current UTC time, journaled."""
        micros = _dt.datetime.now(_dt.UTC)
        self._record("now", int(micros.timestamp() * 1_000_000))
        return micros

    def uuid(self) -> str:
        """A new random UUID (as a string), journaled."""
        value = str(_uuid.UUID(bytes=os.urandom(16), version=4))
        self._record("uuid", value)
        return value

    def random(self) -> float:
        """A random float in [0, 1), journaled."""
        value = int.from_bytes(os.urandom(7), "big") / (1 << 56)
        self._record("random", value)
        return value

    def __repr__(self) -> str:
        return f"NodeContext(run_id={self.run_id!r}, graph_id={self.graph_id!r}, node_id={self.node_id!r})"
