"""Registering custom context services: ``register_context_service("trainer", Trainer())``."""

from __future__ import annotations

from aethergraph.core.context.service_registry import (
    BUILTIN_SERVICES,
    get_context_service,
    register_context_service,
    registered_services,
    unregister_context_service,
)

__all__ = [
    "BUILTIN_SERVICES",
    "get_context_service",
    "register_context_service",
    "registered_services",
    "unregister_context_service",
]
