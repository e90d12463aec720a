"""An agent: the model answers with a tool's help, a person approves, the run finishes.

Point the default profile at any OpenAI-compatible endpoint, then run it:

    export AETHERGRAPH_LLM__DEFAULT__BASE_URL=http://127.0.0.1:11434/v1   # Ollama, vLLM, LM Studio, ...
    export AETHERGRAPH_LLM__DEFAULT__MODEL=llama3.1
    aethergraph run examples/agent.py:hall_agent --input question="Is hall B too warm for the run?"

Without a terminal the approval is a durable wait: the run releases its
process (exit status 3), and any host serving the graph continues it once
answered:

    aethergraph worker examples/agent.py &
    aethergraph resume RUN_ID --approve

Neither the model calls nor the tool call before the wait are made again.
(No endpoint at hand? `python -m aethergraph.testing.fake_openai` serves a fake one.)
"""

from __future__ import annotations

from aethergraph import NodeContext, graph_fn, tool

READINGS = {"a": 19.5, "b": 24.0, "c": 21.0}


@tool(name="hall_temperature", outputs=["celsius"])
def hall_temperature(hall: str) -> dict[str, float]:
    """The latest temperature reading of a hall (a, b or c), in degrees Celsius."""
    return {"celsius": READINGS[hall.strip().lower()]}


@graph_fn(name="hall_agent", outputs=["answer", "approved"])
async def hall_agent(question: str, *, context: NodeContext) -> dict[str, object]:
    answer, usage = await context.llm().chat(
        question,
        system="You answer questions about the halls. Use the hall_temperature tool; 22 C or more is too warm.",
        tools=[hall_temperature],
        max_tool_rounds=3,
    )
    context.logger().info("the model answered in %d rounds, %d tokens", usage["rounds"], usage["total_tokens"])
    decision = await context.channel().ask_approval(f"Send this answer?\n\n{answer}", options=("Send", "Hold"))
    if decision["approved"]:
        await context.channel().send_text(answer)
    return {"answer": answer, "approved": decision["approved"]}
