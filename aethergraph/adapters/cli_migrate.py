"""``aethergraph nats --migrate``: bring existing streams to the settings' replicas and limits."""

from __future__ import annotations

import json
import sys

from aethergraph.bus.connection import migrate_streams as migrate_on_server
from aethergraph.bus.migration import TopologyPlan
from aethergraph.core.settings import Settings

from .cli_common import console, drive

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
        return await migrate_on_server(settings, apply=not dry_run)

    plan = drive(go)  # a refused update is a BusUnavailableError naming the server's reason
    if as_json:
        sys.stdout.write(json.dumps(_plan_json(plan, not dry_run)) + "\n")
    else:
        _print_plan(plan, not dry_run)
