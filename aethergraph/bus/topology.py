"""Every subject, stream and consumer AetherGraph uses, in one typed module.

Public subject contract (documented in docs/events.md):

* ``ag.evt.<run_id>.<event type>`` carries a run's events, e.g.
  ``ag.evt.0mb4x2k9qabc.tool.called``. Subscribe to ``ag.evt.*.tool.called``
  for every tool call of every run, or ``ag.evt.<run_id>.>`` for one run.
* ``ag.cmd.resume.<run_id>`` carries resume commands (a JSON body naming the
  wait and carrying the payload).
* ``ag.cmd.outcome.<run_id>`` carries what a worker did with each resume
  command (accepted, rejected with a reason, deferred).
* ``ag.cmd.schedule.<run_id>.<wait_id>`` holds a wait's deadline as a
  JetStream message schedule that publishes the expiry to the resume subject.
* ``ag.cmd.report.<run_id>`` carries workers' reports on the nodes of a
  static run (one per node attempt; the run's scheduler journals them).
* ``ag.live.evt.<run_id>.<event type>`` and ``ag.live.report.<run_id>``: the
  server republishes every event and node report it *stored* there (core
  NATS, not stored again), with its stream sequence in the ``Nats-Sequence``
  header. Followers subscribe to these instead of creating a JetStream
  consumer each; a message the stream refused is never republished.
* ``ag.cmd.cancel.<run_id>`` carries cancellation requests (every process
  listens and stops what it runs of that run).
* ``ag.evt.*.node.ready`` events are the work queue of static graphs: workers
  take them from the shared durable consumer ``ag-work``.
* ``ag.proj.<store_id>.query`` is where the process that owns a projection
  store answers SQL queries for other processes (request/reply, not stored).
* ``ag.stream.<run_id>.<node_id>`` carries a model call's streamed token
  deltas (core NATS, fire-and-forget: no stream captures ``ag.stream.>``, so
  they are never stored, journaled or replayed); the JSON body is a
  :class:`~aethergraph.core.wire.token_delta.TokenDelta`.
* ``ag.lease.worker.<worker_id>`` is a process's heartbeat (a message with a
  TTL; its expiry marker announces the process's death) and
  ``ag.lease.run.<worker_id>.<run_id>`` records which process drives a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from aethergraph.core.ids import check_run_id, token

__all__ = [
    "ALL_CANCELS",
    "ARTIFACTS_BUCKET",
    "BUCKET_STREAMS",
    "KV_BUCKET",
    "ALL_COMMANDS",
    "ALL_EVENTS",
    "ALL_LEASES",
    "LIVE_REPORTS",
    "COMMANDS_STREAM",
    "EVENTS_STREAM",
    "LEASES_STREAM",
    "NODE_READY_EVENTS",
    "RAG_EVENTS",
    "RESUME_CONSUMER",
    "WORKER_LEASES",
    "WORK_CONSUMER",
    "Topology",
    "cancel_subject",
    "command_target",
    "event_subject",
    "outcome_subject",
    "outcome_subject_of_command",
    "parse_run_owner",
    "projector_consumer",
    "projector_query_subject",
    "report_subject",
    "resume_subject",
    "live_event_subject",
    "live_events_filter",
    "live_report_prefix",
    "run_events_filter",
    "run_id_of_command",
    "run_owner_subject",
    "run_owners_filter",
    "schedule_subject",
    "token_stream_filter",
    "token_stream_subject",
    "worker_lease_subject",
    "worker_of_lease",
]

EVENTS_STREAM: Final = "AG_EVENTS"
COMMANDS_STREAM: Final = "AG_COMMANDS"
LEASES_STREAM: Final = "AG_LEASES"
KV_BUCKET: Final = "AG_KV"
ARTIFACTS_BUCKET: Final = "AG_ARTIFACTS"
# The streams behind the KV bucket (context.kv()) and the Object Store bucket (artifacts).
BUCKET_STREAMS: Final = (f"KV_{KV_BUCKET}", f"OBJ_{ARTIFACTS_BUCKET}")
RESUME_CONSUMER: Final = "ag-resume"
WORK_CONSUMER: Final = "ag-work"
NODE_READY_EVENTS: Final = "ag.evt.*.node.ready"
# Every run's rag.corpus_added / rag.upserted events: what each host's vector index folds.
RAG_EVENTS: Final = "ag.evt.*.rag.>"
ALL_CANCELS: Final = "ag.cmd.cancel.>"

ALL_EVENTS: Final = "ag.evt.>"
ALL_COMMANDS: Final = "ag.cmd.>"
ALL_LEASES: Final = "ag.lease.>"
_RESUME_PREFIX: Final = "ag.cmd.resume."
_OUTCOME_PREFIX: Final = "ag.cmd.outcome."
_SCHEDULE_PREFIX: Final = "ag.cmd.schedule."
_REPORT_PREFIX: Final = "ag.cmd.report."
_LIVE_EVENTS_PREFIX: Final = "ag.live.evt."
_LIVE_REPORT_PREFIX: Final = "ag.live.report."
LIVE_REPORTS: Final = _LIVE_REPORT_PREFIX + ">"
_CANCEL_PREFIX: Final = "ag.cmd.cancel."
WORKER_LEASES: Final = "ag.lease.worker.>"
_WORKER_LEASE_PREFIX: Final = "ag.lease.worker."
_RUN_OWNER_PREFIX: Final = "ag.lease.run."
_STREAM_PREFIX: Final = "ag.stream."


def event_subject(run_id: str, event_type: str) -> str:
    """``ag.evt.<run_id>.<event type>``; ``run_id`` must already be checked."""
    return f"ag.evt.{run_id}.{event_type}"


def run_events_filter(run_id: str) -> str:
    """The filter subject matching every event of one run."""
    return f"ag.evt.{check_run_id(run_id)}.>"


def live_events_filter(run_id: str) -> str:
    """The core-NATS subject filter on which the server republishes one run's stored events."""
    return f"{_LIVE_EVENTS_PREFIX}{check_run_id(run_id)}.>"


def live_event_subject(run_id: str, event_type: str) -> str:
    """``ag.live.evt.<run_id>.<event type>``, where the server republishes a stored event (wildcards allowed)."""
    return f"{_LIVE_EVENTS_PREFIX}{run_id}.{event_type}"


def live_report_prefix() -> str:
    """``ag.live.report.``: a republished report's subject is this prefix and the run id."""
    return _LIVE_REPORT_PREFIX


def resume_subject(run_id: str) -> str:
    return _RESUME_PREFIX + check_run_id(run_id)


def run_id_of_command(subject: str) -> str:
    """The run id of ``ag.cmd.resume.<run_id>`` (or of an outcome subject)."""
    return subject.rsplit(".", 1)[-1]


def command_target(subject: str) -> str:
    """What follows ``ag.cmd.resume.`` in a command's subject, as published (the run id, if the subject is valid)."""
    return subject[len(_RESUME_PREFIX) :] if subject.startswith(_RESUME_PREFIX) else subject


def outcome_subject_of_command(subject: str) -> str:
    """``ag.cmd.outcome.<x>`` for a command on ``ag.cmd.resume.<x>``, whatever ``<x>`` is.

    A command on a subject that names no valid run id (``ag.cmd.resume.r$x``,
    ``ag.cmd.resume.a.b``) is answered on the mirrored subject, so its
    publisher finds the refusal where it would look for any outcome.
    """
    return _OUTCOME_PREFIX + command_target(subject)


def outcome_subject(run_id: str) -> str:
    return _OUTCOME_PREFIX + check_run_id(run_id)


def schedule_subject(run_id: str, wait_id: str) -> str:
    return f"{_SCHEDULE_PREFIX}{check_run_id(run_id)}.{wait_id}"


def report_subject(run_id: str) -> str:
    """Where workers report on the nodes of static run ``run_id``."""
    return _REPORT_PREFIX + run_id


def cancel_subject(run_id: str) -> str:
    return _CANCEL_PREFIX + check_run_id(run_id)


def worker_lease_subject(worker_id: str) -> str:
    return _WORKER_LEASE_PREFIX + worker_id


def worker_of_lease(subject: str) -> str:
    return subject[len(_WORKER_LEASE_PREFIX) :]


def run_owner_subject(worker_id: str, run_id: str) -> str:
    return f"{_RUN_OWNER_PREFIX}{worker_id}.{run_id}"


def run_owners_filter(worker_id: str | None = None) -> str:
    """Every run ownership record (of one worker, if given)."""
    return f"{_RUN_OWNER_PREFIX}{worker_id}.>" if worker_id else _RUN_OWNER_PREFIX + ">"


def parse_run_owner(subject: str) -> tuple[str, str]:
    """``(worker_id, run_id)`` of ``ag.lease.run.<worker_id>.<run_id>``."""
    worker_id, _, run_id = subject[len(_RUN_OWNER_PREFIX) :].partition(".")
    return worker_id, run_id


def token_stream_subject(run_id: str, node_id: str) -> str:
    """``ag.stream.<run_id>.<node_id>``: where a node's streamed token deltas go (not stored)."""
    return f"{_STREAM_PREFIX}{check_run_id(run_id)}.{token(node_id)}"


def token_stream_filter(run_id: str) -> str:
    """Every streamed token delta of one run (all its nodes)."""
    return f"{_STREAM_PREFIX}{check_run_id(run_id)}.>"


def projector_consumer(store_id: str) -> str:
    """The durable consumer through which the projector of store ``store_id`` reads the journal."""
    return f"ag-proj-{store_id}"


def projector_query_subject(store_id: str) -> str:
    return f"ag.proj.{store_id}.query"


@dataclass(frozen=True, kw_only=True)
class Topology:
    """Stream and consumer configurations derived from the settings."""

    duplicate_window_s: float = 120.0
    max_event_bytes: int = 256 * 1024
    commands_max_age_s: float = 7 * 24 * 3600.0
    replicas: int = 1
    node_ack_wait_s: float = 30.0

    def events_stream(self) -> StreamConfig:
        """The journal: every event of every run, kept until deleted (limits retention)."""
        return StreamConfig(
            name=EVENTS_STREAM,
            subjects=[ALL_EVENTS],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.NEW,
            duplicate_window=self.duplicate_window_s,
            max_msg_size=self.max_event_bytes + 4096,
            allow_direct=True,
            num_replicas=self.replicas,
            republish=RePublish(src=ALL_EVENTS, dest=_LIVE_EVENTS_PREFIX + ">"),
            description="AetherGraph run journals (ag.evt.<run_id>.<type>)",
        )

    def commands_stream(self) -> StreamConfig:
        """Resume and control commands, kept for audit for ``commands_max_age_s``."""
        return StreamConfig(
            name=COMMANDS_STREAM,
            subjects=[ALL_COMMANDS],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=self.commands_max_age_s,
            duplicate_window=self.duplicate_window_s,
            max_msg_size=self.max_event_bytes + 4096,
            num_replicas=self.replicas,
            allow_msg_schedules=True,
            allow_direct=True,
            republish=RePublish(src=_REPORT_PREFIX + ">", dest=LIVE_REPORTS),
            description="AetherGraph commands (ag.cmd.resume.<run_id>) and wait deadlines",
        )

    def leases_stream(self) -> StreamConfig:
        """Process heartbeats (TTL'd messages whose expiry leaves a marker) and run ownership records."""
        return StreamConfig(
            name=LEASES_STREAM,
            subjects=[ALL_LEASES],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=1,
            allow_msg_ttl=True,
            subject_delete_marker_ttl=60.0,
            allow_direct=True,
            num_replicas=self.replicas,
            description="AetherGraph worker heartbeats and run ownership",
        )

    def streams(self) -> tuple[StreamConfig, ...]:
        return (self.events_stream(), self.commands_stream(), self.leases_stream())

    def consumers(self) -> tuple[tuple[str, ConsumerConfig], ...]:
        """Durable consumers as (stream name, config) pairs."""
        resume = ConsumerConfig(
            durable_name=RESUME_CONSUMER,
            description="Workers take resume commands from here",
            filter_subject=_RESUME_PREFIX + ">",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=-1,
            max_ack_pending=10_000,
        )
        work = ConsumerConfig(
            durable_name=WORK_CONSUMER,
            description="Workers take the nodes of static graphs (node.ready events) from here",
            filter_subject=NODE_READY_EVENTS,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.node_ack_wait_s,
            max_deliver=-1,
            max_ack_pending=100_000,
            max_waiting=4096,
        )
        return ((COMMANDS_STREAM, resume), (EVENTS_STREAM, work))
