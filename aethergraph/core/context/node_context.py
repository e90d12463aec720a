"""``NodeContext``: the per-node control plane handed to graph functions and tools."""

from __future__ import annotations

import datetime as _dt
import os
import time
import uuid as _uuid
from collections.abc import Callable
from typing import Any, Literal

from aethergraph.core.context.artifacts import ArtifactService
from aethergraph.core.context.channel import Channel
from aethergraph.core.context.kv import KeyValueService
from aethergraph.core.context.llm import LLMClient
from aethergraph.core.context.logger import NodeLogger
from aethergraph.core.context.mcp import McpClient
from aethergraph.core.context.memory import MemoryService
from aethergraph.core.context.rag import RagService
from aethergraph.core.context.service_registry import reserve_context_names, service_accessor
from aethergraph.core.context.viz import VizService
from aethergraph.core.context.waits import Wait, wait_for
from aethergraph.core.ids import ROOT_NODE
from aethergraph.core.journal.run_control import RunManager
from aethergraph.core.journal.scope import RunScope, cursor
from aethergraph.core.journal.step import StepKey, append_opening, replayed_opening
from aethergraph.core.wire.codec import normalise_value
from aethergraph.core.wire.events import CheckpointSaved, ValueRecorded

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
        key = StepKey(ValueRecorded, self.node_id, f"context.{kind}()", names={"kind": kind})
        recorded = replayed_opening(self._scope, key)
        if isinstance(recorded, ValueRecorded):
            return recorded.value
        value = make()
        append_opening(self._scope, key, value=value)  # committed with the run's next awaited event
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

    def channel(self, name: str | None = None) -> Channel:
        """The console channel, or the named channel whose questions always wait durably."""
        return Channel(self._scope, self.node_id, name or "console")

    def runs(self) -> RunManager:
        """Start, wait for and cancel runs from this node (children carry this run and node as parent)."""
        return RunManager(self._scope, self.node_id)

    def kv(self) -> KeyValueService:
        """The key-value store every host shares (JetStream KV); every call is journaled."""
        return KeyValueService(self)

    def artifacts(self) -> ArtifactService:
        """Content-addressed artifacts: save, load, list, search, pin (see docs/services.md)."""
        return ArtifactService(self)

    def memory(self) -> MemoryService:
        """The run's memory: record entries, read recent ones, search them, chat history."""
        return MemoryService(self)

    def llm(self, profile: str = "default") -> LLMClient:
        """Model calls through ``profile`` (``AETHERGRAPH_LLM__*`` settings), each journaled (docs/agents.md)."""
        return LLMClient(self, profile)

    def mcp(self, name: str) -> McpClient:
        """The MCP server configured as ``name``: its tools and resources, every call journaled (docs/agents.md)."""
        return McpClient(self, name)

    def viz(self) -> VizService:
        """Visualisation tracks: record scalars, vectors, matrices and images as points (the ``viz`` table)."""
        return VizService(self)

    def rag(self) -> RagService:
        """Corpora of embedded documents: add_corpus, upsert_docs, search, answer (see docs/agents.md)."""
        return RagService(self)

    def __getattr__(self, name: str) -> Any:
        """``context.<name>()``: a context service registered with ``register_context_service``."""
        if name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return service_accessor(self, name)

    async def wait(self, wait: Wait) -> Any:
        """Wait durably for an external answer (see :class:`~aethergraph.Wait`); returns the resume payload."""
        return await wait_for(self._scope, self.node_id, wait)

    async def checkpoint(self, key: str, state: Any) -> None:
        """Journal ``state`` under ``key`` for this node; :meth:`load_checkpoint` returns it after a restart.

        Meant for long loops inside one tool: if the worker dies, the tool runs
        again and can continue from its latest checkpoint instead of the start.
        """
        value, _ = normalise_value(state, what=f"checkpoint {key!r} of node {self.node_id}")
        scope = self._scope
        saved = await scope.journal.commit(
            CheckpointSaved, parent=cursor.get() or None, node_id=self.node_id, key=str(key), state=value
        )
        scope.checkpoints[(self.node_id, str(key))] = value
        cursor.set(saved.seq)

    async def load_checkpoint(self, key: str, default: Any = None) -> Any:
        """The latest state this node saved under ``key`` (in this or an earlier execution), else ``default``."""
        return self._scope.checkpoints.get((self.node_id, str(key)), default)

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


reserve_context_names(name for name in dir(NodeContext) if not name.startswith("_"))
