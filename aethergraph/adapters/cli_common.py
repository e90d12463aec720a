"""What every ``aethergraph`` command shares: the app, the consoles, settings and error handling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from aethergraph import __version__
from aethergraph.bus.embedded import has_embedded_store
from aethergraph.core.errors import AetherGraphError
from aethergraph.core.ids import check_run_id
from aethergraph.core.settings import Settings, load_settings
from aethergraph.runtime import close_runtime

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_NOT_ENDED",
    "EXIT_USAGE",
    "EXIT_WAITING",
    "app",
    "checked_run_id",
    "console",
    "drive",
    "err_console",
    "reader_settings",
    "settings_or_exit",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WAITING = 3
EXIT_NOT_ENDED = 4
EXIT_CANCELLED = 5

HELP = """Run journaled agent graphs on NATS JetStream and inspect their events.

Commands that run work (run, worker, retry, projector, nats) start the workspace's embedded
nats-server when AETHERGRAPH_NATS_URL is unset; the others only read, and say so when there is no
bus to read.

\b
Exit status (every command):
  0    done; for `run`/`result`: the run succeeded
  1    the run failed, or the command could not do its job (the message says why)
  2    bad arguments or settings; `events`, `tokens`, `result`: no such run
  3    the run waits for an answer (`run`, `result`); `resume`: queued, no process took it yet
  4    `result`: the run has not ended yet (queued or running)
  5    `result`: the run was cancelled
  130  interrupted (Ctrl-C)
"""

app = typer.Typer(
    name="aethergraph",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"aethergraph {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    pass


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:
        err_console.print(f"[red]invalid AETHERGRAPH_* setting:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


def reader_settings() -> Settings:
    """Settings for a command that only reads: with no bus configured and no workspace here, exit saying so.

    Reading never starts an embedded server in a folder that has none (it would hold nothing).
    """
    settings = settings_or_exit()
    if settings.nats_url is None and not has_embedded_store(settings.workspace):
        err_console.print(
            f"[red]error:[/] no bus here: AETHERGRAPH_NATS_URL is unset and {settings.workspace.resolve()} holds "
            "no workspace. Run the command in the folder where you ran `aethergraph run` (or set "
            "AETHERGRAPH_WORKSPACE to that folder's .aethergraph), or point AETHERGRAPH_NATS_URL at your NATS "
            "server; `aethergraph nats` starts a workspace's embedded server here.",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_FAILED)
    return settings


def drive(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, closing the runtime after; AetherGraph errors become messages, not tracebacks."""

    async def main() -> T:
        try:
            return await make()
        finally:
            await close_runtime()

    try:
        return asyncio.run(main())
    except AetherGraphError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def checked_run_id(run_id: str) -> str:
    """``run_id``, or exit with status 2 saying what a run id may contain."""
    try:
        return check_run_id(run_id)
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
