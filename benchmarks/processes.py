"""Separate processes for the durable-execution benchmarks: workers, drivers, and their memory.

Every process gets a scrubbed environment with ``AETHERGRAPH_NATS_URL`` set
to the benchmark's own nats-server and its own temporary
``AETHERGRAPH_WORKSPACE``, runs from the repository root (so
``benchmarks.graphs_durable`` imports), and writes its output to a log file in
the benchmark's scratch folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from .harness import scrubbed_environ

REPO = Path(__file__).resolve().parent.parent
GRAPHS_MODULE = "benchmarks.graphs_durable"
T = TypeVar("T")


def process_env(nats_url: str, workspace: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment on the benchmark's server, with its own workspace."""
    workspace.mkdir(parents=True, exist_ok=True)
    env = scrubbed_environ()
    env["AETHERGRAPH_NATS_URL"] = nats_url
    env["AETHERGRAPH_WORKSPACE"] = str(workspace)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def poll(check: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.002) -> T:
    """Poll ``check`` until it returns something other than ``None`` (for other processes only)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


@dataclass(eq=False)
class Proc:
    """A started subprocess and the file its output goes to."""

    process: subprocess.Popen[str]
    log_path: Path
    log: IO[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        self.log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def check_alive(self, what: str) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{what} (pid {self.pid}) exited with {self.process.returncode}; its log ends with:\n"
                + self.log_text()[-3000:]
            )

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM and wait (the worker lets its runs end or suspend); SIGKILL if it does not exit."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=timeout_s)
        finally:
            self.log.close()

    def kill9(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def spawn(
    args: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    stdin: int | None = subprocess.DEVNULL,
    stdout_pipe: bool = False,
) -> Proc:
    log = open(log_path, "a")  # noqa: SIM115 - closed by Proc.stop
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE if stdout_pipe else log,
        stderr=log,
        text=True,
        bufsize=1,
    )
    return Proc(process=process, log_path=log_path, log=log)


def start_worker(nats_url: str, scratch: Path, name: str, **extra_env: str) -> Proc:
    """``python -m aethergraph worker benchmarks.graphs_durable``, waited for until it says it is ready."""
    env = process_env(nats_url, scratch / f"{name}-workspace", **extra_env)
    proc = spawn(["-m", "aethergraph", "worker", GRAPHS_MODULE], env, scratch / f"{name}.log")

    def ready() -> bool | None:
        proc.check_alive("the worker")
        return True if " ready" in proc.log_text() else None

    try:
        poll(ready, timeout_s=60, what="the worker to be ready", interval_s=0.01)
    except BaseException:
        proc.stop()
        raise
    return proc


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from ``VmRSS`` in /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
