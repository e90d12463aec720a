"""Model profiles: from settings (``AETHERGRAPH_LLM__*``) or registered in code, resolved to endpoints.

``register_llm_client("fast", model="gpt-x", base_url=...)`` adds or
overrides a profile for this process; passing an ``openai.AsyncOpenAI``
instance as ``client`` uses that client (its own retries are turned off:
AetherGraph retries). API keys are read from the profile's ``api_key``, or
from the environment variable its ``api_key_env`` names, when the profile is
first used; they go into the SDK client only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

from aethergraph.core.errors import LLMConfigError
from aethergraph.core.settings import LLMProfile, LLMSettings

from .endpoint import OpenAIEndpoint

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["OpenAIModelPort", "env_prefix", "register_llm_client", "registered_llm_clients", "unregister_llm_client"]

_OPENAI_URL = "https://api.openai.com/v1"
_registered: dict[str, tuple[LLMProfile, Any]] = {}
# Bumped by every (un)registration: endpoints made before it are made again on next use.
_generation = [0]


def register_llm_client(
    profile: str,
    client: AsyncOpenAI | None = None,
    *,
    model: str | None = None,
    embed_model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    api_key_env: str | None = None,
    **options: Any,
) -> None:
    """Add (or replace) model profile ``profile`` for every run of this process.

    Either pass an ``openai.AsyncOpenAI`` as ``client`` (with ``model``), or
    the profile's settings (``base_url``, ``model``, ``api_key`` or
    ``api_key_env``, and any other :class:`~aethergraph.core.settings.LLMProfile`
    field such as ``timeout_s`` or ``max_retries``).
    """
    name = profile.strip().lower()
    if not name:
        raise LLMConfigError("register_llm_client needs a profile name, e.g. register_llm_client('default', ...)")
    fields: dict[str, Any] = {
        "model": model,
        "embed_model": embed_model,
        "base_url": base_url,
        "api_key": api_key,
        "api_key_env": api_key_env,
        **options,
    }
    try:
        settings = LLMProfile(**{key: value for key, value in fields.items() if value is not None})
    except ValueError as exc:
        raise LLMConfigError(f"register_llm_client({profile!r}, ...): {exc}", profile=name) from None
    _registered[name] = (settings, client)
    _generation[0] += 1


def unregister_llm_client(profile: str) -> bool:
    """Forget a profile registered in code; False if none was."""
    _generation[0] += 1
    return _registered.pop(profile.strip().lower(), None) is not None


def registered_llm_clients() -> list[str]:
    return sorted(_registered)


def env_prefix(profile: str) -> str:
    """The environment variables' prefix of a profile's settings."""
    if profile == "default":
        return "AETHERGRAPH_LLM__DEFAULT__"
    return f"AETHERGRAPH_LLM__PROFILES__{profile.upper()}__"


class OpenAIModelPort:
    """Satisfies :class:`~aethergraph.core.journal.model_port.ModelPort`: endpoints by profile, made on first use."""

    def __init__(self, settings: LLMSettings) -> None:
        self._settings = settings
        self._endpoints: dict[tuple[str, int, int], OpenAIEndpoint] = {}
        self._clients: list[AsyncOpenAI] = []

    @property
    def token_budget(self) -> int | None:
        return self._settings.token_budget

    def _profile(self, name: str) -> tuple[LLMProfile, Any]:
        if name in _registered:
            return _registered[name]
        if name == "default":
            return self._settings.default, None
        found = self._settings.profiles.get(name)
        if found is None:
            known = sorted({"default", *self._settings.profiles, *_registered})
            raise LLMConfigError(
                f"no model profile {name!r} (known: {', '.join(known)}); configure it with "
                f"{env_prefix(name)}MODEL and {env_prefix(name)}BASE_URL, or register_llm_client({name!r}, ...)",
                profile=name,
            )
        return found, None

    def endpoint(self, profile: str) -> OpenAIEndpoint:
        name = profile.strip().lower()
        key = (name, id(asyncio.get_running_loop()), _generation[0])
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._open(name)
        return endpoint

    def _open(self, name: str) -> OpenAIEndpoint:
        settings, client = self._profile(name)
        prefix = env_prefix(name)
        if not settings.model and not settings.embed_model:
            raise LLMConfigError(
                f"model profile {name!r} names no model: set {prefix}MODEL (or register_llm_client({name!r}, "
                f"model=...)), and {prefix}EMBED_MODEL for an embedding model of its own",
                profile=name,
            )
        base_url = settings.base_url or _OPENAI_URL
        secret = _api_key(name, settings, prefix, base_url)
        if client is None:
            try:
                import openai
            except ModuleNotFoundError:
                raise LLMConfigError(
                    f"model profile {name!r} needs the official openai SDK, which is not installed: "
                    "pip install 'aethergraph[llm]'",
                    profile=name,
                ) from None

            client = openai.AsyncOpenAI(
                api_key=secret or "not-needed",
                base_url=base_url,
                max_retries=0,
                timeout=settings.timeout_s,
            )
            self._clients.append(client)
        else:
            client = client.with_options(max_retries=0)
            base_url = str(client.base_url)
        defaults: dict[str, Any] = {}
        if settings.temperature is not None:
            defaults["temperature"] = settings.temperature
        return OpenAIEndpoint(
            profile=name,
            client=client,
            model=settings.model or "",
            embed_model=settings.embed_model or settings.model or "",
            base_url=base_url,
            env_prefix=prefix,
            max_retries=settings.max_retries,
            backoff_s=settings.retry_backoff_s,
            secret=secret,
            defaults=defaults,
        )

    async def close(self) -> None:
        """Close the HTTP clients this port made (clients registered in code belong to their owner)."""
        clients, self._clients = self._clients, []
        self._endpoints.clear()
        for client in clients:
            with contextlib.suppress(RuntimeError):  # made on an event loop that has since closed
                await client.close()


def _api_key(name: str, settings: LLMProfile, prefix: str, base_url: str) -> str | None:
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    if settings.api_key_env:
        value = os.environ.get(settings.api_key_env)
        if not value:
            raise LLMConfigError(
                f"model profile {name!r} reads its API key from the environment variable "
                f"{settings.api_key_env!r} ({prefix}API_KEY_ENV), which is not set",
                profile=name,
            )
        return value
    if base_url.rstrip("/") == _OPENAI_URL:
        value = os.environ.get("OPENAI_API_KEY")
        if not value:
            raise LLMConfigError(
                f"model profile {name!r} calls OpenAI's endpoint without an API key: set {prefix}API_KEY, "
                f"{prefix}API_KEY_ENV (the name of a variable holding it) or OPENAI_API_KEY; or set "
                f"{prefix}BASE_URL for another endpoint",
                profile=name,
            )
        return value
    return None
