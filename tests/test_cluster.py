"""A three-node JetStream cluster on loopback: three replicas everywhere, and runs survive losing the leader.

The nodes are configured from deploy/cluster-node.conf (tests/cluster_helpers.py). A driver subprocess
starts runs one after another from before the cluster has elected its meta leader (connecting waits
for it); the test kills -9 the node leading AG_EVENTS, keeps the runs going, restarts the node and
checks that every run completed with the right output and that the node caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import ClusterNode, plan_cluster
from helpers import REPO_ROOT, eventually, subprocess_env, wait_until
from nats.js import JetStreamContext

from aethergraph.bus.connection import connect_bus, open_nats
from aethergraph.bus.topology import BUCKET_STREAMS, COMMANDS_STREAM, EVENTS_STREAM, LEASES_STREAM
from aethergraph.core.errors import TopologyMismatchError
from aethergraph.core.settings import Settings

pytestmark = pytest.mark.slow

DRIVER = REPO_ROOT / "tests" / "procs" / "cluster_graphs.py"
STREAMS = (EVENTS_STREAM, COMMANDS_STREAM, LEASES_STREAM, *BUCKET_STREAMS)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[ClusterNode]]:
    nodes = plan_cluster(tmp_path / "cluster")
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def successes(path: Path) -> int:
    return sum(1 for record in read_results(path) if "outputs" in record)


def wait_for_results(path: Path, count: int, driver: subprocess.Popen[bytes], what: str) -> list[dict[str, Any]]:
    """Wait until ``count`` runs have completed (failed runs do not count)."""

    def enough() -> list[dict[str, Any]] | None:
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited with {driver.returncode} before {what}")
        results = read_results(path)
        return results if sum(1 for record in results if "outputs" in record) >= count else None

    return wait_until(enough, timeout_s=120, what=what, interval_s=0.1)


def start_driver(results: Path, stop: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), str(results), str(stop)], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def failure_summary(failed: list[dict[str, Any]], killed_at: float) -> str:
    """How many runs failed, when (seconds after the kill) and with which errors (first of each kind)."""
    kinds: dict[str, dict[str, Any]] = {}
    for record in failed:
        kinds.setdefault(record["error"].split(":", 1)[0], record)
    window = [round(record["at"] - killed_at, 2) for record in failed]
    lines = [f"{len(failed)} runs failed, started {min(window)}s to {max(window)}s after the kill:"]
    for kind, record in kinds.items():
        count = sum(1 for other in failed if other["error"].startswith(kind))
        lines.append(f"{count} x {record['error']} (first at +{record['at'] - killed_at:.2f}s)\n{record['where']}")
    return "\n".join(lines)


async def replicas_of(js: JetStreamContext, stream: str) -> tuple[int, str | None, list[tuple[str, bool]]]:
    """(configured replicas, leader name, [(follower name, current)]) of ``stream``."""
    info = await js.stream_info(stream)
    cluster = info.cluster
    followers = [(peer.name, bool(peer.current)) for peer in (cluster.replicas or [])] if cluster else []
    return info.config.num_replicas, cluster.leader if cluster else None, followers


async def all_current(js: JetStreamContext) -> bool | None:
    """True once every stream has a leader and two current followers."""
    for stream in STREAMS:
        try:
            replicas, leader, followers = await replicas_of(js, stream)
        except Exception:  # noqa: BLE001 - a stream may be between leaders: ask again
            return None
        if replicas != 3 or leader is None or len(followers) != 2 or not all(current for _, current in followers):
            return None
    return True


async def test_three_replicas_and_runs_survive_killing_the_events_leader(
    cluster: list[ClusterNode], tmp_path: Path
) -> None:
    urls = ",".join(node.url for node in cluster)
    env = subprocess_env(
        AETHERGRAPH_NATS_URL=urls,
        AETHERGRAPH_STREAM_REPLICAS="3",
        AETHERGRAPH_WORKSPACE=str(tmp_path / "driver-ws"),
        AETHERGRAPH_CONNECT_RETRY_S="60",
    )
    results, stop = tmp_path / "results.jsonl", tmp_path / "stop"
    # Started at once: the cluster may still be electing its JetStream meta leader.
    driver = start_driver(results, stop, env, tmp_path / "driver.log")
    settings = Settings(nats_url=urls, workspace=tmp_path / "ws", stream_replicas=3, connect_retry_s=60)
    nc, js, _url, _embedded, _ = await open_nats(settings, client_name="cluster-test")
    try:
        await asyncio.to_thread(wait_for_results, results, 3, driver, "the first runs")
        for stream in STREAMS:
            assert (await replicas_of(js, stream))[0] == 3, stream
        for consumer_stream, consumer in ((COMMANDS_STREAM, "ag-resume"), (EVENTS_STREAM, "ag-work")):
            info = await js.consumer_info(consumer_stream, consumer)
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, consumer
        # The same streams with one replica asked for: refused, not silently scaled down.
        with pytest.raises(TopologyMismatchError, match="num_replicas: 3 on the server, 1 wanted"):
            await connect_bus(settings.model_copy(update={"stream_replicas": 1}), client_name="r1")

        _replicas, leader, _followers = await replicas_of(js, EVENTS_STREAM)
        victim = next(node for node in cluster if node.name == leader)
        before_kill = successes(results)
        killed_at = time.time()
        victim.kill()
        await asyncio.to_thread(wait_for_results, results, before_kill + 4, driver, "runs after the kill")
        victim.start()
        after_restart = successes(results)
        await asyncio.to_thread(wait_for_results, results, after_restart + 3, driver, "runs after the restart")
        await eventually(lambda: all_current(js), "every stream to have three current replicas", timeout_s=120)
    finally:
        stop.touch()
        with contextlib.suppress(subprocess.TimeoutExpired):
            driver.wait(timeout=150)
        if driver.poll() is None:
            driver.kill()
        await nc.close()

    records = read_results(results)
    failed = [record for record in records if "error" in record]
    if failed:
        print(failure_summary(failed, killed_at))  # shown with -rx / -s: what failed, when, where
    assert not failed, failure_summary(failed, killed_at)
    for record in records:
        assert record["outputs"] == {"total": 3 * record["n"] + 3}, record
    assert driver.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]


async def test_connecting_waits_while_a_fresh_cluster_elects_its_meta_leader(tmp_path: Path) -> None:
    """A process started when only one node of three is up (no JetStream meta leader yet) does not exit with
    "JetStream not enabled": it keeps asking until the other nodes join, then declares R3 streams."""
    nodes = plan_cluster(tmp_path / "cluster")
    try:
        nodes[0].start()
        settings = Settings(nats_url=nodes[0].url, workspace=tmp_path / "ws", stream_replicas=3, connect_retry_s=120)
        connecting = asyncio.create_task(connect_bus(settings, client_name="early"))
        await asyncio.sleep(0.5)  # let the first JetStream requests go unanswered
        assert not connecting.done()
        for node in nodes[1:]:
            await asyncio.to_thread(node.start)
        bus = await asyncio.wait_for(connecting, timeout=150)
        try:
            for stream in (EVENTS_STREAM, COMMANDS_STREAM, LEASES_STREAM):
                assert (await replicas_of(bus.js, stream))[0] == 3
        finally:
            await bus.close()
    finally:
        for node in nodes:
            node.stop()
