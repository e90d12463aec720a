"""The event catalog: a closed, versioned, tagged union of frozen msgspec Structs.

Schema-evolution rules (also in docs/events.md):

1. A tag (``"tool.called"``) is a stable public name, never a class name.
2. A new field is always added with a default, so older samples keep decoding.
3. A field is never removed, renamed or given a new meaning under the same tag;
   such a change is a new tag with a version suffix (``"tool.called.v2"``) and
   both tags stay in the union while journals that hold the old one exist.
4. Golden encoded samples of every tag live in ``tests/golden/`` and must decode.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

__all__ = [
    "EVENT_TYPES",
    "AnyEvent",
    "ClaimReason",
    "ArtifactSaved",
    "ChannelSent",
    "CheckpointSaved",
    "Event",
    "LlmCalled",
    "LlmFailed",
    "LlmReturned",
    "LogRecorded",
    "MemoryRecorded",
    "NodeCompleted",
    "NodeFailed",
    "NodeReady",
    "NodeSkipped",
    "NodeStarted",
    "RunCancelled",
    "RunClaimed",
    "RunCompleted",
    "RunFailed",
    "RunStarted",
    "RunWaiting",
    "ServiceCalled",
    "ServiceFailed",
    "ServiceReturned",
    "ToolCalled",
    "ToolFailed",
    "RagCorpusAdded",
    "RagUpserted",
    "ToolReturned",
    "ValueRecorded",
    "VizRecorded",
    "WaitExpired",
    "WaitRequested",
    "WaitResumed",
]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries.

    ``seq`` numbers a run's events 1, 2, 3, ... in journal order; ``parent`` is
    the ``seq`` of the event that caused this one (``None`` for a run's first
    event); ``ts`` is the emitting host's clock in Unix microseconds;
    ``worker`` names the process that emitted the event; ``epoch`` is the
    ``seq`` of the ``run.started`` or ``run.claimed`` event by which the
    emitting writer took the run (see docs/events.md, "Journal integrity").
    """

    run_id: str
    seq: int
    ts: int
    worker: str
    parent: int | None = None
    node_id: str | None = None
    epoch: int = 1


ClaimReason: TypeAlias = Literal["resume", "takeover", "replay", "retry", "cancel"]
"""Why a writer claimed a run: answer a wait, take over a dead process's run, test-mode replay,
re-run a failed static run's failed nodes, or journal a cancellation."""

# --- runs -----------------------------------------------------------------------


class RunStarted(Event, frozen=True, kw_only=True, tag="run.started"):
    graph_id: str
    inputs: dict[str, Any] = {}
    parent_run_id: str | None = None
    parent_node_id: str | None = None
    # The top-level run of a tree of nested runs (None: this run is the root).
    root_run_id: str | None = None
    # Static graphs: the structure digest of the TaskGraph, and the cap on nodes running at once.
    plan_digest: str = ""
    max_concurrency: int | None = None
    # Submitted without a driver (``aethergraph.submit``): the run waits on the run queue until a
    # worker serving its graph claims it (``run.claimed``, reason ``takeover``) and runs its body.
    queued: bool = False


class RunClaimed(Event, frozen=True, kw_only=True, tag="run.claimed"):
    """A writer took over an unfinished run to continue it by replay; its epoch begins here."""

    reason: ClaimReason
    previous_worker: str | None = None


class RunCompleted(Event, frozen=True, kw_only=True, tag="run.completed"):
    outputs: dict[str, Any] = {}


class RunFailed(Event, frozen=True, kw_only=True, tag="run.failed"):
    """A run's failure; ``traceback`` is the failing exception's Python traceback (bounded, "" if none)."""

    error_type: str
    message: str
    failed_node_id: str | None = None
    traceback: str = ""


class RunWaiting(Event, frozen=True, kw_only=True, tag="run.waiting"):
    """The run released its worker until a wait is answered (in this run, or in the child ``wait_run_id``)."""

    wait_id: str
    wait_run_id: str
    kind: str = ""
    prompt: str = ""


class RunCancelled(Event, frozen=True, kw_only=True, tag="run.cancelled"):
    reason: str = ""


# --- nodes of static graphs ------------------------------------------------------


class NodeReady(Event, frozen=True, kw_only=True, tag="node.ready"):
    """A node of a static graph is dispatched: workers take it from the work queue and execute it.

    ``args`` are the node's resolved arguments; ``root_run_id`` is the
    top-level run of the tree (None: this run); ``timeout_s`` bounds one
    attempt. A node dispatched again with the same ``attempt`` (after its wait
    was answered) continues its node run instead of starting over.
    """

    tool: str
    args: dict[str, Any] = {}
    attempt: int = 1
    root_run_id: str | None = None
    timeout_s: float | None = None


class NodeStarted(Event, frozen=True, kw_only=True, tag="node.started"):
    """The run's scheduler runs a node in its own process (a local node) instead of dispatching it.

    The fields mean what they mean in ``node.ready``; the event's ``worker``
    is the process running the node. No work item exists: a process that
    continues the run and finds a ``node.started`` without an outcome runs
    the node again (same attempt, so its node run continues by replay).
    """

    tool: str
    attempt: int = 1
    args: dict[str, Any] = {}
    root_run_id: str | None = None
    timeout_s: float | None = None


class NodeCompleted(Event, frozen=True, kw_only=True, tag="node.completed"):
    """A node's committed outputs; ``executor`` names the worker that ran it, ``started_us`` when."""

    outputs: dict[str, Any] = {}
    attempt: int = 1
    executor: str = ""
    started_us: int = 0
    duration_us: int = 0


class NodeFailed(Event, frozen=True, kw_only=True, tag="node.failed"):
    """A node attempt failed; ``retry_at_us`` is set when the retry policy runs it again then.

    ``traceback`` is the failing code's Python traceback (bounded, "" when the node failed before it ran).
    """

    error_type: str
    message: str
    attempt: int = 1
    executor: str = ""
    started_us: int = 0
    duration_us: int = 0
    retry_at_us: int | None = None
    traceback: str = ""


class NodeSkipped(Event, frozen=True, kw_only=True, tag="node.skipped"):
    """A node will not run: its ``condition`` was false, or ``upstream`` (a node it needs) was skipped or failed."""

    reason: Literal["condition", "upstream_skipped", "upstream_failed", "cancelled"]
    upstream: str | None = None


# --- journaled steps ------------------------------------------------------------


class ToolCalled(Event, frozen=True, kw_only=True, tag="tool.called"):
    """A tool call began; in a graph_fn run this event also opens the call's node."""

    tool: str
    args: dict[str, Any] = {}
    args_digest: str


class ToolReturned(Event, frozen=True, kw_only=True, tag="tool.returned"):
    """A tool call's committed outcome; ``parent`` is its ``tool.called``."""

    tool: str
    outputs: dict[str, Any] = {}
    duration_us: int = 0


class ToolFailed(Event, frozen=True, kw_only=True, tag="tool.failed"):
    """A tool call's committed failure; ``traceback`` is the exception's Python traceback (bounded)."""

    tool: str
    error_type: str
    message: str
    duration_us: int = 0
    traceback: str = ""


class ServiceCalled(Event, frozen=True, kw_only=True, tag="service.called"):
    """A context service method was called (``context.<service>().<method>(*args, **kwargs)``).

    ``args_ref`` is set, and ``args``/``kwargs`` left empty, when the encoded
    arguments were too large for an event: it is the URI of their encoding in
    the artifact store.
    """

    service: str
    method: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    args_digest: str
    args_ref: str | None = None


class ServiceReturned(Event, frozen=True, kw_only=True, tag="service.returned"):
    """A service call's committed result; ``parent`` is its ``service.called``.

    ``result_ref`` is the URI of the encoded result in the artifact store when
    it was too large for an event (``result`` is then null).
    """

    service: str
    method: str
    result: Any = None
    duration_us: int = 0
    result_ref: str | None = None


class ServiceFailed(Event, frozen=True, kw_only=True, tag="service.failed"):
    """A service call's committed failure; ``traceback`` is the exception's Python traceback (bounded)."""

    service: str
    method: str
    error_type: str
    message: str
    duration_us: int = 0
    traceback: str = ""


class ValueRecorded(Event, frozen=True, kw_only=True, tag="value.recorded"):
    """A non-deterministic value taken through the context (time, id, random)."""

    kind: Literal["now", "uuid", "random"]
    value: Any


# --- waits ----------------------------------------------------------------------


class WaitRequested(Event, frozen=True, kw_only=True, tag="wait.requested"):
    wait_id: str
    kind: str
    prompt: str = ""
    payload_schema: dict[str, Any] = {}
    channel: str = "console"
    deadline_us: int | None = None


class WaitResumed(Event, frozen=True, kw_only=True, tag="wait.resumed"):
    """A wait's answer; ``parent`` is its ``wait.requested``.

    ``command_seq`` is the command stream sequence of the resume command that
    carried the answer (``None`` when it was answered inline).
    """

    wait_id: str
    payload: Any = None
    command_seq: int | None = None


class WaitExpired(Event, frozen=True, kw_only=True, tag="wait.expired"):
    wait_id: str
    command_seq: int | None = None


# --- channel and checkpoints -------------------------------------------------------


class ChannelSent(Event, frozen=True, kw_only=True, tag="channel.sent"):
    """A message the run sent on a channel (not sent again on replay)."""

    channel: str
    text: str


class CheckpointSaved(Event, frozen=True, kw_only=True, tag="checkpoint.saved"):
    """A manual checkpoint: ``context.checkpoint(key, state)`` inside ``node_id``."""

    key: str
    state: Any = None


# --- artifacts --------------------------------------------------------------------


class ArtifactSaved(Event, frozen=True, kw_only=True, tag="artifact.saved"):
    """Content saved by a node: ``artifact_id`` is the content's sha256, ``uri`` where it is stored.

    ``run_id``/``node_id`` name the producer, ``tool`` the producing node's
    tool, so lineage can walk from an artifact back to the inputs it came from.
    """

    artifact_id: str
    uri: str
    kind: str = ""
    name: str = ""
    mime: str = ""
    size: int = 0
    labels: dict[str, Any] = {}
    tool: str = ""


# --- memory -----------------------------------------------------------------------


class MemoryRecorded(Event, frozen=True, kw_only=True, tag="memory.recorded"):
    """An entry of a run's memory: ``context.memory().record(kind, data, tags=..., name=...)``.

    ``text`` is the entry's searchable text (lexical search matches its words).
    """

    kind: str
    data: Any = None
    name: str = ""
    tags: list[str] = []
    text: str = ""


# --- agent services: model calls, retrieval, visualisation ---------------------------


class LlmCalled(Event, frozen=True, kw_only=True, tag="llm.called"):
    """A model call of ``context.llm(profile)``: the request as sent (without credentials).

    ``operation`` is ``chat`` (one model turn, streamed or not) or ``embed``.
    ``request`` holds the messages, tools and parameters; when their encoding
    is too large for an event it is stored in the artifact store and
    ``request_ref`` is its URI (``request`` is then null). ``request_digest``
    identifies the request on replay. ``idempotency_key`` is sent to the
    endpoint with every attempt of the call.
    """

    profile: str
    model: str
    operation: Literal["chat", "embed"]
    request: Any = None
    request_ref: str | None = None
    request_digest: str
    streamed: bool = False
    idempotency_key: str = ""


class LlmReturned(Event, frozen=True, kw_only=True, tag="llm.returned"):
    """A model call's complete response; ``parent`` is its ``llm.called``.

    ``response`` is the assistant message (``content``, ``tool_calls``) or the
    embedding vectors; ``response_ref`` is its URI in the artifact store when
    it was too large for an event. Token counts are as the endpoint reported
    them (0 when it reported none); ``attempts`` counts the HTTP attempts the
    call took (retries after 408/409/429/5xx).
    """

    profile: str
    model: str = ""
    operation: Literal["chat", "embed"]
    response: Any = None
    response_ref: str | None = None
    finish_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    attempts: int = 1
    duration_us: int = 0


class LlmFailed(Event, frozen=True, kw_only=True, tag="llm.failed"):
    """A model call's committed failure; ``parent`` is its ``llm.called``.

    The endpoint failed for good (after ``attempts``), or it answered and the
    answer was refused (invalid JSON, a schema or ``response_model`` it does
    not satisfy): then the tokens it spent are counted here.
    """

    profile: str
    model: str = ""
    operation: Literal["chat", "embed"]
    error_type: str
    message: str
    attempts: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    duration_us: int = 0
    traceback: str = ""


class RagCorpusAdded(Event, frozen=True, kw_only=True, tag="rag.corpus_added"):
    """``context.rag().add_corpus(corpus, ...)``: a corpus and the embedding profile its chunks use."""

    corpus: str
    embed_profile: str = "default"
    meta: dict[str, Any] = {}


class RagUpserted(Event, frozen=True, kw_only=True, tag="rag.upserted"):
    """Documents added to (or replaced in) a corpus.

    The chunks, their metadata and their embeddings are stored in the
    artifact store (``chunks_ref``, a URI); every host folds this event into
    its own vector index. ``docs`` lists each document's ``doc_id``,
    ``title``, ``source`` and chunk count.
    """

    corpus: str
    docs: list[dict[str, Any]] = []
    chunks_ref: str
    chunk_count: int = 0
    dim: int = 0
    embed_model: str = ""
    input_tokens: int = 0


class VizRecorded(Event, frozen=True, kw_only=True, tag="viz.recorded"):
    """A point of a visualisation track: ``context.viz().scalar/vector/matrix/image_*``.

    ``value`` holds a scalar, a vector or a matrix; an image is an artifact
    (``artifact_uri``, ``mime``).
    """

    track: str
    kind: Literal["scalar", "vector", "matrix", "image"]
    step: int | None = None
    value: Any = None
    artifact_uri: str | None = None
    mime: str = ""
    meta: dict[str, Any] = {}


# --- observability --------------------------------------------------------------


class LogRecorded(Event, frozen=True, kw_only=True, tag="log.recorded"):
    level: Literal["debug", "info", "warning", "error", "critical"]
    message: str
    fields: dict[str, Any] = {}


AnyEvent: TypeAlias = (
    RunStarted
    | RunClaimed
    | RunCompleted
    | RunFailed
    | RunCancelled
    | RunWaiting
    | NodeReady
    | NodeStarted
    | NodeCompleted
    | NodeFailed
    | NodeSkipped
    | ToolCalled
    | ToolReturned
    | ToolFailed
    | ServiceCalled
    | ServiceReturned
    | ServiceFailed
    | ValueRecorded
    | WaitRequested
    | WaitResumed
    | WaitExpired
    | ChannelSent
    | CheckpointSaved
    | ArtifactSaved
    | MemoryRecorded
    | LogRecorded
    | LlmCalled
    | LlmReturned
    | LlmFailed
    | RagCorpusAdded
    | RagUpserted
    | VizRecorded
)

EVENT_TYPES: dict[str, type[Event]] = {cls.__struct_config__.tag: cls for cls in AnyEvent.__args__}
