"""The workload every benchmark shares: realistic events, the raw JetStream floor, the 200-step graph."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.aio.client import Client

from aethergraph import graph_fn, testing, tool
from aethergraph.bus.topology import event_subject, run_events_filter
from aethergraph.core.ids import new_run_id, new_worker_id
from aethergraph.core.journal.ports import RunEnvironment
from aethergraph.core.wire.codec import digest, encode_event
from aethergraph.core.wire.events import Event, ToolCalled, ToolReturned
from aethergraph.testing.offline_ports import offline_environment

WORKER = new_worker_id()
RAW_HEADER_MODES = ("none", "msgid", "fenced")


# --- events -----------------------------------------------------------------------


def tool_called(run_id: str, seq: int) -> ToolCalled:
    """A ``tool.called`` shaped like the one a graph_fn step emits (~200 bytes encoded)."""
    args = {"x": seq}
    return ToolCalled(
        run_id=run_id,
        seq=seq,
        ts=time.time_ns() // 1000,
        worker=WORKER,
        parent=seq - 1 or None,
        node_id=f"bench_incr_{seq}",
        tool="bench_incr",
        args=args,
        args_digest=digest(msgspec.json.encode(args)),
    )


def tool_returned(run_id: str, seq: int) -> ToolReturned:
    return ToolReturned(
        run_id=run_id,
        seq=seq,
        ts=time.time_ns() // 1000,
        worker=WORKER,
        parent=seq - 1,
        node_id=f"bench_incr_{seq - 1}",
        tool="bench_incr",
        outputs={"value": seq},
        duration_us=3,
    )


def step_events(run_id: str, count: int) -> list[Event]:
    """``count`` events of one run alternating ``tool.called`` / ``tool.returned``."""
    return [tool_called(run_id, seq) if seq % 2 else tool_returned(run_id, seq) for seq in range(1, count + 1)]


def sample_payload() -> bytes:
    """A representative encoded event, for raw publishes of the same size."""
    return encode_event(tool_called(new_run_id(), 1))


# --- the raw JetStream floor ------------------------------------------------------


class _Ack(msgspec.Struct):
    seq: int = 0
    error: dict[str, Any] | None = None


_ack_decoder = msgspec.json.Decoder(_Ack)


async def raw_requests(nc: Client, count: int, payload: bytes, mode: str) -> list[int]:
    """``count`` awaited ``nc.request`` publishes to a fresh run's subject; nanoseconds each.

    ``mode``: ``"none"`` (no headers: what one JetStream ack costs), ``"msgid"``
    (``Nats-Msg-Id``, as every AetherGraph event carries) or ``"fenced"``
    (``Nats-Msg-Id`` plus the subject-filtered expected-last-sequence pair that
    an awaited append carries). Headers are built outside the timed region.
    """
    run_id = new_run_id()
    subject = event_subject(run_id, "tool.called")
    run_filter = run_events_filter(run_id)
    clock = time.perf_counter_ns
    samples: list[int] = []
    last = 0
    for seq in range(1, count + 1):
        headers: dict[str, str] | None
        if mode == "none":
            headers = None
        elif mode == "msgid":
            headers = {"Nats-Msg-Id": f"{run_id}:{seq}"}
        elif mode == "fenced":
            headers = {
                "Nats-Msg-Id": f"{run_id}:{seq}",
                "Nats-Expected-Last-Subject-Sequence": str(last),
                "Nats-Expected-Last-Subject-Sequence-Subject": run_filter,
            }
        else:
            raise ValueError(f"unknown header mode {mode!r}")
        started = clock()
        reply = await nc.request(subject, payload, timeout=10, headers=headers)
        samples.append(clock() - started)
        ack = _ack_decoder.decode(reply.data)
        if ack.error is not None:
            raise RuntimeError(f"JetStream refused a raw {mode} publish: {ack.error}")
        last = ack.seq
    return samples


def has_transport_path(log: object) -> bool:
    """Whether the event log exposes the ack router that ``transport_requests`` drives."""
    return callable(getattr(getattr(log, "_router", None), "publish", None))


async def transport_requests(log: Any, count: int, payload: bytes, mode: str) -> list[int]:
    """Like :func:`raw_requests`, but through the event log's own publish path with pre-encoded headers.

    Publishes go through the event log's ack router (the outbound buffer and
    the shared wildcard inbox, as ``writer.append`` does) without encoding an
    event or building a header per call, so the differences between the modes
    are what the headers cost on the wire and in the server.
    """
    run_id = new_run_id()
    subject = event_subject(run_id, "tool.called")
    run_filter = run_events_filter(run_id).encode()
    loop = asyncio.get_running_loop()
    router = log._router
    clock = time.perf_counter_ns
    samples: list[int] = []
    last = 0
    for seq in range(1, count + 1):
        if mode == "none":
            headers = b""
        elif mode == "msgid":
            headers = b"NATS/1.0\r\nNats-Msg-Id: %s:%d\r\n\r\n" % (run_id.encode(), seq)
        elif mode == "fenced":
            headers = (
                b"NATS/1.0\r\nNats-Msg-Id: %s:%d\r\nNats-Expected-Last-Subject-Sequence: %d\r\n"
                b"Nats-Expected-Last-Subject-Sequence-Subject: %s\r\n\r\n" % (run_id.encode(), seq, last, run_filter)
            )
        else:
            raise ValueError(f"unknown header mode {mode!r}")
        acked: asyncio.Future[Any] = loop.create_future()
        started = clock()
        router.publish(subject, headers, payload, acked.set_result)
        ack = await acked
        samples.append(clock() - started)
        if isinstance(ack, BaseException):
            raise ack
        if ack.error is not None:
            raise RuntimeError(f"JetStream refused a {mode} publish: {ack.error}")
        last = ack.seq
    return samples


# --- the 200-step graph -----------------------------------------------------------

step_samples: list[int] = []


@tool(name="bench_incr", outputs=["value"])
def bench_incr(x: int) -> int:
    return x + 1


@graph_fn(name="bench_chain", outputs=["value"])
async def bench_chain(steps: int) -> int:
    """``steps`` sequential no-op tool steps; the time of each ``await`` goes to ``step_samples``."""
    x = 0
    clock = time.perf_counter_ns
    samples = step_samples
    for _ in range(steps):
        started = clock()
        x = (await bench_incr(x))["value"]
        samples.append(clock() - started)
    return x


plain_incr = bench_incr.__wrapped__  # type: ignore[attr-defined]


async def plain_chain(steps: int) -> int:
    """The same function with no runtime: plain Python calling the undecorated tool."""
    x = 0
    for _ in range(steps):
        x = plain_incr(x)
    return x


# --- an in-memory event log (the runtime's own cost, no bus) ----------------------


class MemoryWriter:
    """Encodes each event like the real writer and acknowledges it at once."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.stored: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def append(self, event: Event) -> asyncio.Future[int]:
        self.stored.append(encode_event(event))
        result: asyncio.Future[int] = self._loop.create_future()
        result.set_result(len(self.stored))
        return result

    async def flush(self) -> None:
        return None


class MemoryEventLog:
    def writer(self, run_id: str, *, last_stream_seq: int = 0) -> MemoryWriter:
        return MemoryWriter(run_id)

    async def read_run(self, run_id: str, *, follow: bool = False) -> Any:  # pragma: no cover - never read
        raise NotImplementedError
        yield


def memory_environment() -> RunEnvironment:
    """The offline replayer's run environment (``aethergraph.testing``) over a log that encodes every event."""
    offline = offline_environment(testing.MemoryEventLog())
    return dataclasses.replace(offline, event_log=MemoryEventLog(), worker_id=WORKER)  # type: ignore[arg-type]


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
