"""A run that waits for a person: durable approval, resumed from anywhere.

In a terminal the question is answered inline. Without one (or with
AETHERGRAPH_CONSOLE_INPUT=never) the run suspends and releases its process:

    aethergraph run examples/review.py:review_signal          # exits with status 3: waiting
    aethergraph worker examples/review.py &                   # any host with the graph
    aethergraph resume RUN_ID --approve                       # or publish the command yourself:
    nats pub ag.cmd.resume.RUN_ID '{"payload": {"approved": true}}'
    aethergraph events RUN_ID

The measurement steps before the wait are not run again when the run resumes:
replay answers them from the journal.
"""

from __future__ import annotations

from demo import fit_line, simulate

from aethergraph import NodeContext, graph_fn, tool


@tool(name="publish_report", outputs=["report"])
def publish_report(slope: float, rmse: float, reviewer_note: str) -> dict[str, str]:
    """Format the approved result (stands in for posting it somewhere)."""
    return {"report": f"slope={slope:.4f} rmse={rmse:.4f} note={reviewer_note}"}


@graph_fn(name="review_signal", outputs=["approved", "report"])
async def review_signal(n: int = 200, *, context: NodeContext) -> dict[str, object]:
    data = await simulate(n=n, slope=2.0, noise=0.05, seed=7)
    fit = await fit_line(t=data["t"], y=data["y"])
    channel = context.channel()
    await channel.send_text(f"fitted slope {fit['slope']:.4f} (rmse {fit['rmse']:.4f})")
    decision = await channel.ask_approval("publish this fit?", options=("Publish", "Discard"))
    if not decision["approved"]:
        return {"approved": False, "report": ""}
    report = await publish_report(slope=fit["slope"], rmse=fit["rmse"], reviewer_note=decision["choice"])
    return {"approved": True, "report": report["report"]}
