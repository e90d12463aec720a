"""What :func:`aethergraph.resume` tells its caller: the outcome of its command, or why there is none yet."""

from __future__ import annotations

import asyncio

from aethergraph.bus.commands import ResumeOutcome
from aethergraph.bus.leases import JetStreamLeases
from aethergraph.core.journal.ports import RunEnvironment
from aethergraph.core.journal.run_journal import load_journal
from aethergraph.core.wire.events import RunStarted

__all__ = ["await_resume_outcome"]

# How long resume() waits for an outcome before it asks whether any live process serves the graph.
_OUTCOME_GRACE_S = 0.25


async def await_resume_outcome(
    env: RunEnvironment,
    leases: JetStreamLeases,
    outcomes: asyncio.Queue[ResumeOutcome],
    run_id: str,
    command_seq: int,
    timeout: float,  # noqa: ASYNC109 - the public resume()'s
) -> ResumeOutcome:
    """The outcome of resume command ``command_seq`` from ``outcomes``, or a ``queued`` one saying why there is none.

    After a short grace it asks the heartbeats whether any live process
    serves the graph that would continue the run; if none does, it says so at
    once (``no_process``) rather than waiting out ``timeout`` (``no_answer``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    asked = False
    while True:
        wait_s = deadline - loop.time()
        if not asked:
            wait_s = min(wait_s, _OUTCOME_GRACE_S)
        try:
            async with asyncio.timeout(max(0.0, wait_s)):
                while True:
                    outcome = await outcomes.get()
                    if outcome.command_seq == command_seq:
                        return outcome
        except TimeoutError:
            pass
        if loop.time() >= deadline:
            message = f"no process answered within {timeout:g}s; the command stays queued until one takes it"
            return ResumeOutcome(
                run_id=run_id, command_seq=command_seq, status="queued", reason="no_answer", message=message
            )
        asked = True
        graph_id = await _root_graph(env, run_id)
        if not await leases.serving(graph_id):
            message = (
                f"no live process serves graph {graph_id!r}, so nothing can continue run {run_id} yet; the command "
                f"stays queued until one does: start `aethergraph worker <the module that defines {graph_id}>`"
            )
            return ResumeOutcome(
                run_id=run_id, command_seq=command_seq, status="queued", reason="no_process", message=message
            )


def _queued(run_id: str, command_seq: int, reason: str, message: str) -> ResumeOutcome:
    return ResumeOutcome(run_id=run_id, command_seq=command_seq, status="queued", reason=reason, message=message)


async def _root_graph(env: RunEnvironment, run_id: str) -> str:
    """The graph of the top-level run of ``run_id``'s run tree: the one a process continues on a resume."""
    chain, _ = await load_journal(env, run_id)
    started = chain[0]
    assert isinstance(started, RunStarted)
    if not started.root_run_id or started.root_run_id == started.run_id:
        return started.graph_id
    root, _ = await load_journal(env, started.root_run_id)
    return root[0].graph_id if root and isinstance(root[0], RunStarted) else started.graph_id
