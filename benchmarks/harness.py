"""Shared machinery: statistics, figures, isolated servers, CPU accounting, machine description."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from aethergraph.bus.embedded import (
    EmbeddedServer,
    ensure_embedded_server,
    find_nats_server_binary,
    stop_embedded_server,
)
from aethergraph.core.settings import Settings

# The sync_interval a workspace gets when nothing is configured.
DEFAULT_SYNC: str = Settings.model_fields["sync_interval"].default
SYNC_INTERVALS: tuple[str, ...] = tuple(dict.fromkeys((DEFAULT_SYNC, "always")))

# A figure shows p50/p99 over pooled samples only when there are enough samples
# for the p99 to mean something; below that it is left blank.
MIN_SAMPLES_FOR_P99 = 100


# --- statistics -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 1]."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


@dataclass(kw_only=True)
class Figure:
    """One reported number.

    ``per_repeat`` holds one headline value per measured repeat (its p50 for a
    latency, its rate for a throughput); ``median``/``min``/``max`` are over
    those. ``p50``/``p99`` are over every individual sample of every repeat
    pooled, for latencies only.
    """

    benchmark: str
    key: str
    label: str
    unit: str
    sync_interval: str | None
    median: float
    min: float
    max: float
    repeats: int
    per_repeat_n: int
    better: Literal["lower", "higher"] = "lower"
    p50: float | None = None
    p99: float | None = None
    samples: int = 0
    note: str = ""
    per_repeat: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figure:
        return cls(**data)


def latency_figure(
    benchmark: str,
    key: str,
    label: str,
    repeats: Sequence[Sequence[float]],
    *,
    unit: str = "µs",
    scale: float = 1e-3,
    sync_interval: str | None,
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> Figure:
    """A latency figure from per-repeat samples (nanoseconds by default, reported in µs)."""
    scaled = [[value * scale for value in samples] for samples in repeats]
    per_repeat = [median(samples) for samples in scaled]
    pooled = [value for samples in scaled for value in samples]
    return Figure(
        benchmark=benchmark,
        key=key,
        label=label,
        unit=unit,
        sync_interval=sync_interval,
        median=median(per_repeat),
        min=min(per_repeat),
        max=max(per_repeat),
        repeats=len(per_repeat),
        per_repeat_n=len(scaled[0]),
        better="lower",
        p50=median(pooled),
        p99=percentile(pooled, 0.99) if len(pooled) >= MIN_SAMPLES_FOR_P99 else None,
        samples=len(pooled),
        note=note,
        per_repeat=per_repeat,
        extra=extra or {},
    )


def value_figure(
    benchmark: str,
    key: str,
    label: str,
    per_repeat: Sequence[float],
    *,
    unit: str,
    per_repeat_n: int,
    better: Literal["lower", "higher"],
    sync_interval: str | None,
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> Figure:
    """A figure with one value per repeat (a rate, a mean cost per operation, a ratio)."""
    values = list(per_repeat)
    return Figure(
        benchmark=benchmark,
        key=key,
        label=label,
        unit=unit,
        sync_interval=sync_interval,
        median=median(values),
        min=min(values),
        max=max(values),
        repeats=len(values),
        per_repeat_n=per_repeat_n,
        better=better,
        note=note,
        per_repeat=values,
        extra=extra or {},
    )


@dataclass(kw_only=True)
class BenchResult:
    name: str
    title: str
    mode: str
    measured_at: str
    duration_s: float
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)
    # 1-minute load average before and after: other work on the machine skews figures.
    load_avg: list[float] = field(default_factory=list)
    # Machine-wide CPU while it ran: all cores busy % and hypervisor steal %.
    cpu: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["figures"] = [figure.to_json() for figure in self.figures]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchResult:
        data = dict(data)
        data["figures"] = [Figure.from_json(figure) for figure in data["figures"]]
        return cls(**data)


# --- run context ------------------------------------------------------------------


@dataclass(kw_only=True)
class BenchContext:
    """What a benchmark gets: the mode and a way to report progress."""

    quick: bool
    say: Callable[[str], None]

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def rotate(items: Sequence[Any], index: int) -> list[Any]:
    """``items`` rotated by ``index``: interleaved variants take turns going first."""
    shift = index % len(items)
    return [*items[shift:], *items[:shift]]


# --- isolated servers -------------------------------------------------------------


@contextlib.contextmanager
def temp_workspace(prefix: str = "ag-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def isolated_server(sync_interval: str) -> Iterator[tuple[EmbeddedServer, Path]]:
    """A fresh embedded nats-server on its own temporary workspace, stopped afterwards."""
    with temp_workspace() as workspace:
        server = ensure_embedded_server(workspace, sync_interval=sync_interval)
        try:
            yield server, workspace
        finally:
            stop_embedded_server(workspace)


def scrubbed_environ() -> dict[str, str]:
    """This process's environment without any ``AETHERGRAPH_*`` setting."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AETHERGRAPH_")}


# --- CPU accounting ---------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds (user + system) used by this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used by another process, from /proc (tick resolution)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class CpuMeter:
    """Accumulates client and server CPU over measured sections only."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.client_s = 0.0
        self.server_s = 0.0
        self.ops = 0

    @contextlib.contextmanager
    def measure(self, ops: int) -> Iterator[None]:
        client0 = own_cpu_s()
        server0 = process_cpu_s(self.server_pid) if self.server_pid else 0.0
        try:
            yield
        finally:
            self.client_s += own_cpu_s() - client0
            if self.server_pid:
                self.server_s += process_cpu_s(self.server_pid) - server0
            self.ops += ops

    def per_op_us(self) -> tuple[float, float]:
        if not self.ops:
            return float("nan"), float("nan")
        return self.client_s / self.ops * 1e6, self.server_s / self.ops * 1e6

    def describe(self) -> str:
        client, server = self.per_op_us()
        return f"CPU/op: client {client:.0f} µs, nats-server {server:.0f} µs"


# --- machine description ----------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nats_server_version() -> str:
    try:
        out = subprocess.run(
            [str(find_nats_server_binary()), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except Exception as exc:  # noqa: BLE001 - describe the machine even when the binary is missing
        return f"unknown ({exc})"
    return out.stdout.strip().removeprefix("nats-server: ") or "unknown"


def _filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (where the benchmark servers store JetStream)."""
    best, fstype = "", "unknown"
    try:
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                mount_point = parts[1]
                inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) > len(best):
                    best, fstype = mount_point, parts[2]
    except OSError:
        pass
    return fstype


def _git_commit(repo: Path) -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "aethergraph"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}{' (aethergraph/ modified)' if dirty else ''}"


def machine_description(repo: Path) -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "nats_server": _nats_server_version(),
        "nats_py": _version("nats-py"),
        "msgspec": _version("msgspec"),
        "aethergraph": _version("aethergraph"),
        "aethergraph_commit": _git_commit(repo),
        "workspace_filesystem": _filesystem_of(Path(tempfile.gettempdir())),
        "default_sync_interval": DEFAULT_SYNC,
        "sync_intervals_measured": list(SYNC_INTERVALS),
    }


def system_cpu() -> tuple[int, int, int]:
    """Machine-wide (busy, total, steal) jiffies since boot, from /proc/stat."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    steal = fields[7] if len(fields) > 7 else 0
    return total - idle, total, steal


def busy_between(before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, float]:
    """Share of all cores busy, and stolen by the hypervisor, between two ``system_cpu`` readings (%)."""
    total = after[1] - before[1]
    if total <= 0:
        return {}
    return {
        "busy_pct": round((after[0] - before[0]) / total * 100, 1),
        "steal_pct": round((after[2] - before[2]) / total * 100, 1),
    }


def load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
