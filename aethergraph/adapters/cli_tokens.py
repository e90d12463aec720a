"""``aethergraph tokens RUN_ID``: a run's streamed model tokens, live, until the run ends."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, TextIO

import typer

from aethergraph.bus.token_stream import TokenWatch, watch_tokens
from aethergraph.core.journal.ports import EventLog
from aethergraph.core.wire.events import RunCancelled, RunCompleted, RunFailed
from aethergraph.core.wire.token_delta import TokenDelta, encode_token_delta
from aethergraph.runtime import get_runtime

from .cli_common import EXIT_USAGE, app, checked_run_id, drive, err_console, reader_settings

__all__ = ["tokens_command"]


class _Printer:
    """Deltas as text: each call's pieces on one line after ``[node call seq]``; or one JSON object per line."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self._out = out
        self._as_json = as_json
        self._call: tuple[str, int] | None = None
        self._mid_line = False

    def add(self, delta: TokenDelta) -> None:
        out = self._out
        if self._as_json:
            out.write(encode_token_delta(delta).decode() + "\n")
            out.flush()
            return
        call = (delta.node_id, delta.call_seq)
        if call != self._call:
            self.end_line()
            out.write(f"[{delta.node_id} call {delta.call_seq}] ")
            self._call = call
        out.write(delta.text)
        self._mid_line = True
        if delta.done:
            self.end_line()
            self._call = None
        out.flush()

    def end_line(self) -> None:
        if self._mid_line:
            self._out.write("\n")
            self._out.flush()
            self._mid_line = False


async def _close_when_run_ends(event_log: EventLog, run_id: str, watch: TokenWatch) -> None:
    records = event_log.read_run(run_id, follow=True)
    try:
        async for record in records:
            if isinstance(record.event, RunCompleted | RunFailed | RunCancelled):
                break
    finally:
        close = getattr(records, "aclose", None)
        if close is not None:
            await close()
        await watch.close()  # the deltas the server sent before the run's end are still printed


@app.command("tokens")
def tokens_command(
    run_id: Annotated[str, typer.Argument(help="the run whose streamed model tokens to print")],
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per delta (docs/events.md, Token stream)")
    ] = False,
) -> None:
    """Print a run's streamed model tokens as they arrive (subject ag.stream.<run_id>.>), until the run ends.

    The stream is live only: deltas published before this command subscribed
    are not shown (the complete responses are in the run's llm.returned
    events: `aethergraph events RUN_ID`). Exit status: 0 the run ended, 1 no
    bus to read, 2 no such run.
    """
    checked_run_id(run_id)
    reader_settings()

    async def go() -> bool:
        runtime = await get_runtime()
        async with watch_tokens(runtime.bus.nc, run_id) as watch:  # subscribed before the run's end is looked for
            if not await runtime.event_log.started_runs([run_id]):
                return False
            printer = _Printer(sys.stdout, as_json=as_json)
            follower = asyncio.ensure_future(_close_when_run_ends(runtime.event_log, run_id, watch))
            try:
                async for delta in watch:
                    printer.add(delta)
            finally:
                printer.end_line()
                follower.cancel()  # nothing if it is done
                await asyncio.wait([follower])
            if not follower.cancelled() and (error := follower.exception()) is not None:
                raise error
        return True

    if not drive(go):
        err_console.print(f"[red]error:[/] no run {run_id} on the bus; list runs with `aethergraph runs`")
        raise typer.Exit(EXIT_USAGE)
