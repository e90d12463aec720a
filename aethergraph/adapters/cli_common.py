"""What every ``aethergraph`` command shares: the app, the consoles, settings and error handling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from aethergraph.core.errors import AetherGraphError
from aethergraph.core.ids import check_run_id
from aethergraph.core.settings import Settings, load_settings
from aethergraph.runtime import close_runtime

__all__ = ["app", "checked_run_id", "console", "drive", "err_console", "settings_or_exit"]

app = typer.Typer(
    name="aethergraph",
    help="Run journaled agent graphs on NATS JetStream and inspect their events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:
        err_console.print(f"[red]invalid AETHERGRAPH_* setting:[/] {exc}")
        raise typer.Exit(2) from None


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
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
