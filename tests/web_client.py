"""A real ``aethergraph serve``/``dev``/``worker`` process for the HTTP API tests, and plain HTTP/SSE clients.

Everything binds to loopback. ``port 0`` lets the server pick a free port; the
URL it prints on its first stdout line is where the tests talk to it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import REPO_ROOT, stop_process, subprocess_env

GRAPHS = str(REPO_ROOT / "tests" / "procs" / "web_graphs.py")


@dataclass
class ServerProc:
    process: subprocess.Popen[str]
    url: str
    stderr: list[str] = field(default_factory=list)

    def stop(self) -> None:
        stop_process(self.process)  # type: ignore[arg-type]


def _drain(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def launch(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0) -> ServerProc:
    """Start ``python -m aethergraph ARGS`` and wait for the URL it prints (``timeout_s`` is a hang guard)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "aethergraph", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or subprocess_env(),
        cwd=REPO_ROOT,
    )
    stderr: list[str] = []
    threading.Thread(target=_drain, args=(process.stderr, stderr), daemon=True).start()
    found: list[str] = []

    def read_url() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if " at http://" in line:
                found.append(line.rsplit(" ", 1)[-1].strip())
                return

    reader = threading.Thread(target=read_url, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not found:
        stop_process(process)  # type: ignore[arg-type]
        raise AssertionError(f"`aethergraph {' '.join(args)}` printed no URL:\n{''.join(stderr)}")
    return ServerProc(process=process, url=found[0], stderr=stderr)


def launch_worker(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aethergraph", "worker", GRAPHS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env or subprocess_env(),
        cwd=REPO_ROOT,
    )


def call(
    url: str, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """One request; returns (status, decoded JSON body or text, headers)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(urllib.parse.urljoin(url, path), data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, got = exc.read(), exc.code, dict(exc.headers)
    text = raw.decode()
    try:
        return status, json.loads(text), got
    except ValueError:
        return status, text, got


def get(url: str, path: str, **kwargs: Any) -> Any:
    status, body, _ = call(url, "GET", path, **kwargs)
    assert status == 200, f"GET {path}: {status} {body}"
    return body


def wait_status(url: str, run_id: str, wanted: set[str], *, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll an external server until the run's status is one of ``wanted`` (``timeout_s`` is a hang guard)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body, _ = call(url, "GET", f"/api/runs/{run_id}")
        if status == 200 and body["status"] in wanted:
            return dict(body)
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} never reached {wanted}: {status} {body}")
        time.sleep(0.05)


@dataclass
class SseMessage:
    id: int | None
    event: str
    data: Any


@contextlib.contextmanager
def sse(url: str, run_id: str, *, last_event_id: int | None = None) -> Iterator[Iterator[SseMessage]]:
    """Open the run's live event stream; yields an iterator of its messages (comments skipped)."""
    with sse_at(url, f"/api/runs/{run_id}/events", last_event_id=last_event_id) as messages:
        yield messages


@contextlib.contextmanager
def sse_at(url: str, path: str, *, last_event_id: int | None = None) -> Iterator[Iterator[SseMessage]]:
    """Open the live event stream at ``path``; yields an iterator of its messages (comments skipped)."""
    parsed = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("content-type", "").startswith("text/event-stream")

    def messages() -> Iterator[SseMessage]:
        fields: dict[str, str] = {}
        while True:
            line = response.fp.readline().decode()
            if not line:
                return
            line = line.rstrip("\n")
            if line == "":
                if "data" in fields:
                    yield SseMessage(
                        id=int(fields["id"]) if "id" in fields else None,
                        event=fields.get("event", "message"),
                        data=json.loads(fields["data"]),
                    )
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value

    try:
        yield messages()
    finally:
        conn.close()


def read_until(messages: Iterator[SseMessage], event_type: str) -> list[SseMessage]:
    """Journal messages up to and including the first whose event is ``event_type``."""
    got: list[SseMessage] = []
    for message in messages:
        if message.event == "message":
            got.append(message)
            if message.data["type"] == event_type:
                return got
    raise AssertionError(f"the stream ended before {event_type}: {[m.data['type'] for m in got]}")


def workspace_env(workspace: Path, **extra: str) -> dict[str, str]:
    return subprocess_env(AETHERGRAPH_WORKSPACE=str(workspace), **extra)


def poll(url: str, path: str, ready: Any, *, timeout_s: float = 60.0) -> Any:
    """GET ``path`` until ``ready(body)`` holds (the projections fold just behind the stream; a hang guard)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body, headers = call(url, "GET", path)
        if status == 200 and ready(body, headers):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path} never became ready: {status} {body}")
        time.sleep(0.05)
