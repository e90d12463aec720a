"""Context services across real OS processes, each its own host (workspace folder), sharing only NATS.

* a run that submitted a training job and then waited durably is continued by a
  worker in another process, and ``submit`` is not called again;
* artifacts saved in one process load in another (JetStream Object Store);
* kv values written in one process are read in another.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import START_AND_LEAVE, run_python, subprocess_env, worker_process

import aethergraph
from aethergraph.host.process import ProcessHost

pytestmark = pytest.mark.slow

GRAPHS = Path(__file__).resolve().parent / "procs" / "svc_graphs.py"
SAFETY_S = 60  # an upper bound for anything to happen, never a measurement

RUN_TO_END = """
import asyncio, json, sys
import aethergraph

async def main():
    try:
        return await aethergraph.run_async(sys.argv[1], json.loads(sys.argv[2]))
    finally:
        await aethergraph.close_runtime()

print(json.dumps(asyncio.run(main())))
"""


def host_env(root: Path, name: str) -> dict[str, str]:
    return subprocess_env(
        AETHERGRAPH_WORKSPACE=str(root / f"host-{name}"),
        AETHERGRAPH_WORKER_ID=f"svc-{name}-{os.urandom(3).hex()}",
        AETHERGRAPH_CONSOLE_INPUT="never",
    )


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``aethergraph worker tests/procs/svc_graphs.py`` on host B, ready to serve."""
    log = tmp_path / "worker-b.log"
    with worker_process(GRAPHS, host_env(tmp_path, "b"), log) as proc:
        yield proc, log


async def test_a_waiting_run_resumed_on_another_host_does_not_submit_again(
    runtime: ProcessHost, tmp_path: Path, worker: tuple[subprocess.Popen[bytes], Path]
) -> None:
    count = tmp_path / "submits.log"
    key = f"svc:{os.urandom(4).hex()}"
    run_id = f"svc{os.urandom(6).hex()}"
    inputs = {"log": str(count), "key": key}
    status = run_python(
        START_AND_LEAVE, f"{GRAPHS}:svc_train_then_wait", json.dumps(inputs), run_id, env=host_env(tmp_path, "a")
    )
    assert status == "waiting"
    [(what, host_a)] = [line.split() for line in count.read_text().splitlines()]
    assert what == "submit"

    outcome = await aethergraph.resume(run_id, {"loss": 0.125}, timeout=SAFETY_S)
    assert outcome is not None and outcome.status == "accepted"
    handle = await aethergraph.get_run(run_id)
    outputs = await handle.result(timeout=SAFETY_S)

    proc, _ = worker
    assert outputs["host"] == proc.pid != int(host_a)  # finished on host B
    assert outputs["job_id"] == "job-3" and outputs["loss"] == 0.125
    assert count.read_text().splitlines() == [f"submit {host_a}"]  # B replayed submit from the journal
    assert outputs["notes"] == "notes for job-3"  # saved on A, loaded on B
    assert outputs["kv"] == {"job": "job-3", "saved_in": "the first process"}  # written on A, read on B


async def test_artifacts_and_kv_written_by_one_process_are_read_by_another(
    runtime: ProcessHost, tmp_path: Path
) -> None:
    key = f"svc:{os.urandom(4).hex()}"
    text = f"shared {os.urandom(4).hex()}"
    saved = run_python(
        RUN_TO_END, f"{GRAPHS}:svc_save", json.dumps({"text": text, "key": key}), env=host_env(tmp_path, "a")
    )
    assert saved["uri"].startswith("nats-os://")
    loaded = run_python(
        RUN_TO_END, f"{GRAPHS}:svc_load", json.dumps({"uri": saved["uri"], "key": key}), env=host_env(tmp_path, "b")
    )
    assert loaded == {"text": text, "kv": text}
    entry = await runtime.service_backends.kv.get(key)  # and this process sees the value too
    assert entry is not None and json.loads(entry.value) == text
