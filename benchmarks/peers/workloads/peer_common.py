"""What every peer's workload script shares. Standard library only: it runs in each peer's own venv.

A workload script is started as ``python peer_<name>.py <workload> '<json params>'``
and prints exactly one line starting with ``RESULT `` followed by a JSON object.
Everything else it prints (warnings, logs) is ignored by the runner.

Step numbering is the same everywhere: a chain computes ``x -> x + 1`` from
``x = 0``, so the step that receives ``x`` is step ``x + 1``. In the recovery
workload (W5) every execution of a step appends ``"<pid> <step>"`` to a side
file, and the first execution of step ``kill_at + 1`` kills its own process
with SIGKILL: steps 1..kill_at have completed (and, in a durable engine, been
committed) and step ``kill_at + 1`` is in flight.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

RESULT_PREFIX = "RESULT "
KILL_ENV = "PEER_BENCH_KILL_AT"  # set in the crashing process only
SIDE_ENV = "PEER_BENCH_SIDE_FILE"


def params() -> tuple[str, dict[str, Any]]:
    workload = sys.argv[1]
    return workload, json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def now_ns() -> int:
    return time.perf_counter_ns()


def wall_ns() -> int:
    """Wall clock: comparable between processes of one machine."""
    return time.time_ns()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def settled_rss(settle_s: float = 0.5) -> int:
    """RSS after a short pause and two garbage collections (sync code: sleeps the thread)."""
    time.sleep(settle_s)
    gc.collect()
    gc.collect()
    return rss_bytes()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def side_step(step: int) -> None:
    """Record one execution of ``step`` (W5), and die at the configured step in the crashing process."""
    path = os.environ.get(SIDE_ENV)
    if not path:
        return
    with open(path, "a") as side:
        side.write(f"{os.getpid()} {step}\n")
    kill_at = os.environ.get(KILL_ENV)
    if kill_at and step == int(kill_at) + 1:
        os.kill(os.getpid(), signal.SIGKILL)


def timed_runs(count: int, body: Callable[[], object]) -> list[float]:
    """Wall seconds of ``count`` calls of a synchronous ``body``."""
    out = []
    for _ in range(count):
        started = time.perf_counter()
        body()
        out.append(time.perf_counter() - started)
    return out


async def timed_awaits(count: int, make: Callable[[], Awaitable[object]]) -> list[float]:
    """Wall seconds of ``count`` awaits of ``make()``, one after another."""
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await make()
        out.append(time.perf_counter() - started)
    return out


def save_left(workdir: str, ids: list[str]) -> None:
    """W4: the workflows the holder leaves suspended, for another process to resume."""
    Path(workdir, "left.json").write_text(json.dumps(ids))


def load_left(workdir: str) -> list[str]:
    return json.loads(Path(workdir, "left.json").read_text())


def summary_ms(latencies_ns: Sequence[int]) -> dict[str, float]:
    values = [value / 1e6 for value in latencies_ns]
    return {"p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99), "n": len(values)}
