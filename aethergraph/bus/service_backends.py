"""The backends of context services for one bus connection: kv, the artifact store and catalog."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext

from aethergraph.core.context.local_blobs import LocalBlobStore
from aethergraph.core.journal.service_ports import BlobStore
from aethergraph.core.settings import Settings

from .artifact_catalog import JetStreamArtifactCatalog
from .kv import JetStreamKeyValueStore
from .object_store import JetStreamBlobStore

__all__ = ["JetStreamServiceBackends", "artifact_store_kind", "open_service_backends"]

# Encoded service arguments or results above this share of max_event_bytes go to the artifact store.
_INLINE_SHARE = 4


@dataclass(frozen=True, slots=True)
class JetStreamServiceBackends:
    """Satisfies :class:`aethergraph.core.journal.service_ports.ServiceBackends`."""

    kv: JetStreamKeyValueStore
    blobs: BlobStore
    catalog: JetStreamArtifactCatalog
    inline_limit: int


def artifact_store_kind(settings: Settings) -> str:
    """``local`` or ``object_store``: ``auto`` is local files on the embedded server, else the object store."""
    if settings.artifact_store != "auto":
        return settings.artifact_store
    return "object_store" if settings.nats_url else "local"


def _artifacts_dir(settings: Settings) -> Path:
    return settings.artifacts_dir or settings.workspace / "artifacts"


def open_service_backends(js: JetStreamContext, settings: Settings) -> JetStreamServiceBackends:
    """Backends for ``settings`` (buckets are created on first use, not here)."""
    blobs: BlobStore
    if artifact_store_kind(settings) == "local":
        blobs = LocalBlobStore(_artifacts_dir(settings))
    else:
        blobs = JetStreamBlobStore(
            js,
            cache_dir=_artifacts_dir(settings) / "cache",
            replicas=settings.stream_replicas,
            retry_s=settings.connect_retry_s,
        )
    return JetStreamServiceBackends(
        kv=JetStreamKeyValueStore(js, replicas=settings.stream_replicas, retry_s=settings.connect_retry_s),
        blobs=blobs,
        catalog=JetStreamArtifactCatalog(js),
        inline_limit=settings.max_event_bytes // _INLINE_SHARE,
    )
