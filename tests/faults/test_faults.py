"""Durability checked from outside, under faults: kill -9 storms, nats-server restarts, stray messages, pauses.

Each test is one trial of ``harness.run_trial``: its own nats-server and
processes, a fault while graph_fn chains and a static fan-out progress, then
the checks of the harness docstring (every run completes with the right
outputs; no step the body saw committed is missing from the journal; no
committed step runs again; executions bounded by the faults). The sizes are
small so the directory stays well under five minutes on two cores;
``python -m benchmarks.faults`` runs larger trials and prints the table.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from harness import Report, Size, run_trial

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SMALL = Size(chains=3, steps=8, step_sleep_s=0.25, fans=1, fan_width=6, fan_sleep_s=0.4, settle_s=45, stall_s=10)


def check(report: Report) -> None:
    print(report.summary())
    assert report.runs and not report.problems(), report.summary()


async def test_worker_kill_storm(tmp_path: Path) -> None:
    """kill -9 the driver, then random workers every 0.8-1.6 s for 6 s, each replaced; the runs finish."""
    size = replace(SMALL, steps=12, step_sleep_s=0.4, fans=2, fan_sleep_s=2.0, workers=3)
    check(await run_trial("worker-kill-storm", tmp_path, size=size, seed=1))


@pytest.mark.parametrize("sync_interval", ["1s", "always"])
async def test_nats_server_kill_9_and_restart(tmp_path: Path, sync_interval: str) -> None:
    """kill -9 nats-server six times mid-run (a step every ~25 ms), down 0.2-1.5 s each, restarted on its port
    and store."""
    size = replace(SMALL, chains=5, steps=250, step_sleep_s=0.02, workers=1, server_kills=6, server_gap_s=(0.5, 1.0))
    check(await run_trial("nats-server-restart", tmp_path, size=size, sync_interval=sync_interval, seed=2))


async def test_stray_and_malformed_messages_on_every_subject(tmp_path: Path) -> None:
    """Garbage and well-formed-but-foreign messages on events, commands, leases, work queue and reports."""
    size = replace(SMALL, step_sleep_s=0.6, fan_sleep_s=3.0)  # the runs outlast the 6 s of stray messages
    check(await run_trial("stray-messages", tmp_path, size=size, seed=3))


async def test_driver_paused_past_its_lease(tmp_path: Path) -> None:
    """SIGSTOP the driver for 3 s (lease 1 s): a worker takes its runs over; SIGCONT; nothing runs twice."""
    report = await run_trial("driver-paused-past-lease", tmp_path, size=SMALL, seed=4)
    check(report)
    assert report.takeovers, "no worker took a run over from the paused driver"


async def test_everything_at_once(tmp_path: Path) -> None:
    """The kill storm, five nats-server restarts and stray messages together, for 10 s."""
    size = replace(
        SMALL, chains=6, steps=60, step_sleep_s=0.1, fan_sleep_s=2.0, workers=3, fault_s=10.0, server_kills=5
    )
    check(await run_trial("everything-at-once", tmp_path, size=size, seed=5))
