"""The peer benchmarks' harness, on AetherGraph and the asyncio baseline at tiny sizes.

No peer venv is created here (LangGraph and DBOS need PyPI); only the
workloads that run on this interpreter. Nothing is timed against a limit: the
checks are the shape of the results and their correctness (W4's workflows all
resumed, by another process too; W5's completed steps not run again).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: `benchmarks` is not installed

from benchmarks.peers import report, runner

pytestmark = pytest.mark.slow
SIZES = runner.TINY
LOCAL_PEERS = ("aethergraph", "asyncio")


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for name in runner.WORKLOADS:
        out[name] = {}
        for key in LOCAL_PEERS:
            peer = runner.PEERS[key]
            python = runner.interpreter(peer)
            assert python == Path(sys.executable), "the local peers must not need a venv"
            out[name][key] = runner.run_repeat(peer, python, name, SIZES)
    return out


def test_sequential_and_floor(results: dict[str, dict[str, dict]]) -> None:
    ours = results["W1"]["aethergraph"]
    assert ours["settings"]["sync_interval"] == "1s"
    for key in ("per_step_us", "steps_per_s", "floor_us", "per_step_over_floor"):
        assert ours["sample"][key] > 0
    baseline = results["W1"]["asyncio"]["sample"]
    assert "floor_us" not in baseline and baseline["per_step_us"] > 0


def test_fanout_and_concurrency(results: dict[str, dict[str, dict]]) -> None:
    for key in LOCAL_PEERS:
        assert results["W2"][key]["sample"]["run_ms"] > 0
        sample = results["W3"][key]["sample"]
        assert sample["steps_per_s"] == pytest.approx(sample["workflows_per_s"] * SIZES.wf_steps)
    # AetherGraph also ran the fan-out as a @graphify static graph (its result checked in the workload).
    assert results["W2"]["aethergraph"]["sample"]["static_run_ms"] > 0
    assert "static_run_ms" not in results["W2"]["asyncio"]["sample"]


def test_suspended_workflows_resume_here_and_in_another_process(results: dict[str, dict[str, dict]]) -> None:
    ours = results["W4"]["aethergraph"]["sample"]
    assert ours["other_supported"] is True
    assert ours["other_process_ok"] == SIZES.other  # the holder had exited: another process finished them
    assert ours["rss_suspended_mib"] > 0 and ours["single_p50_ms"] > 0 and ours["burst_total_s"] > 0
    baseline = results["W4"]["asyncio"]
    assert baseline["sample"]["other_supported"] is False and baseline["sample"]["other_process_ok"] == 0
    assert baseline["other_note"]


def test_recovery_does_not_rerun_committed_steps(results: dict[str, dict[str, dict]]) -> None:
    ours = results["W5"]["aethergraph"]["sample"]
    assert ours["steps_before_kill"] == SIZES.kill_at + 1  # 1..kill_at done, kill_at + 1 in flight
    assert ours["rerun_steps_1_to_kill"] == 0
    assert ours["steps_after_restart"] == SIZES.steps - SIZES.kill_at - 1 + ours["rerun_in_flight"]
    baseline = results["W5"]["asyncio"]["sample"]
    assert baseline["rerun_steps_1_to_kill"] == SIZES.kill_at  # no durability: everything again


def test_report_renders(results: dict[str, dict[str, dict]]) -> None:
    data = {
        "workloads": {
            name: {
                "title": runner.WORKLOADS[name][0],
                "peers": {key: {"summary": report.summarise([out["sample"]])} for key, out in peers.items()},
            }
            for name, peers in results.items()
        },
        "settings": {key: results["W1"][key]["settings"] for key in LOCAL_PEERS},
    }
    checks = report.target_checks(data)
    assert any(check.get("peer") == "aethergraph" for check in checks)  # the step / ack ratio
    for name in runner.WORKLOADS:
        table = report.workload_table(name, data["workloads"][name])
        assert len(table) == 2 + len(LOCAL_PEERS)
