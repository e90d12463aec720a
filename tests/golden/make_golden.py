"""Write tests/golden/events.jsonl: one encoded sample per event type.

Run once when an event type is added (``python tests/golden/make_golden.py``)
and commit the result. The tests read the committed file and never regenerate
it, so a change to the encoding of an existing tag makes them fail.
Existing lines must never be edited: append the sample of a new tag instead
(this script keeps the lines already in the file and adds missing tags).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aethergraph.core.wire.codec import encode_event
from aethergraph.core.wire.events import EVENT_TYPES

GOLDEN = Path(__file__).with_name("events.jsonl")

RUN_ID = "0mb4x2k9qabcdefghijkl"
COMMON: dict[str, Any] = {"run_id": RUN_ID, "ts": 1_764_000_000_000_000, "worker": "host-a-4242"}

# Every field set to a non-default value, so that decoding proves each one is read.
SAMPLES: dict[str, dict[str, Any]] = {
    "run.started": {
        "seq": 1,
        "parent": None,
        "node_id": None,
        "graph_id": "demo",
        "inputs": {"x": 21, "tags": ["a", "b"]},
        "parent_run_id": "0mb4x2k9qparentrun0001",
        "parent_node_id": "root",
    },
    "run.claimed": {
        "seq": 5,
        "parent": 4,
        "node_id": None,
        "epoch": 5,
        "reason": "takeover",
        "previous_worker": "host-a-4242",
    },
    "run.completed": {"seq": 9, "parent": 8, "node_id": None, "outputs": {"answer": 42, "nested": {"ok": True}}},
    "run.failed": {
        "seq": 9,
        "parent": 8,
        "node_id": None,
        "error_type": "ValueError",
        "message": "x must be positive",
        "failed_node_id": "analyze_2",
    },
    "run.cancelled": {"seq": 5, "parent": 4, "node_id": None, "reason": "cancelled by operator"},
    "node.ready": {
        "seq": 2,
        "parent": 1,
        "node_id": "fetch_1",
        "tool": "fetch",
        "args": {"url": "https://example.org"},
        "attempt": 2,
        "root_run_id": "0mb4x2k9qparentrun0001",
        "timeout_s": 30.0,
    },
    "node.skipped": {"seq": 4, "parent": 3, "node_id": "report_1", "reason": "upstream_failed", "upstream": "fetch_1"},
    "node.started": {"seq": 2, "parent": 1, "node_id": "fetch_1", "tool": "fetch", "attempt": 2},
    "node.completed": {"seq": 3, "parent": 2, "node_id": "fetch_1", "outputs": {"body": "hello"}, "attempt": 2},
    "node.failed": {
        "seq": 3,
        "parent": 2,
        "node_id": "fetch_1",
        "error_type": "TimeoutError",
        "message": "no answer",
        "attempt": 3,
    },
    "tool.called": {
        "seq": 2,
        "parent": 1,
        "node_id": "analyze_1",
        "tool": "analyze",
        "args": {"x": 21},
        "args_digest": "0123456789abcdef01234567",
    },
    "tool.returned": {
        "seq": 3,
        "parent": 2,
        "node_id": "analyze_1",
        "tool": "analyze",
        "outputs": {"val": 42},
        "duration_us": 1234,
    },
    "tool.failed": {
        "seq": 3,
        "parent": 2,
        "node_id": "analyze_1",
        "tool": "analyze",
        "error_type": "builtins.KeyError",
        "message": "'val'",
        "duration_us": 77,
    },
    "service.called": {
        "seq": 4,
        "parent": 3,
        "node_id": "root",
        "service": "kv",
        "method": "get",
        "args": ["key", 1],
        "kwargs": {"default": None},
        "args_digest": "fedcba9876543210fedcba98",
    },
    "service.returned": {
        "seq": 5,
        "parent": 4,
        "node_id": "root",
        "service": "kv",
        "method": "get",
        "result": {"v": [1, 2]},
        "duration_us": 55,
    },
    "service.failed": {
        "seq": 5,
        "parent": 4,
        "node_id": "root",
        "service": "kv",
        "method": "get",
        "error_type": "KeyError",
        "message": "'key'",
        "duration_us": 66,
    },
    "value.recorded": {
        "seq": 6,
        "parent": 5,
        "node_id": "root",
        "kind": "uuid",
        "value": "6f1c1f2e-5b7a-4d1e-9a53-2f0c8f9b0e11",
    },
    "wait.requested": {
        "seq": 7,
        "parent": 6,
        "node_id": "root",
        "wait_id": "w-approve-1",
        "kind": "approval",
        "prompt": "Ship it?",
        "payload_schema": {"type": "object"},
        "channel": "slack:#ops",
        "deadline_us": 1_764_000_600_000_000,
    },
    "wait.resumed": {"seq": 8, "parent": 7, "node_id": "root", "wait_id": "w-approve-1", "payload": {"approved": True}},
    "wait.expired": {"seq": 8, "parent": 7, "node_id": "root", "wait_id": "w-approve-1"},
    "run.waiting": {
        "seq": 8,
        "parent": 7,
        "node_id": None,
        "wait_id": "w7",
        "wait_run_id": "0mb4x2k9qabcdefghijkl-ask_1",
        "kind": "approval",
        "prompt": "Ship it?",
    },
    "channel.sent": {"seq": 3, "parent": 2, "node_id": "root", "channel": "console", "text": "Answer: 42"},
    "checkpoint.saved": {
        "seq": 4,
        "parent": 3,
        "node_id": "train_1",
        "key": "epoch",
        "state": {"epoch": 7, "loss": 0.25},
    },
    "artifact.saved": {
        "seq": 5,
        "parent": 4,
        "node_id": "render_1",
        "artifact_id": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "uri": "file://.aethergraph/artifacts/9f/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "kind": "report",
        "name": "summary.md",
        "mime": "text/markdown",
        "size": 4,
        "labels": {"stage": "final"},
        "tool": "render",
    },
    "memory.recorded": {
        "seq": 6,
        "parent": 5,
        "node_id": "root",
        "kind": "chat",
        "data": {"role": "user", "text": "how warm is hall B?"},
        "name": "user",
        "tags": ["hall-b"],
        "text": "how warm is hall B?",
    },
    "log.recorded": {
        "seq": 4,
        "parent": 3,
        "node_id": "root",
        "level": "warning",
        "message": "Answer: 42",
        "fields": {"attempt": 1},
    },
    "llm.called": {
        "seq": 7,
        "parent": 6,
        "node_id": "root",
        "profile": "default",
        "model": "gpt-test",
        "operation": "chat",
        "request": {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2},
        "request_ref": "file:///tmp/aethergraph/artifacts/ab/abcd",
        "request_digest": "5d41402abc4b2a76",
        "streamed": True,
        "idempotency_key": "0mb4x2k9qabcdefghijkl:root:6",
    },
    "llm.returned": {
        "seq": 8,
        "parent": 7,
        "node_id": "root",
        "profile": "default",
        "model": "gpt-test",
        "operation": "chat",
        "response": {"role": "assistant", "content": "hello", "tool_calls": []},
        "response_ref": "file:///tmp/aethergraph/artifacts/cd/cdef",
        "finish_reason": "stop",
        "input_tokens": 12,
        "output_tokens": 3,
        "cached_tokens": 4,
        "reasoning_tokens": 1,
        "attempts": 2,
        "duration_us": 15000,
    },
    "llm.failed": {
        "seq": 8,
        "parent": 7,
        "node_id": "root",
        "profile": "default",
        "model": "gpt-test",
        "operation": "embed",
        "error_type": "aethergraph.errors.LLMEndpointError",
        "message": "endpoint unreachable",
        "attempts": 3,
        "input_tokens": 30,
        "output_tokens": 7,
        "duration_us": 900000,
        "traceback": "Traceback (most recent call last): ...",
    },
    "rag.corpus_added": {
        "seq": 3,
        "parent": 2,
        "node_id": "root",
        "corpus": "handbook",
        "embed_profile": "embedder",
        "meta": {"owner": "ops"},
    },
    "rag.upserted": {
        "seq": 4,
        "parent": 3,
        "node_id": "root",
        "corpus": "handbook",
        "docs": [{"doc_id": "d1", "title": "Hall B", "source": "notes.md", "chunks": 2}],
        "chunks_ref": "file:///tmp/aethergraph/artifacts/ef/ef01",
        "chunk_count": 2,
        "dim": 64,
        "embed_model": "embed-test",
        "input_tokens": 40,
    },
    "viz.recorded": {
        "seq": 5,
        "parent": 4,
        "node_id": "train_1",
        "track": "loss",
        "kind": "image",
        "step": 3,
        "value": [[0.1, 0.2], [0.3, 0.4]],
        "artifact_uri": "file:///tmp/aethergraph/artifacts/12/1234",
        "mime": "image/png",
        "meta": {"epoch": 1},
    },
}


def main() -> None:
    existing: dict[str, str] = {}
    if GOLDEN.exists():
        for line in GOLDEN.read_text().splitlines():
            if line.strip():
                existing[json.loads(line)["type"]] = line
    missing = sorted(set(EVENT_TYPES) - set(SAMPLES))
    if missing:
        raise SystemExit(f"add a sample for {missing} to SAMPLES in {__file__}")
    lines = dict(existing)
    for tag, cls in EVENT_TYPES.items():
        if tag not in lines:
            lines[tag] = encode_event(cls(**COMMON, **SAMPLES[tag])).decode()
    GOLDEN.write_text("".join(line + "\n" for line in lines.values()))
    print(f"{GOLDEN}: {len(lines)} samples ({len(lines) - len(existing)} new)")


if __name__ == "__main__":
    main()
