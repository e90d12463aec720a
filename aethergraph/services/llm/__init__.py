"""Model endpoints for ``context.llm()`` on the official ``openai`` SDK (the ``[llm]`` extra), imported lazily."""

from __future__ import annotations

from .profiles import OpenAIModelPort, register_llm_client, registered_llm_clients, unregister_llm_client

__all__ = ["OpenAIModelPort", "register_llm_client", "registered_llm_clients", "unregister_llm_client"]
