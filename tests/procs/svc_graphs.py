"""Graphs and services for tests/test_services_processes.py, imported by subprocesses only.

Importing this module registers the ``trainer`` service, as a worker's
bootstrap would. Every real ``submit`` appends ``submit <pid>`` to the count
file named in the spec, so the test counts executions from outside.
"""

from __future__ import annotations

import os
from typing import Any

from aethergraph import Wait, graph_fn
from aethergraph.services.runtime.base import Service
from aethergraph.services.runtime.registry import register_context_service


def note_submit(log: str) -> None:
    with open(log, "a") as f:
        f.write(f"submit {os.getpid()}\n")


class Trainer(Service):
    async def submit(self, spec: dict) -> str:
        note_submit(spec["log"])
        return f"job-{spec['epochs']}"


register_context_service("trainer", Trainer())


@graph_fn(name="svc_train_then_wait", outputs=["job_id", "loss", "notes", "kv", "host"])
async def svc_train_then_wait(log: str, key: str, *, context: Any) -> dict:
    job_id = await context.trainer().submit({"epochs": 3, "log": log})
    notes = await context.artifacts().save_text(f"notes for {job_id}", kind="notes")
    await context.kv().set(key, {"job": job_id, "saved_in": "the first process"})
    done = await context.wait(
        Wait(kind="training", prompt=f"job {job_id}", schema={"type": "object", "required": ["loss"]})
    )
    # Live again, in whichever process resumed the run:
    return {
        "job_id": job_id,
        "loss": done["loss"],
        "notes": await context.artifacts().load_text(notes.uri),
        "kv": await context.kv().get(key),
        "host": os.getpid(),
    }


@graph_fn(name="svc_save", outputs=["uri"])
async def svc_save(text: str, key: str, *, context: Any) -> dict:
    art = await context.artifacts().save_text(text, kind="shared")
    await context.kv().set(key, text)
    return {"uri": art.uri}


@graph_fn(name="svc_load", outputs=["text", "kv"])
async def svc_load(uri: str, key: str, *, context: Any) -> dict:
    return {"text": await context.artifacts().load_text(uri), "kv": await context.kv().get(key)}
