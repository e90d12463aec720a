"""Replaying a recorded journal against the current code, with no bus.

``aethergraph events RUN --json > run.jsonl`` saves a run's journal; later,
after the graph's code changed, :func:`replay` runs the graph body against
that history the way a worker continuing the run would: every step the code
takes is matched against the recorded one and given the recorded outcome, and
nothing executes (no tool, no model call, no wait). A step that differs
raises :class:`~aethergraph.errors.NonDeterminismError` naming the run, the
sequence number, what was recorded and what the code asked for; reaching the
end of the history is success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from aethergraph.core.errors import HistoryEnded, NonDeterminismError, RunSuspended, error_type_name
from aethergraph.core.journal.ports import RunEnvironment
from aethergraph.core.journal.replay import journal_chain
from aethergraph.core.model.spec import CallableSpec
from aethergraph.core.run.executor import claim_run, drive_run
from aethergraph.core.wire.codec import decode_event
from aethergraph.core.wire.events import AnyEvent, RunCompleted, RunFailed, RunStarted, RunWaiting

from .offline_log import MemoryEventLog
from .offline_ports import offline_environment

__all__ = ["ReplayResult", "load_journal", "replay", "replay_async"]

ReplayOutcome = Literal["completed", "failed", "waiting", "history_ended", "structure_matched"]

_END_TYPES = (RunCompleted, RunFailed, RunWaiting)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """How a replay ended.

    ``outcome``: ``completed`` / ``failed`` / ``waiting`` as the recorded run
    did; ``history_ended`` when the recorded run was still going and the code
    reached its last recorded step; ``structure_matched`` for a static graph,
    whose check is its structure digest. ``steps_replayed`` counts the
    recorded steps the code took again.
    """

    run_id: str
    graph: str
    outcome: ReplayOutcome
    steps_replayed: int
    outputs: dict[str, Any] | None = None
    error: str | None = None


def load_journal(source: str | Path | Iterable[AnyEvent]) -> list[AnyEvent]:
    """Events from a file of one JSON event per line (``aethergraph events RUN --json``), or as given."""
    if isinstance(source, (str, Path)):
        events: list[AnyEvent] = []
        for number, line in enumerate(Path(source).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                events.append(decode_event(line.encode()))
            except msgspec.DecodeError as exc:
                raise ValueError(f"{source}:{number} is not an AetherGraph event: {exc}") from None
        return events
    return list(source)


def _spec_of(graph: object) -> CallableSpec:
    spec = graph if isinstance(graph, CallableSpec) else getattr(graph, "__aethergraph_spec__", None)
    if not isinstance(spec, CallableSpec):
        raise TypeError(f"{graph!r} is not a graph_fn, static graph or tool; pass the decorated object")
    return spec


def _recorded_run(events: list[AnyEvent], spec: CallableSpec) -> list[AnyEvent]:
    tops = [event for event in events if isinstance(event, RunStarted)]
    if not tops:
        raise ValueError("the journal has no run.started: save it with `aethergraph events RUN --json`")
    run_id = tops[0].run_id
    chain = journal_chain(event for event in events if event.run_id == run_id)
    started = chain[0]
    assert isinstance(started, RunStarted)
    if started.graph_id != spec.name:
        raise NonDeterminismError(
            f"run {run_id} is a run of graph {started.graph_id!r}, not of {spec.label}; replay it with that graph",
            run_id=run_id,
            seq=started.seq,
            recorded=f"graph {started.graph_id!r}",
            attempted=f"graph {spec.name!r}",
        )
    return chain


async def replay_async(source: str | Path | Iterable[AnyEvent], graph: object) -> ReplayResult:
    """:func:`replay` inside a running event loop."""
    spec = _spec_of(graph)
    chain = _recorded_run(load_journal(source), spec)
    started = chain[0]
    assert isinstance(started, RunStarted)
    run_id = started.run_id
    if spec.kind == "static":
        digest = spec.task_graph().digest
        if started.plan_digest and started.plan_digest != digest:
            raise NonDeterminismError(
                f"run {run_id} was recorded with another structure of graph {spec.name!r} "
                f"(digest {started.plan_digest}, the current code builds {digest})",
                run_id=run_id,
                seq=started.seq,
                recorded=f"graph digest {started.plan_digest}",
                attempted=f"graph digest {digest}",
            )
        return ReplayResult(run_id=run_id, graph=spec.name, outcome="structure_matched", steps_replayed=0)
    log = MemoryEventLog(chain)
    env = offline_environment(log)
    return await _replay_body(spec, chain, started, env, log)


async def _replay_body(
    spec: CallableSpec, chain: list[AnyEvent], started: RunStarted, env: RunEnvironment, log: MemoryEventLog
) -> ReplayResult:
    scope = await claim_run(spec, started, chain, 0, env, reason="replay")
    scope.offline = True
    replay = scope.replay
    assert replay is not None
    total = replay.remaining
    outputs: dict[str, Any] | None = None
    error: str | None = None
    try:
        outputs = await drive_run(spec, started.inputs, scope, started.seq)
        outcome: ReplayOutcome = "completed"
    except HistoryEnded:
        outcome = "history_ended"
    except RunSuspended:
        outcome = "waiting"
    except NonDeterminismError:
        raise
    except Exception as exc:  # noqa: BLE001 - the body failed: compared with the record below
        outcome, error = "failed", f"{error_type_name(exc)}: {exc}"
    result = ReplayResult(
        run_id=started.run_id,
        graph=spec.name,
        outcome=outcome,
        steps_replayed=total - replay.remaining,
        outputs=outputs,
        error=error,
    )
    _check_end(chain, log.appended, result)
    return result


def _check_end(chain: list[AnyEvent], appended: list[AnyEvent], result: ReplayResult) -> None:
    """The replay must end the way the record did wherever the record ended."""
    recorded = next((event for event in reversed(chain) if isinstance(event, _END_TYPES)), None)
    if recorded is None or chain[-1] is not recorded or result.outcome == "history_ended":
        return  # the record goes on past its last end (or never ended): nothing to compare
    ended = next((event for event in reversed(appended) if isinstance(event, _END_TYPES)), None)
    same = type(ended) is type(recorded)
    if same and isinstance(recorded, RunCompleted) and isinstance(ended, RunCompleted):
        same = _plain(ended.outputs) == _plain(recorded.outputs)
    if same and isinstance(recorded, RunFailed) and isinstance(ended, RunFailed):
        same = ended.error_type == recorded.error_type
    if not same:
        raise NonDeterminismError(
            f"run {result.run_id} replayed to a different end: recorded {_describe_end(recorded)}, "
            f"the current code ends with {_describe_end(ended)}",
            run_id=result.run_id,
            seq=recorded.seq,
            recorded=_describe_end(recorded),
            attempted=_describe_end(ended),
        )


def _plain(value: Mapping[str, Any]) -> Any:
    return msgspec.json.decode(msgspec.json.encode(value))


def _describe_end(event: AnyEvent | None) -> str:
    if isinstance(event, RunCompleted):
        return f"run.completed with outputs {_plain(event.outputs)!r}"
    if isinstance(event, RunFailed):
        return f"run.failed ({event.error_type})"
    if isinstance(event, RunWaiting):
        return f"run.waiting on {event.wait_id}"
    return "no end"


def replay(source: str | Path | Iterable[AnyEvent], graph: object) -> ReplayResult:
    """Replay a recorded journal (a file from ``aethergraph events RUN --json``, or events) against ``graph``.

    Raises :class:`~aethergraph.errors.NonDeterminismError` where the current
    code diverges from the record, or ends differently; returns how the
    replay ended otherwise. Needs no bus: nothing executes.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(replay_async(source, graph))
    raise RuntimeError("replay() was called inside a running event loop; use `await replay_async(...)`")
