"""An event log in memory, for replaying recorded journals with no bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass

from aethergraph.core.wire.events import AnyEvent, Event, RunStarted

__all__ = ["MemoryEventLog", "MemoryRunWriter"]


@dataclass(frozen=True, slots=True)
class _Stored:
    event: AnyEvent
    stream_seq: int


class MemoryRunWriter:
    """Appends one run's events to a :class:`MemoryEventLog`; every append is committed at once."""

    def __init__(self, log: MemoryEventLog, run_id: str) -> None:
        self._log = log
        self._run_id = run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    def append(self, event: Event) -> Awaitable[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(self._log.store(event))  # type: ignore[arg-type]
        return future

    async def flush(self) -> None:
        return None


class MemoryEventLog:
    """Implements :class:`~aethergraph.core.journal.ports.EventLog` over lists in memory.

    ``appended`` holds, in order, every event written after the log was
    loaded: what a replay committed on top of the recorded history.
    """

    def __init__(self, events: Iterable[AnyEvent] = ()) -> None:
        self._runs: dict[str, list[_Stored]] = {}
        self._stream_seq = 0
        self.appended: list[AnyEvent] = []
        for event in events:
            self._put(event)

    def _put(self, event: AnyEvent) -> int:
        self._stream_seq += 1
        self._runs.setdefault(event.run_id, []).append(_Stored(event, self._stream_seq))
        return self._stream_seq

    def store(self, event: AnyEvent) -> int:
        self.appended.append(event)
        return self._put(event)

    def writer(self, run_id: str, *, last_stream_seq: int = 0) -> MemoryRunWriter:
        return MemoryRunWriter(self, run_id)

    async def read_run(self, run_id: str, *, follow: bool = False) -> AsyncIterator[_Stored]:
        if follow:
            raise RuntimeError("an offline event log has nothing more to follow")
        for stored in list(self._runs.get(run_id, ())):
            yield stored

    @contextlib.asynccontextmanager
    async def following(self, run_id: str) -> AsyncIterator[tuple[list[_Stored], AsyncIterator[_Stored]]]:
        """The run's stored events, and nothing after them: an offline log has no live events."""

        async def nothing_more() -> AsyncIterator[_Stored]:
            raise RuntimeError("an offline event log has nothing more to follow")
            yield  # an async generator

        yield list(self._runs.get(run_id, ())), nothing_more()

    async def first_start(self, run_id: str) -> RunStarted | None:
        for stored in self._runs.get(run_id, ()):
            if isinstance(stored.event, RunStarted):
                return stored.event
        return None

    async def started_runs(self, run_ids: list[str]) -> set[str]:
        return {
            run_id for run_id in run_ids if any(isinstance(s.event, RunStarted) for s in self._runs.get(run_id, ()))
        }
