"""3. Cold start: fresh processes importing aethergraph and making sure the embedded server is up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from aethergraph.bus.embedded import ensure_embedded_server, stop_embedded_server

from .harness import DEFAULT_SYNC, BenchContext, Figure, latency_figure, rotate, scrubbed_environ, temp_workspace

NAME = "cold_start"
TITLE = "3. Cold start"

_TIMED_START = """
import json, time
t0 = time.perf_counter()
import aethergraph
t1 = time.perf_counter()
server = aethergraph.start_server()
t2 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "ensure_ms": (t2 - t1) * 1e3, "started_here": server.started_here}))
"""

_FIRST_RUN = """
import aethergraph

@aethergraph.tool(outputs=["value"])
def one(x: int) -> int:
    return x + 1

assert aethergraph.run(one, {"x": 1}) == {"value": 2}
"""

_BUS_DEPS = "import asyncio, msgspec, nats, nats.js"
_SETTINGS_DEPS = "import pydantic_settings"

VARIANTS = {
    "python": ("`python -c pass` (interpreter floor)", "pass", None),
    "import": ('`python -c "import aethergraph"`', "import aethergraph", None),
    "import_deps_bus": ("import of the bus dependencies alone: asyncio, msgspec, nats, nats.js", _BUS_DEPS, None),
    "import_deps_settings": ("import of pydantic_settings alone (what `Settings` is built on)", _SETTINGS_DEPS, None),
    "start_fresh": ("import + `start_server()`, no server running (starts one)", _TIMED_START, "fresh"),
    "start_reuse": ("import + `start_server()`, server already running (reuse)", _TIMED_START, "reuse"),
    "first_run_fresh": ("import + `aethergraph.run(tool)`, no server running", _FIRST_RUN, "fresh"),
    "first_run_reuse": ("import + `aethergraph.run(tool)`, server already running", _FIRST_RUN, "reuse"),
}
TARGETED = ("import", "start_fresh", "start_reuse")


def _spawn(code: str, workspace: Path | None, cwd: Path) -> tuple[float, dict[str, float]]:
    env = scrubbed_environ()
    if workspace is not None:
        env["AETHERGRAPH_WORKSPACE"] = str(workspace)
        env["AETHERGRAPH_SYNC_INTERVAL"] = DEFAULT_SYNC
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    elapsed_ms = (time.perf_counter() - started) * 1e3
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start subprocess failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    detail: dict[str, float] = {}
    lines = proc.stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        detail = json.loads(lines[-1])
    return elapsed_ms, detail


def _one(variant: str, scratch: Path, reuse_workspace: Path, index: int) -> tuple[float, dict[str, float]]:
    _label, code, server = VARIANTS[variant]
    if server == "reuse":
        return _spawn(code, reuse_workspace, scratch)
    if server == "fresh":
        workspace = scratch / f"fresh-{variant}-{index}"
        try:
            elapsed, detail = _spawn(code, workspace, scratch)
        finally:
            stop_embedded_server(workspace)
        if detail and not detail.get("started_here", True):
            raise RuntimeError("the 'no server running' variant reused a server")
        return elapsed, detail
    return _spawn(code, None, scratch)


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    repeats = ctx.pick(15, 3)
    names = list(VARIANTS)
    wall: dict[str, list[float]] = {name: [] for name in names}
    details: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with temp_workspace("ag-bench-cold-") as scratch:
        reuse_workspace = scratch / "shared"
        ensure_embedded_server(reuse_workspace, sync_interval=DEFAULT_SYNC)
        try:
            ctx.say("warm-up (one of each, page cache)")
            for name in names:
                _one(name, scratch, reuse_workspace, -1)
            for index in range(repeats):
                ctx.say(f"repeat {index + 1}/{repeats}: {len(names)} fresh subprocesses")
                for name in rotate(names, index):
                    elapsed, detail = _one(name, scratch, reuse_workspace, index)
                    wall[name].append(elapsed)
                    details[name].append(detail)
        finally:
            stop_embedded_server(reuse_workspace)

    figures = []
    for name in names:
        label = VARIANTS[name][0]
        note = "target ≤300 ms" if name in TARGETED else ""
        extra: dict[str, float] = {}
        if details[name] and details[name][0]:
            imports = sorted(detail["import_ms"] for detail in details[name])
            ensures = sorted(detail["ensure_ms"] for detail in details[name])
            extra = {"import_ms_median": imports[len(imports) // 2], "ensure_ms_median": ensures[len(ensures) // 2]}
            breakdown = (
                f"in-process: import {extra['import_ms_median']:.0f} ms + server {extra['ensure_ms_median']:.0f} ms"
            )
            note = f"{breakdown}; {note}" if note else breakdown
        figures.append(
            latency_figure(
                NAME,
                name,
                label,
                [[value] for value in wall[name]],
                unit="ms",
                scale=1.0,
                sync_interval=DEFAULT_SYNC if VARIANTS[name][2] else None,
                note=note,
                extra=extra,
            )
        )
    notes = [
        "Wall time around `subprocess.run([python, '-c', ...])` in the parent: interpreter start, imports, the "
        "work, and interpreter exit.",
        "'No server running' variants get a new empty workspace each repeat; its server is stopped (SIGTERM, "
        "waited for) after the repeat. 'Reuse' variants share one workspace whose server the suite started.",
        "`aethergraph.run(tool)` additionally connects, declares the streams and journals a one-step run "
        "(three acknowledged events).",
    ]
    return figures, notes
