"""Streams are created as the settings say, never changed silently, and migrated on request.

Each test here uses its own nats-server (the session server's streams stay as the other tests expect).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import start_cluster_node
from helpers import NatsServer, closed_port, start_nats_server, subprocess_env
from nats.js.api import StreamConfig

from aethergraph.bus.connection import connect_bus, migrate_topology, open_nats, topology_for
from aethergraph.bus.migration import check_bucket_replicas, stream_differences
from aethergraph.bus.stream_errors import no_stream_answer_message
from aethergraph.bus.topology import COMMANDS_STREAM, EVENTS_STREAM, LEASES_STREAM, Topology
from aethergraph.core.errors import BusUnavailableError, TopologyMismatchError
from aethergraph.core.settings import Settings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    started = start_nats_server(tmp_path / "nats")
    try:
        yield started
    finally:
        started.stop()


def settings_for(server: NatsServer, tmp_path: Path, **overrides: object) -> Settings:
    return Settings(nats_url=server.url, workspace=tmp_path / "ws", **overrides)  # type: ignore[arg-type]


async def test_connecting_again_with_the_same_settings_changes_nothing(server: NatsServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path)
    first = await connect_bus(settings, client_name="t1")
    try:
        before = {name: (await first.js.stream_info(name)).config for name in (EVENTS_STREAM, COMMANDS_STREAM)}
        second = await connect_bus(settings, client_name="t2")
        await second.close()
        for name, config in before.items():
            assert (await first.js.stream_info(name)).config == config
        assert all(stream_differences(before[name], config) == [] for name, config in before.items())
    finally:
        await first.close()


@pytest.mark.parametrize(
    ("override", "field", "existing", "wanted"),
    [
        ({"duplicate_window_s": 45.0}, "duplicate_window", 120.0, 45.0),
        ({"max_event_bytes": 128 * 1024}, "max_msg_size", 256 * 1024 + 4096, 128 * 1024 + 4096),
    ],
)
async def test_changed_limits_raise_with_the_migrate_hint_and_change_nothing(
    server: NatsServer, tmp_path: Path, override: dict[str, object], field: str, existing: object, wanted: object
) -> None:
    bus = await connect_bus(settings_for(server, tmp_path), client_name="t")
    try:
        with pytest.raises(TopologyMismatchError) as info:
            await connect_bus(settings_for(server, tmp_path, **override), client_name="t-changed")
        error = info.value
        assert isinstance(error, BusUnavailableError)
        assert (EVENTS_STREAM, field, existing, wanted) in error.differences
        assert EVENTS_STREAM in error.streams and COMMANDS_STREAM in error.streams
        assert "aethergraph nats --migrate" in str(error)
        assert f"{EVENTS_STREAM}.{field}" in str(error)
        config = (await bus.js.stream_info(EVENTS_STREAM)).config
        assert stream_differences(config, bus.topology.events_stream()) == []
    finally:
        await bus.close()


async def test_migrate_applies_the_new_limits_and_keeps_the_events(server: NatsServer, tmp_path: Path) -> None:
    bus = await connect_bus(settings_for(server, tmp_path), client_name="t")
    try:
        await bus.js.publish("ag.evt.r1.log.recorded", b"{}")
        changed = settings_for(server, tmp_path, duplicate_window_s=45.0)
        dry = await migrate_topology(bus.js, topology_for(changed), apply=False)
        assert {(d.stream, d.field) for d in dry.differences} == {
            (EVENTS_STREAM, "duplicate_window"),
            (COMMANDS_STREAM, "duplicate_window"),
        }
        assert (await bus.js.stream_info(EVENTS_STREAM)).config.duplicate_window == pytest.approx(120.0)
        await migrate_topology(bus.js, topology_for(changed))
        info = await bus.js.stream_info(EVENTS_STREAM)
        assert info.config.duplicate_window == pytest.approx(45.0)
        assert info.state.messages == 1
        again = await connect_bus(changed, client_name="t-changed")  # now in sync: no error
        await again.close()
        assert (await migrate_topology(bus.js, topology_for(changed), apply=False)).in_sync
    finally:
        await bus.close()


async def test_missing_subjects_and_features_are_added_without_asking(server: NatsServer, tmp_path: Path) -> None:
    settings = settings_for(server, tmp_path)
    nc, js, _url, _embedded, _ = await open_nats(settings, client_name="t")
    try:
        wanted = topology_for(settings).commands_stream()
        await js.add_stream(wanted.evolve(subjects=["ag.other.>"], allow_msg_schedules=False, republish=None))
        bus = await connect_bus(settings, client_name="t2")
        await bus.close()
        config = (await js.stream_info(COMMANDS_STREAM)).config
        assert config.subjects == ["ag.other.>", "ag.cmd.>"]
        assert config.allow_msg_schedules
        # A stream from before live delivery (republish) gains it: followers depend on it.
        assert config.republish is not None and config.republish == wanted.republish
    finally:
        await nc.close()


def test_stream_differences_compare_replicas_storage_and_limits() -> None:
    wanted = Topology(replicas=3).events_stream()
    existing = Topology(replicas=1).events_stream()
    assert [(d.stream, d.field, d.existing, d.wanted) for d in stream_differences(existing, wanted)] == [
        (EVENTS_STREAM, "num_replicas", 1, 3)
    ]
    # The server reports unset fields with its defaults; those are not differences.
    leases = Topology().leases_stream()
    assert stream_differences(StreamConfig.from_response(leases.as_dict()), leases) == []
    assert leases.name == LEASES_STREAM
    with pytest.raises(TopologyMismatchError, match=r"KV_AG_KV\.num_replicas: 1 on the server, 3 wanted"):
        check_bucket_replicas("KV_AG_KV", 1, 3)
    check_bucket_replicas("KV_AG_KV", None, 1)


def test_the_migrate_command_prints_and_applies_the_differences(server: NatsServer, tmp_path: Path) -> None:
    env = subprocess_env(AETHERGRAPH_NATS_URL=server.url, AETHERGRAPH_WORKSPACE=str(tmp_path / "ws"))

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aethergraph", "nats", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = cli("--migrate", "--json")
    assert created.returncode == 0, created.stderr
    assert set(json.loads(created.stdout)["create"]) == {EVENTS_STREAM, COMMANDS_STREAM, LEASES_STREAM}
    dry = cli("--migrate", "--dry-run", AETHERGRAPH_DUPLICATE_WINDOW_S="45")
    assert dry.returncode == 0, dry.stderr
    assert "AG_EVENTS: duplicate_window 120.0 -> 45.0 (would be updated)" in dry.stdout
    applied = cli("--migrate", "--json", AETHERGRAPH_DUPLICATE_WINDOW_S="45")
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout)
    assert report["applied"] is True
    assert {"stream": EVENTS_STREAM, "field": "duplicate_window", "existing": 120.0, "wanted": 45.0} in report[
        "differences"
    ]
    done = cli("--migrate", AETHERGRAPH_DUPLICATE_WINDOW_S="45")
    assert "nothing to migrate" in done.stdout


async def test_a_server_announcing_jetstream_that_never_serves_it_names_both_causes(
    tmp_path: Path,
) -> None:
    """A lone node of a three-node cluster announces JetStream but has no meta leader: connecting retries for
    AETHERGRAPH_CONNECT_RETRY_S, then says JetStream may be off for the account or the cluster leaderless."""
    node = start_cluster_node(tmp_path, "n1", routes=[closed_port(), closed_port()])
    try:
        with pytest.raises(BusUnavailableError) as info:
            await connect_bus(
                Settings(nats_url=node.url, workspace=tmp_path / "ws", connect_retry_s=0.5), client_name="t"
            )
        message = str(info.value)
        assert "not enabled for this account" in message
        assert "meta leader" in message
        assert "AETHERGRAPH_CONNECT_RETRY_S" in message
    finally:
        node.stop()


def test_a_publish_no_stream_answered_names_a_missing_stream_and_a_leaderless_one() -> None:
    message = no_stream_answer_message(EVENTS_STREAM, "503", server="127.0.0.1:4222")
    assert "does not exist" in message
    assert "leader is being re-elected" in message
    assert "AETHERGRAPH_STREAM_REPLICAS=1" in message
    assert "status 408" in no_stream_answer_message(EVENTS_STREAM, "408")
