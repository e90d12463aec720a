"""The core: what a run is, independent of any bus or database.

Rooms, each importing only the ones below it (import-linter checks it):

* ``api/``      what users decorate with: ``@tool``, ``@graph_fn``, ``@graphify``, ``DualStageTool``
* ``run/``      running runs: the executor, the static-graph scheduler, resuming a wait
* ``context/``  ``NodeContext`` and its services: channel, logger, waits, kv, artifacts, memory, custom services
* ``journal/``  the run journal and its replay: the journaled step, the scope, run control, the ports
* ``model/``    the graph model: specs, task graphs, references, the registry, input checks
* ``wire/``     the event catalog and its codec, payload schemas, node reports

``errors``, ``ids`` and ``settings`` are shared by all and import no room.
Nothing here imports nats or duckdb; ``aethergraph.bus`` and
``aethergraph.projections`` implement the ports in :mod:`aethergraph.core.journal.ports`.
"""
