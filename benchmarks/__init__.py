"""AetherGraph benchmark suite: ``python -m benchmarks`` (``--quick`` for a smoke run).

Every benchmark that needs a bus starts its own embedded nats-server in a
temporary workspace and stops it at the end, so benchmarks never share state.
Results go to ``benchmarks/results/latest.json`` and to the generated section
of ``docs/benchmarks.md``.
"""
