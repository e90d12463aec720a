"""Replaying a run from its journal.

A run is resumed by re-running its function in replay mode: each step the
code takes is matched, in order, against the journal's recorded steps; a
recorded outcome is returned (or its failure raised) without executing
anything, and once the journal is exhausted execution goes live. A step that
differs from the recorded one (another tool, other arguments, another kind of
step) raises :class:`NonDeterminismError`.
"""

from __future__ import annotations

import builtins
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aethergraph.core.errors import NonDeterminismError, ReplayedError, keep_traceback, public_error_class
from aethergraph.core.ids import ROOT_NODE
from aethergraph.core.wire.events import (
    ArtifactSaved,
    ChannelSent,
    CheckpointSaved,
    Event,
    LlmCalled,
    LlmFailed,
    LlmReturned,
    LogRecorded,
    MemoryRecorded,
    RagCorpusAdded,
    RagUpserted,
    RunClaimed,
    RunStarted,
    ServiceCalled,
    ServiceFailed,
    ServiceReturned,
    ToolCalled,
    ToolFailed,
    ToolReturned,
    ValueRecorded,
    VizRecorded,
    WaitExpired,
    WaitRequested,
    WaitResumed,
)

__all__ = ["ChainBuilder", "RecordedStep", "ReplayCursor", "journal_chain", "rebuild_error"]

E = TypeVar("E", bound=Event)


class ChainBuilder:
    """Builds a run's journal incrementally from its stored events, in stream order.

    The journal is the chain of events with ``seq`` 1, 2, 3, ... whose
    ``epoch`` is that of the writer owning the run at that point: a writer's
    epoch starts at its (fenced) ``run.started`` or ``run.claimed`` event.
    Anything else was written by a fenced-out writer, or by someone who is not
    a writer at all, and is not part of the journal.

    A writer that lost an event to a broker fault republishes it, so an event
    may be stored after later ones of its run: an event beyond the chain's
    next position is held until the gap before it fills. At each position the
    first stored candidate that fits is taken; later ones are ignored.
    """

    __slots__ = ("_ahead", "_epoch", "chain")

    def __init__(self) -> None:
        self.chain: list[Event] = []
        self._epoch = 1
        self._ahead: dict[int, list[Event]] = {}

    def add(self, event: Event) -> list[Event]:
        """Add the next stored event; returns the events it appended to the journal (in order, often none)."""
        position = len(self.chain) + 1
        if event.seq > position:
            self._ahead.setdefault(event.seq, []).append(event)
            return []
        if event.seq != position or not self._fits(event):
            return []
        grown = [event]
        self._take(event)
        while self._ahead:
            candidates = self._ahead.pop(len(self.chain) + 1, None)
            if candidates is None:
                break
            follower = next((held for held in candidates if self._fits(held)), None)
            if follower is None:
                break
            grown.append(follower)
            self._take(follower)
        return grown

    def _fits(self, event: Event) -> bool:
        if isinstance(event, (RunStarted, RunClaimed)):
            return event.epoch == event.seq
        return event.epoch == self._epoch

    def _take(self, event: Event) -> None:
        if isinstance(event, (RunStarted, RunClaimed)):
            self._epoch = event.seq
        self.chain.append(event)


def journal_chain(events: Iterable[E]) -> list[E]:
    """A run's journal from its stored events, in stream order (see :class:`ChainBuilder`)."""
    builder = ChainBuilder()
    for event in events:
        builder.add(event)
    return builder.chain  # type: ignore[return-value]


# Events that open a step the re-running code takes again, and the outcomes of calls.
_OPENINGS = (
    ToolCalled,
    ValueRecorded,
    WaitRequested,
    ChannelSent,
    ServiceCalled,
    ArtifactSaved,
    MemoryRecorded,
    LlmCalled,
    RagCorpusAdded,
    RagUpserted,
    VizRecorded,
)
_CALLS = (ToolCalled, ServiceCalled, LlmCalled)
_OUTCOMES = (ToolReturned, ToolFailed, ServiceReturned, ServiceFailed, LlmReturned, LlmFailed)

Opening = (
    ToolCalled
    | ValueRecorded
    | WaitRequested
    | ChannelSent
    | ServiceCalled
    | ArtifactSaved
    | MemoryRecorded
    | LlmCalled
    | RagCorpusAdded
    | RagUpserted
    | VizRecorded
)
Outcome = ToolReturned | ToolFailed | ServiceReturned | ServiceFailed | LlmReturned | LlmFailed


@dataclass(frozen=True, slots=True)
class RecordedStep:
    opening: Opening
    outcome: Outcome | None


def _describe(event: Event) -> str:
    if isinstance(event, ToolCalled):
        return f"tool {event.tool!r} (node {event.node_id}, arguments digest {event.args_digest})"
    if isinstance(event, ValueRecorded):
        return f"context.{event.kind}()"
    if isinstance(event, WaitRequested):
        return f"a {event.kind!r} wait (node {event.node_id}, prompt {event.prompt!r})"
    if isinstance(event, ChannelSent):
        return f"a message on channel {event.channel!r} (node {event.node_id})"
    if isinstance(event, ServiceCalled):
        where = f"node {event.node_id}, arguments digest {event.args_digest}"
        return f"service call {event.service}.{event.method}() ({where})"
    if isinstance(event, ArtifactSaved):
        return f"an artifact save (node {event.node_id}, content {event.artifact_id[:16]}...)"
    if isinstance(event, MemoryRecorded):
        return f"a {event.kind!r} memory record (node {event.node_id})"
    if isinstance(event, LlmCalled):
        where = f"node {event.node_id}, request digest {event.request_digest}"
        return f"a model call llm({event.profile!r}).{event.operation}() ({where})"
    if isinstance(event, (RagCorpusAdded, RagUpserted)):
        return f"{event.__struct_config__.tag} of corpus {event.corpus!r} (node {event.node_id})"
    if isinstance(event, VizRecorded):
        return f"a viz point on track {event.track!r} (node {event.node_id})"
    return str(event.__struct_config__.tag)


def _inside_finished_calls(journal: Sequence[Event], outcomes: Mapping[int, Event]) -> set[int]:
    """Sequences of the events recorded inside tool or service calls that finished.

    Replay returns a finished call's recorded outcome without executing it, so
    the steps its code took (its own waits, values, messages, nested tool
    calls) are not taken again. An event is inside the call whose
    ``tool.called`` its causal chain reaches without passing that call's
    outcome; an outcome leads on to whatever encloses its call.
    """
    by_seq = {event.seq: event for event in journal}
    enclosing: dict[int, int | None] = {}

    def enclosing_call(seq: int | None) -> int | None:
        """The ``tool.called``/``service.called`` enclosing the event with sequence ``seq`` (None: the graph body)."""
        path: list[int] = []
        found: int | None = None
        while seq is not None and seq not in enclosing:
            event = by_seq.get(seq)
            if event is None:
                break
            if isinstance(event, _CALLS):
                found = seq
                break
            path.append(seq)
            if isinstance(event, _OUTCOMES) and event.parent is not None:
                opening = by_seq.get(event.parent)
                seq = opening.parent if opening is not None else None
            else:
                seq = event.parent
        else:
            if seq is not None:
                found = enclosing[seq]
        for visited in path:
            enclosing[visited] = found
        return found

    hidden: set[int] = set()
    for event in journal:
        call = enclosing_call(event.parent) if not isinstance(event, _OUTCOMES) else None
        while call is not None:
            if call in outcomes or call in hidden:
                hidden.add(event.seq)
                break
            opening = by_seq[call]
            call = enclosing_call(opening.parent)
    return hidden


class ReplayCursor:
    """Hands recorded steps to a re-running function, in journal order."""

    __slots__ = ("_logs_to_skip", "_run_id", "_steps", "checkpoints", "memories", "resolutions")

    def __init__(self, run_id: str, journal: Sequence[Event]) -> None:
        self._run_id = run_id
        outcomes: dict[int, Outcome] = {
            event.parent: event for event in journal if isinstance(event, _OUTCOMES) and event.parent is not None
        }
        hidden = _inside_finished_calls(journal, outcomes)
        self._steps: deque[RecordedStep] = deque(
            RecordedStep(event, outcomes.get(event.seq) if isinstance(event, _CALLS) else None)
            for event in journal
            if isinstance(event, _OPENINGS) and event.seq not in hidden
        )
        self.resolutions: dict[str, WaitResumed | WaitExpired] = {
            event.wait_id: event for event in journal if isinstance(event, (WaitResumed, WaitExpired))
        }
        self.checkpoints: dict[tuple[str | None, str], CheckpointSaved] = {
            (event.node_id, event.key): event for event in journal if isinstance(event, CheckpointSaved)
        }
        # The run's memory as journaled so far (context.memory() reads continue from it).
        self.memories: list[MemoryRecorded] = [event for event in journal if isinstance(event, MemoryRecorded)]
        # Only the graph body re-runs on replay; logs written inside recorded
        # tool or service calls are not repeated, so only the body's own logs are skipped.
        self._logs_to_skip = sum(
            1
            for event in journal
            if isinstance(event, LogRecorded) and event.node_id == ROOT_NODE and event.seq not in hidden
        )

    @property
    def active(self) -> bool:
        """True while recorded steps remain to be replayed."""
        return bool(self._steps)

    @property
    def remaining(self) -> int:
        """How many recorded steps remain to be replayed."""
        return len(self._steps)

    def skip_log(self) -> bool:
        """True if a log record was already journaled and must not be appended again."""
        if self._logs_to_skip:
            self._logs_to_skip -= 1
            return True
        return False

    def _mismatch(self, recorded: Event, attempted: str) -> NonDeterminismError:
        described = _describe(recorded)
        return NonDeterminismError(
            f"replay diverged from the journal at event {recorded.seq}: the journal recorded "
            f"{described}, the code now asked for {attempted}. The graph's code changed since "
            "the run started, or it takes non-deterministic values (time, ids, randomness, "
            "external state) outside context.now()/uuid()/random() and tools",
            run_id=self._run_id,
            seq=recorded.seq,
            recorded=described,
            attempted=attempted,
        )

    def take(self, matches: Callable[[Event], bool], attempted: str | Callable[[], str]) -> RecordedStep | None:
        """The next recorded step if ``matches`` accepts its opening; ``None`` when replay is over.

        Raises :class:`NonDeterminismError` (recorded vs ``attempted``) if the next recorded step is another.
        """
        if not self._steps:
            return None
        step = self._steps[0]
        if not matches(step.opening):
            raise self._mismatch(step.opening, attempted if isinstance(attempted, str) else attempted())
        self._steps.popleft()
        return step

    def unfinished(self) -> NonDeterminismError | None:
        """The divergence if the code finished while recorded steps remain."""
        if not self._steps:
            return None
        return self._mismatch(self._steps[0].opening, "no further step (the code returned)")

    def peek_wait(self, node_id: str) -> WaitRequested | None:
        """The recorded wait if the next step is a wait opened by ``node_id``."""
        if not self._steps:
            return None
        opening = self._steps[0].opening
        return opening if isinstance(opening, WaitRequested) and opening.node_id == node_id else None


def rebuild_error(event: ToolFailed | ServiceFailed | LlmFailed) -> BaseException:
    """The recorded failure as an exception of the same type where that type can be rebuilt."""
    module, _, name = event.error_type.rpartition(".")
    owner = sys.modules.get(module) if module else builtins
    cls = public_error_class(event.error_type) or (
        getattr(owner, name, None) if owner is not None and "." not in name else None
    )
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            rebuilt = cls(event.message)
        except Exception:  # noqa: BLE001 - a type that cannot be built from a message
            rebuilt = None
        # A constructor that formats its argument would change the message: only an exact rebuild counts.
        if rebuilt is not None and str(rebuilt) == event.message:
            return keep_traceback(rebuilt, getattr(event, "traceback", ""))
    replayed = ReplayedError(event.message, error_type=event.error_type, run_id=event.run_id, node_id=event.node_id)
    return keep_traceback(replayed, getattr(event, "traceback", ""))
