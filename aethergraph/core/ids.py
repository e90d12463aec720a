"""Identifiers: run ids, worker ids, wait ids.

Run ids sort by creation time (a millisecond timestamp prefix) and are safe as
NATS subject tokens: ``[0-9a-z]`` only.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time

__all__ = [
    "QUEUE_OWNER",
    "ROOT_NODE",
    "RUN_ID_PATTERN",
    "check_run_id",
    "child_run_id",
    "new_run_id",
    "new_worker_id",
    "node_run_id",
]

ROOT_NODE = "root"
"""The node id of a graph function's body."""

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, 36)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_run_id() -> str:
    """A new run id: 9 characters of milliseconds then 12 random characters."""
    millis = time.time_ns() // 1_000_000
    return _base36(millis, 9) + _base36(int.from_bytes(os.urandom(8), "big"), 12)


# The owner id of the run queue: submitted runs are journaled and recorded under it
# (``ag.lease.run.queue.<run_id>``) until a worker claims them. No process may take this id.
QUEUE_OWNER = "queue"


def new_worker_id() -> str:
    """``<host>-<pid>``, made a valid subject token (no dots)."""
    return token(f"{socket.gethostname()}-{os.getpid()}")


def token(text: str) -> str:
    """``text`` with every character that may not appear in a NATS subject token replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` or raise ``ValueError`` saying what a run id may contain."""
    if not RUN_ID_PATTERN.match(run_id):
        raise ValueError(
            f"run id {run_id!r} is not valid: use 1-128 characters from A-Z a-z 0-9 _ - "
            "(it becomes a NATS subject token, so no dots, spaces or wildcards)"
        )
    return run_id


def child_run_id(parent_run_id: str, node_id: str) -> str:
    """The deterministic id of the child run started by ``node_id`` of a parent run."""
    candidate = f"{parent_run_id}-{node_id}"
    if RUN_ID_PATTERN.match(candidate):
        return candidate
    return "c" + hashlib.blake2b(candidate.encode(), digest_size=16).hexdigest()


def node_run_id(run_id: str, node_id: str, attempt: int) -> str:
    """The run in which attempt ``attempt`` of a node journals its own steps (see docs/static-graphs.md).

    Attempt 1 is ``<run_id>-<node_id>`` (as for a graph called in a graph_fn);
    a later attempt's id is a digest of ``<run_id>-<node_id>.<attempt>``, which
    no other node's id can produce (node ids have no dots).
    """
    return child_run_id(run_id, node_id if attempt == 1 else f"{node_id}.{attempt}")
