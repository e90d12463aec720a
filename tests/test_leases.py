"""Reading the lease stream: heartbeats and ownership records that vanish while they are read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.js.client import JetStreamContext

from aethergraph.bus.leases import JetStreamLeases
from aethergraph.bus.topology import LEASES_STREAM, run_owner_subject
from aethergraph.core.ids import new_run_id
from aethergraph.host.process import ProcessHost


async def test_an_ownership_record_removed_after_it_was_counted_does_not_stall_the_listing(
    runtime: ProcessHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record that expires (here: is purged) between the pending count and the fetch is simply absent.

    TTL'd heartbeats and tombstones expire at any moment, so the count the
    server gives when the listing starts can include messages that are gone by
    the time they would be delivered.
    """
    worker_id = f"vanishing-{new_run_id()}"
    kept_run, vanishing_run = new_run_id(), new_run_id()
    js = runtime.bus.js
    leases = JetStreamLeases(runtime.bus.nc, js, worker_id, lease_s=1.0)
    await js.publish(run_owner_subject(worker_id, kept_run), b'{"graph_id":"kept"}')
    vanishing_subject = run_owner_subject(worker_id, vanishing_run)
    await js.publish(vanishing_subject, b'{"graph_id":"vanishing"}')

    real_fetch = JetStreamContext.PullSubscription.fetch
    purged: list[str] = []

    async def fetch_after_the_record_vanished(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not purged:
            await js.purge_stream(LEASES_STREAM, subject=vanishing_subject)
            purged.append(vanishing_subject)
        return await real_fetch(self, *args, **kwargs)

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", fetch_after_the_record_vanished)
    owned = await leases.owned_runs(worker_id)

    assert purged == [vanishing_subject]
    assert [(run.run_id, run.graph_id) for run in owned] == [(kept_run, "kept")]


def _heartbeat_tasks(worker_id: str) -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name() == f"aethergraph-heartbeat-{worker_id}" and not task.done()
    ]


async def test_a_thousand_runs_starting_at_once_share_one_heartbeat(runtime: ProcessHost) -> None:
    """1,000 concurrent ``own()`` calls (each run's start) leave one heartbeat task, which ``close()`` stops.

    ``start()`` used to check for the task, await the first heartbeat's publish, then create the
    task: every caller that arrived during that await created one more.
    """
    worker_id = f"crowd-{new_run_id()}"
    leases = JetStreamLeases(runtime.bus.nc, runtime.bus.js, worker_id, lease_s=1.0)
    try:
        await asyncio.gather(*(leases.own(new_run_id(), "crowd") for _ in range(1000)))
        assert len(_heartbeat_tasks(worker_id)) == 1
        assert leases.heartbeating
        assert worker_id in await leases.live_workers()
    finally:
        await leases.close()
    assert _heartbeat_tasks(worker_id) == []
    assert not leases.heartbeating
