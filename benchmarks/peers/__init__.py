"""AetherGraph against the engines its users would otherwise pick: ``python -m benchmarks.peers``.

``runner`` runs one repeat of one workload (W1-W5) for one peer in a
subprocess of that peer's interpreter; ``venvs`` creates the LangGraph and
DBOS virtualenvs from the pinned files in ``requirements/``; ``report``
summarises, compares with the best durable peer and renders the section of
docs/benchmarks.md; ``workloads/`` holds each peer's workload script.
"""
