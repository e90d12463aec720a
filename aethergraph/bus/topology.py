"""Every subject, stream and consumer AetherGraph uses, in one typed module.

Public subject contract (documented in docs/events.md):

* ``ag.evt.<run_id>.<event type>`` carries a run's events, e.g.
  ``ag.evt.0mb4x2k9qabc.tool.called``. Subscribe to ``ag.evt.*.tool.called``
  for every tool call of every run, or ``ag.evt.<run_id>.>`` for one run.
* ``ag.cmd.resume.<run_id>`` carries resume commands (a JSON body naming the
  wait and carrying the payload).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from aethergraph.core.ids import check_run_id

__all__ = [
    "ALL_COMMANDS",
    "ALL_EVENTS",
    "COMMANDS_STREAM",
    "EVENTS_STREAM",
    "RESUME_CONSUMER",
    "Topology",
    "event_subject",
    "resume_subject",
    "run_events_filter",
]

EVENTS_STREAM: Final = "AG_EVENTS"
COMMANDS_STREAM: Final = "AG_COMMANDS"
RESUME_CONSUMER: Final = "ag-resume"

ALL_EVENTS: Final = "ag.evt.>"
ALL_COMMANDS: Final = "ag.cmd.>"
_RESUME_PREFIX: Final = "ag.cmd.resume."


def event_subject(run_id: str, event_type: str) -> str:
    """``ag.evt.<run_id>.<event type>``; ``run_id`` must already be checked."""
    return f"ag.evt.{run_id}.{event_type}"


def run_events_filter(run_id: str) -> str:
    """The filter subject matching every event of one run."""
    return f"ag.evt.{check_run_id(run_id)}.>"


def resume_subject(run_id: str) -> str:
    return _RESUME_PREFIX + check_run_id(run_id)


@dataclass(frozen=True, kw_only=True)
class Topology:
    """Stream and consumer configurations derived from the settings."""

    duplicate_window_s: float = 120.0
    max_event_bytes: int = 256 * 1024
    commands_max_age_s: float = 7 * 24 * 3600.0
    replicas: int = 1

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
            description="AetherGraph commands (ag.cmd.resume.<run_id>)",
        )

    def streams(self) -> tuple[StreamConfig, ...]:
        return (self.events_stream(), self.commands_stream())

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
        return ((COMMANDS_STREAM, resume),)
