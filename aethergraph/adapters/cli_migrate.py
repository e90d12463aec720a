"""``aethergraph nats --migrate``: bring existing streams to the settings' replicas and limits."""

from __future__ import annotations

import json
import sys

import typer
from nats.js.errors import APIError

from aethergraph.bus.connection import migrate_topology, open_nats, topology_for
from aethergraph.bus.migration import TopologyPlan
from aethergraph.core.settings import Settings

from .cli_common import console, drive, err_console

__all__ = ["migrate_streams"]


def _plan_json(plan: TopologyPlan, applied: bool) -> dict[str, object]:
    return {
        "applied": applied,
        "create": [str(config.name) for config in plan.create],
        "extend": [str(config.name) for config in plan.extend],
        "differences": [
            {"stream": d.stream, "field": d.field, "existing": d.existing, "wanted": d.wanted} for d in plan.differences
        ],
    }


def _print_plan(plan: TopologyPlan, applied: bool) -> None:
    verb = "" if applied else "would be "
    if plan.in_sync:
        console.print("streams match the settings; nothing to migrate")
        return
    for config in plan.create:
        console.print(f"stream {config.name}: {verb}created")
    for config in plan.extend:
        console.print(f"stream {config.name}: subjects or features {verb}added")
    for difference in plan.differences:
        console.print(
            f"stream {difference.stream}: {difference.field} {difference.existing!r} -> {difference.wanted!r}"
            f" ({verb}updated)"
        )


def migrate_streams(settings: Settings, *, dry_run: bool, as_json: bool) -> None:
    """Print how the server's streams differ from ``settings`` and (unless ``dry_run``) update them."""

    async def go() -> TopologyPlan:
        nc, js, _url, _embedded, _ = await open_nats(settings, client_name="aethergraph:migrate")
        try:
            return await migrate_topology(js, topology_for(settings), apply=not dry_run)
        finally:
            await nc.close()

    try:
        plan = drive(go)
    except APIError as exc:
        err_console.print(
            f"[red]error:[/] the server refused the update ({exc.description}, code {exc.err_code}). "
            "A stream's storage type or retention cannot be changed in place: create a new stream and "
            "copy the messages (or change the settings back)."
        )
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(_plan_json(plan, not dry_run)) + "\n")
    else:
        _print_plan(plan, not dry_run)
