"""Clusters of real nats-servers on loopback, configured from deploy/cluster-node.conf.

The deploy file is the template: each node gets a copy with its server name, loopback client and
cluster ports, a store folder under the test's temporary directory and routes to the other nodes.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from helpers import REPO_ROOT, closed_port, port_accepts, stop_process, wait_until

from aethergraph.bus.embedded import find_nats_server_binary

CLUSTER_TEMPLATE = REPO_ROOT / "deploy" / "cluster-node.conf"


def node_config(template: str, *, name: str, port: int, cluster_port: int, routes: list[int], store: Path) -> str:
    """``template`` (a deploy/ config) rewritten for one loopback node."""
    text = re.sub(r"(?m)^server_name:.*$", f"server_name: {name}", template)
    text = re.sub(r"(?m)^listen:.*$", f"listen: 127.0.0.1:{port}", text)
    text = re.sub(r"(?m)^http:.*$", "", text)
    text = re.sub(r'store_dir:\s*"[^"]*"', f'store_dir: "{store}"', text)
    text = re.sub(r"(?m)^(\s+)listen:\s*0\.0\.0\.0:6222", rf"\g<1>listen: 127.0.0.1:{cluster_port}", text)
    route_lines = "\n".join(f"    nats-route://127.0.0.1:{route}" for route in routes)
    text, count = re.subn(r"routes:\s*\[[^\]]*\]", f"routes: [\n{route_lines}\n  ]", text)
    assert count == 1, "the template has no routes block"
    return text


@dataclass
class ClusterNode:
    name: str
    port: int
    cluster_port: int
    directory: Path
    routes: list[int]
    template: Path = CLUSTER_TEMPLATE
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "node.conf"
        config.write_text(
            node_config(
                self.template.read_text(),
                name=self.name,
                port=self.port,
                cluster_port=self.cluster_port,
                routes=self.routes,
                store=self.directory / "jetstream",
            )
        )
        with open(self.directory / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(find_nats_server_binary()), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self.process

        def ready() -> bool | None:
            if process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {(self.directory / 'server.log').read_text()[-2000:]}")
            return True if port_accepts("127.0.0.1", self.port) else None

        wait_until(ready, timeout_s=20, what=f"cluster node {self.name} to accept clients")

    def kill(self) -> None:
        """``kill -9``: no shutdown, no goodbye to the cluster."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def start_cluster_node(directory: Path, name: str, *, routes: list[int]) -> ClusterNode:
    """One started node with fresh ports, routing to the cluster ports ``routes``."""
    node = ClusterNode(name, closed_port(), closed_port(), directory / name, routes)
    node.start()
    return node


def plan_cluster(directory: Path, size: int = 3) -> list[ClusterNode]:
    """``size`` nodes (not started) whose routes name each other's cluster ports."""
    cluster_ports = [closed_port() for _ in range(size)]
    return [
        ClusterNode(f"n{index + 1}", closed_port(), cluster_ports[index], directory / f"n{index + 1}", cluster_ports)
        for index in range(size)
    ]


@dataclass
class ConfiguredServer:
    """A single nats-server started from a config file on a loopback port (see :func:`start_configured_server`)."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


def loopback_config(template: str, *, port: int, store: Path) -> str:
    """A deploy/ config with its client port on 127.0.0.1:``port``, no monitoring port, storing under ``store``."""
    text = re.sub(r"(?m)^listen:.*$", f"listen: 127.0.0.1:{port}", template)
    text = re.sub(r"(?m)^http:.*$", "", text)
    return re.sub(r'store_dir:\s*"[^"]*"', f'store_dir: "{store}"', text)


def start_configured_server(
    directory: Path, config: str, *, port: int, env: dict[str, str] | None = None
) -> ConfiguredServer:
    """Start nats-server with ``config`` (already listening on ``port``) and wait until it accepts clients."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "server.conf"
    path.write_text(config)
    with open(directory / "server.log", "ab") as log:
        process = subprocess.Popen(
            [str(find_nats_server_binary()), "-c", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def ready() -> bool | None:
        if process.poll() is not None:
            raise AssertionError(f"nats-server exited: {(directory / 'server.log').read_text()[-2000:]}")
        return True if port_accepts("127.0.0.1", port) else None

    wait_until(ready, timeout_s=20, what="the configured nats-server to accept clients")
    return ConfiguredServer(process, port, directory)
