"""Which wait a resume answers, anywhere in the tree of runs under the run it names.

A resume names a run (``ag.cmd.resume.<run_id>``) and optionally a wait. The
wait may belong to that run or to a run nested under it, at any depth:

* a graph called inside a run: the child run ``<run_id>-<node_id>``;
* a node run of a static graph (:func:`~aethergraph.core.ids.node_run_id`):
  a ``DualStageTool`` node, a tool that takes a context, a nested graph;
* a child run started with ``context.runs().spawn_run`` (its id derives from
  ``<node_id>.spawn<n>``).

:func:`locate_wait` is the one resolution used by the command handler, by
``aethergraph.resume()`` and by ``aethergraph resume``. It reads the tree from
the journals: each run's journal names the steps that can hold a nested run
(``tool.called``, ``node.ready``, ``node.started``), and only steps still open
(no outcome journaled) of runs that have not ended are followed, so a resume
reads the journals of the runs that can still wait, not the whole tree.

Wait ids (``w<seq>``) are unique within one run only. A wait is *referred to*
from the addressed run as ``<wait_id>`` when the run holds it itself and as
``<nested_run_id>/<wait_id>`` when a nested run holds it. A resume may name a
wait either way: a plain id names the addressed run's own open wait by that
id, else the only open wait by that id in the tree.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aethergraph.core.errors import ResumeRejectedError
from aethergraph.core.ids import ROOT_NODE, child_run_id, node_run_id
from aethergraph.core.journal.journal_state import JournalState, journal_state, select_wait
from aethergraph.core.journal.ports import RunEnvironment
from aethergraph.core.journal.run_journal import load_journal
from aethergraph.core.wire.events import (
    AnyEvent,
    NodeCompleted,
    NodeFailed,
    NodeReady,
    NodeSkipped,
    NodeStarted,
    ToolCalled,
    ToolFailed,
    ToolReturned,
    WaitRequested,
    WaitResumed,
)

__all__ = [
    "LocatedWait",
    "TreeRun",
    "WAIT_REF_SEPARATOR",
    "locate_wait",
    "nested_runs",
    "read_tree_run",
    "split_wait_ref",
    "step_children",
    "wait_ref",
]

WAIT_REF_SEPARATOR = "/"


@dataclass(frozen=True, kw_only=True)
class TreeRun:
    """One run of a tree as its journal says now."""

    run_id: str
    chain: list[AnyEvent]
    last_stream_seq: int
    state: JournalState
    spawned: bool = False
    """Started with ``context.runs().spawn_run`` (a run driven on its own), not a step of its parent."""


@dataclass(frozen=True, kw_only=True)
class LocatedWait:
    """The open wait a resume of run ``addressed`` answers, and the run that holds it."""

    addressed: str
    run: TreeRun
    requested: WaitRequested

    @property
    def ref(self) -> str:
        """The wait as named from the addressed run (``w4`` or ``<nested_run_id>/w4``)."""
        return wait_ref(self.addressed, self.run.run_id, self.requested.wait_id)


def wait_ref(addressed: str, run_id: str, wait_id: str) -> str:
    return wait_id if run_id == addressed else f"{run_id}{WAIT_REF_SEPARATOR}{wait_id}"


def split_wait_ref(wait_id: str) -> tuple[str | None, str]:
    """``"<run_id>/<wait_id>"`` as ``(run_id, wait_id)``; a plain wait id as ``(None, wait_id)``."""
    run_id, separator, local = wait_id.rpartition(WAIT_REF_SEPARATOR)
    return (run_id or None, local) if separator else (None, wait_id)


async def read_tree_run(env: RunEnvironment, run_id: str, *, spawned: bool = False) -> TreeRun:
    chain, last_stream_seq = await load_journal(env, run_id)
    return TreeRun(
        run_id=run_id,
        chain=chain,
        last_stream_seq=last_stream_seq,
        state=journal_state(run_id, chain),
        spawned=spawned,
    )


def step_children(run: TreeRun, *, open_only: bool) -> list[str]:
    """Ids of the nested runs the run's steps may hold (only of steps with no outcome, if ``open_only``)."""

    chain = run.chain
    ended_calls = {e.parent for e in chain if isinstance(e, ToolReturned | ToolFailed)} if open_only else set()
    ended_nodes = {(e.node_id, e.attempt) for e in chain if isinstance(e, NodeCompleted | NodeFailed)}
    skipped = {e.node_id for e in chain if isinstance(e, NodeSkipped)}
    ids: list[str] = []
    for event in chain:
        if isinstance(event, ToolCalled) and event.node_id and event.seq not in ended_calls:
            ids.append(child_run_id(run.run_id, event.node_id))
        elif isinstance(event, NodeReady | NodeStarted) and event.node_id:
            if open_only and ((event.node_id, event.attempt) in ended_nodes or event.node_id in skipped):
                continue
            ids.append(node_run_id(run.run_id, event.node_id, event.attempt))
    return list(dict.fromkeys(ids))


def _first_spawns(runs: list[TreeRun]) -> dict[str, tuple[str, str]]:
    """The first child any node of ``runs`` may have spawned (``<node>.spawn1``), with its (run, node)."""
    nodes = dict.fromkeys(
        (run.run_id, node_id)
        for run in runs
        for node_id in [ROOT_NODE, *(e.node_id for e in run.chain if isinstance(e, ToolCalled) and e.node_id)]
    )
    return {child_run_id(run_id, f"{node_id}.spawn1"): (run_id, node_id) for run_id, node_id in nodes}


async def _later_spawns(env: RunEnvironment, first: dict[str, tuple[str, str]], started: set[str]) -> list[str]:
    """Children spawned by nodes whose first spawn started: ``.spawn2`` where a first exists, then ``.spawn3``, ..."""
    found = [child for child in first if child in started]
    pending = [first[child] for child in found]
    count = 2
    while pending:
        ids = {child_run_id(run_id, f"{node_id}.spawn{count}"): (run_id, node_id) for run_id, node_id in pending}
        later = await env.event_log.started_runs(list(ids))
        found.extend(child for child in ids if child in later)
        pending = [ids[child] for child in ids if child in later]
        count += 1
    return found


async def nested_runs(
    env: RunEnvironment, top: TreeRun, *, everything: bool = False, known: dict[str, bool] | None = None
) -> list[TreeRun]:
    """The runs nested under ``top`` that may still wait, breadth first (all of them with ``everything``).

    Each level is one batched lookup of which candidate runs exist (the open
    steps' runs and the nodes' first spawned children together; ``known``
    says for some whether they exist, looked up already), then one read per
    run found.
    """
    seen = {top.run_id}
    found: list[TreeRun] = []
    frontier = [top]
    known = known or {}
    while frontier:
        steps = [child for run in frontier for child in step_children(run, open_only=not everything)]
        steps = [child for child in dict.fromkeys(steps) if child not in seen]
        first = _first_spawns(frontier)
        candidates = list(dict.fromkeys(steps + list(first)))
        unknown = [child for child in candidates if child not in known]
        started = await env.event_log.started_runs(unknown) if unknown else set()
        started |= {child for child in candidates if known.get(child)}
        spawned = [child for child in await _later_spawns(env, first, started) if child not in seen]
        children = [(child, False) for child in steps if child in started] + [(child, True) for child in spawned]
        seen.update(child for child, _ in children)
        runs = await asyncio.gather(*(read_tree_run(env, child, spawned=flag) for child, flag in children))
        found.extend(runs)
        frontier = [run for run in runs if everything or run.state.ended is None]
    return found


def _node_of(addressed: str, run: TreeRun, wait: WaitRequested) -> str | None:
    """The node to show for a wait: its own in the addressed run; for a nested run's, the parent's node holding it.

    (A node run's only node is its tool call: the static graph's node that
    dispatched it says more.)
    """
    started = run.state.started
    if run.run_id == addressed or started is None or started.parent_node_id is None:
        return wait.node_id
    return started.parent_node_id


def describe_waits(addressed: str, waits: list[tuple[TreeRun, WaitRequested]]) -> str:
    parts = []
    for run, wait in waits:
        node = _node_of(addressed, run, wait)
        where = f"run {run.run_id}" + (f", node {node}" if node else "")
        parts.append(f"{wait_ref(addressed, run.run_id, wait.wait_id)} ({where}, {wait.kind}: {wait.prompt!r})")
    return "; ".join(parts)


def _listing(addressed: str, waits: list[tuple[TreeRun, WaitRequested]]) -> tuple[dict[str, Any], ...]:
    return tuple(
        {
            "wait_id": wait_ref(addressed, run.run_id, wait.wait_id),
            "run_id": run.run_id,
            "node_id": _node_of(addressed, run, wait),
            "kind": wait.kind,
            "prompt": wait.prompt,
        }
        for run, wait in waits
    )


def _check_live(top: TreeRun, wait_id: str | None) -> None:
    """Refuse a resume of a run that does not exist or has ended (whatever its tree holds)."""
    state = top.state
    if state.started is None or state.ended is not None:
        select_wait(state, wait_id)  # raises unknown_run / run_ended


async def _ended_descendant(env: RunEnvironment, run_id: str, ancestor: str) -> TreeRun | None:
    """Run ``run_id`` if it is nested under ``ancestor`` (a run the tree walk passed by: it ended)."""
    run = await read_tree_run(env, run_id)
    current = run
    for _ in range(64):  # nesting depth bound: a parent link never loops, but a stray journal could
        started = current.state.started
        if started is None or started.parent_run_id is None:
            return None
        if started.parent_run_id == ancestor:
            return run
        current = await read_tree_run(env, started.parent_run_id)
    return None


def _closed_error(addressed: str, holder: TreeRun, wait_id: str) -> ResumeRejectedError:
    closed = holder.state.closed_waits[wait_id]
    ref = wait_ref(addressed, holder.run_id, wait_id)
    how = "resumed" if isinstance(closed, WaitResumed) else "expired"
    return ResumeRejectedError(
        f"wait {ref} is closed: it was already {how} (event {closed.seq} of run {holder.run_id}); "
        "a wait is answered once",
        run_id=addressed,
        reason="wait_closed",
        wait_id=ref,
    )


def _in_nested(addressed: str, holder: TreeRun, wait_id: str) -> LocatedWait:
    """The wait ``wait_id`` of nested run ``holder``, or the rejection naming it as seen from ``addressed``."""
    ref = wait_ref(addressed, holder.run_id, wait_id)
    if wait_id in holder.state.closed_waits:
        raise _closed_error(addressed, holder, wait_id)
    try:
        return LocatedWait(addressed=addressed, run=holder, requested=select_wait(holder.state, wait_id))
    except ResumeRejectedError as exc:
        raise ResumeRejectedError(str(exc), run_id=addressed, reason=exc.reason, wait_id=ref) from None


async def locate_wait(
    env: RunEnvironment, run_id: str, wait_id: str | None, *, top: TreeRun | None = None
) -> LocatedWait:
    """The open wait a resume of ``run_id`` naming ``wait_id`` (or none) answers, anywhere in its tree.

    Raises :class:`ResumeRejectedError` (``unknown_run``, ``run_ended``,
    ``no_open_wait``, ``ambiguous_wait`` listing the open waits,
    ``unknown_wait``, ``wait_closed``). ``top`` is the run's journal if already read.
    """
    known: dict[str, bool] = {}
    if top is None:
        # Whether the run's body spawned a child is looked up while its journal is read: for a run whose
        # steps hold no nested run, the tree is then known after one round trip of reads.
        root_spawn = child_run_id(run_id, f"{ROOT_NODE}.spawn1")
        read, spawned = await asyncio.gather(read_tree_run(env, run_id), env.event_log.started_runs([root_spawn]))
        known[root_spawn] = root_spawn in spawned
        top = read
    _check_live(top, wait_id)
    target, local = (None, None) if wait_id is None else split_wait_ref(wait_id)
    if target == run_id:
        target = None
    if target is None and local is not None and local in top.state.open_waits:
        return LocatedWait(addressed=run_id, run=top, requested=top.state.open_waits[local])
    nested = await nested_runs(env, top, known=known)
    if target is not None and local is not None:
        holder = next((run for run in nested if run.run_id == target), None)
        if holder is None:
            holder = await _ended_descendant(env, target, run_id)
        if holder is None:
            raise ResumeRejectedError(
                f"run {target} is no open run nested under run {run_id}; `aethergraph status {run_id}` "
                "lists the open waits of its tree",
                run_id=run_id,
                reason="unknown_wait",
                wait_id=wait_id,
            )
        return _in_nested(run_id, holder, local)
    tree = [top, *nested]
    open_waits = [(run, w) for run in tree if run.state.ended is None for w in run.state.open_waits.values()]
    if local is not None:
        return _by_plain_id(run_id, tree, open_waits, local)
    if len(open_waits) == 1:
        holder, requested = open_waits[0]
        return LocatedWait(addressed=run_id, run=holder, requested=requested)
    if not open_waits:
        raise ResumeRejectedError(f"run {run_id} has no open wait", run_id=run_id, reason="no_open_wait", wait_id=None)
    raise ResumeRejectedError(
        f"run {run_id} has {len(open_waits)} open waits: {describe_waits(run_id, open_waits)}; "
        "name one with wait_id (`--wait-id` on the command line)",
        run_id=run_id,
        reason="ambiguous_wait",
        open_waits=_listing(run_id, open_waits),
    )


def _by_plain_id(
    run_id: str, tree: list[TreeRun], open_waits: list[tuple[TreeRun, WaitRequested]], wait_id: str
) -> LocatedWait:
    matches = [(run, w) for run, w in open_waits if w.wait_id == wait_id]
    if len(matches) == 1:
        holder, requested = matches[0]
        return LocatedWait(addressed=run_id, run=holder, requested=requested)
    if matches:
        raise ResumeRejectedError(
            f"runs of the tree of run {run_id} have {len(matches)} open waits {wait_id}: "
            f"{describe_waits(run_id, matches)}; name one as <run_id>/{wait_id}",
            run_id=run_id,
            reason="ambiguous_wait",
            wait_id=wait_id,
            open_waits=_listing(run_id, matches),
        )
    closer = next((run for run in tree if wait_id in run.state.closed_waits), None)
    if closer is not None:
        raise _closed_error(run_id, closer, wait_id)
    raise ResumeRejectedError(
        f"run {run_id} has no wait {wait_id!r} in its tree; open waits: {describe_waits(run_id, open_waits) or 'none'}",
        run_id=run_id,
        reason="unknown_wait",
        wait_id=wait_id,
        open_waits=_listing(run_id, open_waits),
    )
