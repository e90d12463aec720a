"""``Service`` (also named ``BaseContextService``): the base class of custom context services."""

from __future__ import annotations

from aethergraph.core.context.service_base import Service, journal_by_digest, not_journaled

BaseContextService = Service

__all__ = ["BaseContextService", "Service", "journal_by_digest", "not_journaled"]
