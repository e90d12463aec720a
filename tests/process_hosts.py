"""Other "hosts" for multi-process tests: each is its own OS process with its own workspace folder.

Hosts share only the NATS server. A process's output goes to files (no pipe
can fill up), and whatever is still running when a test ends is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import subprocess_env, wait_until

__all__ = ["Hosts", "Proc", "lines", "wait_ready"]


@dataclass
class Proc:
    """A subprocess with its output in files and its worker id."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    worker_id: str
    safety_s: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        assert self.popen.wait(timeout=self.safety_s) == -signal.SIGKILL

    def stop(self) -> int:
        """SIGTERM, then the exit status (a worker stops serving and exits cleanly)."""
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=self.safety_s)

    def exit_code(self) -> int:
        return self.popen.wait(timeout=self.safety_s)


class Hosts:
    """Starts ``aethergraph`` processes serving ``graphs``, each its own host, and kills what is left at the end.

    ``env`` is added to every process's environment; ``drop_env`` names
    variables of the test process that must not leak into them.
    """

    def __init__(
        self,
        root: Path,
        graphs: Path,
        *,
        prefix: str,
        safety_s: float,
        env: Mapping[str, str] | None = None,
        drop_env: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.graphs = graphs
        self.prefix = prefix
        self.safety_s = safety_s
        self._env = dict(env or {})
        self._drop_env = tuple(drop_env)
        self.procs: list[Proc] = []

    def env(self, name: str, **extra: str) -> tuple[dict[str, str], str]:
        worker_id = f"{self.prefix}-{name}-{os.urandom(3).hex()}"
        env = subprocess_env(
            AETHERGRAPH_WORKSPACE=str(self.root / f"host-{name}"),
            AETHERGRAPH_WORKER_ID=worker_id,
            AETHERGRAPH_CONSOLE_INPUT="never",
            COLUMNS="200",
            **self._env,
        )
        for key in self._drop_env:
            env.pop(key, None)
        env.update(extra)
        return env, env["AETHERGRAPH_WORKER_ID"]

    def spawn(self, name: str, args: Sequence[str], **extra: str) -> Proc:
        env, worker_id = self.env(name, **extra)
        out, err = self.root / f"{name}.out", self.root / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                [sys.executable, "-m", "aethergraph", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        proc = Proc(name=name, popen=popen, out=out, err=err, worker_id=worker_id, safety_s=self.safety_s)
        self.procs.append(proc)
        return proc

    def worker(self, name: str, **extra: str) -> Proc:
        return self.spawn(name, ["worker", str(self.graphs)], **extra)

    def driver(self, name: str, graph: str, inputs: dict[str, Any], run_id: str, *more: str, **extra: str) -> Proc:
        """``aethergraph run`` of a graph that does not wait (it is killed at a hold point)."""
        args = ["run", f"{self.graphs}:{graph}", "--inputs-json", json.dumps(inputs), "--run-id", run_id, "--json"]
        return self.spawn(name, [*args, *more], **extra)

    def cli(self, name: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env, _ = self.env(name, **extra)
        return subprocess.run(
            [sys.executable, "-m", "aethergraph", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.safety_s,
            check=False,
        )

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(timeout=self.safety_s)


def wait_ready(*workers: Proc) -> None:
    """Wait until each worker logged that it serves (it watches deaths, commands and nodes from then on)."""
    for worker in workers:

        def ready(worker: Proc = worker) -> bool | None:
            if worker.popen.poll() is not None:
                raise AssertionError(f"worker {worker.name} exited with {worker.popen.returncode}:\n{worker.output()}")
            return True if f"worker {worker.worker_id} ready" in worker.output() else None

        wait_until(ready, timeout_s=worker.safety_s, what=f"worker {worker.name} to be ready")


def lines(log: Path) -> list[list[str]]:
    """A count file's lines, split into words."""
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []
