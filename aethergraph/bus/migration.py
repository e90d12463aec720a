"""Comparing the streams on the server with the ones the settings ask for, and migrating them.

Connecting creates what is missing (a new stream, a new subject, a stream
feature such as message TTLs turned on) but never changes an existing
stream's replicas or limits silently: a stream created with three replicas
stays at three even if a process connects with ``AETHERGRAPH_STREAM_REPLICAS=1``.
Such a difference raises :class:`~aethergraph.core.errors.TopologyMismatchError`;
``aethergraph nats --migrate`` prints the differences and applies them with
JetStream stream updates (a cluster accepts replica changes; a storage type
change it refuses, and the command says so).

The KV bucket and Object Store bucket are JetStream streams too
(``KV_AG_KV``, ``OBJ_AG_ARTIFACTS``); their replicas are compared the same way
when they exist (they are created on first use with the configured replicas).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import NotFoundError

from aethergraph.core.errors import TopologyMismatchError

from .topology import BUCKET_STREAMS, Topology

__all__ = [
    "StreamDifference",
    "TopologyPlan",
    "check_bucket_replicas",
    "consumer_changed",
    "mismatch_error",
    "plan_topology",
    "stream_differences",
]


def _seconds(value: object) -> object:
    return 0.0 if value is None else round(float(value), 3)  # type: ignore[arg-type]


def _limit(value: object) -> object:
    return -1 if value is None or value == 0 else value


def _enum(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


def _replicas(value: object) -> object:
    return value or 1


# Fields compared between the existing stream and the wanted one, each with how to normalise a value
# (nats-py leaves unset fields as None where the server reports its default).
_COMPARED: dict[str, Callable[[object], object]] = {
    "num_replicas": _replicas,
    "storage": _enum,
    "retention": _enum,
    "discard": _enum,
    "max_msg_size": _limit,
    "max_msgs_per_subject": _limit,
    "duplicate_window": _seconds,
    "max_age": _seconds,
    "subject_delete_marker_ttl": _seconds,
}
# Fields whose server default is not "unlimited": left unset, the server's value is accepted.
_SERVER_DEFAULT_WHEN_UNSET: frozenset[str] = frozenset({"duplicate_window"})
# Features a stream gains without risk: turned on when missing, never turned off.
_FEATURES: tuple[str, ...] = ("allow_direct", "allow_msg_ttl", "allow_msg_schedules")


@dataclass(frozen=True)
class StreamDifference:
    """One field of one stream that differs between the server and the settings."""

    stream: str
    field: str
    existing: object
    wanted: object

    def describe(self) -> str:
        return f"{self.stream}.{self.field}: {self.existing!r} on the server, {self.wanted!r} wanted"


def stream_differences(existing: StreamConfig, wanted: StreamConfig) -> list[StreamDifference]:
    """The compared fields (and removed subjects) on which ``existing`` differs from ``wanted``."""
    name = str(wanted.name)
    found: list[StreamDifference] = []
    for field_name, normal in _COMPARED.items():
        if field_name in _SERVER_DEFAULT_WHEN_UNSET and not getattr(wanted, field_name):
            continue
        have, want = normal(getattr(existing, field_name)), normal(getattr(wanted, field_name))
        if have != want:
            found.append(StreamDifference(name, field_name, have, want))
    return found


_CONSUMER_FIELDS = (
    "description",
    "filter_subject",
    "deliver_policy",
    "ack_policy",
    "ack_wait",
    "max_deliver",
    "max_ack_pending",
    "max_waiting",
)


def consumer_changed(existing: ConsumerConfig, wanted: ConsumerConfig) -> bool:
    """Whether a durable consumer on the server differs from ``wanted`` in a field ``wanted`` sets."""
    for name in _CONSUMER_FIELDS:
        want = getattr(wanted, name)
        if want is None:
            continue
        have = getattr(existing, name)
        if name == "ack_wait":
            have, want = _seconds(have), _seconds(want)
        if _enum(have) != _enum(want):
            return True
    return False


def _additions(existing: StreamConfig, wanted: StreamConfig) -> StreamConfig | None:
    """``existing`` with the missing subjects and features of ``wanted`` added, or None if nothing is missing."""
    have = list(existing.subjects or [])
    missing = [subject for subject in wanted.subjects or [] if subject not in have]
    features: dict[str, object] = {
        name: True for name in _FEATURES if getattr(wanted, name) and not getattr(existing, name)
    }
    if wanted.republish is not None and existing.republish is None:
        features["republish"] = wanted.republish  # live delivery of stored messages (followers depend on it)
    if not missing and not features:
        return None
    return existing.evolve(subjects=have + missing, **features)


@dataclass
class TopologyPlan:
    """What connecting (or migrating) does to the server's streams."""

    create: list[StreamConfig] = field(default_factory=list)
    extend: list[StreamConfig] = field(default_factory=list)
    differences: list[StreamDifference] = field(default_factory=list)
    migrate: list[StreamConfig] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return not (self.create or self.extend or self.differences)


async def _existing(js: JetStreamContext, name: str) -> StreamConfig | None:
    try:
        return (await js.stream_info(name)).config
    except NotFoundError:
        return None


async def plan_topology(js: JetStreamContext, topology: Topology, *, buckets: bool = True) -> TopologyPlan:
    """Compare the server's streams (and bucket streams, if ``buckets``) with ``topology``."""
    plan = TopologyPlan()
    wanted_streams = topology.streams()
    bucket_names = BUCKET_STREAMS if buckets else ()
    # Looked up at once: one round trip, not one per stream.
    names = [str(wanted.name) for wanted in wanted_streams] + list(bucket_names)
    found = await asyncio.gather(*(_existing(js, name) for name in names))
    for wanted, existing in zip(wanted_streams, found, strict=False):
        if existing is None:
            plan.create.append(wanted)
            continue
        differences = stream_differences(existing, wanted)
        extended = _additions(existing, wanted)
        if differences:
            plan.differences += differences
            plan.migrate.append(wanted.evolve(subjects=sorted({*(existing.subjects or []), *(wanted.subjects or [])})))
        elif extended is not None:
            plan.extend.append(extended)
    for name, existing in zip(bucket_names, found[len(wanted_streams) :], strict=True):
        if existing is not None and _replicas(existing.num_replicas) != topology.replicas:
            plan.differences.append(
                StreamDifference(name, "num_replicas", _replicas(existing.num_replicas), topology.replicas)
            )
            plan.migrate.append(existing.evolve(num_replicas=topology.replicas))
    return plan


def mismatch_error(differences: list[StreamDifference]) -> TopologyMismatchError:
    """The error naming every difference and the migration command."""
    listed = "; ".join(difference.describe() for difference in differences)
    return TopologyMismatchError(
        f"JetStream streams differ from the settings ({listed}). AetherGraph does not change an existing "
        "stream's replicas or limits silently: run `aethergraph nats --migrate` with these settings to apply "
        "them, or change the settings (AETHERGRAPH_STREAM_REPLICAS, AETHERGRAPH_DUPLICATE_WINDOW_S, "
        "AETHERGRAPH_MAX_EVENT_BYTES) back to what the server has",
        differences=tuple((d.stream, d.field, d.existing, d.wanted) for d in differences),
    )


def check_bucket_replicas(stream: str, existing: int | None, wanted: int) -> None:
    """Raise :class:`TopologyMismatchError` if a bucket's stream has other replicas than the settings."""
    if _replicas(existing) != wanted:
        raise mismatch_error([StreamDifference(stream, "num_replicas", _replicas(existing), wanted)])
