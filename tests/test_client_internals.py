"""The nats-py members behind the one door (``bus/client_internals.py``), and the publish window."""

from __future__ import annotations

import asyncio
from importlib.metadata import version

import nats
import pytest

from aethergraph.bus import client_internals
from aethergraph.bus.ack_router import AckRouter, PublishedAck
from aethergraph.bus.topology import event_subject
from aethergraph.core.errors import BusUnavailableError
from aethergraph.core.ids import new_run_id
from aethergraph.host.process import ProcessHost

NO_HEADERS = b"NATS/1.0\r\n\r\n"


async def test_every_private_member_used_is_where_the_probe_expects_it(nats_url: str) -> None:
    """Fails on a nats-py upgrade that moves or retypes any member the hot path touches."""
    nc = await nats.connect(nats_url)
    try:
        subscription = await nc.subscribe(nc.new_inbox())
        client_internals.probe(nc, subscription)  # raises naming what is missing
        assert client_internals.subscription_id(subscription) > 0
        assert client_internals.server_info(nc).get("jetstream") is True
    finally:
        await nc.close()
    assert version("nats-py") == client_internals.TESTED_NATS_PY, (
        "nats-py changed: check every member in CLIENT_MEMBERS / SUBSCRIPTION_MEMBERS against the new version, "
        "then update TESTED_NATS_PY and constraints.txt"
    )


async def test_the_probe_names_a_missing_member_and_the_fix(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        subscription = await nc.subscribe(nc.new_inbox())
        del subscription._pending_size
        with pytest.raises(BusUnavailableError, match=r"Subscription\._pending_size.*pip install -c constraints.txt"):
            client_internals.probe(nc, subscription)
    finally:
        await nc.close()


async def test_publishes_beyond_the_window_are_held_in_order_and_all_acknowledged(runtime: ProcessHost) -> None:
    """With a window of 4, 200 publishes go out at most 4 at a time; each gets its own ack, in stream order."""
    nc = await nats.connect(runtime.bus.url)  # the runtime declared the streams
    router = AckRouter(nc, ack_timeout_s=10.0, max_in_flight=4)
    await router.start()
    try:
        run_id = new_run_id()
        loop = asyncio.get_running_loop()
        acks: list[asyncio.Future[PublishedAck | BaseException]] = []
        most_in_flight = 0
        for index in range(200):
            done: asyncio.Future[PublishedAck | BaseException] = loop.create_future()
            acks.append(done)
            router.publish(event_subject(run_id, "log.recorded"), NO_HEADERS, b'{"i": %d}' % index, done.set_result)
            most_in_flight = max(most_in_flight, len(router._pending))
        assert most_in_flight == 4 and len(router._held) == 196
        results = await asyncio.gather(*acks)
        assert all(isinstance(ack, PublishedAck) and ack.error is None for ack in results), results[:2]
        seqs = [ack.seq for ack in results if isinstance(ack, PublishedAck)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 200
        assert not router._pending and not router._held
    finally:
        await router.stop()
        await nc.close()


async def test_held_publishes_fail_with_the_connection(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    router = AckRouter(nc, ack_timeout_s=10.0, max_in_flight=1)
    await router.start()
    try:
        loop = asyncio.get_running_loop()
        outcomes: list[asyncio.Future[PublishedAck | BaseException]] = [loop.create_future() for _ in range(3)]
        run_id = new_run_id()
        for done in outcomes:
            router.publish(event_subject(run_id, "log.recorded"), NO_HEADERS, b"{}", done.set_result)
        router.connection_lost()
        assert all(isinstance(done.result(), BusUnavailableError) for done in outcomes)
    finally:
        await router.stop()
        await nc.close()
