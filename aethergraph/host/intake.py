"""The resume intake of a process that awaits its own waiting runs.

While anyone in the process awaits a run that waits for an answer
(``aethergraph.run()``, ``handle.result()``), the process takes resume
commands for the graphs it has loaded, so it continues the run in place when
the answer comes, from anywhere. It is a :class:`~aethergraph.host.worker.Worker`
without takeover, shared by everyone awaiting and stopped when the last one
stops; a worker process takes commands anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aethergraph.bus.commands import JetStreamCommands

from .runs import RunDriver
from .worker import Worker

__all__ = ["ResumeIntake"]


class ResumeIntake:
    """Serve resume commands while at least one caller is inside :meth:`serving`."""

    def __init__(self, driver: RunDriver, commands: JetStreamCommands) -> None:
        self._driver = driver
        self._commands = commands
        self._serving: tuple[Worker, asyncio.Task[None]] | None = None
        self._users = 0

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """While inside, take resume commands for runs of the graphs loaded here."""
        self._users += 1
        try:
            if self._serving is None:
                worker = Worker(self._driver, self._commands, takeover=False)
                self._serving = (worker, asyncio.create_task(worker.serve(), name="aethergraph-resume-intake"))
            await self._serving[0].ready.wait()
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                await self.stop()

    async def stop(self) -> None:
        if self._serving is not None:
            worker, task = self._serving
            self._serving = None
            worker.stop()
            with contextlib.suppress(Exception):
                await task
