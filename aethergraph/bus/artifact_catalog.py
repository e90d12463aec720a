"""What every host has saved: the ``artifact.saved`` events of ``AG_EVENTS``, read with a subject filter.

``ag.evt.*.artifact.saved`` (or ``ag.evt.<run_id>.artifact.saved``) selects
only those events, so listing artifacts reads one ordered consumer's worth of
small messages and never the rest of the journals.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from aethergraph.core.wire.codec import decode_event
from aethergraph.core.wire.events import ArtifactSaved

from .dispatch import delivery_position
from .topology import event_subject

__all__ = ["JetStreamArtifactCatalog"]

_TAG = "artifact.saved"


class JetStreamArtifactCatalog:
    """The core's :class:`~aethergraph.core.journal.service_ports.ArtifactCatalog` on the event stream."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def saved(self, run_id: str | None = None) -> list[ArtifactSaved]:
        subject = event_subject(run_id, _TAG) if run_id else f"ag.evt.*.{_TAG}"
        found: list[ArtifactSaved] = []
        done = asyncio.Event()

        async def deliver(msg: Msg) -> None:
            event = decode_event(msg.data)
            if isinstance(event, ArtifactSaved):
                found.append(event)
            if delivery_position(msg)[1] == 0:
                done.set()

        sub = await self._js.subscribe(
            subject, cb=deliver, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, inactive_threshold=5.0
        )
        try:
            info = await sub.consumer_info()
            if info.num_pending or (info.delivered and info.delivered.consumer_seq):
                await done.wait()
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return found
