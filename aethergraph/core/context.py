"""``NodeContext``: the per-node control plane handed to graph functions and tools."""

from __future__ import annotations

import datetime as _dt
import os
import time
import uuid as _uuid
from collections.abc import Callable
from typing import Any, Literal

from .events import ValueRecorded
from .ids import ROOT_NODE
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

    def _value(self, kind: Literal["now", "uuid", "random"], make: Callable[[], object]) -> Any:
        """A fresh value journaled as ``value.recorded``, or the recorded one on replay."""
        scope = self._scope
        replay = scope.replaying()
        if replay is not None:
            recorded = replay.take_value(kind)
            if recorded is not None:
                cursor.set(recorded.seq)
                return recorded.value
        value = make()
        seq, _ = scope.journal.append(
            ValueRecorded, parent=cursor.get() or None, node_id=self.node_id, kind=kind, value=value
        )
        cursor.set(seq)
        return value

    def now(self) -> _dt.datetime:
        """The current UTC time (microsecond precision), journaled."""
        micros = self._value("now", lambda: time.time_ns() // 1000)
        return _dt.datetime.fromtimestamp(micros / 1_000_000, tz=_dt.UTC)

    def uuid(self) -> str:
        """A new random UUID (as a string), journaled."""
        return str(self._value("uuid", lambda: str(_uuid.UUID(bytes=os.urandom(16), version=4))))

    def random(self) -> float:
        """A random float in [0, 1), journaled."""
        return float(self._value("random", lambda: int.from_bytes(os.urandom(7), "big") / (1 << 56)))

    def idempotency_key(self) -> str:
        """A key that stays the same when this step runs again after a crash.

        Inside a tool it is ``<run_id>:<node_id>``: node ids follow the order
        of calls, so a re-executed step (one in flight when its worker died)
        gets the same key, whether or not its ``tool.called`` had been
        stored. Key an outbound side effect by it to make it exactly-once. In
        the graph body it is ``<run_id>:root:<seq>`` of the latest journaled
        event the body has seen.
        """
        if self.node_id == ROOT_NODE:
            return f"{self._scope.run_id}:{ROOT_NODE}:{cursor.get()}"
        return f"{self._scope.run_id}:{self.node_id}"

    def __repr__(self) -> str:
        return f"NodeContext(run_id={self.run_id!r}, graph_id={self.graph_id!r}, node_id={self.node_id!r})"
