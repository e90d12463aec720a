"""Graph model, decorators, NodeContext, the event catalog and the ports the core needs.

Nothing here imports nats or duckdb; ``aethergraph.bus`` and
``aethergraph.projections`` implement the ports in :mod:`aethergraph.core.ports`.
"""
